#include "metalog/writer.h"

#include <algorithm>

#include "metalog/block_codec.h"
#include "metalog/compactor.h"

namespace rbdcache::metalog {

Result<std::unique_ptr<MetadataLog>> MetadataLog::open(BlockDevice& dev) {
  Result<Recovery> rec = recover_log(dev);
  if (!rec.is_ok()) return rec.status();
  if (rec->superblock.read_only_features()) {
    return Status::from_errno(
        EROFS, fmt::format("superblock: unknown ro_compat feature flags {:#x}; the log can only be read",
                           rec->superblock.ro_compat & ~kRoCompatKnown));
  }
  std::unique_ptr<MetadataLog> log(new MetadataLog(dev, std::move(*rec)));
  RBDCACHE_RETURN_IF_ERROR(log->seal_recovered());
  return log;
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

MetadataLog::~MetadataLog() = default;

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
  std::lock_guard lk(batch_mu_);
  if (!error_.is_ok()) return error_;
  batch_.insert(batch_.end(), entries.begin(), entries.end());
  return Status::ok();
}

std::shared_future<Status> MetadataLog::commit_ticket() {
  std::lock_guard lk(batch_mu_);
  if (!error_.is_ok()) {
    std::promise<Status> p;
    p.set_value(error_);
    return p.get_future().share();
  }
  if (!batch_promise_) {
    batch_promise_ = std::make_shared<std::promise<Status>>();
    batch_future_ = batch_promise_->get_future().share();
  }
  return batch_future_;
}

Status MetadataLog::commit() {
  std::lock_guard lk(commit_mu_);
  return commit_locked();
}

Status MetadataLog::commit(const std::function<Status()>& before_write) {
  std::lock_guard lk(commit_mu_);
  return commit_locked(before_write);
}

Status MetadataLog::commit_locked(const std::function<Status()>& before_write) {
  std::vector<Entry> batch;
  std::shared_ptr<std::promise<Status>> promise;
  Status err;
  {
    std::lock_guard lk(batch_mu_);
    batch.swap(batch_);
    promise.swap(batch_promise_);
    err = error_;
  }
  Status st = err;
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
  if (promise) promise->set_value(st);
  return st;
}

Status MetadataLog::compact() {
  std::lock_guard lk(commit_mu_);
  RBDCACHE_RETURN_IF_ERROR(commit_locked());
  Status st = compact_locked();
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

LogStats MetadataLog::stats() const {
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
  return st;
}

CommitTimer::CommitTimer(MetadataLog& log, std::chrono::milliseconds interval)
    : log_(log), interval_(interval), thread_([this] { run(); }) {}

CommitTimer::~CommitTimer() {
  {
    std::lock_guard lk(mu_);
    stop_ = true;
  }
  cv_.notify_one();
  thread_.join();
}

std::shared_future<Status> CommitTimer::request() {
  std::shared_future<Status> f = log_.commit_ticket();
  {
    std::lock_guard lk(mu_);
    requested_ = true;
  }
  cv_.notify_one();
  return f;
}

void CommitTimer::run() {
  for (;;) {
    bool stop;
    {
      std::unique_lock lk(mu_);
      cv_.wait_for(lk, interval_, [this] { return requested_ || stop_; });
      requested_ = false;
      stop = stop_;
    }
    // Errors reach the callers through the commit tickets and the log's
    // sticky error.
    log_.commit().ignore_error();
    if (stop) return;
  }
}

}  // namespace rbdcache::metalog
