// CacheOwnership: a cache's claim on a shared origin image (RBD), so that a
// cache never serves data the image no longer holds and never hides writes
// from another host.
//
// The rules (docs/migration.md explains them for operators):
//   - Writeback mode, or any dirty block in the cache, holds the image's
//     exclusive lock. Another writer is refused, with the holder named.
//   - The image's metadata records the last cache to attach, under
//     "rbdcache." keys: cache (uuid), host, pid, epoch, state (clean or
//     dirty), updated (UTC time). "dirty" means that cache may hold writes
//     the image lacks; it is written at attach in writeback mode and cleared
//     only by a completed flush out of writeback mode or a clean detach with
//     nothing dirty.
//   - Taking the lock (writeback mode, or dirty data at attach) is refused
//     (unless forced) when the metadata says another cache may hold dirty
//     data; attaching is refused when this cache holds dirty data but
//     another cache has attached to the image since this one last did. A
//     cache in passthrough or writethrough with nothing dirty attaches
//     beside another cache's dirty record and leaves it in place.
//   - Clean cached blocks are served only while this cache holds the lock
//     and has proven them current ("coherent"). The proof is a snapshot
//     "rbdcache.<cache uuid>" (the anchor) taken while the cache held the
//     lock: at a release, or at a clean detach. Taking the lock diffs the
//     image against the anchor, drops the clean blocks that changed since,
//     and deletes it. Until then the anchor is kept, through a detach too
//     (a later one must not replace it: blocks may have changed behind the
//     cache meanwhile). Without an anchor (a crash, a failed snapshot) every
//     clean block is dropped.
//   - The cache epoch (superblock and metadata) grows by one at each attach.
//
// Threads: every call blocks on the cluster; main or control thread only.
#pragma once

#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "cache/engine.h"
#include "metalog/superblock.h"
#include "origin/shared_image.h"

namespace rbdcache::cache {

// What attach found, for the caller to apply before serving.
struct AttachPlan {
  // Clean blocks to drop: nullopt = none, empty vector = all of them.
  std::optional<std::vector<ByteExtent>> drop_clean;
  std::string reason;      // why, for the log
  uint64_t new_epoch = 0;  // to write to the superblock
};

// The image metadata of the last attached cache, parsed.
struct ImageCacheRecord {
  std::string cache, host, pid, state, updated;
  uint64_t epoch = 0;
  bool present() const { return !cache.empty(); }
  std::string who() const;  // "cache U on host H (pid P)"
};

class CacheOwnership {
 public:
  struct Options {
    Mode mode = Mode::kWriteback;
    bool force = false;      // attach despite another cache's dirty data
    std::string host;        // this host's name, for the metadata
  };

  // Takes the lock when needed, checks the metadata, plans the stale-block
  // invalidation and records this cache in the image's metadata. `sb` is
  // the cache's superblock; `valid_blocks` and `dirty_blocks` its committed
  // content. A refusal is EBUSY (lock held elsewhere) or EEXIST (another
  // cache's dirty data), with what to do in the message.
  static Result<std::unique_ptr<CacheOwnership>> attach(SharedImage& image,
                                                        const metalog::Superblock& sb,
                                                        uint64_t valid_blocks,
                                                        uint64_t dirty_blocks, Options opts,
                                                        AttachPlan& plan);

  // Call after the plan's invalidation is committed: removes the snapshot
  // when the cache is coherent.
  void attached();

  // True while clean cached blocks may be served (see the rules above).
  bool coherent() const { return coherent_; }
  // After ensure_lock(), for a cache that is not coherent: the clean blocks
  // to drop before it may serve clean hits (nullopt: all of them).
  Result<std::optional<std::vector<ByteExtent>>> stale_since_anchor();
  // Once those are dropped (committed): deletes the anchor; coherent.
  void reconciled();

  // Records the cache's state after a completed flush, or after a mode
  // change: "clean" only when nothing is dirty and the mode cannot make
  // new dirty data.
  [[nodiscard]] Status record_state(Mode mode, uint64_t dirty_bytes);

  // Before writeback mode: takes the exclusive lock unless held. Refused
  // (EEXIST) while another cache's record says dirty, unless forced.
  [[nodiscard]] Status ensure_lock();
  // Gives the lock up; refused while anything is dirty or in writeback mode.
  // First takes the anchor snapshot, and calls `stop_clean_hits` once the
  // cache is no longer coherent, still holding the lock.
  [[nodiscard]] Status release(Mode mode, uint64_t dirty_bytes,
                               const std::function<void()>& stop_clean_hits);
  // True while this cache has claimed the lock (writeback, dirty data) and
  // still holds it. In the other modes librbd may hold it for a moment on
  // its own, but gives it to any client that asks: that does not count.
  bool holds_lock() { return claimed_ && image_.holds_exclusive_lock(); }
  uint64_t epoch() const { return epoch_; }

  // At a clean detach (the engine is shut down): snapshot for the next
  // attach when anything is cached, and record the final state.
  void detach(uint64_t valid_blocks, uint64_t dirty_blocks);

  static std::string snapshot_name(const metalog::Uuid& cache);
  static Result<ImageCacheRecord> read_record(SharedImage& image);

 private:
  CacheOwnership(SharedImage& image, std::string uuid, std::string host, uint64_t epoch)
      : image_(image), uuid_(std::move(uuid)), host_(std::move(host)), epoch_(epoch) {}

  SharedImage& image_;
  std::string uuid_;
  std::string host_;
  uint64_t epoch_;
  std::string snapshot_;
  bool remove_snapshot_ = false;
  bool claimed_ = false;  // the lock was taken explicitly
  bool force_ = false;    // Options::force
  // Attached (without the lock) beside another cache's dirty record, which
  // record_state() then leaves in place until this cache takes the lock.
  bool beside_ = false;
  bool coherent_ = false;  // clean hits allowed
  bool anchor_ = false;    // snapshot_ exists and is the anchor
};

}  // namespace rbdcache::cache
