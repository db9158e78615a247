#include "cache/slot_table.h"

#include <algorithm>
#include <cstdlib>

#include "cache/engine_stats.h"
#include "util/log.h"

namespace rbdcache::cache {

namespace {

[[noreturn]] void violated(const std::string& what) {
  log::error("slot table invariant violated: {}", what);
  std::abort();
}

}  // namespace

SlotTable::SlotTable(Mapping map, std::unique_ptr<Policy> policy, metalog::MetadataLog& log)
    : nr_blocks_(map.nr_blocks()),
      block_size_(map.block_size()),
      log_(log),
#ifdef NDEBUG
      checks_(Checks::kNone),
#else
      checks_(Checks::kTouched),
#endif
      map_(std::move(map)),
      policy_(std::move(policy)),
      state_(nr_blocks_, State::kReady) {
  state_count_[static_cast<size_t>(State::kReady)] = nr_blocks_;
}

Status SlotTable::load(uint64_t origin_blocks) {
  RBDCACHE_RETURN_IF_ERROR(load_mappings(origin_blocks));
  if (log_.clean_data_trusted()) return Status::ok();
  // An unclean shutdown that the intent ring does not explain (a power cut,
  // a kernel crash): an in-place overwrite of a clean sub-block may have
  // reached the cache device while the committed metadata still calls it
  // clean. Drop every clean sub-block; dirty ones are the newest data and
  // writeback sends whatever the device holds.
  uint64_t subs = 0, slots = 0;
  {
    Locked l = lock();
    std::vector<std::pair<CacheBlock, SubBlockMask>> clean;
    for (const auto& [cb, m] : log_.mappings()) {
      SubBlockMask c = map_.valid_mask(cb).without(map_.dirty_mask(cb));
      if (c.any()) clean.emplace_back(cb, c);
    }
    for (const auto& [cb, c] : clean) {
      subs += c.count();
      l.drop(cb, c);
      slots += !map_.is_mapped(cb);
    }
  }
  if (subs > 0) {
    log::info(
        "the last shutdown was not clean and not a crash of the process alone (no intent ring "
        "of this boot): dropped {} clean cached sub-blocks, {} slots emptied, since the cache "
        "device may hold newer data than the metadata says",
        subs, slots);
  }
  return meta_error_.is_ok() ? Status::ok() : meta_error_;
}

Status SlotTable::load_mappings(uint64_t origin_blocks) {
  std::lock_guard<std::mutex> lock(mu_);
  const auto now = Clock::now();
  for (const auto& [cb, m] : log_.mappings()) {
    if (cb.value() >= nr_blocks_ || m.origin.value() >= origin_blocks) {
      return Status::corruption(fmt::format(
          "metadata maps cache block {} to origin block {}, outside this cache or origin; "
          "is this cache formatted for another origin?",
          cb.value(), m.origin.value()));
    }
    RBDCACHE_RETURN_IF_ERROR(map_.insert(m.origin, cb));
    map_.set_masks(cb, m.valid, m.dirty);
    set_state(cb, State::kMapped);
    policy_->on_insert(cb);
    if (map_.is_dirty(cb)) {
      policy_->set_dirty(cb, true);
      dirty_since_[cb] = now;
    }
  }
  // Every slot the committed metadata does not use is durably free: reserve
  // them all in the mapping and hand out low slots first.
  while (auto cb = map_.allocate_free()) ready_.push_back(*cb);
  std::reverse(ready_.begin(), ready_.end());
  check_counts(true);
  return Status::ok();
}

SlotTable::Locked SlotTable::lock() { return Locked(*this); }

// ------------------------------------------------------------ invariants

void SlotTable::set_state(CacheBlock cb, State s) {
  --state_count_[static_cast<size_t>(state_[cb.value()])];
  ++state_count_[static_cast<size_t>(s)];
  state_[cb.value()] = s;
}

void SlotTable::check_counts(bool recount) const {
  auto count = [this](State s) { return state_count_[static_cast<size_t>(s)]; };
  if (recount) {
    std::array<uint32_t, 4> n{};
    for (State s : state_) ++n[static_cast<size_t>(s)];
    if (n != state_count_) violated("the per-state slot counts do not match the slots");
  }
  const size_t ready = count(State::kReady), mapped = count(State::kMapped),
               quarantined = count(State::kQuarantined);
  if (ready != ready_.size()) {
    violated(fmt::format("{} slots ready, {} on the ready list", ready, ready_.size()));
  }
  if (quarantined != quarantine_.size()) {
    violated(fmt::format("{} slots quarantined, {} on the list", quarantined, quarantine_.size()));
  }
  if (mapped != map_.mapped_count()) {
    violated(fmt::format("{} slots mapped, the mapping holds {}", mapped, map_.mapped_count()));
  }
  if (flush_pending_.size() > dirty_since_.size()) violated("flush pending slots that are clean");
  if (dirty_since_.size() != map_.dirty_block_count()) {
    violated(fmt::format("{} dirty ages for {} dirty slots", dirty_since_.size(),
                         map_.dirty_block_count()));
  }
}

void SlotTable::check_slot(CacheBlock cb) const {
  const State s = state_[cb.value()];
  const bool mapped = map_.is_mapped(cb);
  if ((s == State::kMapped) != mapped) {
    violated(fmt::format("slot {} is {} in the mapping but in state {}", cb.value(),
                         mapped ? "mapped" : "unmapped", static_cast<int>(s)));
  }
  if (!mapped && map_.is_free(cb)) violated(fmt::format("slot {} is free in the mapping", cb.value()));
  const bool dirty = mapped && map_.is_dirty(cb);
  if (dirty != dirty_since_.contains(cb)) {
    violated(fmt::format("slot {}: dirty {} but dirty age {}", cb.value(), dirty,
                         dirty_since_.contains(cb)));
  }
  if (flush_pending_.contains(cb) && !dirty) {
    violated(fmt::format("slot {} pending in the flush but clean", cb.value()));
  }
  if (auto it = unknown_.find(cb); it != unknown_.end()) {
    if (!mapped || !map_.dirty_mask(cb).contains(it->second)) {
      violated(fmt::format("slot {} has unknown sub-blocks that are not dirty", cb.value()));
    }
  }
}

void SlotTable::check(const std::vector<CacheBlock>& touched) const {
  if (checks_ == Checks::kNone) return;
  if (checks_ == Checks::kFull) {
    for (uint32_t i = 0; i < nr_blocks_; ++i) check_slot(CacheBlock(i));
  } else {
    for (CacheBlock cb : touched) check_slot(cb);
  }
  check_counts(checks_ == Checks::kFull);
}

// ------------------------------------------------------------ a section

SlotTable::Locked::~Locked() {
  if (t_ == nullptr) return;
  for (CacheBlock cb : unmapped_) append(metalog::Entry::unmap(cb));
  for (CacheBlock cb : touched_) {
    if (!t_->map_.is_mapped(cb)) continue;
    append(metalog::Entry::map(cb, *t_->map_.origin_of(cb), t_->map_.valid_mask(cb),
                               t_->map_.dirty_mask(cb)));
  }
  if (t_->checks_ == Checks::kFull || !touched_.empty() || !unmapped_.empty()) {
    touched_.insert(touched_.end(), unmapped_.begin(), unmapped_.end());
    t_->check(touched_);
  }
}

void SlotTable::Locked::append(const metalog::Entry& e) {
  Status st = t_->log_.append(e);
  if (!st.is_ok()) fail(st);
}

void SlotTable::Locked::fail(const Status& st) {
  if (t_->meta_error_.is_ok()) {
    t_->meta_error_ = st;
    log::error(
        "the metadata device failed ({}): the cache is now READ-ONLY. Reads are served, writes "
        "fail with EIO, dirty data is written back to the origin. Once `rbdcache status` shows "
        "no dirty data, stop rbdcache, check or replace the metadata device, and format a new "
        "cache",
        st.to_string());
  }
}

void SlotTable::Locked::touch(CacheBlock cb) {
  if (std::find(touched_.begin(), touched_.end(), cb) == touched_.end()) touched_.push_back(cb);
}

void SlotTable::Locked::note_rewritten(CacheBlock cb) {
  auto it = t_->wb_in_flight_.find(cb);
  if (it != t_->wb_in_flight_.end()) it->second = true;
}

void SlotTable::Locked::note_dirty(CacheBlock cb, bool was_dirty) {
  if (!was_dirty && t_->map_.is_dirty(cb)) {
    t_->policy_->set_dirty(cb, true);
    t_->dirty_since_[cb] = Clock::now();
  }
}

void SlotTable::Locked::note_clean(CacheBlock cb, bool was_dirty) {
  if (was_dirty && !(t_->map_.is_mapped(cb) && t_->map_.is_dirty(cb))) {
    if (t_->map_.is_mapped(cb)) t_->policy_->set_dirty(cb, false);
    t_->dirty_since_.erase(cb);
    t_->flush_pending_.erase(cb);
  }
}

void SlotTable::Locked::clear_unknown(CacheBlock cb, const SubBlockMask& mask) {
  auto it = t_->unknown_.find(cb);
  if (it == t_->unknown_.end()) return;
  const SubBlockMask left = it->second.without(mask);
  t_->unknown_subs_ -= it->second.count() - left.count();
  if (left.none()) {
    t_->unknown_.erase(it);
  } else {
    it->second = left;
  }
}

std::optional<CacheBlock> SlotTable::Locked::take_ready(bool* low) {
  const size_t threshold = std::max<size_t>(8, t_->nr_blocks_ / 64);
  if (low) *low = t_->ready_.size() <= threshold;
  if (t_->ready_.empty() || failed()) return std::nullopt;
  CacheBlock cb = t_->ready_.back();
  t_->ready_.pop_back();
  t_->set_state(cb, State::kReserved);
  touch(cb);
  return cb;
}

void SlotTable::Locked::give_back(CacheBlock cb) {
  if (t_->state_[cb.value()] != State::kReserved) {
    violated(fmt::format("slot {} given back but not reserved", cb.value()));
  }
  t_->set_state(cb, State::kReady);
  t_->ready_.push_back(cb);
  touch(cb);
}

void SlotTable::Locked::insert(OriginBlock ob, CacheBlock cb) {
  if (t_->state_[cb.value()] != State::kReserved) {
    violated(fmt::format("slot {} inserted but not reserved", cb.value()));
  }
  Status st = t_->map_.insert(ob, cb);
  if (!st.is_ok()) violated(fmt::format("insert of slot {}: {}", cb.value(), st.to_string()));
  t_->set_state(cb, State::kMapped);
  t_->policy_->on_insert(cb);
  touch(cb);
}

void SlotTable::Locked::evict(CacheBlock cb) {
  note_rewritten(cb);
  clear_unknown(cb, SubBlockMask::first(kMaxSubBlocks));
  t_->dirty_since_.erase(cb);
  t_->flush_pending_.erase(cb);
  t_->policy_->on_remove(cb);
  t_->map_.remove(cb);
  // The slot stays reserved in the mapping until its unmap is durable. The
  // free list is LIFO, so the slot just freed is the one handed back.
  std::optional<CacheBlock> again = t_->map_.allocate_free();
  if (!again || *again != cb) violated(fmt::format("evicted slot {} not reserved again", cb.value()));
  t_->set_state(cb, State::kQuarantined);
  t_->quarantine_.push_back(Quarantined{cb, ++t_->unmap_gen_});
  ++t_->demotions_;
  unmapped_.push_back(cb);
  std::erase(touched_, cb);
}

void SlotTable::Locked::release_quarantine(uint64_t gen) {
  auto& q = t_->quarantine_;
  auto it = std::partition(q.begin(), q.end(), [gen](const Quarantined& x) { return x.gen > gen; });
  for (auto i = it; i != q.end(); ++i) {
    t_->set_state(i->slot, State::kReady);
    t_->ready_.push_back(i->slot);
    touch(i->slot);
  }
  q.erase(it, q.end());
}

size_t SlotTable::Locked::reclaim(BlockLocks& locks, size_t target) {
  if (failed()) return 0;  // an unmap could not be made durable
  size_t evicted = 0;
  while (ready_count() + quarantined_count() < target) {
    auto v = t_->policy_->choose_victim();
    if (!v) break;
    auto ob = t_->map_.origin_of(*v);
    if (!ob || t_->map_.is_dirty(*v) || !locks.try_lock(*ob)) {
      // In use right now: try again later.
      t_->policy_->restore(*v);
      break;
    }
    evict(*v);
    locks.unlock(*ob);
    ++evicted;
  }
  return evicted;
}

void SlotTable::Locked::mark_valid(CacheBlock cb, const SubBlockMask& subs) {
  subs.for_each_run([&](SubBlockRange r) { t_->map_.mark_valid(cb, r); });
  touch(cb);
}

void SlotTable::Locked::mark_dirty(CacheBlock cb, SubBlockRange r) {
  const bool was_dirty = t_->map_.is_dirty(cb);
  t_->map_.mark_dirty(cb, r);
  clear_unknown(cb, SubBlockMask::of(r));
  note_dirty(cb, was_dirty);
  note_rewritten(cb);
  touch(cb);
}

void SlotTable::Locked::mark_written_through(CacheBlock cb, SubBlockRange r) {
  const bool was_dirty = t_->map_.is_dirty(cb);
  t_->map_.mark_valid(cb, r);
  t_->map_.mark_clean(cb, r);
  clear_unknown(cb, SubBlockMask::of(r));
  note_rewritten(cb);
  note_clean(cb, was_dirty);
  touch(cb);
}

void SlotTable::Locked::mark_written_back(CacheBlock cb, OriginBlock ob, SubBlockRange r,
                                          bool changed) {
  if (changed || t_->map_.origin_of(cb) != ob) return;
  const bool was_dirty = t_->map_.is_dirty(cb);
  t_->map_.mark_clean(cb, r);
  note_clean(cb, was_dirty);
  touch(cb);
}

void SlotTable::Locked::forget_clean(CacheBlock cb, const SubBlockMask& mask) {
  const SubBlockMask clean = (mask & t_->map_.valid_mask(cb)).without(t_->map_.dirty_mask(cb));
  if (clean.none()) return;
  note_rewritten(cb);
  clean.for_each_run([&](SubBlockRange r) { t_->map_.invalidate(cb, r); });
  touch(cb);
}

void SlotTable::Locked::drop(CacheBlock cb, const SubBlockMask& mask) {
  note_rewritten(cb);
  const bool was_dirty = t_->map_.is_dirty(cb);
  mask.for_each_run([&](SubBlockRange r) { t_->map_.invalidate(cb, r); });
  clear_unknown(cb, mask);
  note_clean(cb, was_dirty);
  if (!t_->map_.any_valid(cb, t_->map_.whole_block())) {
    evict(cb);
  } else {
    touch(cb);
  }
}

void SlotTable::Locked::mark_unknown(CacheBlock cb, const SubBlockMask& mask) {
  const SubBlockMask m = mask & t_->map_.dirty_mask(cb);
  if (m.none()) return;
  SubBlockMask& u = t_->unknown_[cb];
  t_->unknown_subs_ += m.without(u).count();
  u = u | m;
  touch(cb);
  log::error(
      "cache slot {} (origin block {}): {} dirty sub-blocks have contents that cannot be "
      "vouched for after a cache device error; reads of them fail with EIO until they are "
      "rewritten or discarded (`rbdcache invalidate --discard-dirty`)",
      cb.value(), t_->map_.origin_of(cb)->value(), m.count());
}

SubBlockMask SlotTable::Locked::unknown_mask(CacheBlock cb) const {
  auto it = t_->unknown_.find(cb);
  return it == t_->unknown_.end() ? SubBlockMask() : it->second;
}

bool SlotTable::Locked::end_writeback(CacheBlock cb) {
  auto it = t_->wb_in_flight_.find(cb);
  const bool changed = it == t_->wb_in_flight_.end() || it->second;
  if (it != t_->wb_in_flight_.end()) t_->wb_in_flight_.erase(it);
  return changed;
}

bool SlotTable::Locked::dirty_before(CacheBlock cb, Clock::time_point limit) const {
  auto it = t_->dirty_since_.find(cb);
  return it != t_->dirty_since_.end() && it->second <= limit;
}

bool SlotTable::Locked::any_dirty_before(Clock::time_point limit) const {
  return std::any_of(t_->dirty_since_.begin(), t_->dirty_since_.end(),
                     [limit](const auto& kv) { return kv.second <= limit; });
}

void SlotTable::Locked::begin_flush() {
  t_->flush_pending_.clear();
  for (const auto& [cb, since] : t_->dirty_since_) t_->flush_pending_.insert(cb);
  t_->flush_active_ = true;
}

void SlotTable::Locked::end_flush() {
  t_->flush_pending_.clear();
  t_->flush_active_ = false;
}

void SlotTable::Locked::fill_stats(EngineStats& s) const {
  const Mapping& m = t_->map_;
  s.block_size = t_->block_size_;
  s.blocks = t_->nr_blocks_;
  s.cache_bytes = uint64_t{t_->block_size_} * t_->nr_blocks_;
  s.mapped_blocks = m.mapped_count();
  s.dirty_blocks = m.dirty_block_count();
  s.used_bytes = m.valid_sub_block_count() * kSubBlockSize;
  s.dirty_bytes = m.dirty_sub_block_count() * kSubBlockSize;
  const auto now = Clock::now();
  for (const auto& [cb, t] : t_->dirty_since_) {
    s.oldest_dirty_age_s =
        std::max(s.oldest_dirty_age_s, std::chrono::duration<double>(now - t).count());
  }
  s.mapping_bytes = m.memory_bytes() + t_->policy_->memory_bytes();
  s.mapping_bytes_per_block = static_cast<double>(s.mapping_bytes) / t_->nr_blocks_;
  s.ready_slots = static_cast<uint32_t>(t_->ready_.size());
  s.demotions = t_->demotions_;
  s.bypassed_bytes += t_->policy_->stats().sequential_bypassed_bytes;
  s.flush_active = t_->flush_active_;
  if (t_->flush_active_) {
    for (CacheBlock cb : t_->flush_pending_) {
      s.flush_left_bytes += uint64_t{m.dirty_mask(cb).count()} * kSubBlockSize;
    }
  }
  s.unknown_bytes = t_->unknown_subs_ * kSubBlockSize;
  if (failed()) {
    s.health = Health::kFailed;
    s.health_reason = "metadata device failed: " + t_->meta_error_.to_string();
  } else if (t_->unknown_subs_ > 0) {
    s.health = Health::kDegraded;
    s.health_reason = fmt::format("{} dirty bytes unreadable after cache device errors",
                                  s.unknown_bytes);
  }
}

}  // namespace rbdcache::cache
