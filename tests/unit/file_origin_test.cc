// Tests for FileOrigin (origin/file_origin.h) against real files, driven by a
// reactor on its own thread.
#include "origin/file_origin.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <cstdint>
#include <memory>
#include <numeric>
#include <string>
#include <vector>

#include "io/reactor.h"
#include "io_test_util.h"
#include "util/aligned_buffer.h"

namespace rbdcache {
namespace {

using testing::pattern;
using testing::ReactorThread;
using testing::ScratchFile;

constexpr uint64_t kFileSize = 4u << 20;  // 4 MiB, sparse

bool all_zero(std::span<const std::byte> b) {
  for (std::byte x : b) {
    if (x != std::byte{0}) return false;
  }
  return true;
}

class FileOriginTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_TRUE(rt_.ok());
    ASSERT_EQ(::ftruncate(file_.fd(), static_cast<off_t>(kFileSize)), 0);
    auto o = FileOrigin::open(file_.path(), /*read_only=*/false);
    ASSERT_TRUE(o.is_ok()) << o.status().to_string();
    origin_ = std::move(o.value());
  }

  Status read(uint64_t offset, std::span<std::byte> buf) {
    return rt_.call<Status>([&](auto done) { origin_->read(rt_.reactor(), offset, buf, done); });
  }
  Status write(uint64_t offset, std::span<const std::byte> buf, WriteFlags flags = {}) {
    return rt_.call<Status>(
        [&](auto done) { origin_->write(rt_.reactor(), offset, buf, flags, done); });
  }
  Status write_zeroes(uint64_t offset, uint64_t length, WriteFlags flags) {
    return rt_.call<Status>(
        [&](auto done) { origin_->write_zeroes(rt_.reactor(), offset, length, flags, done); });
  }
  Status discard(uint64_t offset, uint64_t length, WriteFlags flags = {}) {
    return rt_.call<Status>(
        [&](auto done) { origin_->discard(rt_.reactor(), offset, length, flags, done); });
  }
  Status flush() {
    return rt_.call<Status>([&](auto done) { origin_->flush(rt_.reactor(), done); });
  }
  Result<std::vector<Extent>> block_status(uint64_t offset, uint64_t length) {
    return rt_.call<Result<std::vector<Extent>>>(
        [&](auto done) { origin_->block_status(rt_.reactor(), offset, length, done); });
  }

  // Reads [offset, offset+len) with plain pread on a separate descriptor.
  std::vector<std::byte> pread_file(uint64_t offset, size_t len) {
    std::vector<std::byte> v(len);
    EXPECT_EQ(::pread(file_.fd(), v.data(), len, static_cast<off_t>(offset)), static_cast<ssize_t>(len));
    return v;
  }

  ReactorThread rt_;
  ScratchFile file_;
  std::unique_ptr<FileOrigin> origin_;
};

TEST_F(FileOriginTest, ReportsSizeCapsAndDescription) {
  EXPECT_EQ(origin_->size(), kFileSize);
  EXPECT_FALSE(origin_->caps().read_only);
  EXPECT_EQ(origin_->describe(), "file:" + file_.path());
}

TEST_F(FileOriginTest, UsesDirectIoWhereTheFileSystemAllowsIt) {
  EXPECT_EQ(origin_->uses_direct_io(), testing::supports_o_direct(testing::scratch_dir()))
      << "scratch dir " << testing::scratch_dir();
}

TEST_F(FileOriginTest, AlignedWriteThenReadRoundTrips) {
  const size_t len = 256 * 1024;
  const uint64_t offset = 8 * FileOrigin::kDirectAlign;
  AlignedBuffer out(len);
  auto data = pattern(len, 11);
  std::memcpy(out.data(), data.data(), len);
  ASSERT_TRUE(write(offset, out.span()).is_ok());

  AlignedBuffer in(len);
  std::memset(in.data(), 0xcc, len);
  Status st = read(offset, in.span());
  ASSERT_TRUE(st.is_ok()) << st.to_string();
  EXPECT_EQ(std::memcmp(in.data(), data.data(), len), 0);
  EXPECT_TRUE(pread_file(offset, len) == data);
}

TEST_F(FileOriginTest, UnalignedWriteThenReadRoundTrips) {
  const size_t len = 5000;
  const uint64_t offset = 1000;
  auto data = pattern(len, 12);
  ASSERT_TRUE(write(offset, data).is_ok());
  std::vector<std::byte> in(len);
  ASSERT_TRUE(read(offset, in).is_ok());
  EXPECT_TRUE(in == data);
  EXPECT_TRUE(pread_file(offset, len) == data);
}

