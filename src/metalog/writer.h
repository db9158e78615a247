// MetadataLog: the writer side of the metadata log, and the API the cache
// engine uses.
//
//   auto log = MetadataLog::open(dev);        // recover, refuse bad metadata
//   log->mappings();                          // replayed state
//   log->append(Entry::map(cblock, oblock, valid, dirty));
//   log->commit();                            // one group of blocks + fdatasync
//
// Group commit: append() only adds to an in-memory batch under a short lock,
// so the data path never waits for I/O. commit() takes the batch, writes it
// as one commit group (one write of one or more 4 KiB record blocks), syncs,
// and then makes the entries count for liveness and erasing. The engine
// commits on NBD FLUSH/FUA and once a second (cache/commit_worker.h).
//
// Process crashes: append() also puts every entry into the intent ring
// (metalog/intent_ring.h), a file on tmpfs that survives the process but not
// the machine, before it returns. open() takes back the entries of a crashed
// process from there: they are in the first batch, and mappings() shows them
// at once. So an entry that append() accepted is lost by a power cut only,
// never by a crash of the process alone.
//
// Threads: append(), set_commit_wanted() and stats() may be called from any
// thread. commit(), compact(), close() and mappings() belong to one thread at
// a time (the commit thread); commit() serialises itself against the others.
// Locks: commit_mu_ (commit, compact, close) is taken before batch_mu_ (the
// batch, the ring, the sticky error), and batch_mu_ before stats_mu_; no lock
// is held while the commit-wanted callback runs.
//
// Failure: after a failed write or sync the log stops accepting work and
// every call returns the first error (the engine must stop write-back).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "metalog/allocator.h"
#include "metalog/block_device.h"
#include "metalog/entry.h"
#include "metalog/intent_ring.h"
#include "metalog/log_state.h"
#include "metalog/reader.h"
#include "metalog/superblock.h"
#include "rbdcache/status.h"

namespace rbdcache::metalog {

struct LogStats {
  WearStats wear;
  uint64_t commits = 0;
  uint64_t entries_committed = 0;
  uint64_t blocks_written = 0;  // record and index blocks
  uint64_t bytes_written = 0;
  uint64_t syncs = 0;
  uint64_t checkpoints = 0;
  uint64_t mappings = 0;
  double log_usage = 0;  // in-use segments / usable segments
  // Intent ring; all zero without one.
  uint32_t ring_slots = 0;
  uint64_t ring_pending = 0;          // entries accepted, not yet committed
  uint64_t ring_recovered = 0;        // entries taken back at open
  uint64_t ring_commit_requests = 0;  // times the ring passed half full
  uint64_t ring_grows = 0;            // times the ring was full and doubled
};

struct LogOptions {
  // kAuto: an intent ring when the device outlives the process
  // (BlockDevice::outlives_process), as a file or block device does.
  enum class Ring { kAuto, kOn, kOff };
  Ring ring = Ring::kAuto;
  RingOptions ring_options;
};

class MetadataLog {
 public:
  // Recovers the log on `dev` and prepares it for appends. Fails with the
  // reason when the device is unformatted (ENODATA), foreign (EMEDIUMTYPE),
  // uses unknown incompat features (ENOTSUP) or unknown ro_compat features
  // (EROFS), or is corrupt anywhere but a torn tail (EUCLEAN, naming the
  // segment and block). Torn segments left open by a crash are sealed.
  // With an intent ring, the entries a crashed process had appended but not
  // committed are taken back (see above); a ring that cannot be created
  // fails the open. `dev` must outlive the MetadataLog.
  [[nodiscard]] static Result<std::unique_ptr<MetadataLog>> open(BlockDevice& dev,
                                                                 const LogOptions& opts = {});

  MetadataLog(const MetadataLog&) = delete;
  MetadataLog& operator=(const MetadataLog&) = delete;
  ~MetadataLog();

  const Superblock& superblock() const { return sb_; }

  // The mapping state: the committed state, and after open() also the
  // entries taken back from the intent ring until they are committed. Commit
  // thread only; a commit may invalidate the reference.
  const MappingTable& mappings() const { return view_ ? *view_ : state_.mappings(); }

  // Adds entries to the pending batch, and to the intent ring. Rejects
  // (EINVAL) a cache block past the cache, a mask past the last sub-block,
  // dirty outside valid, and checkpoint markers; fails with the log's error
  // once it has failed. Never waits for a commit: a full ring is doubled
  // instead (see docs/metadata-format.md, "Intent ring").
  [[nodiscard]] Status append(const Entry& e);
  [[nodiscard]] Status append(std::span<const Entry> entries);

  // `fn` is called once each time the ring passes half full between two
  // commits, on the appending thread with no log lock held; it should ask
  // for a commit soon and must not wait for it. Call before the first
  // append().
  void set_commit_wanted(std::function<void()> fn);

