// CacheEngine: the SSD cache between the NBD server and the origin.
//
// Glossary (see also cache/mapping.h and cache/slot_table.h):
//   origin block  - a cache-block-sized, aligned chunk of the origin.
//   slot          - a cache block on the cache device (CacheBlock).
//   sub-block     - 4 KiB inside a slot; each has a valid and a dirty bit.
//   writeback     - copying dirty sub-blocks to the origin, then marking
//                   them clean.
//
// The engine is an Origin, so the NBD server serves it unchanged. Its parts,
// one concept each:
//   SlotTable  (slot_table.h)  the state of every slot and its persistence;
//   ReadPath   (read_path.h)   READ, BLOCK_STATUS and cache fills;
//   WritePath  (write_path.h)  WRITE, TRIM, WRITE_ZEROES; the outcome of a
//                              write is write_outcome() (write_outcome.h);
//   Writeback  (writeback.h)   background writeback and the operator flush;
//   EngineStats (engine_stats.h) the statistics;
//   EngineContext (engine_context.h) what they share: the devices, the
//                              locks and their order, request plumbing.
// This class wires them together, loads the cache, answers FLUSH and shuts
// down.
//
// Threads: client requests run on the NBD reactors; writeback, reclaim and
// the operator controls on the engine's background reactor; metadata
// commits on the CommitWorker's thread.
//
// Durability (docs/crash-consistency.md):
//   - A metadata entry is appended only after the data it describes has been
//     written to the cache device; every commit first syncs the cache device.
//   - A slot is reused for another origin block only after its unmap is
//     committed (quarantine), so stale metadata can never point at new data.
//   - Writeback writes the origin and flushes it before blocks become clean.
//   - FLUSH covers every origin write completed before it, whichever
//     connection made it (OriginSync), then commits the metadata.
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "cache/cache_device.h"
#include "cache/engine_context.h"
#include "cache/engine_stats.h"
#include "cache/read_path.h"
#include "cache/slot_table.h"
#include "cache/write_path.h"
#include "cache/writeback.h"
#include "metalog/writer.h"
#include "origin/origin.h"
#include "origin/shared_image.h"

namespace rbdcache::cache {

// Parses "writeback", "writethrough" or "passthrough".
Result<Mode> parse_mode(const std::string& s);

// What invalidate() dropped.
struct InvalidateResult {
  uint32_t blocks = 0;            // blocks that lost data
  uint64_t clean_bytes = 0;       // clean data dropped
  uint64_t dirty_bytes = 0;       // dirty data discarded (lost)
  uint64_t dirty_kept_bytes = 0;  // dirty data in the range, kept
};

class CacheEngine final : public Origin {
 public:
  // Builds the engine over an opened metadata log and cache device, loading
  // the committed mapping. `origin`, `log` and `cache_dev` must outlive it.
  static Result<std::unique_ptr<CacheEngine>> create(Origin& origin, metalog::MetadataLog& log,
                                                     CacheDevice& cache_dev, EngineOptions opts);
  ~CacheEngine() override;

  // Stops writeback and waits until no writeback I/O is in flight, then
  // commits the metadata and closes the log cleanly. Dirty data stays dirty
  // (it is persistent). Call once, from a thread that is not a reactor,
  // after the server has drained.
  Status shutdown();

  // --- Origin ---
  uint64_t size() const override { return ctx_.origin.size(); }
  OriginCaps caps() const override;
  std::string describe() const override;
  void read(io::Reactor& r, uint64_t offset, std::span<std::byte> buf, IoCallback done) override;
  void write(io::Reactor& r, uint64_t offset, std::span<const std::byte> buf, WriteFlags flags,
             IoCallback done) override;
  void flush(io::Reactor& r, IoCallback done) override;
  void discard(io::Reactor& r, uint64_t offset, uint64_t length, WriteFlags flags,
               IoCallback done) override;
  void write_zeroes(io::Reactor& r, uint64_t offset, uint64_t length, WriteFlags flags,
                    IoCallback done) override;
  void block_status(io::Reactor& r, uint64_t offset, uint64_t length,
                    ExtentsCallback done) override;
  void prefetch(io::Reactor& r, uint64_t offset, uint64_t length, IoCallback done) override;

  // --- Control ---
  void set_mode(Mode m);
  Mode mode() const { return ctx_.mode.load(); }
  // See EngineContext::clean_hits. Requests already running keep the value
  // they started with.
  void set_clean_hits(bool on) { ctx_.clean_hits.store(on); }
  bool clean_hits() const { return ctx_.clean_hits.load(); }
  EngineStats stats() const;
  // Asks the background writer to write back every dirty block now.
  void request_full_writeback() { writeback_.request_full(); }

  // --- Operator controls (cache/engine_control.cc). Each blocks; call them
  // from a thread that is not a reactor. ---

  // Drops the cached data of every block that overlaps `extents` (every
  // block when nullopt): clean sub-blocks always, dirty ones only when
  // `discard_dirty` (that data is then lost for good). Takes each block's
  // block lock, and its origin lock too when discarding dirty data (so no
  // writeback of the old data is still in flight afterwards); clients may
  // keep running. Returns once the change is committed.
  [[nodiscard]] Result<InvalidateResult> invalidate(
      const std::optional<std::vector<ByteExtent>>& extents, bool discard_dirty);

  // Starts writing back every block that is dirty now, at most
  // `max_rate_bps` bytes per second (0: no limit). Client I/O goes on;
  // blocks dirtied later are not waited for. Progress: stats().flush_left_bytes.
  void begin_flush(uint64_t max_rate_bps) { writeback_.begin_flush(max_rate_bps); }
  // Ends the flush (done or abandoned) and lifts its rate limit.
  void end_flush() { writeback_.end_flush(); }
  // Flushes the origin and commits the metadata log: after ok, every write
  // acknowledged before the call that reached the origin is durable there.
  [[nodiscard]] Status sync_origin();

 private:
  CacheEngine(Origin& origin, metalog::MetadataLog& log, CacheDevice& dev, Mapping map,
              std::unique_ptr<Policy> policy, EngineOptions opts);

  // Background reactor: every 100 ms, writeback and slot reclaim.
  void bg_tick();
  void reclaim_slots();
  // Runs `fn` on the background reactor and waits for its result.
  Status run_on_bg(std::function<void(std::function<void(Status)>)> fn);

  metalog::MetadataLog& log_;
  mutable SlotTable slots_;  // stats() locks it
  EngineContext ctx_;
  ReadPath reads_;
  WritePath writes_;
  Writeback writeback_;
  std::thread bg_thread_;
  bool stopping_ = false;  // bg thread only
  bool shut_down_ = false;
};

}  // namespace rbdcache::cache
