// CacheEngine: the SSD cache between the NBD server and the origin.
//
// Glossary (see also cache/mapping.h and cache/policy.h):
//   origin block  - a cache-block-sized, aligned chunk of the origin.
//   slot          - a cache block on the cache device (CacheBlock).
//   sub-block     - 4 KiB inside a slot; each has a valid and a dirty bit.
//   ready slot    - a reserved, empty slot whose previous contents are
//                   durably unmapped, so new data may be written into it.
//   quarantine    - slots unmapped in memory whose unmap entry is not yet
//                   committed; they become ready after the next commit.
//   writeback     - copying dirty sub-blocks to the origin, then marking
//                   them clean.
//
// The engine is an Origin, so the NBD server serves it unchanged.
//
// Concurrency:
//   - Every request locks the origin blocks it touches (BlockLocks) for its
//     whole life, I/O included. So operations on one block are ordered, and a
//     write never races a promotion of its block.
//   - Writeback holds a block's lock only while it copies the dirty data out
//     of the cache; it then holds the block's origin lock across the origin
//     write and flush. Requests that write cached blocks to the origin
//     (writethrough, passthrough, trim, write-zeroes) take the origin lock
//     too, after the block lock, so they never race a writeback. A block
//     written or dropped while its writeback is in flight stays dirty.
//   - mu_ guards the mapping, the policy and the engine's bookkeeping. It is
//     held only for in-memory updates, never across I/O or a callback.
//   - Client requests run on the NBD reactors. Writeback and slot reclaim run
//     on the engine's own background reactor thread. Metadata commits run on
//     the CommitWorker's thread.
//
// Durability (docs/crash-consistency.md):
//   - A metadata entry is appended only after the data it describes has been
//     written to the cache device.
//   - Every commit first syncs the cache device, then writes the log.
//   - A slot is reused for another origin block only after its unmap is
//     committed (ready slots), so stale metadata can never point at new data.
//   - Writeback writes the origin and flushes it before the blocks are
//     marked clean.
#pragma once

#include <atomic>
#include <chrono>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <unordered_map>
#include <unordered_set>
#include <optional>
#include <vector>

#include "cache/block_locks.h"
#include "cache/cache_device.h"
#include "cache/commit_worker.h"
#include "cache/mapping.h"
#include "cache/policy.h"
#include "io/reactor.h"
#include "metalog/writer.h"
#include "origin/origin.h"
#include "origin/shared_image.h"
#include "util/aligned_buffer.h"

namespace rbdcache::cache {

enum class Mode { kWriteback, kWritethrough, kPassthrough };

const char* mode_name(Mode m);
// Parses "writeback", "writethrough" or "passthrough".
Result<Mode> parse_mode(const std::string& s);

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
};

struct EngineStats {
  Mode mode = Mode::kWriteback;
  uint64_t cache_bytes = 0;
  uint32_t block_size = 0;
  uint32_t blocks = 0;
  uint32_t mapped_blocks = 0;
  uint32_t dirty_blocks = 0;
  uint64_t used_bytes = 0;   // valid sub-blocks * 4 KiB
  uint64_t dirty_bytes = 0;  // dirty sub-blocks * 4 KiB
  double oldest_dirty_age_s = 0;
  uint64_t read_hits = 0, read_misses = 0;
  uint64_t write_hits = 0, write_misses = 0;
  uint64_t promotions = 0, demotions = 0;
  uint64_t bytes_written_back = 0;
  uint64_t writeback_errors = 0;
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
  uint64_t flush_left_bytes = 0;   // dirty bytes left of those begin_flush() found
  uint64_t flush_max_rate_bps = 0;  // 0 = unlimited
};

// What invalidate() dropped.
struct InvalidateResult {
  uint32_t blocks = 0;              // blocks that lost data
  uint64_t clean_bytes = 0;         // clean data dropped
  uint64_t dirty_bytes = 0;         // dirty data discarded (lost)
  uint64_t dirty_kept_bytes = 0;    // dirty data in the range, kept
};

// The statistics as one line of JSON (field names as in the struct).
std::string stats_json(const EngineStats& s);