TEST_F(FileOriginTest, UnalignedWriteIsSeenByAlignedRead) {
  // The buffered write must be visible through the O_DIRECT descriptor.
  auto data = pattern(3000, 13);
  const uint64_t offset = 4096 + 100;
  ASSERT_TRUE(write(offset, data).is_ok());
  AlignedBuffer in(3 * 4096);
  ASSERT_TRUE(read(4096, in.span()).is_ok());
  EXPECT_EQ(std::memcmp(in.data() + 100, data.data(), data.size()), 0);
  EXPECT_TRUE(all_zero(in.span().first(100)));
  EXPECT_TRUE(all_zero(in.span().subspan(100 + data.size())));
}

TEST_F(FileOriginTest, AlignedWriteIsSeenByUnalignedRead) {
  // Populate the page cache first, then overwrite through O_DIRECT.
  std::vector<std::byte> warm(8192);
  ASSERT_TRUE(read(1, warm).is_ok());
  AlignedBuffer out(8192);
  auto data = pattern(8192, 14);
  std::memcpy(out.data(), data.data(), data.size());
  ASSERT_TRUE(write(0, out.span(), WriteFlags{.fua = true}).is_ok());
  std::vector<std::byte> in(8000);
  ASSERT_TRUE(read(1, in).is_ok());
  EXPECT_EQ(std::memcmp(in.data(), data.data() + 1, in.size()), 0);
}

TEST_F(FileOriginTest, ReadOfLastBytesSucceedsAndPastEndFails) {
  std::vector<std::byte> tail(10);
  EXPECT_TRUE(read(kFileSize - 10, tail).is_ok());
  std::vector<std::byte> past(20);
  Status st = read(kFileSize - 10, past);
  EXPECT_FALSE(st.is_ok());
  EXPECT_EQ(st.err(), EIO);
}

TEST_F(FileOriginTest, WriteZeroesWithTrimReadsBackZeros) {
  auto data = pattern(1 << 20, 15);
  ASSERT_TRUE(write(0, data).is_ok());
  ASSERT_TRUE(write_zeroes(4096, 65536, WriteFlags{.may_trim = true}).is_ok());
  std::vector<std::byte> in(1 << 20);
  ASSERT_TRUE(read(0, in).is_ok());
  EXPECT_TRUE(all_zero(std::span(in).subspan(4096, 65536)));
  EXPECT_TRUE(std::equal(in.begin(), in.begin() + 4096, data.begin()));
  EXPECT_TRUE(std::equal(in.begin() + 4096 + 65536, in.end(), data.begin() + 4096 + 65536));
}

TEST_F(FileOriginTest, WriteZeroesWithoutTrimReadsBackZeros) {
  auto data = pattern(1 << 20, 16);
  ASSERT_TRUE(write(0, data).is_ok());
  // Unaligned on purpose: partial blocks at both ends.
  ASSERT_TRUE(write_zeroes(1000, 70000, WriteFlags{.fua = true, .may_trim = false}).is_ok());
  std::vector<std::byte> in(1 << 20);
  ASSERT_TRUE(read(0, in).is_ok());
  EXPECT_TRUE(all_zero(std::span(in).subspan(1000, 70000)));
  EXPECT_TRUE(std::equal(in.begin(), in.begin() + 1000, data.begin()));
  EXPECT_TRUE(std::equal(in.begin() + 71000, in.end(), data.begin() + 71000));
  EXPECT_TRUE(pread_file(1000, 70000) == std::vector<std::byte>(70000));
}

TEST_F(FileOriginTest, DiscardSucceedsAndLeavesNeighboursIntact) {
  auto data = pattern(1 << 20, 17);
  ASSERT_TRUE(write(0, data).is_ok());
  Status st = discard(65536, 131072);
  ASSERT_TRUE(st.is_ok()) << st.to_string();
  std::vector<std::byte> in(1 << 20);
  ASSERT_TRUE(read(0, in).is_ok());
  EXPECT_TRUE(std::equal(in.begin(), in.begin() + 65536, data.begin()));
  EXPECT_TRUE(std::equal(in.begin() + 196608, in.end(), data.begin() + 196608));
  // The discarded range reads either as the old data or as zeroes.
  std::span<const std::byte> mid = std::span(in).subspan(65536, 131072);
  EXPECT_TRUE(all_zero(mid) || std::equal(mid.begin(), mid.end(), data.begin() + 65536));
}

TEST_F(FileOriginTest, DiscardWithFuaSucceeds) {
  EXPECT_TRUE(discard(0, 4096, WriteFlags{.fua = true}).is_ok());
}

