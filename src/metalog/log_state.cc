#include "metalog/log_state.h"

namespace rbdcache::metalog {

LogState::LogState(uint32_t segment_count, uint32_t blocks_per_segment)
    : bps_(blocks_per_segment),
      live_(size_t{segment_count} * blocks_per_segment),
      seq_(size_t{segment_count} * blocks_per_segment),
      seg_live_(segment_count) {}

void LogState::note_block(LogBlock pos, uint64_t seq) { seq_[pos.value()] = seq; }

void LogState::ref(LogBlock pos) {
  if (live_[pos.value()]++ == 0) ++seg_live_[pos.value() / bps_];
}

void LogState::unref(LogBlock pos) {
  if (pos.value() == 0) return;
  if (--live_[pos.value()] == 0) {
    uint32_t s = static_cast<uint32_t>(pos.value() / bps_);
    if (--seg_live_[s] == 0) newly_dead_.push_back(SegmentId(s));
  }
}

void LogState::drop_refs(CacheBlock c) {
  if (auto it = refs_.find(c); it != refs_.end()) {
    unref(it->second.map);
    unref(it->second.dirty);
    refs_.erase(it);
  }
  if (auto it = tombstones_.find(c); it != tombstones_.end()) {
    unref(it->second);
    tombstones_.erase(it);
  }
}

void LogState::apply(const Entry& e, LogBlock pos) {
  switch (e.op) {
    case EntryOp::kMap:
      drop_refs(e.cache);
      table_[e.cache] = Mapping{e.origin, e.valid, e.dirty};
      refs_[e.cache] = Refs{pos, LogBlock(0)};
      ref(pos);
      break;
    case EntryOp::kUnmap:
      drop_refs(e.cache);
      table_.erase(e.cache);
      tombstones_[e.cache] = pos;
      ref(pos);
      break;
    case EntryOp::kSetDirty: {
      auto it = table_.find(e.cache);
      if (it == table_.end() || !e.dirty.is_subset_of(it->second.valid)) break;  // see header
      it->second.dirty = e.dirty;
      Refs& r = refs_[e.cache];
      unref(r.dirty);
      r.dirty = pos;
      ref(pos);
      break;
    }
    case EntryOp::kCheckpointBegin:
      break;
    case EntryOp::kCheckpointEnd:
      checkpoint_end(e.checkpoint_start);
      break;
  }
}

void LogState::checkpoint_end(uint64_t start) {
  // Every live mapping was rewritten at or after `start`; anything older
  // that is still in the table came back from a block whose superseding
  // entries were erased, and the checkpoint says it is gone.
  for (auto it = refs_.begin(); it != refs_.end();) {
    if (seq_[it->second.map.value()] < start) {
      unref(it->second.map);
      unref(it->second.dirty);
      table_.erase(it->first);
      it = refs_.erase(it);
    } else {
      if (it->second.dirty.value() != 0 && seq_[it->second.dirty.value()] < start) {
        unref(it->second.dirty);
        it->second.dirty = LogBlock(0);
      }
      ++it;
    }
  }
  for (auto it = tombstones_.begin(); it != tombstones_.end();) {
    if (seq_[it->second.value()] < start) {
      unref(it->second);
      it = tombstones_.erase(it);
    } else {
      ++it;
    }
  }
}

void LogState::clear_segment(SegmentId s) {
  size_t first = size_t{s.value()} * bps_;
  for (size_t i = first; i < first + bps_; ++i) {
    live_[i] = 0;
    seq_[i] = 0;
  }
  seg_live_[s.value()] = 0;
}

std::vector<SegmentId> LogState::take_newly_dead() {
  std::vector<SegmentId> out;
  out.swap(newly_dead_);
  return out;
}

}  // namespace rbdcache::metalog
