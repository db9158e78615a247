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
// commits on NBD FLUSH/FUA and once a second (CommitTimer below).
//
// Threads: append(), commit_ticket() and stats() may be called from any
// thread. commit(), compact(), close() and mappings() belong to one thread at
// a time (the commit thread); commit() serialises itself against the others.
//
// Failure: after a failed write or sync the log stops accepting work and
// every call returns the first error (the engine must stop write-back).
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <future>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <thread>
#include <vector>

#include "metalog/allocator.h"
#include "metalog/block_device.h"
#include "metalog/entry.h"
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
};

class MetadataLog {
 public:
  // Recovers the log on `dev` and prepares it for appends. Fails with the
  // reason when the device is unformatted (ENODATA), foreign (EMEDIUMTYPE),
  // uses unknown incompat features (ENOTSUP) or unknown ro_compat features
  // (EROFS), or is corrupt anywhere but a torn tail (EUCLEAN, naming the
  // segment and block). Torn segments left open by a crash are sealed.
  // `dev` must outlive the MetadataLog.
  [[nodiscard]] static Result<std::unique_ptr<MetadataLog>> open(BlockDevice& dev);

  MetadataLog(const MetadataLog&) = delete;
  MetadataLog& operator=(const MetadataLog&) = delete;
  ~MetadataLog();

  const Superblock& superblock() const { return sb_; }

  // The committed mapping state. Commit thread only.
  const MappingTable& mappings() const { return state_.mappings(); }

  // Adds entries to the pending batch. Rejects (EINVAL) a cache block past
  // the cache, a mask past the last sub-block, dirty outside valid, and
  // checkpoint markers; fails with the log's error once it has failed.
  [[nodiscard]] Status append(const Entry& e);
  [[nodiscard]] Status append(std::span<const Entry> entries);

  // A future that becomes ready, with the commit's Status, once every entry
  // appended before this call is durable.
  std::shared_future<Status> commit_ticket();

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

  // Commits, then writes the flag words of every sealed segment and syncs.
  // The log stays usable.
  [[nodiscard]] Status close();

  LogStats stats() const;

 private:
  MetadataLog(BlockDevice& dev, Recovery&& rec);
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
  Status commit_locked(const std::function<Status()>& before_write = nullptr);

  BlockDevice& dev_;
  Superblock sb_;
  const uint32_t bps_;
  LogState state_;
  SegmentAllocator alloc_;
  std::optional<SegmentId> head_;  // open segment, if any
  uint32_t head_next_ = 0;         // next free record block in head_
  uint64_t next_seq_;

  // Pending batch, guarded by batch_mu_.
  mutable std::mutex batch_mu_;
  std::vector<Entry> batch_;
  std::shared_ptr<std::promise<Status>> batch_promise_;
  std::shared_future<Status> batch_future_;
  Status error_;  // sticky; guarded by batch_mu_

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

// Commits a MetadataLog once per interval, and at once when asked. The
// engine calls request() on NBD FLUSH/FUA and waits on the returned future.
// `log` must outlive the CommitTimer. Commit errors are kept in the futures.
class CommitTimer {
 public:
  CommitTimer(MetadataLog& log, std::chrono::milliseconds interval = std::chrono::seconds(1));
  ~CommitTimer();  // stops the thread after a final commit
  CommitTimer(const CommitTimer&) = delete;
  CommitTimer& operator=(const CommitTimer&) = delete;

  // Asks for an early commit; the future is ready when everything appended
  // before the call is durable.
  std::shared_future<Status> request();

 private:
  void run();
  MetadataLog& log_;
  std::chrono::milliseconds interval_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool requested_ = false;
  bool stop_ = false;
  std::thread thread_;
};

}  // namespace rbdcache::metalog