class CacheEngine final : public Origin {
 public:
  // Builds the engine over an opened metadata log and cache device, loading
  // the committed mapping. `origin`, `log` and `cache_dev` must outlive it.
  static Result<std::unique_ptr<CacheEngine>> create(Origin& origin, metalog::MetadataLog& log,
                                                     CacheDevice& cache_dev, EngineOptions opts);
  ~CacheEngine() override;

  // Stops writeback, commits the metadata and closes the log cleanly. Dirty
  // data stays dirty (it is persistent). Call once, from any non-reactor
  // thread, after the server has drained.
  Status shutdown();

  // --- Origin ---
  uint64_t size() const override { return origin_.size(); }
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
  Mode mode() const { return mode_.load(); }
  EngineStats stats() const;
  // Asks the background writer to write back every dirty block now.
  void request_full_writeback();

  // --- Operator controls (cache/engine_control.cc). Each blocks; call them
  // from a thread that is not a reactor. ---

  // Drops the cached data of every block that overlaps `extents` (every
  // block when nullopt): clean sub-blocks always, dirty ones only when
  // `discard_dirty` (that data is then lost for good). Waits for each
  // block's lock, so clients may keep running; returns once the change is
  // committed to the metadata log.
  [[nodiscard]] Result<InvalidateResult> invalidate(
      const std::optional<std::vector<ByteExtent>>& extents, bool discard_dirty);

  // Starts writing back every block that is dirty now, at most
  // `max_rate_bps` bytes per second (0: no limit). Client I/O goes on;
  // blocks dirtied later are not waited for. Progress: stats().flush_left_bytes.
  void begin_flush(uint64_t max_rate_bps);
  // Ends the flush (done or abandoned) and lifts its rate limit.
  void end_flush();
  // Flushes the origin and commits the metadata log: after ok, every write
  // acknowledged before the call that reached the origin is durable there.
  [[nodiscard]] Status sync_origin();

 private:
  struct Request;
  struct Part;
  struct WbUnit {
    OriginBlock first, last;
  };

  CacheEngine(Origin& origin, metalog::MetadataLog& log, CacheDevice& dev, Mapping map,
              std::unique_ptr<Policy> policy, EngineOptions opts);
  Status load();

  // Request plumbing.
  std::shared_ptr<Request> make_request(io::Reactor& r, uint64_t offset, uint64_t length,
                                        IoCallback done);
  void with_locks(const std::shared_ptr<Request>& req, std::function<void()> fn);
  void finish(const std::shared_ptr<Request>& req);
  void split(const std::shared_ptr<Request>& req, std::byte* user, std::vector<Part>& parts);

  using StatusFn = std::function<void(Status)>;
  void read_part(const std::shared_ptr<Request>& req, Part p, StatusFn done);
  void write_part(const std::shared_ptr<Request>& req, Part p, bool fua, StatusFn done);
  // Reads sub-blocks `subs` of the part's block into `base` (which maps
  // sub-block subs.first): valid ones from slot `slot`, the rest from the
  // origin.
  void read_subs(io::Reactor& r, OriginBlock ob, SubBlockRange subs, std::byte* base,
                 std::optional<CacheBlock> slot, SubBlockMask valid, StatusFn done);
  void fill_after_read(const std::shared_ptr<Request>& req, const Part& p, std::byte* base,
                       std::shared_ptr<AlignedBuffer> owner, std::optional<CacheBlock> slot,
                       bool promote, StatusFn done);
  void zero_partial(io::Reactor& r, OriginBlock ob, uint32_t s, uint32_t e, StatusFn done);

  // Under mu_: slot bookkeeping and metadata.
  std::optional<CacheBlock> take_ready_slot_locked();
  void append_state_locked(CacheBlock cb);
  void evict_locked(CacheBlock cb);
  // Drops sub-blocks `r` of a mapped slot (their dirty data too); evicts
  // the slot when nothing valid is left. The block's lock must be held.
  void drop_subs_locked(CacheBlock cb, SubBlockRange r);
  // drop_subs_locked() for the sub-blocks each part covers completely.
  void drop_covered_locked(const std::vector<Part>& parts);
  void note_dirty_locked(CacheBlock cb, bool was_dirty);
  // The slot's contents changed (written, dropped, evicted) while its
  // writeback may be in flight: that writeback must not mark it clean.
  void note_rewritten_locked(CacheBlock cb);
  void note_clean_locked(CacheBlock cb, bool was_dirty);

