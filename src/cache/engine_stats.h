// The cache engine's statistics: the snapshot that status, metrics and the
// operator commands read (EngineStats), and the event counters the request
// paths and writeback bump as they go (EngineCounters).
//
// Threads: EngineCounters are atomics, bumped from any thread without a
// lock; a snapshot of them is not atomic as a whole, which is fine for
// counters. EngineStats is a plain value.
#pragma once

#include <atomic>
#include <cstdint>
#include <string>

namespace rbdcache::cache {

enum class Mode { kWriteback, kWritethrough, kPassthrough };

// ok: serving normally. degraded: some dirty sub-blocks are unreadable after
// cache device errors (reads of them fail). failed: the metadata device
// failed; the cache is read-only (docs/crash-consistency.md, "Fail mode").
enum class Health { kOk, kDegraded, kFailed };

const char* mode_name(Mode m);
const char* health_name(Health h);

struct EngineStats {
  Mode mode = Mode::kWriteback;
  Health health = Health::kOk;
  std::string health_reason;  // empty when ok
  uint64_t cache_bytes = 0;
  uint32_t block_size = 0;
  uint32_t blocks = 0;
  uint32_t mapped_blocks = 0;
  uint32_t dirty_blocks = 0;
  uint64_t used_bytes = 0;   // valid sub-blocks * 4 KiB
  uint64_t dirty_bytes = 0;  // dirty sub-blocks * 4 KiB
  uint64_t unknown_bytes = 0;  // dirty sub-blocks that cannot be read
  double oldest_dirty_age_s = 0;
  uint64_t read_hits = 0, read_misses = 0;
  uint64_t write_hits = 0, write_misses = 0;
  uint64_t promotions = 0, demotions = 0;
  uint64_t bytes_written_back = 0;
  uint64_t writeback_errors = 0;
  uint64_t cache_read_errors = 0;
  uint64_t cache_write_errors = 0;
  uint64_t bypassed_bytes = 0;
  uint64_t mapping_bytes = 0;
  double mapping_bytes_per_block = 0;
  uint32_t ready_slots = 0;
  // Writeback speed: over the last seconds, and over the seconds in which
  // writeback was running (what the origin sustains). 0 = not measured yet.
  double writeback_rate_bps = 0;
  double origin_write_bps = 0;
  // The operator's flush (begin_flush()), if one is running.
  bool flush_active = false;
  uint64_t flush_left_bytes = 0;    // dirty bytes left of those begin_flush() found
  uint64_t flush_max_rate_bps = 0;  // 0 = unlimited
};

struct EngineCounters {
  std::atomic<uint64_t> read_hits{0}, read_misses{0};
  std::atomic<uint64_t> write_hits{0}, write_misses{0};
  std::atomic<uint64_t> promotions{0};
  std::atomic<uint64_t> bytes_written_back{0};
  std::atomic<uint64_t> writeback_errors{0};
  std::atomic<uint64_t> cache_read_errors{0};
  std::atomic<uint64_t> cache_write_errors{0};
  std::atomic<uint64_t> bypassed_bytes{0};

  static void bump(std::atomic<uint64_t>& c, uint64_t n = 1) {
    c.fetch_add(n, std::memory_order_relaxed);
  }
  // Copies the counters into `s`.
  void fill(EngineStats& s) const;
};

}  // namespace rbdcache::cache
