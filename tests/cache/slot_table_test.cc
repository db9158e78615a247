// The slot table (cache/slot_table.h): the slot life cycle, what each
// section persists, health, and the invariant check itself.
#include "cache/slot_table.h"

#include <gtest/gtest.h>
#include <stdlib.h>

#include <filesystem>
#include <fstream>
#include <iterator>

#include "cache/engine_stats.h"
#include "cache/smq_policy.h"
#include "../metalog/fault_device.h"
#include "../metalog/test_util.h"

namespace rbdcache::cache {
namespace {

constexpr uint32_t kBlocks = 64;
constexpr uint32_t kBlockSize = 16 * 1024;  // 4 sub-blocks

class SlotTableTest : public ::testing::Test {
 protected:
  void SetUp() override {
    metalog::testing::Geometry g;
    g.cache_blocks = kBlocks;
    g.cache_block_size = kBlockSize;
    dev_ = std::make_unique<metalog::testing::FaultInjectionDevice>(metalog::testing::formatted_image(g));
    reopen();
  }

  void reopen(const metalog::LogOptions& opts = {}) {
    table_.reset();
    log_.reset();
    auto log = metalog::MetadataLog::open(*dev_, opts);
    ASSERT_TRUE(log.is_ok()) << log.status().to_string();
    log_ = std::move(log).value();
    auto map = Mapping::create(kBlocks, kBlockSize);
    ASSERT_TRUE(map.is_ok());
    SmqConfig pc;
    pc.nr_blocks = kBlocks;
    pc.block_size = kBlockSize;
    auto policy = SmqPolicy::create(pc);
    ASSERT_TRUE(policy.is_ok());
    table_ = std::make_unique<SlotTable>(std::move(map).value(), std::move(policy).value(), *log_);
    table_->set_checks(SlotTable::Checks::kFull);
    ASSERT_TRUE(table_->load(1000).is_ok());
  }

  EngineStats stats() {
    EngineStats s;
    table_->lock().fill_stats(s);
    return s;
  }

