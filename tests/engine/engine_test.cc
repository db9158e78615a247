// The cache engine over real files: a file origin, a cache file and a
// metadata file, driven through the Origin interface as the NBD server
// drives it.
#include "cache/engine.h"

#include <gtest/gtest.h>

#include <random>

#include "../unit/io_test_util.h"
#include "cache/attach.h"
#include "metalog/formatter.h"
#include "origin/file_origin.h"

namespace rbdcache::cache {
namespace {

using rbdcache::testing::ReactorThread;
using rbdcache::testing::ScratchFile;

constexpr uint64_t kOriginSize = 16u << 20;
constexpr uint64_t kCacheSize = 2u << 20;  // 31 blocks of 64 KiB after the header
constexpr uint64_t kMetaSize = 8u << 20;

class EngineTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_EQ(::ftruncate(origin_file_.fd(), kOriginSize), 0);
    ASSERT_EQ(::ftruncate(cache_file_.fd(), kCacheSize), 0);
    ASSERT_EQ(::ftruncate(meta_file_.fd(), kMetaSize), 0);
    // The origin starts with known, non-zero content.
    model_ = rbdcache::testing::pattern(kOriginSize, 99);
    ASSERT_EQ(::pwrite(origin_file_.fd(), model_.data(), model_.size(), 0),
              static_cast<ssize_t>(model_.size()));
    auto meta = metalog::FileBlockDevice::open(meta_file_.path(), false);
    auto cache = metalog::FileBlockDevice::open(cache_file_.path(), false);
    ASSERT_TRUE(meta.is_ok() && cache.is_ok());
    metalog::FormatOptions fo;
    fo.segment_size = 256 << 10;
    auto sb = metalog::format_devices(*meta.value(), *cache.value(), fo);
    ASSERT_TRUE(sb.is_ok()) << sb.status().to_string();
  }

  void attach(Mode mode = Mode::kWriteback) {
    auto o = FileOrigin::open(origin_file_.path(), false);
    ASSERT_TRUE(o.is_ok()) << o.status().to_string();
    origin_ = std::move(o).value();
    AttachOptions ao;
    ao.meta_dev = meta_file_.path();
    ao.cache_dev = cache_file_.path();
    ao.engine.mode = mode;
    ao.engine.max_dirty_age = std::chrono::hours(1);  // writeback only when asked
    ao.engine.dirty_high_watermark = 2.0;
    auto c = AttachedCache::open(*origin_, ao);
    ASSERT_TRUE(c.is_ok()) << c.status().to_string();
    cache_ = std::move(c).value();
  }

  void detach() {
    ASSERT_TRUE(cache_->close().is_ok());
    cache_.reset();
    origin_.reset();
  }

  CacheEngine& engine() { return cache_->engine(); }

  Status write(uint64_t off, std::span<const std::byte> data, bool fua = false) {
    return rt_.call<Status>([&](std::function<void(Status)> done) {
      engine().write(rt_.reactor(), off, data, WriteFlags{fua, true, false}, done);
    });
  }
  Status read(uint64_t off, std::span<std::byte> data) {
    return rt_.call<Status>(
        [&](std::function<void(Status)> done) { engine().read(rt_.reactor(), off, data, done); });
  }
  Status flush() {
    return rt_.call<Status>(
        [&](std::function<void(Status)> done) { engine().flush(rt_.reactor(), done); });
  }
  Status zero(uint64_t off, uint64_t len) {
    return rt_.call<Status>([&](std::function<void(Status)> done) {
      engine().write_zeroes(rt_.reactor(), off, len, WriteFlags{}, done);
    });
  }

  // Writes to the engine and to the model.
  void write_both(uint64_t off, size_t len, uint32_t seed) {
    auto data = rbdcache::testing::pattern(len, seed);
    Status st = write(off, data);
    ASSERT_TRUE(st.is_ok()) << st.to_string();
    std::memcpy(model_.data() + off, data.data(), len);
  }

  void expect_reads_model(uint64_t off, size_t len) {
    std::vector<std::byte> got(len);
    Status st = read(off, got);
    ASSERT_TRUE(st.is_ok()) << st.to_string();
    ASSERT_EQ(std::memcmp(got.data(), model_.data() + off, len), 0)
        << "mismatch reading " << len << " bytes at " << off;
  }