  // Background reactor work.
  void bg_tick();
  struct WbBatch {
    std::vector<WbUnit> units;
    size_t next = 0;
    size_t active = 0;
    bool failed = false;
    bool everything = false;
    bool rate_wait = false;  // a timer will pump again (flush rate limit)
  };
  void run_writeback(bool everything);
  void wb_pump(const std::shared_ptr<WbBatch>& b);
  void write_back_unit(std::shared_ptr<WbUnit> unit, std::function<void(bool ok)> done);
  void reclaim_slots();
  void after_commit_release(uint64_t gen);
  // Drops sub-blocks `mask` of a mapped slot; evicts it when nothing valid
  // is left. The block's lock must be held.
  void drop_mask_locked(CacheBlock cb, SubBlockMask mask);
  // Runs `fn` on the background reactor and waits for its result.
  Status run_on_bg(std::function<void(std::function<void(Status)>)> fn);
  // Updates the writeback rate figures (bg thread, once a tick).
  void sample_rates();
  // Delay before the next writeback unit under the flush's rate limit.
  std::chrono::nanoseconds rate_limit_delay();

  Origin& origin_;
  metalog::MetadataLog& log_;
  CacheDevice& dev_;
  EngineOptions opts_;
  std::atomic<Mode> mode_;
  const uint32_t bs_;    // cache block size
  const uint32_t subs_;  // sub-blocks per block
  BlockLocks locks_;
  // Held while a block's data is being written to the origin: by writeback
  // from its copy-out to its origin flush, and by client requests that write
  // cached blocks to the origin (writethrough, passthrough, trim,
  // write-zeroes), always after the block lock. Cache hits and writeback
  // mode writes take only the block lock, so they do not wait for the origin.
  BlockLocks origin_locks_;

  mutable std::mutex mu_;
  Mapping map_;                       // guarded by mu_
  std::unique_ptr<Policy> policy_;    // guarded by mu_
  std::vector<CacheBlock> ready_;     // guarded by mu_
  struct Quarantined {
    CacheBlock slot;
    uint64_t gen;
  };
  std::vector<Quarantined> quarantine_;  // guarded by mu_
  uint64_t unmap_gen_ = 0;               // guarded by mu_
  std::unordered_map<CacheBlock, std::chrono::steady_clock::time_point> dirty_since_;  // mu_
  Status meta_error_;                    // guarded by mu_; sticky
  EngineStats counters_;                 // guarded by mu_ (counter fields only)
  // Slots whose dirty data a writeback has copied out and is writing to the
  // origin, and whether they changed since.
  std::unordered_map<CacheBlock, bool> wb_in_flight_;  // guarded by mu_

  std::atomic<bool> origin_written_{false};  // origin writes since the last flush
  std::atomic<uint32_t> fg_in_flight_{0};
  std::atomic<bool> full_writeback_{false};

  std::unique_ptr<CommitWorker> commits_;
  std::unique_ptr<io::Reactor> bg_;
  std::thread bg_thread_;
  std::atomic<bool> stopping_{false};
  bool wb_running_ = false;  // bg thread only
  OriginBlock wb_cursor_{0};  // bg thread only
  std::chrono::steady_clock::time_point wb_backoff_until_{};  // bg thread only
  std::chrono::milliseconds wb_backoff_{0};                   // bg thread only
  bool reclaim_running_ = false;  // bg thread only

  // The operator's flush: slots dirty when it began and not yet cleaned.
  std::unordered_set<CacheBlock> flush_pending_;  // guarded by mu_
  bool flush_active_ = false;                     // guarded by mu_
  std::atomic<uint64_t> flush_max_rate_{0};
  std::chrono::steady_clock::time_point rate_start_{};  // bg thread only
  uint64_t rate_issued_bytes_ = 0;  // bg thread only: writeback bytes issued since rate_start_
  // Rate sampling (bg thread writes, stats() reads under mu_).
  std::chrono::steady_clock::time_point sample_at_{};
  uint64_t sample_bytes_ = 0;
  bool sample_wb_active_ = false;
  double rate_bps_ = 0;       // guarded by mu_
  double origin_bps_ = 0;     // guarded by mu_
  bool shut_down_ = false;
};

}  // namespace rbdcache::cache
