#include "cache/mapping.h"

#include <algorithm>
#include <cassert>

#include <fmt/format.h>

namespace rbdcache::cache {

SubBlockRange touched_sub_blocks(uint32_t offset, uint32_t length) {
  if (length == 0) return SubBlockRange{offset >> kSubBlockShift, 0};
  uint32_t first = offset >> kSubBlockShift;
  uint32_t last = (offset + length - 1) >> kSubBlockShift;
  return SubBlockRange{first, last - first + 1};
}

SubBlockRange covered_sub_blocks(uint32_t offset, uint32_t length) {
  uint32_t first = (offset + kSubBlockSize - 1) >> kSubBlockShift;
  uint32_t end = (offset + length) >> kSubBlockShift;
  if (end <= first) return SubBlockRange{first, 0};
  return SubBlockRange{first, end - first};
}

// ---- Construction -------------------------------------------------------------

Result<Mapping> Mapping::create(uint32_t nr_blocks, uint32_t block_size) {
  if (nr_blocks == 0 || nr_blocks >= kNil) {
    return Status::invalid_argument(
        fmt::format("cache mapping: {} blocks; must be 1 .. {}", nr_blocks, kNil - 1));
  }
  if (!std::has_single_bit(block_size) || block_size < kMinBlockSize ||
      block_size > kMaxBlockSize) {
    return Status::invalid_argument(fmt::format(
        "cache mapping: block size {} must be a power of two from 4 KiB to 1 MiB", block_size));
  }
  return Mapping(nr_blocks, block_size);
}

Mapping::Mapping(uint32_t nr_blocks, uint32_t block_size)
    : nr_blocks_(nr_blocks),
      block_size_(block_size),
      subs_(block_size >> kSubBlockShift),
      full_(SubBlockMask::of(SubBlockRange{0, block_size >> kSubBlockShift})),
      entries_(nr_blocks),
      buckets_((nr_blocks + 1) / 2, kNil),
      dirty_bits_((size_t{nr_blocks} + 63) / 64, 0) {
  // Free list 0 -> 1 -> ... -> n-1, so a fresh cache fills from slot 0.
  for (uint32_t i = 0; i < nr_blocks_; ++i) {
    entries_[i].key = kFreeTag | (i == 0 ? kNil : i - 1);
    entries_[i].next = i + 1 == nr_blocks_ ? kNil : i + 1;
  }
  free_head_ = 0;
  free_count_ = nr_blocks_;
  if (subs_ > kInlineSubBlocks) {
    ext_mask_words_ = (subs_ + 63) / 64;
    ext_record_words_ = 2 * ext_mask_words_;
  }
}

// ---- Slots --------------------------------------------------------------------

uint32_t Mapping::bucket_of(OriginBlock ob) const {
  // Fibonacci hashing, then a multiply-shift range reduction so the bucket
  // count need not be a power of two.
  const uint64_t h = (ob.value() * 0x9E3779B97F4A7C15ull) >> 32;
  return static_cast<uint32_t>((h * buckets_.size()) >> 32);
}

void Mapping::free_list_unlink(uint32_t slot) {
  Entry& e = entries_[slot];
  const uint32_t prev = static_cast<uint32_t>(e.key & ~kFreeTag);
  const uint32_t next = e.next;
  if (prev == kNil) {
    free_head_ = next;
  } else {
    entries_[prev].next = next;
  }
  if (next != kNil) entries_[next].key = kFreeTag | prev;
  --free_count_;
}

void Mapping::free_list_push(uint32_t slot) {
  Entry& e = entries_[slot];
  e.key = kFreeTag | kNil;
  e.next = free_head_;
  e.bits = 0;
  if (free_head_ != kNil) entries_[free_head_].key = kFreeTag | slot;
  free_head_ = slot;
  ++free_count_;
}

std::optional<CacheBlock> Mapping::allocate_free() {
  if (free_head_ == kNil) return std::nullopt;
  const uint32_t slot = free_head_;
  free_list_unlink(slot);
  entries_[slot].key = kReservedKey;
  entries_[slot].next = kNil;
  return CacheBlock(slot);
}

bool Mapping::is_free(CacheBlock cb) const {
  assert(cb.value() < nr_blocks_);
  return free_entry(entries_[cb.value()]);
}

bool Mapping::is_mapped(CacheBlock cb) const {
  assert(cb.value() < nr_blocks_);
  return mapped(entries_[cb.value()]);
}

Status Mapping::insert(OriginBlock ob, CacheBlock cb) {
  if (cb.value() >= nr_blocks_) {
    return Status::invalid_argument(
        fmt::format("cache mapping: slot {} out of range ({} slots)", cb.value(), nr_blocks_));
  }
  if ((ob.value() & kFreeTag) != 0) {
    return Status::invalid_argument(
        fmt::format("cache mapping: origin block {} out of range", ob.value()));
  }
  const uint32_t slot = cb.value();
  Entry& e = entries_[slot];
  if (mapped(e)) {
    return Status::invalid_argument(fmt::format(
        "cache mapping: slot {} already holds origin block {}", slot, e.key));
  }
  if (auto existing = lookup(ob)) {
    return Status::invalid_argument(fmt::format(
        "cache mapping: origin block {} already in slot {}", ob.value(), existing->value()));
  }
  if (free_entry(e)) free_list_unlink(slot);
  const uint32_t b = bucket_of(ob);
  e.key = ob.value();
  e.next = buckets_[b];
  e.bits = 0;
  buckets_[b] = slot;
  ++mapped_count_;
  return Status::ok();
}

std::optional<CacheBlock> Mapping::lookup(OriginBlock ob) const {
  for (uint32_t i = buckets_[bucket_of(ob)]; i != kNil; i = entries_[i].next) {
    if (entries_[i].key == ob.value()) return CacheBlock(i);
  }
  return std::nullopt;
}

std::optional<OriginBlock> Mapping::origin_of(CacheBlock cb) const {
  assert(cb.value() < nr_blocks_);
  const Entry& e = entries_[cb.value()];
  if (!mapped(e)) return std::nullopt;
  return OriginBlock(e.key);
}

void Mapping::hash_unlink(uint32_t slot) {
  uint32_t* link = &buckets_[bucket_of(OriginBlock(entries_[slot].key))];
  while (*link != slot) {
    assert(*link != kNil);
    link = &entries_[*link].next;
  }
  *link = entries_[slot].next;
}

void Mapping::remove(CacheBlock cb) {
  assert(cb.value() < nr_blocks_);
  const uint32_t slot = cb.value();
  Entry& e = entries_[slot];
  assert(!free_entry(e));
  if (mapped(e)) {
    store(slot, SubBlockMask(), SubBlockMask());  // settles counters, frees overflow
    hash_unlink(slot);
    --mapped_count_;
  }
  free_list_push(slot);
}

// ---- Sub-blocks -----------------------------------------------------------------

void Mapping::load(const Entry& e, SubBlockMask& valid, SubBlockMask& dirty) const {
  valid = SubBlockMask();
  dirty = SubBlockMask();
  if (subs_ <= kInlineSubBlocks) {
    valid.word(0) = e.bits & 0xFFFFu;
    dirty.word(0) = e.bits >> 16;
    return;
  }
  switch (e.bits) {
    case kExtEmpty:
      return;
    case kExtAllClean:
      valid = full_;
      return;
    case kExtAllDirty:
      valid = full_;
      dirty = full_;
      return;
    default: {
      const uint64_t* w = ext_words(e.bits - kExtFirstRecord);
      for (uint32_t i = 0; i < ext_mask_words_; ++i) {
        valid.word(i) = w[i];
        dirty.word(i) = w[ext_mask_words_ + i];
      }
      return;
    }
  }
}

uint32_t Mapping::ext_alloc() {
  ++ext_in_use_;
  if (ext_free_head_ != kNil) {
    const uint32_t r = ext_free_head_;
    ext_free_head_ = static_cast<uint32_t>(ext_words(r)[0]);
    return r;
  }
  const uint32_t r = static_cast<uint32_t>(ext_.size() / ext_record_words_);
  ext_.resize(ext_.size() + ext_record_words_);
  return r;
}

void Mapping::ext_free(uint32_t record) {
  --ext_in_use_;
  ext_words(record)[0] = ext_free_head_;
  ext_free_head_ = record;
}

void Mapping::store(uint32_t slot, const SubBlockMask& valid, const SubBlockMask& dirty) {
  assert(valid.contains(dirty));
  assert(full_.contains(valid));
  Entry& e = entries_[slot];
  SubBlockMask old_valid;
  SubBlockMask old_dirty;
  load(e, old_valid, old_dirty);

  // Counters and the dirty-slot bitmap.
  const uint32_t old_d = old_dirty.count();
  const uint32_t new_d = dirty.count();
  dirty_subs_ = dirty_subs_ - old_d + new_d;
  valid_subs_ = valid_subs_ - old_valid.count() + valid.count();
  if ((old_d == 0) != (new_d == 0)) {
    uint64_t& word = dirty_bits_[slot / 64];
    const uint64_t bit = uint64_t{1} << (slot % 64);
    if (new_d != 0) {
      word |= bit;
      ++dirty_blocks_;
    } else {
      word &= ~bit;
      --dirty_blocks_;
    }
  }

  if (subs_ <= kInlineSubBlocks) {
    e.bits = static_cast<uint32_t>(valid.word(0) | (dirty.word(0) << 16));
    return;
  }
  uint32_t state;
  if (valid.none()) {
    state = kExtEmpty;
  } else if (valid == full_ && dirty.none()) {
    state = kExtAllClean;
  } else if (dirty == full_) {
    state = kExtAllDirty;
  } else {
    // Partial: keep the record the block already has, or take one.
    const uint32_t record = e.bits >= kExtFirstRecord ? e.bits - kExtFirstRecord : ext_alloc();
    uint64_t* w = ext_words(record);
    for (uint32_t i = 0; i < ext_mask_words_; ++i) {
      w[i] = valid.word(i);
      w[ext_mask_words_ + i] = dirty.word(i);
    }
    e.bits = record + kExtFirstRecord;
    return;
  }
  if (e.bits >= kExtFirstRecord) ext_free(e.bits - kExtFirstRecord);
  e.bits = state;
}

SubBlockMask Mapping::valid_mask(CacheBlock cb) const {
  assert(is_mapped(cb));
  SubBlockMask v;
  SubBlockMask d;
  load(entries_[cb.value()], v, d);
  return v;
}

SubBlockMask Mapping::dirty_mask(CacheBlock cb) const {
  assert(is_mapped(cb));
  SubBlockMask v;
  SubBlockMask d;
  load(entries_[cb.value()], v, d);
  return d;
}

SubBlockMask Mapping::valid_mask(CacheBlock cb, SubBlockRange r) const {
  assert(r.end() <= subs_);
  return valid_mask(cb) & SubBlockMask::of(r);
}

SubBlockMask Mapping::dirty_mask(CacheBlock cb, SubBlockRange r) const {
  assert(r.end() <= subs_);
  return dirty_mask(cb) & SubBlockMask::of(r);
}

bool Mapping::is_fully_valid(CacheBlock cb, SubBlockRange r) const {
  assert(r.end() <= subs_);
  return valid_mask(cb).contains(SubBlockMask::of(r));
}

bool Mapping::any_valid(CacheBlock cb, SubBlockRange r) const {
  return valid_mask(cb, r).any();
}

bool Mapping::is_dirty(CacheBlock cb) const {
  assert(cb.value() < nr_blocks_);
  return (dirty_bits_[cb.value() / 64] >> (cb.value() % 64)) & 1;
}

bool Mapping::any_dirty(CacheBlock cb, SubBlockRange r) const {
  if (!is_dirty(cb)) return false;
  return dirty_mask(cb, r).any();
}

void Mapping::set_masks(CacheBlock cb, const SubBlockMask& valid, const SubBlockMask& dirty) {
  assert(is_mapped(cb) && valid.fits(subs_) && valid.contains(dirty));
  store(cb.value(), valid, dirty);
}

void Mapping::mark_valid(CacheBlock cb, SubBlockRange r) {
  assert(is_mapped(cb) && r.end() <= subs_);
  SubBlockMask v;
  SubBlockMask d;
  load(entries_[cb.value()], v, d);
  store(cb.value(), v | SubBlockMask::of(r), d);
}

void Mapping::mark_dirty(CacheBlock cb, SubBlockRange r) {
  assert(is_mapped(cb) && r.end() <= subs_);
  SubBlockMask v;
  SubBlockMask d;
  load(entries_[cb.value()], v, d);
  const SubBlockMask m = SubBlockMask::of(r);
  store(cb.value(), v | m, d | m);
}

void Mapping::mark_clean(CacheBlock cb, SubBlockRange r) {
  assert(is_mapped(cb) && r.end() <= subs_);
  SubBlockMask v;
  SubBlockMask d;
  load(entries_[cb.value()], v, d);
  store(cb.value(), v, d.without(SubBlockMask::of(r)));
}

void Mapping::invalidate(CacheBlock cb, SubBlockRange r) {
  assert(is_mapped(cb) && r.end() <= subs_);
  SubBlockMask v;
  SubBlockMask d;
  load(entries_[cb.value()], v, d);
  const SubBlockMask m = SubBlockMask::of(r);
  store(cb.value(), v.without(m), d.without(m));
}

// ---- Dirty iteration ------------------------------------------------------------

std::vector<DirtyBlock> Mapping::dirty_in_origin_order(OriginBlock from, size_t limit) const {
  std::vector<DirtyBlock> out;
  if (limit == 0) return out;
  out.reserve(std::min<size_t>(dirty_blocks_, limit));
  for (size_t w = 0; w < dirty_bits_.size(); ++w) {
    uint64_t bits = dirty_bits_[w];
    while (bits != 0) {
      const uint32_t slot = static_cast<uint32_t>(w * 64 + std::countr_zero(bits));
      bits &= bits - 1;
      const OriginBlock ob(entries_[slot].key);
      if (ob >= from) out.push_back(DirtyBlock{ob, CacheBlock(slot)});
    }
  }
  auto by_origin = [](const DirtyBlock& a, const DirtyBlock& b) { return a.origin < b.origin; };
  if (out.size() > limit) {
    std::nth_element(out.begin(), out.begin() + static_cast<ptrdiff_t>(limit), out.end(),
                     by_origin);
    out.resize(limit);
  }
  std::sort(out.begin(), out.end(), by_origin);
  return out;
}

// ---- Memory ---------------------------------------------------------------------

size_t Mapping::memory_bytes() const {
  return sizeof(*this) + entries_.capacity() * sizeof(Entry) +
         buckets_.capacity() * sizeof(uint32_t) + dirty_bits_.capacity() * sizeof(uint64_t) +
         ext_.capacity() * sizeof(uint64_t);
}

double Mapping::worst_case_bytes_per_block(uint32_t block_size) {
  const uint32_t subs = block_size >> kSubBlockShift;
  double bytes = sizeof(Entry) + sizeof(uint32_t) / 2.0 + 1 / 8.0;
  if (subs > kInlineSubBlocks) bytes += 2.0 * ((subs + 63) / 64) * sizeof(uint64_t);
  return bytes;
}

}  // namespace rbdcache::cache
