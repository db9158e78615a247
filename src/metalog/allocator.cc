#include "metalog/allocator.h"

#include <algorithm>
#include <limits>

namespace rbdcache::metalog {

SegmentAllocator::SegmentAllocator(uint32_t segment_count, uint32_t max_erase_count)
    : slots_(segment_count), max_erase_count_(max_erase_count) {}

bool SegmentAllocator::reusable(SegmentId s, const LogState& live) const {
  const SegmentSlot& sl = slots_[s.value()];
  return sl.state == SegmentState::kFree ||
         (sl.state == SegmentState::kSealed && live.live_blocks(s) == 0);
}

std::optional<SegmentId> SegmentAllocator::pick(const LogState& live,
                                                std::optional<SegmentId> head) const {
  std::optional<SegmentId> best;
  for (uint32_t i = 1; i < slots_.size(); ++i) {
    SegmentId s(i);
    if (head && *head == s) continue;
    if (!reusable(s, live)) continue;
    if (!best || slots_[i].erase_count < slots_[best->value()].erase_count) best = s;
  }
  return best;
}

uint32_t SegmentAllocator::available(const LogState& live, std::optional<SegmentId> head) const {
  uint32_t n = 0;
  for (uint32_t i = 1; i < slots_.size(); ++i) {
    if (head && head->value() == i) continue;
    if (reusable(SegmentId(i), live)) ++n;
  }
  return n;
}

WearStats SegmentAllocator::stats(const LogState& live) const {
  WearStats w;
  w.erase_min = std::numeric_limits<uint32_t>::max();
  uint64_t sum = 0;
  for (uint32_t i = 1; i < slots_.size(); ++i) {
    const SegmentSlot& sl = slots_[i];
    ++w.total;
    sum += sl.erase_count;
    w.erase_min = std::min(w.erase_min, sl.erase_count);
    w.erase_max = std::max(w.erase_max, sl.erase_count);
    if (sl.state == SegmentState::kRetired) {
      ++w.retired;
    } else if (sl.state == SegmentState::kFree) {
      ++w.free;
    } else if (sl.state == SegmentState::kSealed && live.live_blocks(SegmentId(i)) == 0) {
      ++w.erasable;
    } else {
      ++w.in_use;
    }
  }
  if (w.total == 0) w.erase_min = 0;
  w.erase_mean = w.total ? static_cast<double>(sum) / w.total : 0.0;
  return w;
}

}  // namespace rbdcache::metalog
