// The engine when a device fails (docs/crash-consistency.md, "Fail mode"):
//   - a read fill after a partial hit writes only the sub-blocks that were
//     not valid, and a failed fill leaves them invalid (never served);
//   - a failed in-place zeroing of a partly zeroed sub-block never leaves it
//     valid with unknown contents;
//   - a cache read error on clean data is served from the origin, on dirty
//     data it fails that request only;
//   - a cache write error on a writeback write writes through to the origin;
//   - a metadata device failure makes the cache read-only, and says so.
#include <gtest/gtest.h>

#include <atomic>
#include <cstring>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

#include "../metalog/fault_device.h"
#include "../unit/io_test_util.h"
#include "cache/engine.h"
#include "fault_cache_device.h"
#include "metalog/block_device.h"
#include "metalog/formatter.h"
#include "metalog/writer.h"
#include "origin/file_origin.h"

namespace rbdcache::cache {
namespace {

using metalog::testing::FaultInjectionDevice;
using rbdcache::testing::ReactorThread;
using rbdcache::testing::ScratchFile;
using testing::FaultCacheDevice;

constexpr uint32_t kBlockSize = 16u << 10;  // 4 sub-blocks
constexpr uint32_t kBlocks = 32;
constexpr uint64_t kOriginSize = 1u << 20;
constexpr uint32_t kSub = kSubBlockSize;

// A CacheDevice that passes everything to another one, failing the reads
// and writes a test picks (at most once each) and recording every write.
class FailingCacheDevice final : public CacheDevice {
 public:
  using Pick = std::function<bool(CacheBlock, uint32_t offset, size_t len)>;
  explicit FailingCacheDevice(CacheDevice& inner)
      : CacheDevice(inner.block_size(), inner.blocks()), inner_(inner) {}

  void fail_next_read(Pick p) {
    std::lock_guard lk(mu_);
    fail_read_ = std::move(p);
  }
  void fail_next_write(Pick p) {
    std::lock_guard lk(mu_);
    fail_write_ = std::move(p);
  }
  struct Write {
    CacheBlock cb;
    uint32_t offset;
    size_t len;
  };
  std::vector<Write> writes() {
    std::lock_guard lk(mu_);
    return writes_;
  }
  void clear_writes() {
    std::lock_guard lk(mu_);
    writes_.clear();
  }

  void read(io::Reactor& r, CacheBlock cb, uint32_t offset, std::span<std::byte> buf,
            IoCallback done) override {
    if (take(fail_read_, cb, offset, buf.size())) {
      r.post([done = std::move(done)] { done(Status::io_error("injected cache read error")); });
      return;
    }
    inner_.read(r, cb, offset, buf, std::move(done));
  }
  void write(io::Reactor& r, CacheBlock cb, uint32_t offset, std::span<const std::byte> buf,
             bool fua, IoCallback done) override {
    {
      std::lock_guard lk(mu_);
      writes_.push_back(Write{cb, offset, buf.size()});
    }
    if (take(fail_write_, cb, offset, buf.size())) {
      r.post([done = std::move(done)] { done(Status::io_error("injected cache write error")); });
      return;
    }
    inner_.write(r, cb, offset, buf, fua, std::move(done));
  }
  void flush(io::Reactor& r, IoCallback done) override { inner_.flush(r, std::move(done)); }
  Status sync() override { return inner_.sync(); }

 private:
  bool take(Pick& p, CacheBlock cb, uint32_t offset, size_t len) {
    std::lock_guard lk(mu_);
    if (!p || !p(cb, offset, len)) return false;
    p = nullptr;
    return true;
  }
  CacheDevice& inner_;
  std::mutex mu_;
  Pick fail_read_, fail_write_;
  std::vector<Write> writes_;
};

std::vector<std::byte> pattern(size_t n, int seed) {
  std::vector<std::byte> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = static_cast<std::byte>((i * 7 + seed * 13 + 1) & 0xff);
  return v;
}

class DeviceErrorsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_EQ(::ftruncate(origin_file_.fd(), kOriginSize), 0);
    origin_image_ = pattern(kOriginSize, 99);
    ASSERT_EQ(::pwrite(origin_file_.fd(), origin_image_.data(), kOriginSize, 0),
              static_cast<ssize_t>(kOriginSize));
    auto o = FileOrigin::open(origin_file_.path(), false);
    ASSERT_TRUE(o.is_ok());
    origin_ = std::move(o).value();

