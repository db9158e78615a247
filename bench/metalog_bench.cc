// Metadata log benchmarks: append throughput, commit latency, recovery scan
// speed, and metadata bytes written per 4 KiB data write.
//
// File-backed cases use $RBDCACHE_BENCH_TMPFS (default /dev/shm) and
// $RBDCACHE_BENCH_DISK (default /var/tmp); a missing directory skips them.
#include <benchmark/benchmark.h>
#include <fcntl.h>
#include <unistd.h>

#include <cstdlib>
#include <memory>
#include <random>
#include <string>

#include "metalog/formatter.h"
#include "metalog/reader.h"
#include "metalog/writer.h"

namespace {

using namespace rbdcache;
using namespace rbdcache::metalog;

constexpr uint64_t kMetaSize = 64ull << 20;
constexpr uint64_t kCacheSize = 1ull << 30;  // sparse
constexpr uint32_t kCacheBlock = 64 * 1024;

enum Where { kMemory = 0, kTmpfs = 1, kDisk = 2 };

std::string dir_for(Where w) {
  const char* env = std::getenv(w == kTmpfs ? "RBDCACHE_BENCH_TMPFS" : "RBDCACHE_BENCH_DISK");
  return env ? env : (w == kTmpfs ? "/dev/shm" : "/var/tmp");
}

// A formatted metadata device and a sparse cache device, removed on exit.
struct Bench {
  std::unique_ptr<BlockDevice> meta;
  std::unique_ptr<BlockDevice> cache;
  std::string meta_path, cache_path;
  Superblock sb;

  ~Bench() {
    meta.reset();
    cache.reset();
    if (!meta_path.empty()) ::unlink(meta_path.c_str());
    if (!cache_path.empty()) ::unlink(cache_path.c_str());
  }

