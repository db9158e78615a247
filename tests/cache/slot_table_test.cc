// The slot table (cache/slot_table.h): the slot life cycle, what each
// section persists, health, and the invariant check itself.
#include "cache/slot_table.h"

#include <gtest/gtest.h>

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

  void reopen() {
    table_.reset();
    log_.reset();
    auto log = metalog::MetadataLog::open(*dev_);
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
