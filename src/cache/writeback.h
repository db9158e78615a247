// Writeback: copies dirty sub-blocks to the origin and marks them clean,
// on the engine's background reactor.
//
// When: above the high dirty watermark (down to the low one), for blocks
// dirty longer than max_dirty_age, and everything on request (the
// operator's flush, request_full()). Blocks go in origin order from a
// cursor, in batches of up to 256 blocks; neighbouring blocks form one unit
// (one origin write of up to writeback_max_io). A unit:
//   1. takes its blocks' block locks and copies their dirty data out of the
//      cache device;
//   2. takes their origin locks and releases the block locks (cache hits
//      and writeback-mode writes to these blocks go on meanwhile);
//   3. writes the origin and flushes it; only then marks clean whatever did
//      not change since the copy-out (SlotTable::begin/end_writeback), and
//      releases the origin locks.
// A failed unit ends its batch and backs off (500 ms doubling to 30 s).
// Unknown sub-blocks (SlotTable) are never written back.
//
// stop() ends writeback for shutdown: no new unit starts, and its callback
// runs once no unit is in flight, so no origin I/O outlives the engine.
//
// Threads: tick(), stop() and everything private run on the background
// reactor's thread (bg-only state below). request_full(), begin_flush(),
// end_flush() and fill_stats() may be called from any thread.
#pragma once

#include <atomic>
#include <chrono>
#include <functional>
#include <memory>
#include <vector>

#include "cache/engine_context.h"

namespace rbdcache::cache {

class Writeback {
 public:
  explicit Writeback(EngineContext& ctx) : ctx_(ctx) {}

  // Starts a batch if one is due. Background thread.
  void tick();
  // No new units; `done` runs (on the background thread) once none is in
  // flight. Background thread.
  void stop(std::function<void()> done);

  // Writes back every dirty block now.
  void request_full();
  // The operator's flush: every block dirty now, at most `max_rate_bps`
  // (0: no limit).
  void begin_flush(uint64_t max_rate_bps);
  void end_flush();
  // Rates and the flush's limit.
  void fill_stats(EngineStats& s) const;

 private:
  using Clock = std::chrono::steady_clock;
  struct Unit {
    OriginBlock first, last;
  };
  struct Batch {
    std::vector<Unit> units;
    size_t next = 0;
    size_t active = 0;
    bool failed = false;
    bool everything = false;
    bool rate_wait = false;  // a timer will pump again (flush rate limit)
    bool over = false;
  };
  void run(bool everything);
  void pump(const std::shared_ptr<Batch>& b);
  void end_batch(const std::shared_ptr<Batch>& b);
  void write_back_unit(const Unit& unit, std::function<void(bool ok)> done);
  void sample_rates();
  std::chrono::nanoseconds rate_limit_delay(uint64_t next_bytes);

  EngineContext& ctx_;
  std::atomic<bool> full_{false};
  std::atomic<uint64_t> max_rate_{0};
  std::atomic<double> rate_bps_{0};    // smoothed writeback rate
  std::atomic<double> origin_bps_{0};  // rate while writeback ran

  // Background thread only.
  bool stopping_ = false;
  std::function<void()> stopped_;
  std::shared_ptr<Batch> batch_;  // the batch running, if any
  OriginBlock cursor_{0};
  Clock::time_point backoff_until_{};
  std::chrono::milliseconds backoff_{0};
  Clock::time_point rate_start_{};
  uint64_t rate_issued_bytes_ = 0;  // writeback bytes issued since rate_start_
  Clock::time_point sample_at_{};
  uint64_t sample_bytes_ = 0;
  bool sample_active_ = false;
};

}  // namespace rbdcache::cache