    metalog::MemBlockDevice meta(1u << 20), hdr(uint64_t{kBlockSize} * (kBlocks + 1));
    metalog::FormatOptions fo;
    fo.cache_block_size = kBlockSize;
    fo.segment_size = 16u << 10;
    ASSERT_TRUE(metalog::format_devices(meta, hdr, fo).is_ok());
    meta_ = std::make_unique<FaultInjectionDevice>(std::move(meta.image()));
    auto log = metalog::MetadataLog::open(*meta_);
    ASSERT_TRUE(log.is_ok()) << log.status().to_string();
    log_ = std::move(log).value();
    // Junk in every slot: a read that returns it was never vouched for.
    std::vector<std::byte> junk(uint64_t{kBlockSize} * kBlocks, std::byte{0xee});
    mem_ = std::make_unique<FaultCacheDevice>(kBlockSize, kBlocks, std::move(junk));
    dev_ = std::make_unique<FailingCacheDevice>(*mem_);
    EngineOptions opts;
    opts.max_dirty_age = std::chrono::hours(1);  // writeback only when asked
    opts.dirty_high_watermark = 2.0;
    opts.sequential_cutoff = 0;
    opts.full_invariant_checks = true;
    auto e = CacheEngine::create(*origin_, *log_, *dev_, opts);
    ASSERT_TRUE(e.is_ok()) << e.status().to_string();
    engine_ = std::move(e).value();
  }
  void TearDown() override {
    if (engine_) engine_->shutdown().ignore_error();
    engine_.reset();
    log_.reset();
  }

