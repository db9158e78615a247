// Scan resistance through the whole engine: a hot working set, once
// promoted, keeps hitting while a one-pass scan four times the cache's size
// streams through, whether the scan is sequential (and so recognised and
// bypassed) or in random order (and so partly promoted).
//
// Hit ratios come from the engine's own counters, read around each hot read
// alone: requests run one at a time and nothing else reads, so every counter
// change in that window belongs to that read.
#include <gtest/gtest.h>

#include <algorithm>
#include <numeric>
#include <random>

#include "../unit/io_test_util.h"
#include "cache/attach.h"
#include "cache/engine.h"
#include "metalog/formatter.h"
#include "origin/file_origin.h"
#include "util/aligned_buffer.h"

namespace rbdcache::cache {
namespace {

using rbdcache::testing::ReactorThread;
using rbdcache::testing::ScratchFile;

constexpr uint32_t kBlock = 64u << 10;
constexpr uint32_t kCacheBlocks = 64;
constexpr uint64_t kCacheSize = uint64_t{kBlock} * (kCacheBlocks + 1);  // + the header
constexpr uint64_t kMetaSize = 8u << 20;
constexpr uint64_t kHotBlocks = kCacheBlocks / 2;
constexpr uint64_t kScanBlocks = 4 * kCacheBlocks;
constexpr uint64_t kScanFirst = 128;  // origin block where the scan starts
constexpr uint64_t kOriginSize = (kScanFirst + kScanBlocks) * kBlock;

class EngineScanTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_TRUE(rt_.ok());
    ASSERT_EQ(::ftruncate(origin_file_.fd(), kOriginSize), 0);
    ASSERT_EQ(::ftruncate(cache_file_.fd(), kCacheSize), 0);
    ASSERT_EQ(::ftruncate(meta_file_.fd(), kMetaSize), 0);
    {
      auto meta = metalog::FileBlockDevice::open(meta_file_.path(), false);
      auto cache = metalog::FileBlockDevice::open(cache_file_.path(), false);
      ASSERT_TRUE(meta.is_ok() && cache.is_ok());
      metalog::FormatOptions fo;
      fo.cache_block_size = kBlock;
      fo.segment_size = 256u << 10;
      auto sb = metalog::format_devices(*meta.value(), *cache.value(), fo);
      ASSERT_TRUE(sb.is_ok()) << sb.status().to_string();
      ASSERT_EQ(sb->cache_block_count, kCacheBlocks);
    }
    auto o = FileOrigin::open(origin_file_.path(), false);
    ASSERT_TRUE(o.is_ok()) << o.status().to_string();
    origin_ = std::move(o).value();
    AttachOptions ao;
    ao.meta_dev = meta_file_.path();
    ao.cache_dev = cache_file_.path();
    ao.engine.max_dirty_age = std::chrono::hours(1);
    auto c = AttachedCache::open(*origin_, ao);
    ASSERT_TRUE(c.is_ok()) << c.status().to_string();
    cache_ = std::move(c).value();
    // The hot set: every third block, spread over many hotspot regions.
    for (uint64_t i = 0; i < kHotBlocks; ++i) hot_.push_back(3 * i);
    ASSERT_LT(hot_.back(), kScanFirst);
  }

  void TearDown() override {
    if (cache_) {
      EXPECT_TRUE(cache_->close().is_ok());
    }
  }

  CacheEngine& engine() { return cache_->engine(); }

  void read_block(uint64_t block) {
    Status st = rt_.call<Status>([&](std::function<void(Status)> done) {
      engine().read(rt_.reactor(), block * kBlock, buf_.span(), done);
    });
    ASSERT_TRUE(st.is_ok()) << st.to_string();
  }

  // Reads one block; true when the engine counted it as a hit.
  bool read_counts_hit(uint64_t block) {
    const EngineStats before = engine().stats();
    read_block(block);
    const EngineStats after = engine().stats();
    EXPECT_EQ((after.read_hits - before.read_hits) + (after.read_misses - before.read_misses), 1u)
        << "a one-block read must count exactly once";
    return after.read_hits > before.read_hits;
  }

