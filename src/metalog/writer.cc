#include "metalog/writer.h"

#include <algorithm>

#include "metalog/block_codec.h"
#include "metalog/compactor.h"
#include "util/log.h"

namespace rbdcache::metalog {

Result<std::unique_ptr<MetadataLog>> MetadataLog::open(BlockDevice& dev, const LogOptions& opts) {
  Result<Recovery> rec = recover_log(dev);
  if (!rec.is_ok()) return rec.status();
  if (rec->superblock.read_only_features()) {
    return Status::from_errno(
        EROFS, fmt::format("superblock: unknown ro_compat feature flags {:#x}; the log can only be read",
                           rec->superblock.ro_compat & ~kRoCompatKnown));
  }
  std::unique_ptr<MetadataLog> log(new MetadataLog(dev, std::move(*rec)));
  log->last_shutdown_clean_ = (log->sb_.compat & kCompatCleanShutdown) != 0;
  log->clean_mark_ = log->last_shutdown_clean_;
  // From here on the cache device may get data the log does not describe
  // yet: the mark must be gone from the device before the caller writes.
  if (log->clean_mark_) RBDCACHE_RETURN_IF_ERROR(log->set_clean_mark(false));
  RBDCACHE_RETURN_IF_ERROR(log->seal_recovered());
  const bool ring = opts.ring == LogOptions::Ring::kOn ||
                    (opts.ring == LogOptions::Ring::kAuto && dev.outlives_process());
  if (ring) RBDCACHE_RETURN_IF_ERROR(log->open_ring(opts));
  std::lock_guard lk(log->commit_mu_);
  log->publish_stats_locked();
  return log;
}

// The entries a crashed process had appended, reduced to the final state of
// each cache block they touch (each entry states a block's whole state, so
// replaying entries the log already holds is harmless):
//   - a block they leave unmapped is unmapped in the log at once: an unmap
//     never points at data, and the engine takes every slot that
//     mappings() does not use for durably free;
//   - a block they leave mapped goes into the first batch, so that it is
//     committed the normal way, after the owner's before_write (the engine
//     syncs the cache device there), and stays in the ring until then;
//     mappings() shows it meanwhile.
Status MetadataLog::open_ring(const LogOptions& opts) {
  RingRecovery found;
  auto valid = [this](const Entry& e) { return validate(e).is_ok(); };
  auto ring = IntentRing::open(opts.ring_options, sb_.uuid, sb_.sub_blocks(), valid, found);
  if (!ring.is_ok()) return ring.status().with_context("metadata intent ring");
  if (!found.note.empty()) log::warn("{}: {}", (*ring)->path(), found.note);
  {
    std::lock_guard lk(batch_mu_);
    ring_ = std::move(ring).value();
    ring_recovered_ = found.entries.size();
  }
  ring_found_at_open_ = found.found;
  if (found.entries.empty()) return Status::ok();
  log::info("taking back {} metadata entries that a stopped process had not committed",
            found.entries.size());
  MappingTable view = state_.mappings();
  std::vector<CacheBlock> touched;
  for (const Entry& e : found.entries) {
    touched.push_back(e.cache);
    switch (e.op) {
      case EntryOp::kMap: view[e.cache] = Mapping{e.origin, e.valid, e.dirty}; break;
      case EntryOp::kUnmap: view.erase(e.cache); break;
      case EntryOp::kSetDirty:
        if (auto it = view.find(e.cache); it != view.end() && e.dirty.is_subset_of(it->second.valid)) {
          it->second.dirty = e.dirty;
        }
        break;
      default: break;
    }
  }
  std::sort(touched.begin(), touched.end(),
            [](CacheBlock a, CacheBlock b) { return a.value() < b.value(); });
  touched.erase(std::unique(touched.begin(), touched.end()), touched.end());
  std::vector<Entry> unmaps, maps;
  for (CacheBlock c : touched) {
    auto it = view.find(c);
    if (it == view.end()) {
      unmaps.push_back(Entry::unmap(c));
    } else {
      maps.push_back(Entry::map(c, it->second.origin, it->second.valid, it->second.dirty));
    }
  }
  // The ring now holds the unmaps (sequences 1..u) and then the maps; a
  // crash before the rename finds the old ring and replays it whole.
  std::vector<Entry> all = unmaps;
  all.insert(all.end(), maps.begin(), maps.end());
  std::lock_guard ck(commit_mu_);
  {
    std::lock_guard lk(batch_mu_);
    RBDCACHE_RETURN_IF_ERROR(ring_->reset(all));
    batch_ = unmaps;
  }
  if (!unmaps.empty()) RBDCACHE_RETURN_IF_ERROR(commit_locked(nullptr, unmaps.size()));
  std::lock_guard lk(batch_mu_);
  batch_ = std::move(maps);
  if (!batch_.empty()) view_ = std::move(view);
  return Status::ok();
}

Status MetadataLog::set_clean_mark(bool clean) {
  auto cur = read_superblock(dev_);
  if (!cur.is_ok()) return cur.status().with_context("superblock");
  if (clean) {
    cur->compat |= kCompatCleanShutdown;
  } else {
    cur->compat &= ~kCompatCleanShutdown;
  }
  RBDCACHE_RETURN_IF_ERROR(write_superblock(dev_, *cur));
  ++syncs_;
  sb_ = *cur;
  clean_mark_ = clean;
  return Status::ok();
}

MetadataLog::MetadataLog(BlockDevice& dev, Recovery&& rec)
    : dev_(dev),
      sb_(rec.superblock),
      bps_(rec.superblock.blocks_per_segment()),
      state_(std::move(rec.state)),
      alloc_(rec.superblock.segment_count, rec.superblock.max_erase_count),
      next_seq_(rec.next_sequence),
      buf_(kLogBlockSize),
      buf_index_(kLogBlockSize) {
  for (uint32_t s = 1; s < sb_.segment_count; ++s) {
    const SegmentSummary& sum = rec.segments[s];
    SegmentSlot& sl = alloc_.slot(SegmentId(s));
    sl.state = sum.state;
    sl.sequence = sum.sequence;
    sl.erase_count = sum.erase_count;
    sl.used_blocks = sum.applied_blocks;
    sl.flags.assign(bps_, kFlagFree);
    if (sum.state == SegmentState::kSealed) {
      for (uint32_t i = 1; i <= sl.used_blocks; ++i) {
        sl.flags[i] = sum.flags_ok ? sum.disk_flags[i] : kFlagInUse;
      }
    }
  }
}

// The ring file is deleted only when it holds nothing a restart would need.
MetadataLog::~MetadataLog() {
  std::lock_guard lk(batch_mu_);
  if (ring_ && ring_->pending() == 0 && batch_.empty() && error_.is_ok()) ring_->remove();
}

// Open segments left by a crash are sealed at their last committed group, so
// a torn group can never be mistaken for committed data later.
Status MetadataLog::seal_recovered() {
  bool wrote = false;
  for (uint32_t s = 1; s < sb_.segment_count; ++s) {
    SegmentSlot& sl = alloc_.slot(SegmentId(s));
    if (sl.state != SegmentState::kOpen) continue;
    sl.state = SegmentState::kSealed;
    RBDCACHE_RETURN_IF_ERROR(write_index(SegmentId(s), false));
    wrote = true;
  }
  return wrote ? sync() : Status::ok();
}

Status MetadataLog::fail(Status st) {
  std::lock_guard lk(batch_mu_);
  if (error_.is_ok()) error_ = st;
  return st;
}

Status MetadataLog::validate(const Entry& e) const {
  if (e.cache.value() >= sb_.cache_block_count) {
    return Status::invalid_argument(fmt::format("cache block {} is past the cache ({} blocks)",
                                                e.cache.value(), sb_.cache_block_count));
  }
  const uint32_t n = sb_.sub_blocks();
  switch (e.op) {
    case EntryOp::kMap:
      if (!e.valid.fits(n) || !e.dirty.fits(n)) return Status::invalid_argument("mask bit past the last sub-block");
      if (!e.dirty.is_subset_of(e.valid)) return Status::invalid_argument("dirty sub-block that is not valid");
      return Status::ok();
    case EntryOp::kSetDirty:
      if (!e.dirty.fits(n)) return Status::invalid_argument("mask bit past the last sub-block");
      return Status::ok();
    case EntryOp::kUnmap:
      return Status::ok();
    case EntryOp::kCheckpointBegin:
    case EntryOp::kCheckpointEnd:
      break;
  }
  return Status::invalid_argument("checkpoint markers are written by the compactor only");
}

Status MetadataLog::append(const Entry& e) { return append(std::span<const Entry>(&e, 1)); }

Status MetadataLog::append(std::span<const Entry> entries) {
  for (const Entry& e : entries) RBDCACHE_RETURN_IF_ERROR(validate(e));
  std::function<void()> wanted;
  {
    std::lock_guard lk(batch_mu_);
    if (!error_.is_ok()) return error_;
    if (ring_) {
      RBDCACHE_RETURN_IF_ERROR(ring_put_locked(entries));
      if (!commit_wanted_sent_ && ring_->pending() * 2 >= ring_->capacity()) {
        commit_wanted_sent_ = true;
        ++ring_commit_requests_;
        wanted = commit_wanted_;
      }
    }
    batch_.insert(batch_.end(), entries.begin(), entries.end());
  }
  if (wanted) wanted();
  return Status::ok();
}

// Waiting here for a commit to free slots could deadlock: the engine appends
// under its own mutex, which its commit hooks take. A full ring is doubled
// instead; its size is bounded like the batch itself, by what is appended
// between two commits.
Status MetadataLog::ring_put_locked(std::span<const Entry> entries) {
  if (ring_->pending() + entries.size() > ring_->capacity()) {
    uint32_t slots = ring_->capacity();
    while (ring_->pending() + entries.size() > slots) slots *= 2;
    log::warn("metadata intent ring full ({} entries since the last commit); growing it to {} slots",
              ring_->pending(), slots);
    Status st = ring_->grow(slots);
    if (!st.is_ok()) {
      if (error_.is_ok()) error_ = st;
      return st;
    }
    ++ring_grows_;
  }
  for (const Entry& e : entries) {
    Status st = ring_->put(e);
    if (!st.is_ok()) {
      if (error_.is_ok()) error_ = st;
      return st;
    }
  }
  return Status::ok();
}

void MetadataLog::set_commit_wanted(std::function<void()> fn) {
  std::lock_guard lk(batch_mu_);
  commit_wanted_ = std::move(fn);
}

Status MetadataLog::commit() {
  std::lock_guard lk(commit_mu_);
  return commit_locked();
}

Status MetadataLog::commit(const std::function<Status()>& before_write) {
  std::lock_guard lk(commit_mu_);
  return commit_locked(before_write);
}

Status MetadataLog::commit_locked(const std::function<Status()>& before_write, uint64_t ring_limit) {
  std::vector<Entry> batch;
  uint64_t ring_mark = 0;  // the ring sequence of the batch's last entry
  Status err;
  {
    std::lock_guard lk(batch_mu_);
    batch.swap(batch_);
    if (ring_) ring_mark = std::min(ring_->next_sequence() - 1, ring_limit);
    err = error_;
  }
  Status st = err;
  // A commit after close(): data may have changed since the mark was set.
  if (st.is_ok() && clean_mark_) {
    st = set_clean_mark(false);
    if (!st.is_ok()) st = fail(st);
  }
  if (st.is_ok() && before_write) {
    st = before_write();
    if (!st.is_ok()) st = fail(st);
  }
  if (st.is_ok() && !batch.empty()) {
    st = write_entries(kStreamMapping, batch);
    if (st.is_ok()) st = sync();
    if (st.is_ok()) {
      ++commits_;
      entries_committed_ += batch.size();
      st = retire_dead_segments();
    }
    if (st.is_ok()) {
      WearStats w = alloc_.stats(state_);
      if (should_compact(alloc_.available(state_, head_), w.in_use, state_.mappings().size(),
                         sb_.sub_blocks(), bps_)) {
        st = compact_locked();
      }
    }
    if (!st.is_ok()) st = fail(st);
  }
  if (st.is_ok()) {
    // Every entry of the batch is durable: the ring may reuse their slots.
    view_.reset();
    std::lock_guard lk(batch_mu_);
    if (ring_) ring_->mark_committed(ring_mark);
    commit_wanted_sent_ = false;
  }
  publish_stats_locked();
  return st;
}

Status MetadataLog::compact() {
  std::lock_guard lk(commit_mu_);
  RBDCACHE_RETURN_IF_ERROR(commit_locked());
  Status st = compact_locked();
  publish_stats_locked();
  return st.is_ok() ? st : fail(st);
}

Status MetadataLog::compact_locked() {
  // The checkpoint starts a fresh segment, so that every block before it
  // lies in segments that the checkpoint frees entirely.
  if (!head_ || head_next_ > 1) RBDCACHE_RETURN_IF_ERROR(switch_segment());
  std::vector<Entry> entries = checkpoint_entries(state_.mappings(), next_seq_);
  RBDCACHE_RETURN_IF_ERROR(write_entries(kStreamCheckpoint, entries));
  RBDCACHE_RETURN_IF_ERROR(sync());
  ++checkpoints_;
  return retire_dead_segments();
}

Status MetadataLog::close() {
  std::lock_guard lk(commit_mu_);
  RBDCACHE_RETURN_IF_ERROR(commit_locked());
  for (uint32_t s = 1; s < sb_.segment_count; ++s) {
    if (alloc_.slot(SegmentId(s)).state != SegmentState::kSealed) continue;
    Status st = write_index(SegmentId(s), true);
    if (!st.is_ok()) return fail(st);
  }
  Status st = dev_.sync();
  ++syncs_;
  if (st.is_ok()) st = set_clean_mark(true);
  publish_stats_locked();
  return st.is_ok() ? st : fail(st);
}

namespace {

// Splits entries into record-block payloads: [begin, end) index ranges.
std::vector<std::pair<size_t, size_t>> pack(std::span<const Entry> entries, uint32_t sub_blocks) {
  std::vector<std::pair<size_t, size_t>> blocks;
  size_t begin = 0, bytes = 0;
  for (size_t i = 0; i < entries.size(); ++i) {
    size_t n = encoded_size(entries[i], sub_blocks);
    if (bytes + n > kMaxPayloadSize || i - begin == 0xffff) {
      blocks.emplace_back(begin, i);
      begin = i;
      bytes = 0;
    }
    bytes += n;
  }
  if (begin < entries.size()) blocks.emplace_back(begin, entries.size());
  return blocks;
}

}  // namespace

Status MetadataLog::write_entries(uint16_t stream, std::span<const Entry> entries) {
  auto blocks = pack(entries, sb_.sub_blocks());
  size_t b = 0;
  while (b < blocks.size()) {
    size_t remaining = blocks.size() - b;
    uint32_t room = head_ ? bps_ - head_next_ : 0;
    // A group that fits in a segment is never split across two.
    if (room == 0 || (remaining > room && remaining <= bps_ - 1)) {
      RBDCACHE_RETURN_IF_ERROR(switch_segment());
      room = bps_ - 1;
    }
    size_t k = std::min<size_t>(remaining, room);
    RBDCACHE_RETURN_IF_ERROR(write_group(stream, entries, std::span(blocks).subspan(b, k)));
    b += k;
  }
  return Status::ok();
}

Status MetadataLog::write_group(uint16_t stream, std::span<const Entry> entries,
                                std::span<const std::pair<size_t, size_t>> blocks) {
  const size_t k = blocks.size();
  buf_.assign(k * kLogBlockSize, std::byte{0});
  std::vector<std::byte> payload;
  const uint64_t group_seq = next_seq_;
  const uint64_t first_pos = uint64_t{head_->value()} * bps_ + head_next_;
  for (size_t i = 0; i < k; ++i) {
    payload.clear();
    auto [begin, end] = blocks[i];
    for (size_t j = begin; j < end; ++j) encode_entry(entries[j], sb_.sub_blocks(), payload);
    RecordHeader h;
    h.stream = stream;
    h.type = kRecordTypeEntries;
    h.position = LogBlock(first_pos + i);
    h.sequence = group_seq + i;
    h.group_sequence = group_seq;
    h.group_blocks = static_cast<uint16_t>(k);
    h.entry_count = static_cast<uint16_t>(end - begin);
    h.log_id = log_id_of(sb_.uuid.bytes);
    encode_record(h, payload, std::span(buf_).subspan(i * kLogBlockSize, kLogBlockSize));
    pending_.push_back(PendingWrite{h.position, h.sequence,
                                    std::vector<Entry>(entries.begin() + static_cast<ptrdiff_t>(begin),
                                                       entries.begin() + static_cast<ptrdiff_t>(end))});
  }
  RBDCACHE_RETURN_IF_ERROR(dev_.write(first_pos * kLogBlockSize, buf_));
  blocks_written_ += k;
  head_next_ += static_cast<uint32_t>(k);
  next_seq_ += k;
  alloc_.slot(*head_).used_blocks = head_next_ - 1;
  return Status::ok();
}

Status MetadataLog::sync() {
  RBDCACHE_RETURN_IF_ERROR(dev_.sync());
  ++syncs_;
  for (PendingWrite& p : pending_) {
    state_.note_block(p.pos, p.seq);
    for (const Entry& e : p.entries) state_.apply(e, p.pos);
  }
  pending_.clear();
  return Status::ok();
}

Status MetadataLog::write_index(SegmentId s, bool obsolete_dead_blocks) {
  SegmentSlot& sl = alloc_.slot(s);
  IndexBlock ix;
  ix.segment = s;
  ix.state = sl.state;
  ix.sequence = sl.sequence;
  ix.erase_count = sl.erase_count;
  ix.used_blocks = sl.state == SegmentState::kSealed ? sl.used_blocks : 0;
  ix.blocks_per_segment = bps_;
  ix.log_id = log_id_of(sb_.uuid.bytes);
  ix.flags.assign(bps_, kFlagFree);
  if (sl.flags.size() != bps_) sl.flags.assign(bps_, kFlagFree);
  if (sl.state == SegmentState::kSealed) {
    for (uint32_t i = 1; i <= ix.used_blocks; ++i) {
      LogBlock pos(uint64_t{s.value()} * bps_ + i);
      uint16_t f = obsolete_dead_blocks && state_.live_entries(pos) == 0 ? kFlagObsolete : kFlagInUse;
      f = static_cast<uint16_t>(f | sl.flags[i]);
      // Flags only gain bits between erases (in use -> obsolete).
      if ((sl.flags[i] & ~f) != 0) {
        return Status::corruption(fmt::format("segment {} block {}: flag would move backwards", s.value(), i));
      }
      ix.flags[i] = f;
    }
  }
  sl.flags = ix.flags;
  encode_index(ix, buf_index_);
  RBDCACHE_RETURN_IF_ERROR(dev_.write(sb_.segment_offset(s.value()), buf_index_));
  ++blocks_written_;
  return Status::ok();
}

Status MetadataLog::switch_segment() {
  if (head_) {
    // The old head's records are made durable before the index that
    // vouches for them says so.
    RBDCACHE_RETURN_IF_ERROR(sync());
    SegmentSlot& old = alloc_.slot(*head_);
    old.state = SegmentState::kSealed;
    old.used_blocks = head_next_ - 1;
    RBDCACHE_RETURN_IF_ERROR(write_index(*head_, false));
    head_.reset();
  }
  for (;;) {
    std::optional<SegmentId> cand = alloc_.pick(state_, std::nullopt);
    if (!cand) {
      return Status::from_errno(ENOSPC, "metadata device full: no free or erasable segment left");
    }
    SegmentSlot& sl = alloc_.slot(*cand);
    state_.clear_segment(*cand);
    sl.used_blocks = 0;
    sl.flags.assign(bps_, kFlagFree);
    sl.sequence = next_seq_;
    if (alloc_.worn_out(*cand)) {
      sl.state = SegmentState::kRetired;
      RBDCACHE_RETURN_IF_ERROR(write_index(*cand, false));
      continue;
    }
    // Erase: a fresh index first (sector-atomic), then discard the records.
    sl.erase_count += 1;
    sl.state = SegmentState::kOpen;
    RBDCACHE_RETURN_IF_ERROR(write_index(*cand, false));
    RBDCACHE_RETURN_IF_ERROR(sync());
    uint64_t off = sb_.segment_offset(cand->value()) + kLogBlockSize;
    RBDCACHE_RETURN_IF_ERROR(dev_.discard(off, uint64_t{bps_ - 1} * kLogBlockSize));
    head_ = cand;
    head_next_ = 1;
    return Status::ok();
  }
}

// Sealed segments whose last live block died get their flags rewritten as
// obsolete. The rewrite is a hint and is not synced on its own.
Status MetadataLog::retire_dead_segments() {
  for (SegmentId s : state_.take_newly_dead()) {
    if (head_ && *head_ == s) continue;
    if (alloc_.slot(s).state != SegmentState::kSealed) continue;
    if (state_.live_blocks(s) != 0) continue;
    RBDCACHE_RETURN_IF_ERROR(write_index(s, true));
  }
  return Status::ok();
}

// Commit thread, commit_mu_ held (or the log not yet shared).
void MetadataLog::publish_stats_locked() {
  LogStats st;
  st.wear = alloc_.stats(state_);
  st.commits = commits_;
  st.entries_committed = entries_committed_;
  st.blocks_written = blocks_written_;
  st.bytes_written = blocks_written_ * kLogBlockSize;
  st.syncs = syncs_;
  st.checkpoints = checkpoints_;
  st.mappings = state_.mappings().size();
  uint32_t usable = st.wear.total - st.wear.retired;
  st.log_usage = usable ? static_cast<double>(st.wear.in_use) / usable : 1.0;
  std::lock_guard lk(stats_mu_);
  published_ = st;
}

// Any thread: the commit thread's last snapshot, and the ring's counters.
LogStats MetadataLog::stats() const {
  LogStats st;
  {
    std::lock_guard lk(stats_mu_);
    st = published_;
  }
  std::lock_guard lk(batch_mu_);
  if (ring_) {
    st.ring_slots = ring_->capacity();
    st.ring_pending = ring_->pending();
  }
  st.ring_recovered = ring_recovered_;
  st.ring_commit_requests = ring_commit_requests_;
  st.ring_grows = ring_grows_;
  return st;
}

}  // namespace rbdcache::metalog