  std::vector<std::byte> origin_contents() {
    std::vector<std::byte> v(kOriginSize);
    EXPECT_EQ(::pread(origin_file_.fd(), v.data(), v.size(), 0), static_cast<ssize_t>(v.size()));
    return v;
  }

  void wait_until_clean() {
    engine().request_full_writeback();
    for (int i = 0; i < 600 && engine().stats().dirty_bytes > 0; ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    ASSERT_EQ(engine().stats().dirty_bytes, 0u);
  }

  ScratchFile origin_file_, cache_file_, meta_file_;
  std::vector<std::byte> model_;
  ReactorThread rt_;
  std::unique_ptr<FileOrigin> origin_;
  std::unique_ptr<AttachedCache> cache_;
};

TEST_F(EngineTest, WritebackWriteIsServedFromCacheAndNotYetOnOrigin) {
  attach();
  auto before = origin_contents();
  write_both(128 << 10, 64 << 10, 1);
  expect_reads_model(128 << 10, 64 << 10);
  EXPECT_EQ(origin_contents(), before);  // absorbed by the cache
  EngineStats s = engine().stats();
  EXPECT_EQ(s.dirty_bytes, 64u << 10);
  EXPECT_EQ(s.dirty_blocks, 1u);
}

TEST_F(EngineTest, UnalignedWritesMergeWithOriginData) {
  attach();
  write_both(1000, 3000, 2);        // inside one sub-block
  write_both(65536 - 100, 300, 3);  // across a block boundary
  write_both(5 * 4096 + 7, 3 * 4096, 4);
  expect_reads_model(0, 256 << 10);
}

// A shared image's cache that does not hold the image's lock (or has not
// yet checked its clean blocks) serves only dirty data from the cache: its
// clean copy may be older than the origin, which another host wrote.
TEST_F(EngineTest, WithoutCleanHitsOnlyDirtyDataComesFromTheCache) {
  attach();
  write_both(0, 64 << 10, 5);
  wait_until_clean();
  write_both(128 << 10, 64 << 10, 6);  // stays dirty
  auto fresh = rbdcache::testing::pattern(64 << 10, 7);
  ASSERT_EQ(::pwrite(origin_file_.fd(), fresh.data(), fresh.size(), 0),
            static_cast<ssize_t>(fresh.size()));
  std::memcpy(model_.data(), fresh.data(), fresh.size());

  engine().set_clean_hits(false);
  const uint64_t hits = engine().stats().read_hits;
  expect_reads_model(0, 64 << 10);
  expect_reads_model(128 << 10, 64 << 10);
  EXPECT_EQ(engine().stats().read_hits, hits + 1);  // the dirty block only
  // A partial sub-block merges with the origin's data, not the clean copy.
  engine().set_mode(Mode::kPassthrough);
  write_both(512, 512, 8);
  expect_reads_model(0, 64 << 10);
  auto o = origin_contents();
  EXPECT_EQ(std::memcmp(o.data(), model_.data(), 64 << 10), 0);
}

TEST_F(EngineTest, RandomOperationsMatchAModelInEveryMode) {
  attach();
  std::mt19937_64 rng(12345);
  const Mode modes[] = {Mode::kWriteback, Mode::kWritethrough, Mode::kPassthrough};
  for (int i = 0; i < 400; ++i) {
    if (i % 50 == 0) engine().set_mode(modes[(i / 50) % 3]);
    uint64_t off = rng() % (kOriginSize - (256 << 10));
    size_t len = 1 + rng() % (200 << 10);
    if (rng() % 3 == 0) off &= ~uint64_t{4095};
    if (rng() % 3 == 0) len = (len + 4095) & ~size_t{4095};
    switch (rng() % 4) {
      case 0:
      case 1:
        write_both(off, len, static_cast<uint32_t>(i + 10));
        break;
      case 2:
        expect_reads_model(off, len);
        break;
      case 3: {
        Status st = zero(off, len);
        ASSERT_TRUE(st.is_ok()) << st.to_string();
        std::memset(model_.data() + off, 0, len);
        break;
      }
    }
    if (HasFatalFailure()) return;
  }
  expect_reads_model(0, kOriginSize);
  wait_until_clean();
  EXPECT_TRUE(origin_contents() == model_) << "origin differs from the model after writeback";
}

TEST_F(EngineTest, FullWritebackMakesOriginIdentical) {
  attach();
  for (int i = 0; i < 20; ++i) write_both(static_cast<uint64_t>(i) * 200000, 70000, 50 + i);
  ASSERT_GT(engine().stats().dirty_bytes, 0u);
  wait_until_clean();
  EXPECT_GT(engine().stats().bytes_written_back, 0u);
  EXPECT_TRUE(origin_contents() == model_);
}

// A block with dirty sub-blocks apart (4K writes at 0 and 8K into a 64K
// block) is one writeback unit with two pieces: one writeback makes both
// clean, so each dirty byte goes to the origin once.
TEST_F(EngineTest, WritebackCleansEveryDirtyRunOfABlockAtOnce) {
  attach();
  write_both(0, 4096, 7);
  write_both(8192, 4096, 8);
  write_both(3 * 65536 + 4096, 4096, 9);
  write_both(3 * 65536 + 40960, 4096, 10);
  ASSERT_EQ(engine().stats().dirty_bytes, 4u * 4096);
  wait_until_clean();
  EXPECT_EQ(engine().stats().bytes_written_back, 4u * 4096)
      << "a dirty run was written back more than once";
  EXPECT_TRUE(origin_contents() == model_);
}

TEST_F(EngineTest, FlushedDirtyDataSurvivesRestart) {
  attach();
  write_both(3 << 20, 256 << 10, 7);
  write_both(9 << 20, 10000, 8);
  ASSERT_TRUE(flush().is_ok());
  EngineStats before = engine().stats();
  detach();
  auto origin_after_close = origin_contents();
  EXPECT_FALSE(origin_after_close == model_);  // still only in the cache

  attach();
  EngineStats after = engine().stats();
  EXPECT_EQ(after.mapped_blocks, before.mapped_blocks);
  EXPECT_EQ(after.dirty_bytes, before.dirty_bytes);
  expect_reads_model(0, kOriginSize);
}

TEST_F(EngineTest, CleanBlocksSurviveRestartAndStillHit) {
  attach();
  write_both(1 << 20, 128 << 10, 9);
  wait_until_clean();
  ASSERT_TRUE(flush().is_ok());
  detach();
  attach();
  EngineStats s0 = engine().stats();
  EXPECT_EQ(s0.mapped_blocks, 2u);
  EXPECT_EQ(s0.dirty_bytes, 0u);
  expect_reads_model(1 << 20, 128 << 10);
  EXPECT_EQ(engine().stats().read_hits - s0.read_hits, 2u);
}

TEST_F(EngineTest, CacheIsRefusedForAnotherOrigin) {
  attach();
  detach();
  ScratchFile other;
  ASSERT_EQ(::ftruncate(other.fd(), kOriginSize), 0);
  auto o = FileOrigin::open(other.path(), false);
  ASSERT_TRUE(o.is_ok());
  AttachOptions ao;
  ao.meta_dev = meta_file_.path();
  ao.cache_dev = cache_file_.path();
  auto c = AttachedCache::open(*o.value(), ao);
  ASSERT_FALSE(c.is_ok());
  EXPECT_NE(c.status().message().find("belongs to origin"), std::string::npos)
      << c.status().to_string();
}

TEST_F(EngineTest, UnformattedMetadataIsRefusedWithAHint) {
  ScratchFile blank;
  ASSERT_EQ(::ftruncate(blank.fd(), kMetaSize), 0);
  auto o = FileOrigin::open(origin_file_.path(), false);
  ASSERT_TRUE(o.is_ok());
  AttachOptions ao;
  ao.meta_dev = blank.path();
  ao.cache_dev = cache_file_.path();
  auto c = AttachedCache::open(*o.value(), ao);
  ASSERT_FALSE(c.is_ok());
  EXPECT_NE(c.status().message().find("rbdcache format"), std::string::npos);
}

TEST_F(EngineTest, WritesBeyondTheCacheSizeStillReadBackAfterEviction) {
  attach(Mode::kWriteback);
  // Write twice the cache's size: the cache fills, writes fall back to the
  // origin, and every byte still reads back.
  for (int i = 0; i < 64; ++i) write_both(static_cast<uint64_t>(i) * (64 << 10), 64 << 10, 200 + i);
  expect_reads_model(0, 64u * (64 << 10));
  wait_until_clean();
  // Clean blocks can now be evicted to make room for reads.
  for (int round = 0; round < 3; ++round) expect_reads_model(8 << 20, 4 << 20);
  EXPECT_TRUE(origin_contents() == model_);
}

}  // namespace
}  // namespace rbdcache::cache