  // One pass over the hot set in random order; the fraction that hit.
  double hot_pass(std::mt19937& rng) {
    std::vector<uint64_t> order = hot_;
    std::shuffle(order.begin(), order.end(), rng);
    uint32_t hits = 0;
    for (uint64_t b : order) hits += read_counts_hit(b) ? 1 : 0;
    return static_cast<double>(hits) / static_cast<double>(order.size());
  }

  // Reads the hot set until a whole pass hits; returns the passes it took.
  int warm_hot_set(std::mt19937& rng) {
    for (int pass = 1; pass <= 12; ++pass) {
      if (hot_pass(rng) == 1.0) return pass;
    }
    return -1;
  }

  // Reads `scan` (origin blocks), one hot read after each scan read; the
  // fraction of those hot reads that hit.
  double scan_with_hot_reads(const std::vector<uint64_t>& scan, std::mt19937& rng) {
    std::uniform_int_distribution<size_t> pick(0, hot_.size() - 1);
    uint32_t hits = 0;
    for (uint64_t b : scan) {
      read_block(b);
      hits += read_counts_hit(hot_[pick(rng)]) ? 1 : 0;
    }
    return static_cast<double>(hits) / static_cast<double>(scan.size());
  }

  ReactorThread rt_;
  ScratchFile origin_file_, cache_file_, meta_file_;
  std::unique_ptr<FileOrigin> origin_;
  std::unique_ptr<AttachedCache> cache_;
  AlignedBuffer buf_{kBlock};
  std::vector<uint64_t> hot_;
};

TEST_F(EngineScanTest, HotSetKeepsHittingThroughASequentialScanFourTimesTheCache) {
  std::mt19937 rng(11);
  const int passes = warm_hot_set(rng);
  ASSERT_GT(passes, 1) << "the hot set must be promoted by repeated reads, not the first one";

  std::vector<uint64_t> scan(kScanBlocks);
  std::iota(scan.begin(), scan.end(), kScanFirst);
  const EngineStats before = engine().stats();
  const double during = scan_with_hot_reads(scan, rng);
  const EngineStats after = engine().stats();
  std::printf("hot set promoted after %d passes; hot hit ratio during the sequential scan %.3f, "
              "%llu bytes bypassed\n",
              passes, during,
              static_cast<unsigned long long>(after.bypassed_bytes - before.bypassed_bytes));
  EXPECT_GE(during, 0.90);
  EXPECT_GE(hot_pass(rng), 0.90);
  // The scan was recognised as one: past the cutoff (4 MiB, a quarter of
  // it) it bypassed the cache.
  EXPECT_GE(after.bypassed_bytes - before.bypassed_bytes, kScanBlocks / 2 * kBlock);
}

TEST_F(EngineScanTest, HotSetKeepsHittingThroughARandomOrderScanFourTimesTheCache) {
  std::mt19937 rng(13);
  const int passes = warm_hot_set(rng);
  ASSERT_GT(passes, 1) << "the hot set must be promoted by repeated reads, not the first one";

  // The same blocks in random order: no stream to detect, so nothing is
  // bypassed and the scan competes for the cache.
  std::vector<uint64_t> scan(kScanBlocks);
  std::iota(scan.begin(), scan.end(), kScanFirst);
  std::shuffle(scan.begin(), scan.end(), rng);
  const EngineStats before = engine().stats();
  const double during = scan_with_hot_reads(scan, rng);
  const EngineStats after = engine().stats();
  std::printf("hot set promoted after %d passes; hot hit ratio during the random scan %.3f, "
              "%llu scan promotions\n",
              passes, during,
              static_cast<unsigned long long>(after.promotions - before.promotions));
  EXPECT_EQ(after.bypassed_bytes, before.bypassed_bytes);
  // The scan did get in, enough to turn over much of the cache.
  EXPECT_GE(after.promotions - before.promotions, kCacheBlocks / 2);
  EXPECT_GE(during, 0.90);
  EXPECT_GE(hot_pass(rng), 0.90);
}

}  // namespace
}  // namespace rbdcache::cache