  std::unique_ptr<metalog::testing::FaultInjectionDevice> dev_;
  std::unique_ptr<metalog::MetadataLog> log_;
  std::unique_ptr<SlotTable> table_;
};

TEST_F(SlotTableTest, AFreshCacheHasEverySlotReady) {
  auto t = table_->lock();
  EXPECT_EQ(t.ready_count(), kBlocks);
  EXPECT_EQ(t.quarantined_count(), 0u);
}

TEST_F(SlotTableTest, ADirtySlotIsPersistedAndReloaded) {
  {
    auto t = table_->lock();
    auto cb = t.take_ready();
    ASSERT_TRUE(cb.has_value());
    t.insert(OriginBlock(7), *cb);
    t.mark_dirty(*cb, SubBlockRange{1, 2});
  }
  ASSERT_TRUE(log_->commit().is_ok());
  reopen();
  auto t = table_->lock();
  auto cb = t.lookup(OriginBlock(7));
  ASSERT_TRUE(cb.has_value());
  EXPECT_EQ(t.map().dirty_mask(*cb), SubBlockMask::of({1, 2}));
  EXPECT_EQ(t.ready_count(), kBlocks - 1);
}

TEST_F(SlotTableTest, AnEvictedSlotIsReadyOnlyAfterItsUnmapIsCommitted) {
  CacheBlock cb(0);
  {
    auto t = table_->lock();
    cb = *t.take_ready();
    t.insert(OriginBlock(3), cb);
    t.mark_valid(cb, SubBlockMask::of({0, 4}));
  }
  uint64_t gen;
  {
    auto t = table_->lock();
    t.drop(cb, SubBlockMask::of({0, 4}));  // nothing valid left: evicted
    EXPECT_FALSE(t.lookup(OriginBlock(3)).has_value());
    EXPECT_EQ(t.quarantined_count(), 1u);
    EXPECT_EQ(t.ready_count(), kBlocks - 1);
    gen = t.unmap_generation();
  }
  ASSERT_TRUE(log_->commit().is_ok());
  table_->lock().release_quarantine(gen);
  auto t = table_->lock();
  EXPECT_EQ(t.quarantined_count(), 0u);
  EXPECT_EQ(t.ready_count(), kBlocks);
}

TEST_F(SlotTableTest, AGivenBackSlotWritesNoMetadata) {
  {
    auto t = table_->lock();
    auto cb = t.take_ready();
    t.give_back(*cb);
  }
  EXPECT_EQ(log_->stats().entries_committed, 0u);
  ASSERT_TRUE(log_->commit().is_ok());
  EXPECT_EQ(log_->stats().entries_committed, 0u);
}

TEST_F(SlotTableTest, UnknownSubBlocksAreDirtyAndClearedByARewrite) {
  CacheBlock cb(0);
  {
    auto t = table_->lock();
    cb = *t.take_ready();
    t.insert(OriginBlock(1), cb);
    t.mark_dirty(cb, SubBlockRange{0, 2});
    t.mark_valid(cb, SubBlockMask::of({2, 2}));
    t.mark_unknown(cb, SubBlockMask::of({0, 4}));  // only the dirty ones count
    EXPECT_EQ(t.unknown_mask(cb), SubBlockMask::of({0, 2}));
  }
  EXPECT_EQ(stats().health, Health::kDegraded);
  EXPECT_EQ(stats().unknown_bytes, 2 * kSubBlockSize);
  {
    auto t = table_->lock();
    t.mark_dirty(cb, SubBlockRange{0, 2});
    EXPECT_TRUE(t.unknown_mask(cb).none());
  }
  EXPECT_EQ(stats().health, Health::kOk);
}

TEST_F(SlotTableTest, AWritebackDoesNotCleanASlotRewrittenMeanwhile) {
  CacheBlock cb(0);
  {
    auto t = table_->lock();
    cb = *t.take_ready();
    t.insert(OriginBlock(9), cb);
    t.mark_dirty(cb, SubBlockRange{0, 1});
    t.begin_writeback(cb);
    t.mark_dirty(cb, SubBlockRange{0, 1});  // a client rewrote it
  }
  auto t = table_->lock();
  const bool changed = t.end_writeback(cb);
  EXPECT_TRUE(changed);
  t.mark_written_back(cb, OriginBlock(9), SubBlockRange{0, 1}, changed);
  EXPECT_TRUE(t.map().is_dirty(cb));
}

TEST_F(SlotTableTest, TheOperatorFlushTracksOnlyBlocksDirtyWhenItBegan) {
  CacheBlock a(0), b(0);
  {
    auto t = table_->lock();
    a = *t.take_ready();
    t.insert(OriginBlock(1), a);
    t.mark_dirty(a, SubBlockRange{0, 4});
    t.begin_flush();
    b = *t.take_ready();
    t.insert(OriginBlock(2), b);
    t.mark_dirty(b, SubBlockRange{0, 4});
  }
  EXPECT_EQ(stats().flush_left_bytes, 4 * kSubBlockSize);
  {
    auto t = table_->lock();
    t.begin_writeback(a);
    t.mark_written_back(a, OriginBlock(1), SubBlockRange{0, 4}, t.end_writeback(a));
  }
  EXPECT_EQ(stats().flush_left_bytes, 0u);
  EXPECT_EQ(stats().dirty_bytes, 4 * kSubBlockSize);
}

TEST_F(SlotTableTest, AFailedMetadataDeviceFailsTheTableAndStopsNewSlots) {
  {
    auto t = table_->lock();
    auto cb = t.take_ready();
    t.insert(OriginBlock(1), *cb);
    t.mark_dirty(*cb, SubBlockRange{0, 1});
  }
  dev_->lose_power_after(0);
  EXPECT_FALSE(log_->commit().is_ok());
  {
    auto t = table_->lock();
    auto cb = t.lookup(OriginBlock(1));
    t.mark_dirty(*cb, SubBlockRange{1, 1});  // its entry cannot be appended
  }
  auto t = table_->lock();
  EXPECT_TRUE(t.failed());
  EXPECT_FALSE(t.take_ready().has_value());  // no new slots: read-only
  EngineStats s;
  t.fill_stats(s);
  EXPECT_EQ(s.health, Health::kFailed);
  EXPECT_NE(s.health_reason.find("metadata device failed"), std::string::npos);
}

// Whether clean cached data survives a restart (docs/crash-consistency.md):
// origin block 7 holds clean sub-blocks 0-1 and dirty sub-block 2, origin
// block 8 only clean data.
class SlotTableRestartTest : public SlotTableTest {
 protected:
  void SetUp() override {
    char tmpl[] = "/dev/shm/rbdcache-slot-table-test-XXXXXX";
    ASSERT_NE(::mkdtemp(tmpl), nullptr);
    ring_dir_ = tmpl;
    SlotTableTest::SetUp();
    {
      auto t = table_->lock();
      auto a = t.take_ready();
      auto b = t.take_ready();
      ASSERT_TRUE(a && b);
      t.insert(OriginBlock(7), *a);
      t.mark_valid(*a, SubBlockMask::of(SubBlockRange{0, 2}));
      t.mark_dirty(*a, SubBlockRange{2, 1});
      t.insert(OriginBlock(8), *b);
      t.mark_valid(*b, SubBlockMask::of(SubBlockRange{0, 4}));
    }
    ASSERT_TRUE(log_->commit().is_ok());
  }
  void TearDown() override {
    table_.reset();
    log_.reset();
    std::filesystem::remove_all(ring_dir_);
  }
  metalog::LogOptions with_ring() const {
    metalog::LogOptions o;
    o.ring = metalog::LogOptions::Ring::kOn;
    o.ring_options.dir = ring_dir_;
    return o;
  }
  void expect_everything_kept() {
    auto t = table_->lock();
    auto a = t.lookup(OriginBlock(7));
    auto b = t.lookup(OriginBlock(8));
    ASSERT_TRUE(a && b);
    EXPECT_EQ(t.map().valid_mask(*a), SubBlockMask::of(SubBlockRange{0, 3}));
    EXPECT_EQ(t.map().dirty_mask(*a), SubBlockMask::of(SubBlockRange{2, 1}));
    EXPECT_EQ(t.map().valid_mask(*b), SubBlockMask::of(SubBlockRange{0, 4}));
    EXPECT_EQ(t.ready_count(), kBlocks - 2);
  }
  std::string ring_dir_;
};

TEST_F(SlotTableRestartTest, CleanDataIsKeptAfterACleanClose) {
  ASSERT_TRUE(log_->close().is_ok());
  reopen();
  EXPECT_TRUE(log_->last_shutdown_clean());
  expect_everything_kept();
  // The mark is gone once the log is open again: a power cut now is unclean.
  reopen();
  EXPECT_FALSE(log_->last_shutdown_clean());
}

TEST_F(SlotTableRestartTest, CleanDataIsKeptAfterAProcessCrashThatLeftItsRing) {
  ASSERT_TRUE(log_->close().is_ok());
  reopen(with_ring());
  const std::string ring = log_->ring_path();
  ASSERT_FALSE(ring.empty());
  // The process is killed with nothing pending: its ring file stays behind
  // (the destructor of a log that is not killed deletes an empty ring).
  std::string image;
  {
    std::ifstream in(ring, std::ios::binary);
    image.assign(std::istreambuf_iterator<char>(in), {});
  }
  table_.reset();
  log_.reset();
  {
    std::ofstream out(ring, std::ios::binary);
    out << image;
  }
  reopen(with_ring());
  EXPECT_FALSE(log_->last_shutdown_clean());
  EXPECT_TRUE(log_->ring_found_at_open());
  expect_everything_kept();
}

TEST_F(SlotTableRestartTest, CleanDataIsDroppedAfterAPowerCut) {
  // The log is gone without close() and without a ring (it died with the
  // machine); a new, empty ring does not count.
  reopen(with_ring());
  EXPECT_FALSE(log_->clean_data_trusted());
  uint64_t gen = 0;
  {
    auto t = table_->lock();
    auto a = t.lookup(OriginBlock(7));
    ASSERT_TRUE(a.has_value());
    EXPECT_EQ(t.map().valid_mask(*a), SubBlockMask::of(SubBlockRange{2, 1}));
    EXPECT_EQ(t.map().dirty_mask(*a), SubBlockMask::of(SubBlockRange{2, 1}));
    EXPECT_FALSE(t.lookup(OriginBlock(8)).has_value());
    // The emptied slot is ready only once its unmap is committed.
    EXPECT_EQ(t.quarantined_count(), 1u);
    EXPECT_EQ(t.ready_count(), kBlocks - 2);
    gen = t.unmap_generation();
  }
  ASSERT_TRUE(log_->commit().is_ok());
  table_->lock().release_quarantine(gen);
  EXPECT_EQ(table_->lock().ready_count(), kBlocks - 1);
  // The drop is in the committed metadata.
  ASSERT_TRUE(log_->close().is_ok());
  reopen();
  auto t = table_->lock();
  auto a = t.lookup(OriginBlock(7));
  ASSERT_TRUE(a.has_value());
  EXPECT_EQ(t.map().valid_mask(*a), SubBlockMask::of(SubBlockRange{2, 1}));
  EXPECT_FALSE(t.lookup(OriginBlock(8)).has_value());
}

using SlotTableDeathTest = SlotTableTest;

TEST_F(SlotTableDeathTest, TheInvariantCheckCatchesADoubleGiveBack) {
  EXPECT_DEATH(
      {
        auto t = table_->lock();
        auto cb = t.take_ready();
        t.give_back(*cb);
        t.give_back(*cb);
      },
      "given back but not reserved");
}

}  // namespace
}  // namespace rbdcache::cache