  // Writes the pending batch and syncs. On ok, every entry appended before
  // the call is durable. A batch larger than one segment is written as
  // several groups, each atomic on its own.
  [[nodiscard]] Status commit();
  // The same, but runs `before_write` after taking the batch and before
  // writing it: the caller syncs there the data that the entries describe,
  // so that every entry in the batch refers to durable data. A failure of
  // `before_write` fails the log like a write error.
  [[nodiscard]] Status commit(const std::function<Status()>& before_write);

  // Writes a checkpoint of all live mappings now (commit() also does this on
  // its own when free segments run low).
  [[nodiscard]] Status compact();

  // Commits, then writes the flag words of every sealed segment and syncs,
  // then marks the shutdown clean in the superblock (kCompatCleanShutdown).
  // The log stays usable; the next commit clears the mark first.
  [[nodiscard]] Status close();

  // Facts about how the previous user of the log stopped, as found by
  // open(); any thread (they never change).
  // The last shutdown ended with close(): the committed state is complete.
  bool last_shutdown_clean() const { return last_shutdown_clean_; }
  // An intent ring of this log from this boot existed at open (even with no
  // entries to take back): the previous process crashed, the machine did
  // not, so the committed state plus the ring's entries are complete.
  bool ring_found_at_open() const { return ring_found_at_open_; }
  // Either of the two: the cache device holds no data newer than the
  // metadata says, so clean cached data matches the origin.
  bool clean_data_trusted() const { return last_shutdown_clean_ || ring_found_at_open_; }

  // A consistent snapshot, as of the last commit; any thread.
  LogStats stats() const;
  // The intent ring file, or "" without one.
  std::string ring_path() const { return ring_ ? ring_->path() : std::string(); }

 private:
  MetadataLog(BlockDevice& dev, Recovery&& rec);
  Status open_ring(const LogOptions& opts);
  // Rewrites the superblock as on the device with the clean-shutdown mark
  // set or cleared. Holds commit_mu_ (or runs inside open()).
  Status set_clean_mark(bool clean);
  Status ring_put_locked(std::span<const Entry> entries);
  void publish_stats_locked();
  Status validate(const Entry& e) const;
  Status seal_recovered();
  Status write_entries(uint16_t stream, std::span<const Entry> entries);
  Status write_group(uint16_t stream, std::span<const Entry> entries,
                     std::span<const std::pair<size_t, size_t>> blocks);
  Status switch_segment();
  Status write_index(SegmentId s, bool obsolete_dead_blocks);
  Status sync();
  Status retire_dead_segments();
  Status compact_locked();
  Status fail(Status st);
  // `ring_limit`: the ring's committed mark moves at most this far.
  Status commit_locked(const std::function<Status()>& before_write = nullptr,
                       uint64_t ring_limit = UINT64_MAX);

  BlockDevice& dev_;
  Superblock sb_;
  const uint32_t bps_;
  LogState state_;
  SegmentAllocator alloc_;
  std::optional<SegmentId> head_;  // open segment, if any
  uint32_t head_next_ = 0;         // next free record block in head_
  uint64_t next_seq_;
  bool last_shutdown_clean_ = false;
  bool ring_found_at_open_ = false;
  bool clean_mark_ = false;  // the superblock on the device has the mark; commit_mu_

  // Pending batch, guarded by batch_mu_.
  mutable std::mutex batch_mu_;
  std::vector<Entry> batch_;
  Status error_;  // sticky; guarded by batch_mu_
  std::unique_ptr<IntentRing> ring_;      // guarded by batch_mu_
  std::function<void()> commit_wanted_;   // guarded by batch_mu_
  bool commit_wanted_sent_ = false;       // guarded by batch_mu_
  uint64_t ring_recovered_ = 0;           // guarded by batch_mu_
  uint64_t ring_commit_requests_ = 0;     // guarded by batch_mu_
  uint64_t ring_grows_ = 0;               // guarded by batch_mu_
  // The committed state with the entries taken back from the ring applied,
  // until those are committed. Commit thread only.
  std::optional<MappingTable> view_;

  // Published by the commit thread at the end of every commit; stats_mu_.
  mutable std::mutex stats_mu_;
  LogStats published_;

  // Serialises commit(), compact() and close().
  std::mutex commit_mu_;
  std::vector<std::byte> buf_;        // scratch for record blocks
  std::vector<std::byte> buf_index_;  // scratch for index blocks
  // Blocks written but not yet synced; applied to state_ by sync().
  struct PendingWrite {
    LogBlock pos;
    uint64_t seq;
    std::vector<Entry> entries;
  };
  std::vector<PendingWrite> pending_;
  uint64_t commits_ = 0;
  uint64_t entries_committed_ = 0;
  uint64_t blocks_written_ = 0;
  uint64_t syncs_ = 0;
  uint64_t checkpoints_ = 0;
};

}  // namespace rbdcache::metalog
