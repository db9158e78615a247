// EngineContext: what the cache engine's parts (read path, write path,
// writeback, operator controls) share, and the request plumbing they all use.
//
// Lock order, for the whole engine (take them in this order, never the
// other way round):
//   1. block locks (locks): per origin block, held by a request for its whole
//      life and by writeback while it copies a block's dirty data out;
//   2. origin locks (origin_locks): per origin block, held while a block's
//      data is written to the origin: by writeback from its copy-out to its
//      origin flush, by requests that write cached or possibly-cached blocks
//      to the origin (writethrough, passthrough, bypass writes, trim,
//      write-zeroes, write-through after a cache error, invalidate), always
//      after the block lock;
//   3. the slot table's mutex (SlotTable::lock()): in-memory updates only;
//   4. the BlockLocks' internal mutexes.
// Block and origin locks are asynchronous: a waiter is resumed on its
// reactor, no thread ever blocks on them.
//
// OriginSync decides whether a FLUSH needs an origin flush: every origin
// write that completed before the FLUSH must be covered by an origin flush
// that started after it completed and has itself completed, whichever
// connection issued it.
//
// Threads: every member may be used from any thread, as noted.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>

#include "cache/block_locks.h"
#include "cache/cache_device.h"
#include "cache/commit_worker.h"
#include "cache/engine_stats.h"
#include "cache/request.h"
#include "cache/slot_table.h"
#include "io/reactor.h"
#include "origin/origin.h"

namespace rbdcache::cache {

struct EngineOptions {
  Mode mode = Mode::kWriteback;
  // Sequential streams longer than this bypass the cache.
  uint64_t sequential_cutoff = 4u << 20;
  // Writeback starts above the high watermark (fraction of the cache's
  // bytes that are dirty) and stops below the low one.
  double dirty_high_watermark = 0.10;
  double dirty_low_watermark = 0.05;
  // A block dirty for longer than this is written back whatever the level.
  std::chrono::milliseconds max_dirty_age{30'000};
  // Group-commit interval of the metadata log.
  std::chrono::milliseconds commit_interval{1'000};
  // Largest single origin write made by writeback (neighbours coalesce).
  uint32_t writeback_max_io = 4u << 20;
  // Check every slot's invariants after every change (tests).
  bool full_invariant_checks = false;
};

class OriginSync {
 public:
  // An origin write completed (call before the request is answered).
  void note_write() { written_.fetch_add(1, std::memory_order_acq_rel); }
  // `done` runs once every origin write completed before this call is
  // durable: at once if a completed origin flush already covers them, else
  // after an origin flush of its own. Reactor thread of `r`.
  void flush(Origin& origin, io::Reactor& r, StatusFn done);

 private:
  std::atomic<uint64_t> written_{0};  // origin writes completed
  std::atomic<uint64_t> durable_{0};  // of those, covered by a completed flush
};

struct EngineContext {
  EngineContext(Origin& o, CacheDevice& d, SlotTable& s, EngineOptions op)
      : origin(o), dev(d), slots(s), opts(op), mode(op.mode), bs(d.block_size()) {}

  Origin& origin;
  CacheDevice& dev;
  SlotTable& slots;
  const EngineOptions opts;
  std::atomic<Mode> mode;
  // Whether clean cached data may be served and reads may fill the cache.
  // False while a shared image's cache does not hold the image's lock (or
  // has not yet proven its clean blocks current): reads then take every
  // sub-block that is not dirty from the origin. Set by the control thread.
  std::atomic<bool> clean_hits{true};
  const uint32_t bs;  // cache block size
  BlockLocks locks;
  BlockLocks origin_locks;
  EngineCounters counters;
  OriginSync origin_sync;
  std::atomic<uint32_t> fg_in_flight{0};
  std::unique_ptr<CommitWorker> commits;
  std::unique_ptr<io::Reactor> bg;  // writeback, reclaim, operator controls

  // Asks the background reactor to make ready slots (reclaim).
  std::function<void()> want_slots;

  // --- Request plumbing (the request's reactor thread) ---
  std::shared_ptr<Request> begin(io::Reactor& r, uint64_t offset, uint64_t length,
                                 IoCallback done);
  // Runs `fn` once the request holds its block locks (and origin locks when
  // req->writes_origin).
  void with_locks(const std::shared_ptr<Request>& req, std::function<void()> fn);
  // Releases the request's locks; call before replying.
  void finish(const std::shared_ptr<Request>& req);
  // Runs fn(unlock) holding block `ob`'s origin lock: at once when the
  // request holds it already, else once it is granted; `unlock` must be
  // called once the origin I/O is done.
  void with_origin_lock(const Request& req, OriginBlock ob,
                        std::function<void(std::function<void()> unlock)> fn);
  // An origin write by a request: holds the block's origin lock around it
  // and counts it for OriginSync.
  void write_origin(const Request& req, OriginBlock ob, uint64_t offset,
                    std::span<const std::byte> data, WriteFlags flags, StatusFn done);
};

}  // namespace rbdcache::cache