TEST_F(FileOriginTest, FlushSucceeds) {
  ASSERT_TRUE(write(0, pattern(4096, 18)).is_ok());
  Status st = flush();
  EXPECT_TRUE(st.is_ok()) << st.to_string();
}

TEST_F(FileOriginTest, BlockStatusReportsHoleForUnwrittenRegion) {
  auto r = block_status(0, 1 << 20);
  ASSERT_TRUE(r.is_ok()) << r.status().to_string();
  ASSERT_FALSE(r.value().empty());
  EXPECT_EQ(r.value()[0].flags, Extent::kHole | Extent::kZero);
  uint64_t total = 0;
  for (const Extent& e : r.value()) {
    EXPECT_GT(e.length, 0u);
    EXPECT_EQ(e.flags, Extent::kHole | Extent::kZero);
    total += e.length;
  }
  EXPECT_EQ(total, 1u << 20);
}

TEST_F(FileOriginTest, BlockStatusReportsDataForWrittenRegionAndHolesAround) {
  const uint64_t data_off = 1 << 20;
  const size_t data_len = 256 * 1024;
  ASSERT_TRUE(write(data_off, pattern(data_len, 19)).is_ok());
  ASSERT_TRUE(flush().is_ok());

  auto in_data = block_status(data_off, data_len);
  ASSERT_TRUE(in_data.is_ok());
  ASSERT_FALSE(in_data.value().empty());
  EXPECT_EQ(in_data.value()[0].flags, 0u);
  EXPECT_GT(in_data.value()[0].length, 0u);
  EXPECT_LE(in_data.value()[0].length, data_len);

  auto whole = block_status(0, kFileSize);
  ASSERT_TRUE(whole.is_ok());
  const auto& ex = whole.value();
  ASSERT_GE(ex.size(), 3u);
  // Hole, then data, then hole, covering the whole file.
  EXPECT_EQ(ex.front().flags, Extent::kHole | Extent::kZero);
  EXPECT_LE(ex.front().length, data_off);
  uint64_t pos = 0;
  bool saw_data_at_offset = false;
  for (const Extent& e : ex) {
    EXPECT_GT(e.length, 0u);
    if (pos <= data_off && data_off < pos + e.length) saw_data_at_offset = (e.flags == 0);
    pos += e.length;
  }
  EXPECT_TRUE(saw_data_at_offset);
  EXPECT_EQ(pos, kFileSize);
  EXPECT_EQ(ex.back().flags, Extent::kHole | Extent::kZero);
}

TEST_F(FileOriginTest, BlockStatusStopsAtEndOfFile) {
  auto r = block_status(kFileSize - 4096, 4096);
  ASSERT_TRUE(r.is_ok());
  uint64_t total = 0;
  for (const Extent& e : r.value()) total += e.length;
  EXPECT_EQ(total, 4096u);
}

TEST_F(FileOriginTest, PrefetchSucceeds) {
  EXPECT_TRUE(
      rt_.call<Status>([&](auto done) { origin_->prefetch(rt_.reactor(), 0, 65536, done); }).is_ok());
}

TEST(FileOrigin, OpenReadOnlyReportsReadOnlyCaps) {
  ScratchFile f;
  ASSERT_EQ(::ftruncate(f.fd(), 4096), 0);
  auto o = FileOrigin::open(f.path(), /*read_only=*/true);
  ASSERT_TRUE(o.is_ok()) << o.status().to_string();
  EXPECT_TRUE(o.value()->caps().read_only);
  EXPECT_EQ(o.value()->size(), 4096u);
}

TEST(FileOrigin, OpenOfMissingPathFailsNamingThePath) {
  const std::string path = testing::scratch_dir() + "/no-such-origin-file.img";
  auto o = FileOrigin::open(path, false);
  ASSERT_FALSE(o.is_ok());
  EXPECT_EQ(o.status().err(), ENOENT);
  EXPECT_NE(o.status().message().find(path), std::string::npos) << o.status().message();
}

TEST(FileOrigin, OpenOfEmptyFileFails) {
  ScratchFile f;
  auto o = FileOrigin::open(f.path(), false);
  ASSERT_FALSE(o.is_ok());
  EXPECT_NE(o.status().message().find(f.path()), std::string::npos) << o.status().message();
}

TEST(FileOrigin, OpenOfDirectoryFails) {
  auto o = FileOrigin::open(testing::scratch_dir(), true);
  ASSERT_FALSE(o.is_ok());
}

}  // namespace
}  // namespace rbdcache
