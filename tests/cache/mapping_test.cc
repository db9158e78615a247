// Tests for the cache mapping (cache/mapping.h): slots, lookup, sub-block
// bookkeeping, dirty iteration and memory per block.
#include "cache/mapping.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <random>
#include <set>
#include <unordered_map>
#include <vector>

namespace rbdcache::cache {
namespace {

Mapping make(uint32_t nr_blocks, uint32_t block_size = kDefaultBlockSize) {
  Result<Mapping> m = Mapping::create(nr_blocks, block_size);
  EXPECT_TRUE(m.is_ok()) << m.status().to_string();
  return std::move(m).value();
}

// Reserves a slot and maps `ob` into it.
CacheBlock map_one(Mapping& m, uint64_t ob) {
  std::optional<CacheBlock> cb = m.allocate_free();
  EXPECT_TRUE(cb.has_value());
  EXPECT_TRUE(m.insert(OriginBlock(ob), *cb).is_ok());
  return *cb;
}

TEST(SubBlockRanges, TouchedAndCoveredRangesOfUnalignedRequests) {
  EXPECT_EQ(touched_sub_blocks(0, 4096), (SubBlockRange{0, 1}));
  EXPECT_EQ(covered_sub_blocks(0, 4096), (SubBlockRange{0, 1}));
  // 512 bytes into sub-block 1, ending 512 bytes into sub-block 3.
  EXPECT_EQ(touched_sub_blocks(4096 + 512, 2 * 4096), (SubBlockRange{1, 3}));
  EXPECT_EQ(covered_sub_blocks(4096 + 512, 2 * 4096), (SubBlockRange{2, 1}));
  // Inside one sub-block: touches it, covers nothing.
  EXPECT_EQ(touched_sub_blocks(100, 200), (SubBlockRange{0, 1}));
  EXPECT_EQ(covered_sub_blocks(100, 200).count, 0u);
  EXPECT_EQ(touched_sub_blocks(0, 64 << 10), (SubBlockRange{0, 16}));
}

TEST(SubBlockMask, RunsAreVisitedInOrder) {
  SubBlockMask m;
  m.set(SubBlockRange{1, 2});
  m.set(SubBlockRange{60, 10});  // crosses a word boundary
  m.set(255);
  std::vector<SubBlockRange> runs;
  m.for_each_run([&](SubBlockRange r) { runs.push_back(r); });
  ASSERT_EQ(runs.size(), 3u);
  EXPECT_EQ(runs[0], (SubBlockRange{1, 2}));
  EXPECT_EQ(runs[1], (SubBlockRange{60, 10}));
  EXPECT_EQ(runs[2], (SubBlockRange{255, 1}));
  EXPECT_EQ(m.count(), 13u);
  EXPECT_EQ(SubBlockMask::of(SubBlockRange{0, 256}).count(), 256u);
}

// Runs that end, start or span word boundaries, and the extremes, against
// a bit-by-bit reading of the mask.
TEST(SubBlockMask, RunsMatchTheBitsForEveryShape) {
  std::vector<SubBlockMask> masks(1);                                // empty
  masks.push_back(SubBlockMask::first(kMaxSubBlocks));               // full
  masks.push_back(SubBlockMask::of(SubBlockRange{63, 2}));           // across a boundary
  masks.push_back(SubBlockMask::of(SubBlockRange{64, 64}));          // exactly one word
  masks.push_back(SubBlockMask::of(SubBlockRange{0, 64}) | SubBlockMask::of(SubBlockRange{65, 191}));
  std::mt19937 rng(7);
  for (int n = 0; n < 200; ++n) {
    SubBlockMask m;
    for (uint32_t i = 0; i < kMaxSubBlocks; ++i) {
      if (rng() % 3 == 0) m.set(i);
    }
    masks.push_back(m);
  }
  for (const SubBlockMask& m : masks) {
    std::vector<SubBlockRange> want;
    for (uint32_t i = 0; i < kMaxSubBlocks; ++i) {
      if (!m.test(i)) continue;
      if (!want.empty() && want.back().end() == i) {
        ++want.back().count;
      } else {
        want.push_back(SubBlockRange{i, 1});
      }
    }
    std::vector<SubBlockRange> got;
    m.for_each_run([&](SubBlockRange r) { got.push_back(r); });
    ASSERT_EQ(got, want);
  }
}

TEST(Mapping, RejectsBadGeometry) {
  EXPECT_FALSE(Mapping::create(0, 64 << 10).is_ok());
  EXPECT_FALSE(Mapping::create(16, 2048).is_ok());
  EXPECT_FALSE(Mapping::create(16, 3 << 12).is_ok());
  EXPECT_FALSE(Mapping::create(16, 2u << 20).is_ok());
  EXPECT_TRUE(Mapping::create(16, 4096).is_ok());
  EXPECT_TRUE(Mapping::create(16, 1u << 20).is_ok());
}

TEST(Mapping, InsertLookupRemoveRoundTrip) {
  Mapping m = make(8);
  const CacheBlock a = map_one(m, 1000);
  const CacheBlock b = map_one(m, 7);
  EXPECT_NE(a, b);
  EXPECT_EQ(m.lookup(OriginBlock(1000)), a);
  EXPECT_EQ(m.lookup(OriginBlock(7)), b);
  EXPECT_FALSE(m.lookup(OriginBlock(8)).has_value());
  EXPECT_EQ(m.origin_of(a), OriginBlock(1000));
  EXPECT_EQ(m.mapped_count(), 2u);

  m.remove(a);
  EXPECT_FALSE(m.lookup(OriginBlock(1000)).has_value());
  EXPECT_FALSE(m.origin_of(a).has_value());
  EXPECT_TRUE(m.is_free(a));
  EXPECT_EQ(m.lookup(OriginBlock(7)), b);
  EXPECT_EQ(m.mapped_count(), 1u);
  EXPECT_EQ(m.free_count(), 7u);
}

TEST(Mapping, InsertRejectsDuplicatesAndBadInput) {
  Mapping m = make(4);
  const CacheBlock a = map_one(m, 5);
  std::optional<CacheBlock> b = m.allocate_free();
  ASSERT_TRUE(b.has_value());
  EXPECT_EQ(m.insert(OriginBlock(5), *b).err(), EINVAL);   // origin already mapped
  EXPECT_EQ(m.insert(OriginBlock(6), a).err(), EINVAL);    // slot already mapped
  EXPECT_EQ(m.insert(OriginBlock(6), CacheBlock(4)).err(), EINVAL);  // out of range
  EXPECT_EQ(m.insert(OriginBlock(uint64_t{1} << 63), *b).err(), EINVAL);
  EXPECT_TRUE(m.insert(OriginBlock(6), *b).is_ok());
}

TEST(Mapping, FreeSlotAllocationRunsOutAndRecovers) {
  Mapping m = make(5);
  std::set<uint32_t> got;
  for (int i = 0; i < 5; ++i) {
    std::optional<CacheBlock> cb = m.allocate_free();
    ASSERT_TRUE(cb.has_value());
    got.insert(cb->value());
  }
  EXPECT_EQ(got, (std::set<uint32_t>{0, 1, 2, 3, 4}));
  EXPECT_FALSE(m.allocate_free().has_value());
  EXPECT_EQ(m.free_count(), 0u);
  // A reserved slot given back (an abandoned promotion) can be taken again.
  m.remove(CacheBlock(3));
  EXPECT_EQ(m.free_count(), 1u);
  EXPECT_EQ(m.allocate_free(), CacheBlock(3));
  EXPECT_FALSE(m.allocate_free().has_value());
}

TEST(Mapping, RecoveryInsertsIntoNamedFreeSlots) {
  // Recovery maps the slots the metadata names, out of order, straight from
  // the free list; allocation must then hand out exactly the others.
  Mapping m = make(6);
  ASSERT_TRUE(m.insert(OriginBlock(40), CacheBlock(4)).is_ok());
  ASSERT_TRUE(m.insert(OriginBlock(10), CacheBlock(1)).is_ok());
  ASSERT_TRUE(m.insert(OriginBlock(0), CacheBlock(0)).is_ok());
  ASSERT_TRUE(m.insert(OriginBlock(50), CacheBlock(5)).is_ok());
  EXPECT_EQ(m.free_count(), 2u);
  std::set<uint32_t> rest;
  while (auto cb = m.allocate_free()) rest.insert(cb->value());
  EXPECT_EQ(rest, (std::set<uint32_t>{2, 3}));
  EXPECT_EQ(m.lookup(OriginBlock(40)), CacheBlock(4));
}

TEST(Mapping, ManyInsertsAndRemovesMatchAReferenceMap) {
  // Exercises hash chains under churn against std::unordered_map.
  constexpr uint32_t kSlots = 4096;
  Mapping m = make(kSlots);
  std::unordered_map<uint64_t, uint32_t> ref;
  std::mt19937_64 rng(42);
  std::vector<uint64_t> keys;
  for (int step = 0; step < 50000; ++step) {
    if (keys.size() < kSlots && (keys.empty() || rng() % 3 != 0)) {
      uint64_t ob = rng() % (1u << 20);
      if (ref.count(ob)) continue;
      const CacheBlock cb = map_one(m, ob);
      ref[ob] = cb.value();
      keys.push_back(ob);
    } else {
      const size_t i = rng() % keys.size();
      const uint64_t ob = keys[i];
      m.remove(CacheBlock(ref[ob]));
      ref.erase(ob);
      keys[i] = keys.back();
      keys.pop_back();
    }
  }
  ASSERT_EQ(m.mapped_count(), ref.size());
  for (const auto& [ob, cb] : ref) ASSERT_EQ(m.lookup(OriginBlock(ob)), CacheBlock(cb));
  for (int i = 0; i < 1000; ++i) {
    const uint64_t ob = (1u << 20) + rng() % 1000;
    EXPECT_FALSE(m.lookup(OriginBlock(ob)).has_value());
  }
}

TEST(Mapping, PartialRangesTrackValidAndDirtyPerSubBlock) {
  Mapping m = make(4);  // 64 KiB: 16 sub-blocks
  const CacheBlock cb = map_one(m, 3);
  EXPECT_TRUE(m.valid_mask(cb).none());

  m.mark_valid(cb, SubBlockRange{2, 3});  // 2,3,4
  m.mark_dirty(cb, SubBlockRange{4, 2});  // 4,5 (5 becomes valid too)
  EXPECT_EQ(m.valid_mask(cb), SubBlockMask::of(SubBlockRange{2, 4}));
  EXPECT_EQ(m.dirty_mask(cb), SubBlockMask::of(SubBlockRange{4, 2}));
  EXPECT_TRUE(m.is_fully_valid(cb, SubBlockRange{2, 4}));
  EXPECT_FALSE(m.is_fully_valid(cb, SubBlockRange{1, 2}));
  EXPECT_TRUE(m.any_valid(cb, SubBlockRange{0, 3}));
  EXPECT_FALSE(m.any_valid(cb, SubBlockRange{6, 10}));
  EXPECT_EQ(m.valid_mask(cb, SubBlockRange{0, 3}), SubBlockMask::of(SubBlockRange{2, 1}));
  EXPECT_TRUE(m.is_dirty(cb));
  EXPECT_FALSE(m.any_dirty(cb, SubBlockRange{0, 4}));
  EXPECT_EQ(m.dirty_sub_block_count(), 2u);
  EXPECT_EQ(m.valid_sub_block_count(), 4u);
  EXPECT_EQ(m.dirty_block_count(), 1u);

  m.mark_clean(cb, SubBlockRange{4, 1});
  EXPECT_EQ(m.dirty_mask(cb), SubBlockMask::of(SubBlockRange{5, 1}));
  EXPECT_TRUE(m.is_fully_valid(cb, SubBlockRange{4, 1}));  // clean stays valid

  m.invalidate(cb, SubBlockRange{5, 1});
  EXPECT_FALSE(m.is_dirty(cb));
  EXPECT_EQ(m.dirty_block_count(), 0u);
  EXPECT_EQ(m.valid_mask(cb), SubBlockMask::of(SubBlockRange{2, 3}));

  // remove() settles the counters of whatever the block still held.
  m.mark_dirty(cb, SubBlockRange{0, 16});
  EXPECT_EQ(m.dirty_sub_block_count(), 16u);
  m.remove(cb);
  EXPECT_EQ(m.dirty_sub_block_count(), 0u);
  EXPECT_EQ(m.valid_sub_block_count(), 0u);
  EXPECT_EQ(m.dirty_block_count(), 0u);
}

TEST(Mapping, ReinsertedSlotStartsWithNothingValid) {
  Mapping m = make(1);
  CacheBlock cb = map_one(m, 1);
  m.mark_dirty(cb, SubBlockRange{0, 16});
  m.remove(cb);
  cb = map_one(m, 2);
  EXPECT_TRUE(m.valid_mask(cb).none());
  EXPECT_FALSE(m.is_dirty(cb));
}

// Every block size from 4 KiB to 1 MiB: random mark operations checked
// against plain bitsets, including overflow records for > 64 KiB blocks.
class MappingBlockSize : public ::testing::TestWithParam<uint32_t> {};

TEST_P(MappingBlockSize, SubBlockStateMatchesAReferenceModel) {
  const uint32_t bs = GetParam();
  const uint32_t subs = bs / kSubBlockSize;
  constexpr uint32_t kSlots = 32;
  Mapping m = make(kSlots, bs);
  ASSERT_EQ(m.sub_blocks_per_block(), subs);
  std::vector<CacheBlock> cbs;
  for (uint32_t i = 0; i < kSlots; ++i) cbs.push_back(map_one(m, i * 3));
  std::vector<SubBlockMask> valid(kSlots), dirty(kSlots);

  std::mt19937 rng(bs);
  for (int step = 0; step < 20000; ++step) {
    const uint32_t i = rng() % kSlots;
    // Whole-block ranges often, so the compact "all" states get used.
    SubBlockRange r{0, subs};
    if (rng() % 4 != 0) {
      r.first = rng() % subs;
      r.count = 1 + rng() % (subs - r.first);
    }
    const SubBlockMask rm = SubBlockMask::of(r);
    switch (rng() % 4) {
      case 0:
        m.mark_valid(cbs[i], r);
        valid[i] = valid[i] | rm;
        break;
      case 1:
        m.mark_dirty(cbs[i], r);
        valid[i] = valid[i] | rm;
        dirty[i] = dirty[i] | rm;
        break;
      case 2:
        m.mark_clean(cbs[i], r);
        dirty[i] = dirty[i].without(rm);
        break;
      case 3:
        m.invalidate(cbs[i], r);
        valid[i] = valid[i].without(rm);
        dirty[i] = dirty[i].without(rm);
        break;
    }
    ASSERT_EQ(m.valid_mask(cbs[i]), valid[i]) << "step " << step;
    ASSERT_EQ(m.dirty_mask(cbs[i]), dirty[i]) << "step " << step;
  }
  uint64_t dsubs = 0, vsubs = 0;
  uint32_t dblocks = 0, partial = 0;
  const SubBlockMask full = SubBlockMask::of(SubBlockRange{0, subs});
  for (uint32_t i = 0; i < kSlots; ++i) {
    dsubs += dirty[i].count();
    vsubs += valid[i].count();
    dblocks += dirty[i].any() ? 1 : 0;
    const bool common = valid[i].none() || (valid[i] == full && (dirty[i].none() || dirty[i] == full));
    partial += common ? 0 : 1;
    EXPECT_EQ(m.is_dirty(cbs[i]), dirty[i].any());
  }
  EXPECT_EQ(m.dirty_sub_block_count(), dsubs);
  EXPECT_EQ(m.valid_sub_block_count(), vsubs);
  EXPECT_EQ(m.dirty_block_count(), dblocks);
  EXPECT_EQ(m.overflow_records_in_use(), subs > kInlineSubBlocks ? partial : 0u);

  // Everything back to a common state returns every overflow record.
  for (uint32_t i = 0; i < kSlots; ++i) m.mark_valid(cbs[i], m.whole_block());
  for (uint32_t i = 0; i < kSlots; ++i) m.mark_clean(cbs[i], m.whole_block());
  EXPECT_EQ(m.overflow_records_in_use(), 0u);
  EXPECT_EQ(m.dirty_block_count(), 0u);
  EXPECT_EQ(m.valid_sub_block_count(), uint64_t{kSlots} * subs);
}

INSTANTIATE_TEST_SUITE_P(AllBlockSizes, MappingBlockSize,
                         ::testing::Values(4u << 10, 8u << 10, 16u << 10, 32u << 10, 64u << 10,
                                           128u << 10, 256u << 10, 512u << 10, 1u << 20),
                         [](const ::testing::TestParamInfo<uint32_t>& p) {
                           return std::to_string(p.param >> 10) + "KiB";
                         });

TEST(Mapping, DirtyBlocksComeOutInOriginOrder) {
  Mapping m = make(64);
  std::mt19937 rng(7);
  std::vector<uint64_t> dirty_origins;
  for (uint32_t i = 0; i < 64; ++i) {
    const uint64_t ob = rng() % 100000;
    if (m.lookup(OriginBlock(ob))) continue;
    const CacheBlock cb = map_one(m, ob);
    if (i % 3 == 0) {
      m.mark_dirty(cb, SubBlockRange{i % 16, 1});
      dirty_origins.push_back(ob);
    } else {
      m.mark_valid(cb, m.whole_block());
    }
  }
  std::sort(dirty_origins.begin(), dirty_origins.end());

  std::vector<DirtyBlock> all = m.dirty_in_origin_order();
  ASSERT_EQ(all.size(), dirty_origins.size());
  for (size_t i = 0; i < all.size(); ++i) {
    EXPECT_EQ(all[i].origin, OriginBlock(dirty_origins[i]));
    EXPECT_EQ(m.lookup(all[i].origin), all[i].slot);
  }

  // Batches from a cursor: the lowest `limit` at or after `from`.
  const OriginBlock from(dirty_origins[dirty_origins.size() / 2]);
  std::vector<DirtyBlock> batch = m.dirty_in_origin_order(from, 3);
  ASSERT_EQ(batch.size(), 3u);
  for (size_t i = 0; i < 3; ++i) {
    EXPECT_EQ(batch[i].origin, OriginBlock(dirty_origins[dirty_origins.size() / 2 + i]));
  }
  EXPECT_TRUE(m.dirty_in_origin_order(OriginBlock(dirty_origins.back() + 1)).empty());
}

TEST(Mapping, CostsAbout18BytesPerBlockAt64KiB) {
  // The mapping alone; mapping + policy is checked in smq_policy_test.cc.
  for (uint32_t n : {1000u, 4096u, 65537u, 1u << 20}) {
    Mapping m = make(n, 64 << 10);
    // 18.125 per block plus the fixed-size object itself.
    EXPECT_LE(m.bytes_per_block(), 18.125 + 512.0 / n) << n << " blocks";
    EXPECT_GE(m.bytes_per_block(), 18.0) << n << " blocks";
  }
}

TEST(Mapping, OverflowRecordsAreCountedInMemory) {
  Mapping m = make(1024, 1u << 20);  // 256 sub-blocks
  const size_t before = m.memory_bytes();
  std::vector<CacheBlock> cbs;
  for (uint32_t i = 0; i < 1024; ++i) {
    cbs.push_back(map_one(m, i));
    m.mark_dirty(cbs.back(), SubBlockRange{i % 256, 1});  // partial: needs a record
  }
  EXPECT_EQ(m.overflow_records_in_use(), 1024u);
  // 64 bytes of bitmaps per partial block, at least.
  EXPECT_GE(m.memory_bytes() - before, 1024u * 64);
  EXPECT_LE(m.bytes_per_block(), 2 * Mapping::worst_case_bytes_per_block(1u << 20));
  EXPECT_DOUBLE_EQ(Mapping::worst_case_bytes_per_block(64u << 10), 18.125);
  EXPECT_DOUBLE_EQ(Mapping::worst_case_bytes_per_block(1u << 20), 82.125);
}

}  // namespace
}  // namespace rbdcache::cache
