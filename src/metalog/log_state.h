// LogState: the mapping table replayed from the log, and which log blocks
// still hold entries that matter ("live") so that the rest can be marked
// obsolete and their segments erased.
//
// Liveness rules (docs/metadata-format.md, "Obsolete blocks"):
//   - a cache block's latest kMap entry is live, and so is the latest
//     kSetDirty after it;
//   - a kUnmap entry (tombstone) is live until its cache block is mapped
//     again or a checkpoint completes;
//   - a completed checkpoint (kCheckpointEnd) makes every block older than
//     the checkpoint's first block dead.
// A log block is live while it holds at least one live entry.
//
// Replay is lenient about kSetDirty: one that finds its cache block unmapped,
// or not valid where it marks dirty, is ignored. That only happens when the
// kMap it followed sat in an erased or obsolete block, which implies a later
// kMap or kUnmap of the same cache block overrides it anyway.
//
// Not thread-safe: owned by one MetadataLog (or one recovery scan).
#pragma once

#include <cstdint>
#include <unordered_map>
#include <vector>

#include "metalog/entry.h"
#include "rbdcache/types.h"

namespace rbdcache::metalog {

class LogState {
 public:
  LogState(uint32_t segment_count, uint32_t blocks_per_segment);

  // Declares that log block `pos` holds sequence `seq`. Call before applying
  // the block's entries.
  void note_block(LogBlock pos, uint64_t seq);

  // Applies one entry read from (or written to) log block `pos`.
  void apply(const Entry& e, LogBlock pos);

  const MappingTable& mappings() const { return table_; }
  uint32_t live_entries(LogBlock pos) const { return live_[pos.value()]; }
  uint32_t live_blocks(SegmentId s) const { return seg_live_[s.value()]; }
  uint64_t sequence_of(LogBlock pos) const { return seq_[pos.value()]; }
  uint32_t blocks_per_segment() const { return bps_; }

  // Forgets the blocks of segment `s`. Precondition: live_blocks(s) == 0.
  void clear_segment(SegmentId s);

  // Segments whose last live block died since the previous call.
  std::vector<SegmentId> take_newly_dead();

  // Number of kUnmap entries still live.
  size_t tombstones() const { return tombstones_.size(); }

 private:
  struct Refs {
    LogBlock map;    // block of the latest kMap
    LogBlock dirty;  // block of the latest kSetDirty after it; LogBlock(0) if none
  };
  void ref(LogBlock pos);
  void unref(LogBlock pos);
  void drop_refs(CacheBlock c);
  void checkpoint_end(uint64_t start);

  uint32_t bps_;
  MappingTable table_;
  std::unordered_map<CacheBlock, Refs> refs_;
  std::unordered_map<CacheBlock, LogBlock> tombstones_;
  std::vector<uint32_t> live_;      // per log block
  std::vector<uint64_t> seq_;       // per log block, 0 when unknown
  std::vector<uint32_t> seg_live_;  // live blocks per segment
  std::vector<SegmentId> newly_dead_;
};

}  // namespace rbdcache::metalog