  Status write(uint64_t off, const std::vector<std::byte>& data) {
    return rt_.call<Status>([&](std::function<void(Status)> done) {
      engine_->write(rt_.reactor(), off, data, WriteFlags{}, std::move(done));
    });
  }
  Status read(uint64_t off, std::vector<std::byte>& out) {
    return rt_.call<Status>([&](std::function<void(Status)> done) {
      engine_->read(rt_.reactor(), off, out, std::move(done));
    });
  }
  Status zero(uint64_t off, uint64_t len) {
    return rt_.call<Status>([&](std::function<void(Status)> done) {
      engine_->write_zeroes(rt_.reactor(), off, len, WriteFlags{}, std::move(done));
    });
  }
  Status flush() {
    return rt_.call<Status>(
        [&](std::function<void(Status)> done) { engine_->flush(rt_.reactor(), std::move(done)); });
  }
  std::vector<std::byte> origin_bytes(uint64_t off, size_t len) {
    std::vector<std::byte> v(len);
    EXPECT_EQ(::pread(origin_file_.fd(), v.data(), len, static_cast<off_t>(off)),
              static_cast<ssize_t>(len));
    return v;
  }
  // Writes `data` at `off` and writes it back: the cache then holds it clean.
  void write_clean(uint64_t off, const std::vector<std::byte>& data) {
    ASSERT_TRUE(write(off, data).is_ok());
    engine_->request_full_writeback();
    for (int i = 0; i < 400 && engine_->stats().dirty_bytes > 0; ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    ASSERT_EQ(engine_->stats().dirty_bytes, 0u);
    ASSERT_GT(engine_->stats().used_bytes, 0u);
    std::memcpy(origin_image_.data() + off, data.data(), data.size());
  }
  // Reads [off, off+len) through the engine and compares with `want`.
  void expect_reads(uint64_t off, const std::vector<std::byte>& want) {
    std::vector<std::byte> got(want.size());
    Status st = read(off, got);
    ASSERT_TRUE(st.is_ok()) << st.to_string();
    EXPECT_TRUE(got == want) << "read at " << off << " does not match";
  }

  ScratchFile origin_file_;
  std::vector<std::byte> origin_image_;
  ReactorThread rt_;
  std::unique_ptr<FileOrigin> origin_;
  std::unique_ptr<FaultInjectionDevice> meta_;
  std::unique_ptr<metalog::MetadataLog> log_;
  std::unique_ptr<FaultCacheDevice> mem_;
  std::unique_ptr<FailingCacheDevice> dev_;
  std::unique_ptr<CacheEngine> engine_;
};

TEST_F(DeviceErrorsTest, AFillAfterAPartialHitRewritesNoValidSubBlockAndAFailedFillServesNothing) {
  // Sub-block 0 of block 0 is dirty in the cache; the rest is not cached.
  auto dirty = pattern(kSub, 1);
  ASSERT_TRUE(write(0, dirty).is_ok());
  dev_->clear_writes();
  // Reading sub-blocks 0..1 hits sub-block 0 and fills sub-block 1; that
  // fill fails.
  dev_->fail_next_write([](CacheBlock, uint32_t, size_t) { return true; });
  std::vector<std::byte> want = dirty;
  want.insert(want.end(), origin_image_.begin() + kSub, origin_image_.begin() + 2 * kSub);
  expect_reads(0, want);
  for (const auto& w : dev_->writes()) {
    EXPECT_GE(w.offset, kSub) << "the fill rewrote the valid (dirty) sub-block 0";
  }
  // The failed fill must not have made sub-block 1 valid: reading it again
  // gives the origin's data, not the junk in the slot.
  expect_reads(kSub, std::vector<std::byte>(origin_image_.begin() + kSub,
                                            origin_image_.begin() + 2 * kSub));
  EXPECT_EQ(engine_->stats().cache_write_errors, 1u);
}

TEST_F(DeviceErrorsTest, AFailedInPlaceZeroingOfACleanSubBlockDropsIt) {
  // Cache block 0 clean, then zero 100 bytes inside sub-block 1 with the
  // cache write failing.
  write_clean(0, pattern(kBlockSize, 10));
  dev_->fail_next_write([](CacheBlock, uint32_t off, size_t) { return off == kSub; });
  ASSERT_TRUE(zero(kSub + 100, 100).is_ok());
  std::vector<std::byte> want(origin_image_.begin(), origin_image_.begin() + kBlockSize);
  std::memset(want.data() + kSub + 100, 0, 100);
  expect_reads(0, want);
}

TEST_F(DeviceErrorsTest, AFailedInPlaceZeroingOfADirtySubBlockWritesItThrough) {
  auto dirty = pattern(kSub, 2);
  ASSERT_TRUE(write(kSub, dirty).is_ok());
  dev_->fail_next_write([](CacheBlock, uint32_t off, size_t) { return off == kSub; });
  ASSERT_TRUE(zero(kSub + 100, 100).is_ok());
  std::vector<std::byte> want = dirty;
  std::memset(want.data() + 100, 0, 100);
  expect_reads(kSub, want);
  EXPECT_TRUE(origin_bytes(kSub, kSub) == want) << "the dirty sub-block was not written through";
  EXPECT_EQ(engine_->stats().health, Health::kOk);
}

TEST_F(DeviceErrorsTest, ACacheReadErrorOnCleanDataIsServedFromTheOrigin) {
  write_clean(0, pattern(kBlockSize, 11));
  dev_->fail_next_read([](CacheBlock, uint32_t, size_t) { return true; });
  expect_reads(0, std::vector<std::byte>(origin_image_.begin(), origin_image_.begin() + kBlockSize));
  EXPECT_EQ(engine_->stats().cache_read_errors, 1u);
}

TEST_F(DeviceErrorsTest, ACacheReadErrorOnDirtyDataFailsOnlyThatRequest) {
  auto dirty = pattern(kBlockSize, 3);
  ASSERT_TRUE(write(0, dirty).is_ok());
  dev_->fail_next_read([](CacheBlock, uint32_t, size_t) { return true; });
  std::vector<std::byte> got(kBlockSize);
  EXPECT_EQ(read(0, got).err(), EIO);
  expect_reads(0, dirty);  // still dirty in the cache, readable again
  EXPECT_EQ(engine_->stats().dirty_bytes, kBlockSize);
}

TEST_F(DeviceErrorsTest, ACacheWriteErrorOnAWritebackWriteWritesThroughToTheOrigin) {
  // Sub-block 0 dirty; then a partial write into it fails on the cache.
  auto first = pattern(kSub, 4);
  ASSERT_TRUE(write(0, first).is_ok());
  dev_->fail_next_write([](CacheBlock, uint32_t, size_t) { return true; });
  auto part = pattern(100, 5);
  ASSERT_TRUE(write(200, part).is_ok());
  std::vector<std::byte> want = first;
  std::memcpy(want.data() + 200, part.data(), part.size());
  expect_reads(0, want);
  EXPECT_TRUE(origin_bytes(0, kSub) == want) << "the merged sub-block is not on the origin";
  EXPECT_EQ(engine_->stats().dirty_bytes, 0u);
}

TEST_F(DeviceErrorsTest, AMetadataDeviceFailureMakesTheCacheReadOnly) {
  auto dirty = pattern(kBlockSize, 6);
  ASSERT_TRUE(write(0, dirty).is_ok());
  ASSERT_TRUE(flush().is_ok());
  meta_->lose_power_after(0);
  ASSERT_TRUE(write(kBlockSize, pattern(kSub, 7)).is_ok());  // its entry is appended...
  EXPECT_FALSE(flush().is_ok());                              // ...but never committed
  // From now on: writes fail, reads of cached and uncached data work.
  EngineStats s = engine_->stats();
  EXPECT_EQ(s.health, Health::kFailed);
  EXPECT_NE(s.health_reason.find("metadata"), std::string::npos);
  EXPECT_EQ(write(3 * kBlockSize, pattern(kSub, 9)).err(), EIO);
  expect_reads(0, dirty);
  expect_reads(5 * kBlockSize, std::vector<std::byte>(origin_image_.begin() + 5 * kBlockSize,
                                                      origin_image_.begin() + 6 * kBlockSize));
}

}  // namespace
}  // namespace rbdcache::cache