  bool setup(Where w, benchmark::State& state) {
    if (w == kMemory) {
      meta = std::make_unique<MemBlockDevice>(kMetaSize);
      cache = std::make_unique<MemBlockDevice>(64ull << 20);
    } else {
      std::string dir = dir_for(w);
      meta_path = dir + "/rbdcache-bench-meta." + std::to_string(::getpid());
      cache_path = dir + "/rbdcache-bench-cache." + std::to_string(::getpid());
      for (auto [path, size] : {std::pair{meta_path, kMetaSize}, std::pair{cache_path, kCacheSize}}) {
        int fd = ::open(path.c_str(), O_CREAT | O_RDWR | O_TRUNC, 0600);
        if (fd < 0 || ::ftruncate(fd, static_cast<off_t>(size)) != 0) {
          if (fd >= 0) ::close(fd);
          state.SkipWithError(("cannot create " + path).c_str());
          return false;
        }
        ::close(fd);
      }
      auto m = FileBlockDevice::open(meta_path, false);
      auto c = FileBlockDevice::open(cache_path, false);
      if (!m.is_ok() || !c.is_ok()) {
        state.SkipWithError("cannot open bench files");
        return false;
      }
      meta = std::move(*m);
      cache = std::move(*c);
    }
    FormatOptions opt;
    opt.cache_block_size = kCacheBlock;
    opt.force = true;
    auto r = format_devices(*meta, *cache, opt);
    if (!r.is_ok()) {
      state.SkipWithError(r.status().to_string().c_str());
      return false;
    }
    sb = *r;
    return true;
  }
};

Entry dirty_write(std::mt19937_64& rng, uint32_t blocks) {
  SubBlockMask m;
  m.set(static_cast<uint32_t>(rng() % (kCacheBlock / kSubBlockSize)));
  return Entry::map(CacheBlock(static_cast<uint32_t>(rng() % blocks)), OriginBlock(rng() % (1u << 30)), m, m);
}

// Entries per second, committed in groups of range(1) entries.
void BM_MetalogAppend(benchmark::State& state) {
  Bench b;
  if (!b.setup(static_cast<Where>(state.range(0)), state)) return;
  auto log = MetadataLog::open(*b.meta);
  if (!log.is_ok()) return state.SkipWithError(log.status().to_string().c_str());
  std::mt19937_64 rng(1);
  const int64_t per_commit = state.range(1);
  const uint32_t blocks = static_cast<uint32_t>(b.sb.cache_block_count);
  int64_t entries = 0;
  for (auto _ : state) {
    for (int64_t i = 0; i < per_commit; ++i) {
      if (!(*log)->append(dirty_write(rng, blocks)).is_ok()) return state.SkipWithError("append");
    }
    if (!(*log)->commit().is_ok()) return state.SkipWithError("commit");
    entries += per_commit;
  }
  state.counters["entries/s"] = benchmark::Counter(static_cast<double>(entries), benchmark::Counter::kIsRate);
}
BENCHMARK(BM_MetalogAppend)
    ->ArgNames({"dev", "per_commit"})
    ->Args({kMemory, 256})
    ->Args({kTmpfs, 256})
    ->Args({kDisk, 256})
    ->Args({kTmpfs, 4096})
    ->Args({kDisk, 4096})
    ->UseRealTime()
    ->Unit(benchmark::kMicrosecond);

// Latency of committing one entry: one 4 KiB write and one fdatasync.
void BM_MetalogCommitLatency(benchmark::State& state) {
  Bench b;
  if (!b.setup(static_cast<Where>(state.range(0)), state)) return;
  auto log = MetadataLog::open(*b.meta);
  if (!log.is_ok()) return state.SkipWithError(log.status().to_string().c_str());
  std::mt19937_64 rng(2);
  const uint32_t blocks = static_cast<uint32_t>(b.sb.cache_block_count);
  for (auto _ : state) {
    state.PauseTiming();
    if (!(*log)->append(dirty_write(rng, blocks)).is_ok()) return state.SkipWithError("append");
    state.ResumeTiming();
    if (!(*log)->commit().is_ok()) return state.SkipWithError("commit");
  }
}
BENCHMARK(BM_MetalogCommitLatency)->ArgName("dev")->Arg(kTmpfs)->Arg(kDisk)->UseRealTime()->Unit(benchmark::kMicrosecond);

// Recovery scan of a device whose log has been filled (and wrapped).
void BM_MetalogRecoveryScan(benchmark::State& state) {
  Bench b;
  if (!b.setup(static_cast<Where>(state.range(0)), state)) return;
  {
    auto log = MetadataLog::open(*b.meta);
    if (!log.is_ok()) return state.SkipWithError(log.status().to_string().c_str());
    std::mt19937_64 rng(3);
    const uint32_t blocks = static_cast<uint32_t>(b.sb.cache_block_count);
    for (int c = 0; c < 8000; ++c) {
      for (int i = 0; i < 200; ++i) {
        if (!(*log)->append(dirty_write(rng, blocks)).is_ok()) return state.SkipWithError("append");
      }
      if (!(*log)->commit().is_ok()) return state.SkipWithError("commit");
    }
  }
  uint64_t bytes = 0;
  for (auto _ : state) {
    auto rec = recover_log(*b.meta);
    if (!rec.is_ok()) return state.SkipWithError(rec.status().to_string().c_str());
    bytes += rec->bytes_scanned;
    benchmark::DoNotOptimize(rec->state.mappings().size());
  }
  state.SetBytesProcessed(static_cast<int64_t>(bytes));
}
BENCHMARK(BM_MetalogRecoveryScan)->ArgName("dev")->Arg(kMemory)->Arg(kTmpfs)->Arg(kDisk)->UseRealTime()->Unit(benchmark::kMillisecond);

// Metadata bytes written per 4 KiB data write when the log commits every
// range(0) writes: 32 and 128 stand for a FLUSH every 128 KiB or 512 KiB of
// writes, 10000 for the 1 s timer at 10k IOPS. Each write dirties one
// sub-block of a 64 KiB cache block (a kMap entry with valid == dirty).
void BM_MetalogBytesPer4KWrite(benchmark::State& state) {
  Bench b;
  if (!b.setup(kMemory, state)) return;
  auto log = MetadataLog::open(*b.meta);
  if (!log.is_ok()) return state.SkipWithError(log.status().to_string().c_str());
  std::mt19937_64 rng(4);
  const int64_t per_commit = state.range(0);
  const uint32_t blocks = static_cast<uint32_t>(b.sb.cache_block_count);
  uint64_t writes = 0;
  const uint64_t before = (*log)->stats().bytes_written;
  for (auto _ : state) {
    for (int64_t i = 0; i < per_commit; ++i) {
      if (!(*log)->append(dirty_write(rng, blocks)).is_ok()) return state.SkipWithError("append");
    }
    if (!(*log)->commit().is_ok()) return state.SkipWithError("commit");
    writes += static_cast<uint64_t>(per_commit);
  }
  double meta = static_cast<double>((*log)->stats().bytes_written - before);
  state.counters["meta_bytes_per_4k_write"] = meta / static_cast<double>(writes);
  state.counters["meta_percent"] = 100.0 * meta / (4096.0 * static_cast<double>(writes));
}
BENCHMARK(BM_MetalogBytesPer4KWrite)->ArgName("writes_per_commit")->Arg(32)->Arg(128)->Arg(1024)->Arg(10000);

}  // namespace

BENCHMARK_MAIN();
