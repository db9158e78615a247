#include "cache/smq_policy.h"

#include <algorithm>
#include <bit>
#include <cassert>
#include <utility>

#include <fmt/format.h>

namespace rbdcache::cache {

// ---- StreamDetector -------------------------------------------------------------

bool StreamDetector::observe(uint64_t offset, uint32_t bytes) {
  ++clock_;
  if (cutoff_ == 0) return false;
  const uint64_t end = offset + bytes;
  for (Stream& s : streams_) {
    if (!s.live || offset + slack_ < s.next || offset > s.next + slack_) continue;
    if (end > s.next) {
      s.covered += end - s.next;
      s.next = end;
    }
    s.last_use = clock_;
    s.continued = true;
    return s.covered >= cutoff_;
  }
  // A new stream. Replace, in this order: an empty or idle slot, a
  // one-request slot (most random requests), a stream still short of the
  // cutoff, an established stream; the least recently used within a rank.
  // Random requests between a scan's requests then only push each other out.
  Stream* victim = &streams_[0];
  for (Stream& s : streams_) {
    const int rs = rank(s);
    const int rv = rank(*victim);
    if (rs < rv || (rs == rv && s.last_use < victim->last_use)) victim = &s;
  }
  *victim = Stream{end, bytes, clock_, true, false};
  return victim->covered >= cutoff_;
}

int StreamDetector::rank(const Stream& s) const {
  if (!s.live || clock_ - s.last_use > kIdleAccesses) return 0;
  if (!s.continued) return 1;
  if (s.covered < cutoff_) return 2;
  return 3;
}

// ---- HotspotTable ---------------------------------------------------------------

namespace {

// 20-bit tag | 4-bit count | 8-bit epoch.
constexpr uint32_t kTagShift = 12;
constexpr uint32_t kCountShift = 8;

uint32_t entry_tag(uint32_t e) { return e >> kTagShift; }
uint32_t entry_count(uint32_t e) { return (e >> kCountShift) & 0xFu; }
uint32_t make_entry(uint32_t tag, uint32_t count, uint32_t epoch) {
  return (tag << kTagShift) | (count << kCountShift) | (epoch & 0xFFu);
}

uint64_t mix64(uint64_t x) {
  // splitmix64 finaliser.
  x ^= x >> 30;
  x *= 0xBF58476D1CE4E5B9ull;
  x ^= x >> 27;
  x *= 0x94D049BB133111EBull;
  x ^= x >> 31;
  return x;
}

}  // namespace

HotspotTable::HotspotTable(uint32_t entries, uint32_t epoch_accesses, uint32_t window_epochs)
    : slots_(std::max<size_t>(kWays, (size_t{entries} + kWays - 1) / kWays * kWays), 0),
      sets_(static_cast<uint32_t>(slots_.size() / kWays)),
      epoch_accesses_(std::max(1u, epoch_accesses)),
      window_(window_epochs) {}

HotspotTable::Where HotspotTable::locate(uint64_t region) const {
  const uint64_t h = mix64(region);
  Where w;
  w.sets[0] = static_cast<uint32_t>(((h & 0xFFFFFFFFull) * sets_) >> 32);
  w.sets[1] = static_cast<uint32_t>((((h >> 22) & 0xFFFFFFFFull) * sets_) >> 32);
  w.tag = static_cast<uint32_t>(h >> 44);  // 20 bits
  if (w.tag == 0) w.tag = 1;               // 0 marks an empty entry
  return w;
}

const uint32_t* HotspotTable::find(const Where& w) const {
  for (uint32_t set : w.sets) {
    const uint32_t* ways = &slots_[size_t{set} * kWays];
    for (uint32_t i = 0; i < kWays; ++i) {
      if (ways[i] != 0 && entry_tag(ways[i]) == w.tag) return &ways[i];
    }
  }
  return nullptr;
}

uint32_t* HotspotTable::find(const Where& w) {
  return const_cast<uint32_t*>(std::as_const(*this).find(w));
}

uint32_t HotspotTable::live_count(uint32_t e) const {
  if (e == 0 || age(e) > window_) return 0;
  return entry_count(e);
}

uint32_t HotspotTable::count(uint64_t region) const {
  const uint32_t* e = find(locate(region));
  return e == nullptr ? 0 : live_count(*e);
}

void HotspotTable::forget(uint64_t region) {
  if (uint32_t* e = find(locate(region))) *e = 0;
}

uint32_t HotspotTable::touch(uint64_t region) {
  const Where w = locate(region);
  if (uint32_t* e = find(w)) {
    const uint32_t c = live_count(*e);
    if (c != 0 && age(*e) == 0) return c;  // already counted this epoch
    const uint32_t n = std::min(c + 1, kMaxCount);
    *e = make_entry(w.tag, n, epoch_);
    return n;
  }
  // Not tracked: take an empty way of either set, else the lowest live
  // count, oldest first.
  uint32_t* victim = nullptr;
  for (uint32_t set : w.sets) {
    uint32_t* ways = &slots_[size_t{set} * kWays];
    for (uint32_t i = 0; i < kWays && (victim == nullptr || *victim != 0); ++i) {
      uint32_t* e = &ways[i];
      if (victim == nullptr || *e == 0) {
        victim = e;
        continue;
      }
      const uint32_t ce = live_count(*e);
      const uint32_t cv = live_count(*victim);
      if (ce < cv || (ce == cv && age(*e) > age(*victim))) victim = e;
    }
  }
  *victim = make_entry(w.tag, 1, epoch_);
  return 1;
}

// ---- SmqPolicy: construction ----------------------------------------------------

Result<std::unique_ptr<SmqPolicy>> SmqPolicy::create(const SmqConfig& c) {
  auto bad = [](std::string what) { return Status::invalid_argument("smq policy: " + what); };
  if (c.nr_blocks == 0 || c.nr_blocks >= kNil) {
    return bad(fmt::format("{} blocks; must be 1 .. {}", c.nr_blocks, kNil - 1));
  }
  if (!std::has_single_bit(c.block_size) || c.block_size < (4u << 10) ||
      c.block_size > (1u << 20)) {
    return bad(fmt::format("block size {} must be a power of two from 4 KiB to 1 MiB",
                           c.block_size));
  }
  if (c.read_promote_hits < 1 || c.read_promote_hits > HotspotTable::kMaxCount ||
      c.write_promote_hits < 1 || c.write_promote_hits > HotspotTable::kMaxCount) {
    return bad(fmt::format("promote hits (read {}, write {}) must be 1 .. {}",
                           c.read_promote_hits, c.write_promote_hits, HotspotTable::kMaxCount));
  }
  if (c.hotspot_region_shift > 16) {
    return bad(fmt::format("hotspot region shift {} must be 0 .. 16", c.hotspot_region_shift));
  }
  if (c.hotspot_window_epochs < 1 || c.hotspot_window_epochs > 127) {
    return bad(fmt::format("hotspot window {} must be 1 .. 127 epochs", c.hotspot_window_epochs));
  }
  if (c.aging_period_accesses != 0 && c.aging_period_accesses < c.nr_blocks) {
    return bad(fmt::format("aging period {} must be >= the block count {}",
                           c.aging_period_accesses, c.nr_blocks));
  }
  const uint32_t entries =
      c.hotspot_entries != 0 ? c.hotspot_entries : std::max(64u, c.nr_blocks / 2);
  const uint32_t epoch =
      c.hotspot_epoch_accesses != 0 ? c.hotspot_epoch_accesses : std::max(16u, c.nr_blocks / 16);
  return std::unique_ptr<SmqPolicy>(new SmqPolicy(c, entries, epoch));
}

SmqPolicy::SmqPolicy(const SmqConfig& config, uint32_t hotspot_entries, uint32_t epoch_accesses)
    : config_(config),
      streams_(config.sequential_cutoff_bytes, config.sequential_slack_bytes),
      hotspot_(hotspot_entries, epoch_accesses, config.hotspot_window_epochs),
      prev_(config.nr_blocks, kNil),
      next_(config.nr_blocks, kNil),
      flags_(config.nr_blocks, 0) {
  if (config_.aging_period_accesses == 0) {
    config_.aging_period_accesses = 2 * uint64_t{config_.nr_blocks};
  }
  config_.hotspot_entries = hotspot_.entries();
  config_.hotspot_epoch_accesses = epoch_accesses;
}

// ---- SmqPolicy: queues ----------------------------------------------------------

void SmqPolicy::push_tail(uint32_t b) {
  const bool dirty = (flags_[b] & kDirty) != 0;
  const uint32_t lvl = level(b);
  Queue& q = queue(dirty, lvl);
  prev_[b] = q.tail;
  next_[b] = kNil;
  if (q.tail == kNil) {
    q.head = b;
  } else {
    next_[q.tail] = b;
  }
  q.tail = b;
  nonempty_[dirty ? 1 : 0] |= 1u << lvl;
}

void SmqPolicy::push_head(uint32_t b) {
  const bool dirty = (flags_[b] & kDirty) != 0;
  const uint32_t lvl = level(b);
  Queue& q = queue(dirty, lvl);
  prev_[b] = kNil;
  next_[b] = q.head;
  if (q.head == kNil) {
    q.tail = b;
  } else {
    prev_[q.head] = b;
  }
  q.head = b;
  nonempty_[dirty ? 1 : 0] |= 1u << lvl;
}

void SmqPolicy::unlink(uint32_t b) {
  const bool dirty = (flags_[b] & kDirty) != 0;
  const uint32_t lvl = level(b);
  Queue& q = queue(dirty, lvl);
  if (prev_[b] == kNil) {
    q.head = next_[b];
  } else {
    next_[prev_[b]] = next_[b];
  }
  if (next_[b] == kNil) {
    q.tail = prev_[b];
  } else {
    prev_[next_[b]] = prev_[b];
  }
  prev_[b] = kNil;
  next_[b] = kNil;
  if (q.head == kNil) nonempty_[dirty ? 1 : 0] &= ~(1u << lvl);
}

std::optional<CacheBlock> SmqPolicy::oldest_of_lowest(bool dirty) const {
  const uint32_t mask = nonempty_[dirty ? 1 : 0];
  if (mask == 0) return std::nullopt;
  const uint32_t lvl = static_cast<uint32_t>(std::countr_zero(mask));
  return CacheBlock(queues_[dirty ? 1 : 0][lvl].head);
}

// ---- SmqPolicy: ageing ----------------------------------------------------------

void SmqPolicy::age_one() {
  const uint32_t b = sweep_cursor_;
  sweep_cursor_ = b + 1 == config_.nr_blocks ? 0 : b + 1;
  const uint8_t f = flags_[b];
  if ((f & kResident) == 0) return;
  if ((f & kHitSinceSweep) != 0) {
    flags_[b] = static_cast<uint8_t>(f & ~kHitSinceSweep);
    return;
  }
  const uint32_t lvl = level(b);
  if (lvl == 0) return;
  if ((f & kDetached) != 0) {
    set_level(b, lvl - 1);
    return;
  }
  unlink(b);
  set_level(b, lvl - 1);
  push_head(b);  // colder than everything that earned this level
}

// ---- SmqPolicy: the interface ---------------------------------------------------

bool SmqPolicy::can_allocate() const {
  return resident_ < config_.nr_blocks || nonempty_[0] != 0;
}

Decision SmqPolicy::on_access(const Access& a) {
  ++stats_.accesses;
  hotspot_.tick();
  sweep_credit_ += config_.nr_blocks;
  while (sweep_credit_ >= config_.aging_period_accesses) {  // at most once
    sweep_credit_ -= config_.aging_period_accesses;
    age_one();
  }

  const bool sequential = streams_.observe(a.offset, a.bytes);
  if (a.cached) {
    ++stats_.hits;
    if (!sequential) on_hit(*a.cached);
    return Decision::kHit;
  }
  ++stats_.misses;
  if (sequential) {
    ++stats_.sequential_misses;
    stats_.sequential_bypassed_bytes += a.bytes;
    return Decision::kPassThrough;
  }
  const uint64_t region = a.block.value() >> config_.hotspot_region_shift;
  const uint32_t hits = hotspot_.touch(region);
  const uint32_t needed = a.is_write ? config_.write_promote_hits : config_.read_promote_hits;
  const bool eager = config_.promote_into_free_slots && resident_ < config_.nr_blocks;
  if ((hits >= needed || eager) && can_allocate()) {
    hotspot_.forget(region);
    ++stats_.promote_decisions;
    return Decision::kPromote;
  }
  return Decision::kPassThrough;
}

void SmqPolicy::on_hit(CacheBlock cb) {
  const uint32_t b = cb.value();
  assert(b < config_.nr_blocks && (flags_[b] & kResident) != 0);
  const uint8_t f = flags_[b];
  const bool first = (f & kHitSinceSweep) == 0;
  if ((f & kDetached) != 0) {
    flags_[b] = static_cast<uint8_t>(f | kHitSinceSweep);
    return;
  }
  unlink(b);
  if (first) {
    flags_[b] = static_cast<uint8_t>(f | kHitSinceSweep);
    if (level(b) + 1 < kLevels) set_level(b, level(b) + 1);
  }
  push_tail(b);
}

void SmqPolicy::on_insert(CacheBlock cb) {
  const uint32_t b = cb.value();
  assert(b < config_.nr_blocks && (flags_[b] & kResident) == 0);
  flags_[b] = kResident;  // level 0, clean, not hit
  push_tail(b);
  ++resident_;
  ++stats_.promotions;
}

void SmqPolicy::on_remove(CacheBlock cb) {
  const uint32_t b = cb.value();
  assert(b < config_.nr_blocks && (flags_[b] & kResident) != 0);
  if ((flags_[b] & kDetached) == 0) unlink(b);
  flags_[b] = 0;
  --resident_;
  ++stats_.demotions;
}

void SmqPolicy::set_dirty(CacheBlock cb, bool dirty) {
  const uint32_t b = cb.value();
  assert(b < config_.nr_blocks && (flags_[b] & kResident) != 0);
  if (((flags_[b] & kDirty) != 0) == dirty) return;
  const bool detached = (flags_[b] & kDetached) != 0;
  if (!detached) unlink(b);
  flags_[b] = static_cast<uint8_t>(dirty ? (flags_[b] | kDirty) : (flags_[b] & ~kDirty));
  if (!detached) push_tail(b);
}

std::optional<CacheBlock> SmqPolicy::choose_victim() {
  const std::optional<CacheBlock> v = oldest_of_lowest(/*dirty=*/false);
  if (!v) return std::nullopt;
  const uint32_t b = v->value();
  unlink(b);
  flags_[b] = static_cast<uint8_t>(flags_[b] | kDetached);
  ++stats_.victims_chosen;
  return v;
}

void SmqPolicy::restore(CacheBlock cb) {
  const uint32_t b = cb.value();
  assert(b < config_.nr_blocks && (flags_[b] & kDetached) != 0);
  flags_[b] = static_cast<uint8_t>(flags_[b] & ~kDetached);
  push_tail(b);
  ++stats_.victims_restored;
}

std::optional<uint32_t> SmqPolicy::level_of(CacheBlock cb) const {
  if (cb.value() >= config_.nr_blocks || (flags_[cb.value()] & kResident) == 0) {
    return std::nullopt;
  }
  return level(cb.value());
}

size_t SmqPolicy::memory_bytes() const {
  return sizeof(*this) + prev_.capacity() * sizeof(uint32_t) +
         next_.capacity() * sizeof(uint32_t) + flags_.capacity() * sizeof(uint8_t) +
         hotspot_.memory_bytes();
}

}  // namespace rbdcache::cache
