// Tests for the smq-style policy (cache/smq_policy.h), alone and driven
// together with a Mapping through CacheSim.
#include "cache/smq_policy.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <numeric>
#include <random>
#include <set>
#include <vector>

#include "cache/mapping.h"
#include "cache_sim.h"

namespace rbdcache::cache {
namespace {

using testing::CacheSim;

constexpr uint32_t kBlock = 64u << 10;

SmqConfig config(uint32_t nr_blocks) {
  SmqConfig c;
  c.nr_blocks = nr_blocks;
  c.block_size = kBlock;
  return c;
}

std::unique_ptr<SmqPolicy> make(const SmqConfig& c) {
  Result<std::unique_ptr<SmqPolicy>> p = SmqPolicy::create(c);
  EXPECT_TRUE(p.is_ok()) << p.status().to_string();
  return std::move(p).value();
}

Access miss(uint64_t block, bool is_write = false) {
  return Access{OriginBlock(block), block * kBlock, kBlock, is_write, std::nullopt};
}

Access hit(uint64_t block, CacheBlock cb) {
  return Access{OriginBlock(block), block * kBlock, kBlock, false, cb};
}

// `n` distinct origin blocks spread over a large space, in distinct hotspot
// regions, in a fixed random order.
std::vector<uint64_t> scattered_blocks(uint32_t n, uint64_t base, uint32_t seed) {
  std::mt19937_64 rng(seed);
  std::set<uint64_t> seen;
  std::vector<uint64_t> out;
  while (out.size() < n) {
    const uint64_t region = rng() % (64ull * n);
    if (seen.insert(region).second) out.push_back(base + region * 4);
  }
  return out;
}

// Hit ratio of one pass over `blocks` in random order.
double pass_hit_ratio(CacheSim& sim, std::vector<uint64_t> blocks, std::mt19937& rng) {
  std::shuffle(blocks.begin(), blocks.end(), rng);
  uint32_t hits = 0;
  for (uint64_t b : blocks) hits += sim.access(b) ? 1 : 0;
  return static_cast<double>(hits) / static_cast<double>(blocks.size());
}

uint32_t count_cached(CacheSim& sim, const std::vector<uint64_t>& blocks) {
  return static_cast<uint32_t>(
      std::count_if(blocks.begin(), blocks.end(), [&](uint64_t b) { return sim.cached(b); }));
}

// ---- Promotion --------------------------------------------------------------------

TEST(SmqPolicy, SingleTouchIsNotPromoted) {
  auto p = make(config(1024));
  const std::vector<uint64_t> blocks = scattered_blocks(5000, 0, 1);
  for (uint64_t b : blocks) {
    ASSERT_EQ(p->on_access(miss(b)), Decision::kPassThrough) << "block " << b;
  }
  EXPECT_EQ(p->stats().promote_decisions, 0u);
  // The counters did see them: an immediate second touch, an epoch later,
  // promotes a block still in the table.
  auto q = make(config(1024));
  ASSERT_EQ(q->on_access(miss(12)), Decision::kPassThrough);
  for (uint32_t i = 0; i < q->config().hotspot_epoch_accesses; ++i) {
    ASSERT_EQ(q->on_access(miss(1000000 + 4 * i)), Decision::kPassThrough);
  }
  EXPECT_EQ(q->on_access(miss(12)), Decision::kPromote);
}

TEST(SmqPolicy, BurstOnOneBlockCountsAsOneTouch) {
  // Sixteen 4 KiB reads of one block in a row (not sequential: same bytes)
  // are one touch of its region, not sixteen.
  auto p = make(config(1024));
  for (int i = 0; i < 16; ++i) {
    Access a{OriginBlock(77), 77ull * kBlock, 4096, false, std::nullopt};
    EXPECT_EQ(p->on_access(a), Decision::kPassThrough);
  }
  EXPECT_EQ(p->hotspot_count(OriginBlock(77)), 1u);
}

TEST(SmqPolicy, HotSetIsPromotedAfterRepeatedAccess) {
  constexpr uint32_t kN = 1024;
  CacheSim sim(config(kN));
  const std::vector<uint64_t> hot = scattered_blocks(kN / 2, 0, 2);
  std::mt19937 rng(3);
  // Round 1: all misses, nothing promoted.
  EXPECT_EQ(pass_hit_ratio(sim, hot, rng), 0.0);
  EXPECT_EQ(count_cached(sim, hot), 0u);
  // Round 2: the second touch promotes. The hotspot table holds N/2
  // regions, exactly the hot set, so a few first touches were forgotten.
  pass_hit_ratio(sim, hot, rng);
  EXPECT_GE(count_cached(sim, hot), hot.size() * 85 / 100);
  // Those few get in over the next rounds.
  pass_hit_ratio(sim, hot, rng);
  pass_hit_ratio(sim, hot, rng);
  EXPECT_EQ(count_cached(sim, hot), hot.size());
  // Then every access hits, and hits lift the blocks above level 0.
  EXPECT_EQ(pass_hit_ratio(sim, hot, rng), 1.0);
  for (uint64_t b : hot) {
    EXPECT_GE(*sim.policy().level_of(*sim.mapping().lookup(OriginBlock(b))), 1u);
  }
}

TEST(SmqPolicy, PromotesIntoFreeSlotsOnFirstTouchWhenConfigured) {
  SmqConfig c = config(4);
  c.promote_into_free_slots = true;
  CacheSim sim(c);
  for (uint64_t b : {100, 200, 300, 400}) sim.access(b);
  EXPECT_EQ(sim.mapping().mapped_count(), 4u);
  // Full now: back to needing repeated access.
  sim.access(500);
  EXPECT_FALSE(sim.cached(500));
}

// ---- Scan resistance ------------------------------------------------------------

TEST(SmqPolicy, SequentialScanDoesNotEvictHotSet) {
  constexpr uint32_t kN = 1024;
  CacheSim sim(config(kN));
  const std::vector<uint64_t> hot = scattered_blocks(kN / 2, 0, 4);
  std::mt19937 rng(5);
  for (int round = 0; round < 4; ++round) pass_hit_ratio(sim, hot, rng);
  ASSERT_EQ(count_cached(sim, hot), hot.size());

  // A scan of 4N distinct blocks, in order, one hot access between scan
  // accesses.
  const uint64_t scan_base = uint64_t{1} << 32;
  uint32_t hot_hits = 0;
  uint32_t hot_accesses = 0;
  std::uniform_int_distribution<size_t> pick(0, hot.size() - 1);
  for (uint64_t i = 0; i < 4 * kN; ++i) {
    EXPECT_FALSE(sim.access(scan_base + i));
    hot_hits += sim.access(hot[pick(rng)]) ? 1 : 0;
    ++hot_accesses;
  }
  const double during = static_cast<double>(hot_hits) / hot_accesses;
  EXPECT_GE(during, 0.90);
  EXPECT_GE(pass_hit_ratio(sim, hot, rng), 0.90);
  // The scan was recognised: past the cutoff its misses were bypassed.
  const PolicyStats s = sim.policy().stats();
  const uint64_t cutoff_blocks = sim.policy().config().sequential_cutoff_bytes / kBlock;
  EXPECT_EQ(s.sequential_misses, 4 * kN - cutoff_blocks + 1);
  EXPECT_EQ(s.sequential_bypassed_bytes, s.sequential_misses * kBlock);
}

TEST(SmqPolicy, RandomOrderScanDoesNotEvictHotSet) {
  // A one-pass scan the stream detector cannot see (random order), dense
  // enough that hotspot regions do get promoted: the scan blocks must evict
  // each other at level 0, not the hot set.
  constexpr uint32_t kN = 1024;
  CacheSim sim(config(kN));
  const std::vector<uint64_t> hot = scattered_blocks(kN / 2, 0, 6);
  std::mt19937 rng(7);
  for (int round = 0; round < 4; ++round) pass_hit_ratio(sim, hot, rng);

  std::vector<uint64_t> scan(4 * kN);
  std::iota(scan.begin(), scan.end(), uint64_t{1} << 32);
  std::shuffle(scan.begin(), scan.end(), rng);
  uint32_t hot_hits = 0;
  std::uniform_int_distribution<size_t> pick(0, hot.size() - 1);
  for (uint64_t b : scan) {
    sim.access(b);
    hot_hits += sim.access(hot[pick(rng)]) ? 1 : 0;
  }
  EXPECT_GT(sim.policy().stats().promotions, hot.size() + 100);  // the scan did get in
  EXPECT_GE(static_cast<double>(hot_hits) / scan.size(), 0.90);
  EXPECT_GE(pass_hit_ratio(sim, hot, rng), 0.90);
}

TEST(SmqPolicy, StaleHotSetIsReplacedByANewOne) {
  // Hot set A (3N/4) then hot set B (3N/4, disjoint): B cannot fit beside
  // A, so A must age out for B to be served from the cache.
  constexpr uint32_t kN = 512;
  CacheSim sim(config(kN));
  const std::vector<uint64_t> a = scattered_blocks(3 * kN / 4, 0, 8);
  const std::vector<uint64_t> b = scattered_blocks(3 * kN / 4, uint64_t{1} << 40, 9);
  std::mt19937 rng(10);
  for (int round = 0; round < 30; ++round) pass_hit_ratio(sim, a, rng);
  ASSERT_EQ(count_cached(sim, a), a.size());
  double ratio = 0;
  for (int round = 0; round < 60; ++round) ratio = pass_hit_ratio(sim, b, rng);
  EXPECT_GE(ratio, 0.90);
  EXPECT_LE(count_cached(sim, a), kN / 4);
}

// ---- Sequential detection -------------------------------------------------------

TEST(SmqPolicy, SequentialStreamAboveCutoffBypasses) {
  SmqConfig c = config(1024);
  c.sequential_cutoff_bytes = 1u << 20;  // 16 blocks
  c.read_promote_hits = 1;               // so that non-sequential misses promote
  auto p = make(c);
  // The first 1 MiB is not yet a stream; from the 16th block on, it is.
  for (uint64_t i = 0; i < 15; ++i) EXPECT_EQ(p->on_access(miss(1000 + i)), Decision::kPromote);
  for (uint64_t i = 15; i < 100; ++i) {
    EXPECT_EQ(p->on_access(miss(1000 + i)), Decision::kPassThrough) << i;
  }
  EXPECT_EQ(p->stats().sequential_bypassed_bytes, 85ull * kBlock);
  // A random miss still promotes.
  EXPECT_EQ(p->on_access(miss(5)), Decision::kPromote);
}

TEST(SmqPolicy, SequentialStreamSurvivesInterleavedRandomRequests) {
  SmqConfig c = config(1024);
  c.sequential_cutoff_bytes = 1u << 20;
  auto p = make(c);
  std::mt19937_64 rng(11);
  for (uint64_t i = 0; i < 200; ++i) {
    // Several random requests between two of the stream's.
    for (int j = 0; j < 20; ++j) (void)p->on_access(miss((1ull << 30) + rng() % (1u << 20) * 8));
    // The stream itself, in 4 KiB requests.
    for (uint32_t k = 0; k < 16; ++k) {
      const Access a{OriginBlock(i), i * kBlock + k * 4096, 4096, false, std::nullopt};
      (void)p->on_access(a);
    }
  }
  // Everything past the first 1 MiB (256 requests) was bypassed.
  EXPECT_EQ(p->stats().sequential_misses, 200u * 16 - 255);
}

TEST(SmqPolicy, SequentialCutoffIsConfigurableAndZeroDisablesIt) {
  SmqConfig c = config(1024);
  c.sequential_cutoff_bytes = 0;
  auto p = make(c);
  for (uint64_t i = 0; i < 1000; ++i) (void)p->on_access(miss(i));
  EXPECT_EQ(p->stats().sequential_misses, 0u);

  c.sequential_cutoff_bytes = 8u << 20;  // 128 blocks
  auto q = make(c);
  for (uint64_t i = 0; i < 1000; ++i) (void)q->on_access(miss(i));
  EXPECT_EQ(q->stats().sequential_misses, 1000u - 127);
}

TEST(SmqPolicy, SequentialHitsDoNotRaiseBlocks) {
  SmqConfig c = config(64);
  c.sequential_cutoff_bytes = 4 * kBlock;
  auto p = make(c);
  for (uint32_t i = 0; i < 64; ++i) p->on_insert(CacheBlock(i));
  for (uint32_t i = 0; i < 64; ++i) {
    EXPECT_EQ(p->on_access(hit(i, CacheBlock(i))), Decision::kHit);
  }
  // Blocks 0..2 were hit before the stream passed the cutoff.
  for (uint32_t i = 0; i < 3; ++i) EXPECT_EQ(p->level_of(CacheBlock(i)), 1u) << i;
  for (uint32_t i = 3; i < 64; ++i) EXPECT_EQ(p->level_of(CacheBlock(i)), 0u) << i;
}

// ---- Eviction and writeback -----------------------------------------------------

TEST(SmqPolicy, NeverChoosesDirtyVictim) {
  constexpr uint32_t kN = 256;
  SmqConfig c = config(kN);
  auto p = make(c);
  std::mt19937 rng(12);
  std::vector<bool> dirty(kN);
  for (uint32_t i = 0; i < kN; ++i) {
    p->on_insert(CacheBlock(i));
    if (rng() % 2) {
      p->set_dirty(CacheBlock(i), true);
      dirty[i] = true;
    }
  }
  // Churn: hits, dirty flips, victims demoted and refilled.
  for (int step = 0; step < 20000; ++step) {
    const uint32_t i = rng() % kN;
    switch (rng() % 4) {
      case 0:
        (void)p->on_access(hit(i, CacheBlock(i)));
        break;
      case 1:
        dirty[i] = !dirty[i];
        p->set_dirty(CacheBlock(i), dirty[i]);
        break;
      default: {
        std::optional<CacheBlock> v = p->choose_victim();
        if (!v) break;
        ASSERT_FALSE(dirty[v->value()]) << "dirty victim " << v->value();
        p->on_remove(*v);
        p->on_insert(*v);  // refilled with another block, clean
        break;
      }
    }
  }
  // All dirty: no victim at all, and misses are not promoted.
  for (uint32_t i = 0; i < kN; ++i) p->set_dirty(CacheBlock(i), true);
  EXPECT_FALSE(p->choose_victim().has_value());
  SmqConfig eager = c;
  eager.read_promote_hits = 1;
  auto q = make(eager);
  for (uint32_t i = 0; i < kN; ++i) {
    q->on_insert(CacheBlock(i));
    q->set_dirty(CacheBlock(i), true);
  }
  EXPECT_EQ(q->on_access(miss(999999)), Decision::kPassThrough);
  q->set_dirty(CacheBlock(17), false);
  EXPECT_EQ(q->on_access(miss(999999 + 64)), Decision::kPromote);
  EXPECT_EQ(q->choose_victim(), CacheBlock(17));
}

TEST(SmqPolicy, VictimIsTheColdestCleanBlockAndIsOfferedOnce) {
  auto p = make(config(8));
  for (uint32_t i = 0; i < 8; ++i) p->on_insert(CacheBlock(i));
  // Blocks 0..3 get hit (level 1); 4..7 stay at level 0, oldest first.
  for (uint32_t i = 0; i < 4; ++i) p->on_hit(CacheBlock(i));
  EXPECT_EQ(p->choose_victim(), CacheBlock(4));
  EXPECT_EQ(p->choose_victim(), CacheBlock(5));  // 4 is out of the running
  p->restore(CacheBlock(4));                     // could not demote 4 after all
  EXPECT_EQ(p->choose_victim(), CacheBlock(6));
  EXPECT_EQ(p->choose_victim(), CacheBlock(7));
  EXPECT_EQ(p->choose_victim(), CacheBlock(4));  // restored: newest of level 0
  EXPECT_EQ(p->choose_victim(), CacheBlock(0));  // then level 1
  for (uint32_t i : {5u, 6u, 7u, 4u, 0u}) p->on_remove(CacheBlock(i));
  EXPECT_EQ(p->resident(), 3u);
  EXPECT_EQ(p->stats().demotions, 5u);
}

TEST(SmqPolicy, UnusedBlocksSinkOneLevelPerSweep) {
  SmqConfig c = config(16);
  c.aging_period_accesses = 16;  // one block aged per access
  auto p = make(c);
  p->on_insert(CacheBlock(0));
  p->on_insert(CacheBlock(1));
  // Raise both to level 3: one hit per sweep, three sweeps.
  for (int sweep = 0; sweep < 3; ++sweep) {
    p->on_hit(CacheBlock(0));
    p->on_hit(CacheBlock(1));
    for (int i = 0; i < 16; ++i) (void)p->on_access(miss(1000 + 4 * i));
  }
  EXPECT_EQ(p->level_of(CacheBlock(0)), 3u);
  // Keep using block 0 only; block 1 sinks.
  for (int sweep = 0; sweep < 2; ++sweep) {
    p->on_hit(CacheBlock(0));
    for (int i = 0; i < 16; ++i) (void)p->on_access(miss(2000 + 4 * i));
  }
  EXPECT_EQ(p->level_of(CacheBlock(0)), 5u);
  EXPECT_EQ(p->level_of(CacheBlock(1)), 1u);
}

// ---- Parts ------------------------------------------------------------------------

TEST(HotspotTable, CountsOncePerEpochAndForgetsOutsideTheWindow) {
  HotspotTable t(64, /*epoch_accesses=*/10, /*window_epochs=*/3);
  EXPECT_EQ(t.touch(5), 1u);
  EXPECT_EQ(t.touch(5), 1u);  // same epoch
  for (int i = 0; i < 10; ++i) t.tick();
  EXPECT_EQ(t.touch(5), 2u);
  EXPECT_EQ(t.count(5), 2u);
  for (int i = 0; i < 40; ++i) t.tick();  // 4 epochs: past the window
  EXPECT_EQ(t.count(5), 0u);
  EXPECT_EQ(t.touch(5), 1u);  // starts over
  EXPECT_EQ(t.count(6), 0u);
}

TEST(HotspotTable, FullSetsKeepTheirHottestRegions) {
  HotspotTable t(8, /*epoch_accesses=*/1, /*window_epochs=*/127);  // one set of 8
  for (uint64_t r = 0; r < 4; ++r) {
    t.touch(r);
    t.tick();
    t.touch(r);
    t.tick();
  }
  for (uint64_t r = 100; r < 200; ++r) {  // a flood of single touches
    t.touch(r);
    t.tick();
  }
  for (uint64_t r = 0; r < 4; ++r) EXPECT_EQ(t.count(r), 2u) << r;
}

TEST(StreamDetector, ReorderedRequestsContinueAStream) {
  StreamDetector d(/*cutoff_bytes=*/64 << 10, /*slack_bytes=*/256 << 10);
  // 4 KiB requests, pairs swapped in flight; 128 KiB in all.
  bool seq = false;
  for (uint64_t i = 0; i < 32; i += 2) {
    seq = d.observe((i + 1) * 4096, 4096);
    seq = d.observe(i * 4096, 4096) || seq;
  }
  EXPECT_TRUE(seq);
}

TEST(StreamDetector, RereadingTheSameBytesIsNotAStream) {
  StreamDetector d(/*cutoff_bytes=*/64 << 10, /*slack_bytes=*/256 << 10);
  for (int i = 0; i < 1000; ++i) EXPECT_FALSE(d.observe(1 << 20, 4096));
}

// ---- Configuration and memory -----------------------------------------------------

TEST(SmqPolicy, RejectsBadConfig) {
  SmqConfig c = config(0);
  EXPECT_FALSE(SmqPolicy::create(c).is_ok());
  c = config(16);
  c.block_size = 3000;
  EXPECT_FALSE(SmqPolicy::create(c).is_ok());
  c = config(16);
  c.read_promote_hits = 0;
  EXPECT_FALSE(SmqPolicy::create(c).is_ok());
  c = config(16);
  c.aging_period_accesses = 8;
  EXPECT_FALSE(SmqPolicy::create(c).is_ok());
  c = config(16);
  c.hotspot_window_epochs = 200;
  EXPECT_FALSE(SmqPolicy::create(c).is_ok());
  EXPECT_TRUE(SmqPolicy::create(config(16)).is_ok());
}

TEST(SmqPolicy, MappingPlusPolicyStayUnder32BytesPerBlockAt64KiB) {
  for (uint32_t n : {4096u, 100000u, 1u << 20}) {
    Result<Mapping> m = Mapping::create(n, 64u << 10);
    ASSERT_TRUE(m.is_ok());
    auto p = make(config(n));
    const double per_block =
        static_cast<double>(m->memory_bytes() + p->memory_bytes()) / static_cast<double>(n);
    EXPECT_LE(per_block, 32.0) << n << " blocks";
    EXPECT_LE(static_cast<double>(p->memory_bytes()) / n, 11.5) << n << " blocks";
  }
}

}  // namespace
}  // namespace rbdcache::cache
