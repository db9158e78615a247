// Micro-benchmarks of the cache's in-RAM structures: mapping lookup (hit and
// miss) and insert, policy on_access (hit and miss). Every benchmark reports
// items/s and the bytes of RAM per cache block (mapping + policy).
#include <benchmark/benchmark.h>

#include <cstdint>
#include <memory>
#include <random>
#include <vector>

#include "cache/mapping.h"
#include "cache/smq_policy.h"

namespace rbdcache::cache {
namespace {

constexpr uint32_t kBlockSize = 64u << 10;

Mapping make_mapping(uint32_t n) { return std::move(Mapping::create(n, kBlockSize)).value(); }

std::unique_ptr<SmqPolicy> make_policy(uint32_t n) {
  SmqConfig c;
  c.nr_blocks = n;
  c.block_size = kBlockSize;
  return std::move(SmqPolicy::create(c)).value();
}

// Random, distinct origin blocks spread over a 1 TiB-ish origin.
std::vector<uint64_t> origins(uint32_t n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<uint64_t> v(n);
  for (uint32_t i = 0; i < n; ++i) v[i] = (rng() % (uint64_t{1} << 24)) * 4 + (i & 3);
  return v;
}

// A full mapping: slot i holds keys[i] (duplicates skipped).
Mapping filled(uint32_t n, const std::vector<uint64_t>& keys) {
  Mapping m = make_mapping(n);
  for (uint64_t k : keys) {
    if (m.lookup(OriginBlock(k))) continue;
    auto cb = m.allocate_free();
    if (!cb) break;
    if (!m.insert(OriginBlock(k), *cb).is_ok()) break;
  }
  return m;
}

void report_memory(benchmark::State& state, const Mapping& m, const SmqPolicy* p) {
  const double bytes = static_cast<double>(m.memory_bytes() + (p ? p->memory_bytes() : 0));
  state.counters["bytes_per_block"] = bytes / m.nr_blocks();
  state.SetItemsProcessed(static_cast<int64_t>(state.iterations()));
}

void BM_MappingLookupHit(benchmark::State& state) {
  const uint32_t n = static_cast<uint32_t>(state.range(0));
  const std::vector<uint64_t> keys = origins(n, 1);
  const Mapping m = filled(n, keys);
  size_t i = 0;
  for (auto _ : state) {
    benchmark::DoNotOptimize(m.lookup(OriginBlock(keys[i])));
    if (++i == keys.size()) i = 0;
  }
  report_memory(state, m, nullptr);
}
BENCHMARK(BM_MappingLookupHit)->Arg(1 << 14)->Arg(1 << 20);

void BM_MappingLookupMiss(benchmark::State& state) {
  const uint32_t n = static_cast<uint32_t>(state.range(0));
  const Mapping m = filled(n, origins(n, 1));
  const std::vector<uint64_t> absent = origins(n, 2);
  size_t i = 0;
  for (auto _ : state) {
    // Offset past the filled key space: never present.
    benchmark::DoNotOptimize(m.lookup(OriginBlock(absent[i] + (uint64_t{1} << 30))));
    if (++i == absent.size()) i = 0;
  }
  report_memory(state, m, nullptr);
}
BENCHMARK(BM_MappingLookupMiss)->Arg(1 << 14)->Arg(1 << 20);

// Steady state of a full cache: each iteration removes a random block and
// inserts a new one into the freed slot (remove + allocate_free + insert).
void BM_MappingInsert(benchmark::State& state) {
  const uint32_t n = static_cast<uint32_t>(state.range(0));
  const std::vector<uint64_t> keys = origins(n, 1);
  Mapping m = filled(n, keys);
  std::mt19937 rng(4);
  uint64_t next_key = uint64_t{1} << 40;  // above every key in `keys`
  for (auto _ : state) {
    const CacheBlock victim(rng() % m.nr_blocks());
    if (m.is_mapped(victim)) m.remove(victim);
    auto cb = m.allocate_free();
    if (!cb || !m.insert(OriginBlock(next_key), *cb).is_ok()) {
      state.SkipWithError("insert failed");
      break;
    }
    next_key += 5;
  }
  report_memory(state, m, nullptr);
}
BENCHMARK(BM_MappingInsert)->Arg(1 << 14)->Arg(1 << 20);

void BM_PolicyAccessHit(benchmark::State& state) {
  const uint32_t n = static_cast<uint32_t>(state.range(0));
  const Mapping m = make_mapping(n);
  auto p = make_policy(n);
  for (uint32_t b = 0; b < n; ++b) p->on_insert(CacheBlock(b));
  std::mt19937 rng(5);
  std::vector<uint32_t> order(1 << 16);
  for (uint32_t& o : order) o = rng() % n;
  size_t i = 0;
  for (auto _ : state) {
    const uint32_t b = order[i];
    const uint64_t ob = uint64_t{b} * 4;
    benchmark::DoNotOptimize(
        p->on_access(Access{OriginBlock(ob), ob * kBlockSize, 4096, false, CacheBlock(b)}));
    if (++i == order.size()) i = 0;
  }
  report_memory(state, m, p.get());
}
BENCHMARK(BM_PolicyAccessHit)->Arg(1 << 14)->Arg(1 << 20);

// Misses on a full cache: hotspot counting, the promote decision, and (for
// kPromote) choosing a victim and replacing it, as the engine would.
void BM_PolicyAccessMiss(benchmark::State& state) {
  const uint32_t n = static_cast<uint32_t>(state.range(0));
  const Mapping m = make_mapping(n);
  auto p = make_policy(n);
  for (uint32_t b = 0; b < n; ++b) p->on_insert(CacheBlock(b));
  std::mt19937_64 rng(6);
  std::vector<uint64_t> order(1 << 16);
  // 4x the cache in distinct regions: a mix of first and repeated touches.
  for (uint64_t& o : order) o = (rng() % (4 * uint64_t{n})) * 4;
  size_t i = 0;
  uint64_t promoted = 0;
  for (auto _ : state) {
    const uint64_t ob = order[i];
    const Decision d =
        p->on_access(Access{OriginBlock(ob), ob * kBlockSize, 4096, false, std::nullopt});
    if (d == Decision::kPromote) {
      if (auto v = p->choose_victim()) {
        p->on_remove(*v);
        p->on_insert(*v);
        ++promoted;
      }
    }
    if (++i == order.size()) i = 0;
  }
  report_memory(state, m, p.get());
  state.counters["promote_ratio"] =
      static_cast<double>(promoted) / static_cast<double>(state.iterations());
}
BENCHMARK(BM_PolicyAccessMiss)->Arg(1 << 14)->Arg(1 << 20);

}  // namespace
}  // namespace rbdcache::cache

BENCHMARK_MAIN();
