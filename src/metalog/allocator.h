// Segment allocator: which segment the log writes next, and wear.
//
// Policy (docs/metadata-format.md, "Erasing, wear and retirement"):
//   - a segment may be reused when it is free or sealed with no live block;
//   - erasing is put off until a segment is needed, then the least-worn
//     candidate is taken (ties: lowest segment id, so tests are repeatable);
//   - a segment whose erase count would pass the superblock's
//     max_erase_count is retired instead and never used again.
// The allocator only decides and keeps the books; the writer does the I/O.
// Not thread-safe: owned by one MetadataLog.
#pragma once

#include <cstdint>
#include <optional>
#include <vector>

#include "metalog/format.h"
#include "metalog/log_state.h"
#include "rbdcache/types.h"

namespace rbdcache::metalog {

struct SegmentSlot {
  SegmentState state = SegmentState::kFree;
  uint64_t sequence = 0;
  uint32_t erase_count = 0;
  uint32_t used_blocks = 0;  // record blocks written in this pass
  // Flag words as last written; they only gain bits until the next erase.
  std::vector<uint16_t> flags;
};

struct WearStats {
  uint32_t total = 0;     // log segments (excluding segment 0)
  uint32_t free = 0;      // free, never written since the last erase
  uint32_t erasable = 0;  // sealed, no live block left
  uint32_t retired = 0;
  uint32_t in_use = 0;    // open, or sealed with live blocks
  uint32_t erase_min = 0;
  uint32_t erase_max = 0;
  double erase_mean = 0;
};

class SegmentAllocator {
 public:
  SegmentAllocator(uint32_t segment_count, uint32_t max_erase_count);

  SegmentSlot& slot(SegmentId s) { return slots_[s.value()]; }
  const SegmentSlot& slot(SegmentId s) const { return slots_[s.value()]; }
  uint32_t segment_count() const { return static_cast<uint32_t>(slots_.size()); }

  // True when `s` may be erased and reused: free, or sealed with nothing live.
  bool reusable(SegmentId s, const LogState& live) const;

  // The least-worn reusable segment other than `head`; nullopt when none.
  std::optional<SegmentId> pick(const LogState& live, std::optional<SegmentId> head) const;

  // Reusable segments other than `head`.
  uint32_t available(const LogState& live, std::optional<SegmentId> head) const;

  // True when erasing `s` once more would pass the erase limit.
  bool worn_out(SegmentId s) const { return slots_[s.value()].erase_count >= max_erase_count_; }

  WearStats stats(const LogState& live) const;

 private:
  std::vector<SegmentSlot> slots_;  // [0] unused (superblock segment)
  uint32_t max_erase_count_;
};

}  // namespace rbdcache::metalog
