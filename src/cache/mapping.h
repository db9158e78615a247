// The cache's in-RAM mapping: which origin block each cache slot holds, and
// which 4 KiB sub-blocks of it are valid and dirty. No I/O, no policy.
//
// Glossary:
//   slot / cache block (CacheBlock) - one block-sized slot on the cache device,
//                 numbered 0..nr_blocks-1.
//   origin block (OriginBlock) - origin byte offset / block size.
//   sub-block   - a 4 KiB piece of a cache block; a block has block_size/4096
//                 of them (1..256). Each has a valid bit and a dirty bit.
//   valid       - the cache slot holds the current bytes of that sub-block.
//   dirty       - valid, and newer than the origin (needs writeback).
//                 Invariant: dirty is a subset of valid.
//   free        - the slot is on the free list and holds nothing.
//   reserved    - handed out by allocate_free(), not yet mapped.
//   mapped      - holds an origin block; found by lookup().
//
// Slot states and transitions:
//   free --allocate_free()--> reserved --insert()--> mapped --remove()--> free
//   free --insert()--> mapped            (recovery: the metadata names the slot)
//   reserved --remove()--> free          (the promotion was abandoned)
//
// Memory (per cache block, 64-bit build; `bytes_per_block()` measures it):
//   Entry (origin, hash/free link, sub-block state)   16
//   hash buckets (one uint32 per two blocks)           2
//   dirty-slot bitmap (one bit per block)              0.125
//   total                                              18.125 bytes/block
// Sub-block state lives inline for blocks of up to 16 sub-blocks (4 KiB to
// 64 KiB): a 16-bit valid mask and a 16-bit dirty mask. Larger blocks (128 KiB
// to 1 MiB, 32..256 sub-blocks) keep three common states inline (empty; all
// valid and clean; all valid and dirty) and move a block that is only
// partly valid or partly dirty to an overflow record of two bitmaps
// (valid + dirty), allocated on demand and freed when the block returns to
// a common state. Overflow record sizes: 16 bytes (128 and 256 KiB blocks),
// 32 bytes (512 KiB), 64 bytes (1 MiB). So, per block size:
//
//   block size     mapping best case   mapping worst case (every block partial)
//   4 .. 64 KiB    18.1                18.1
//   128, 256 KiB   18.1                34.1
//   512 KiB        18.1                50.1
//   1 MiB          18.1                82.1
//
// The overflow pool is a std::vector, so after growth it may hold up to
// twice the records in use; memory_bytes() counts its capacity.
// The policy (smq_policy.h) adds about 11 bytes per block on top: 29.1 in
// all at 4..64 KiB blocks, budget 32.
//
// Thread safety: none. The engine's one Mapping lives in its slot table
// (cache/slot_table.h) and is used only under the table's mutex.
// Preconditions on slot numbers and sub-block ranges are checked with assert:
// the engine computes them, they are not untrusted input. Inputs that come
// from stored metadata (insert() during recovery) are checked and reported as
// a Status.
#pragma once

#include <array>
#include <bit>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <optional>
#include <vector>

#include "rbdcache/status.h"
#include "rbdcache/sub_block.h"
#include "rbdcache/types.h"

namespace rbdcache::cache {

inline constexpr uint32_t kMinBlockSize = 4u << 10;             // 4 KiB
inline constexpr uint32_t kMaxBlockSize = kMaxCacheBlockSize;   // 1 MiB
inline constexpr uint32_t kDefaultBlockSize = 64u << 10;        // 64 KiB
// Blocks with at most this many sub-blocks keep both masks inline.
inline constexpr uint32_t kInlineSubBlocks = 16;

// The sub-blocks that [offset, offset + length) touches at all, for a byte
// range inside one block (offset is relative to the block start).
SubBlockRange touched_sub_blocks(uint32_t offset, uint32_t length);
// The sub-blocks that [offset, offset + length) covers completely: only
// those may be marked valid by a write without reading the origin.
SubBlockRange covered_sub_blocks(uint32_t offset, uint32_t length);

// A dirty block, as handed to writeback.
struct DirtyBlock {
  OriginBlock origin;
  CacheBlock slot;
  bool operator==(const DirtyBlock&) const = default;
};

class Mapping {
 public:
  // `nr_blocks` slots (1 .. 2^32 - 2) of `block_size` bytes (a power of two,
  // 4 KiB .. 1 MiB). Fails with EINVAL otherwise.
  static Result<Mapping> create(uint32_t nr_blocks, uint32_t block_size = kDefaultBlockSize);

  Mapping(Mapping&&) = default;
  Mapping& operator=(Mapping&&) = default;
  Mapping(const Mapping&) = delete;
  Mapping& operator=(const Mapping&) = delete;

  uint32_t nr_blocks() const { return nr_blocks_; }
  uint32_t block_size() const { return block_size_; }
  uint32_t sub_blocks_per_block() const { return subs_; }
  // The range of every sub-block of a block.
  SubBlockRange whole_block() const { return SubBlockRange{0, subs_}; }

  // ---- Slots ----------------------------------------------------------------

  // Takes a free slot and makes it reserved; nullopt when none is free.
  // O(1). Slots come out lowest-first on a fresh mapping, then LIFO.
  std::optional<CacheBlock> allocate_free();
  uint32_t free_count() const { return free_count_; }
  uint32_t mapped_count() const { return mapped_count_; }

  bool is_free(CacheBlock cb) const;
  bool is_mapped(CacheBlock cb) const;

  // Maps `ob` to `cb`, which must be reserved or free, with no sub-block
  // valid. O(1). Fails (EINVAL) when `cb` is out of range or already mapped,
  // when `ob` is already mapped, or when ob >= 2^63. Those can only come from
  // bad stored metadata or an engine bug, so this is not a hot-path failure.
  Status insert(OriginBlock ob, CacheBlock cb);

  // The slot holding `ob`; O(1) expected (hash chains, load factor <= 2).
  std::optional<CacheBlock> lookup(OriginBlock ob) const;
  // The origin block a slot holds; nullopt for free and reserved slots.
  std::optional<OriginBlock> origin_of(CacheBlock cb) const;

  // Unmaps a mapped slot, or gives back a reserved one; the slot becomes
  // free. Dropping a block with dirty sub-blocks discards that data: the
  // engine must only do so for a discard/trim or after writeback.
  // Precondition: !is_free(cb).
  void remove(CacheBlock cb);

  // ---- Sub-blocks -----------------------------------------------------------
  // Preconditions for all: is_mapped(cb), r.end() <= sub_blocks_per_block().

  // Masks hold absolute sub-block numbers; the ranged forms keep only the
  // bits inside `r`.
  SubBlockMask valid_mask(CacheBlock cb) const;
  SubBlockMask dirty_mask(CacheBlock cb) const;
  SubBlockMask valid_mask(CacheBlock cb, SubBlockRange r) const;
  SubBlockMask dirty_mask(CacheBlock cb, SubBlockRange r) const;

  bool is_fully_valid(CacheBlock cb, SubBlockRange r) const;
  bool any_valid(CacheBlock cb, SubBlockRange r) const;
  bool is_dirty(CacheBlock cb) const;  // any sub-block dirty
  bool any_dirty(CacheBlock cb, SubBlockRange r) const;

  // The bytes of `r` in the slot are now current (filled from the origin).
  void mark_valid(CacheBlock cb, SubBlockRange r);
  // A write landed in the slot: `r` becomes valid and dirty.
  void mark_dirty(CacheBlock cb, SubBlockRange r);
  // Writeback of `r` finished: `r` stays valid, is no longer dirty.
  void mark_clean(CacheBlock cb, SubBlockRange r);
  // `r` no longer holds usable bytes (discard, failed fill). Drops dirty
  // bits too, with the same warning as remove().
  void invalidate(CacheBlock cb, SubBlockRange r);
  // Sets both masks at once (recovery). Precondition: dirty within valid,
  // both within the block.
  void set_masks(CacheBlock cb, const SubBlockMask& valid, const SubBlockMask& dirty);

  // ---- Dirty bookkeeping ----------------------------------------------------

  uint32_t dirty_block_count() const { return dirty_blocks_; }
  uint64_t dirty_sub_block_count() const { return dirty_subs_; }
  uint64_t valid_sub_block_count() const { return valid_subs_; }

  // Dirty blocks with origin >= `from`, in ascending origin order, at most
  // `limit` of them (the lowest ones). A snapshot: the caller re-checks each
  // block (lookup + is_dirty) before acting, since the mapping may change
  // while writeback runs.
  // Cost: O(nr_blocks / 64) to walk the dirty-slot bitmap, O(D) to gather
  // the D dirty blocks, O(k log k) to order the k returned (nth_element
  // first when D > limit). Memory: 16 bytes per returned block, only while
  // the caller holds the vector. Nothing is kept between calls, so the
  // steady-state cost per block stays at 0.125 bytes.
  std::vector<DirtyBlock> dirty_in_origin_order(
      OriginBlock from = OriginBlock(0),
      size_t limit = std::numeric_limits<size_t>::max()) const;

  // ---- Memory ---------------------------------------------------------------

  // Bytes of RAM this mapping holds now (allocated capacity, not just size).
  size_t memory_bytes() const;
  double bytes_per_block() const {
    return static_cast<double>(memory_bytes()) / static_cast<double>(nr_blocks_);
  }
  // Overflow records in use (always 0 for blocks of <= 64 KiB).
  uint32_t overflow_records_in_use() const { return ext_in_use_; }
  // Upper bound on bytes per block for a block size, when every block needs
  // an overflow record (see the table at the top of this file).
  static double worst_case_bytes_per_block(uint32_t block_size);

 private:
  static constexpr uint32_t kNil = std::numeric_limits<uint32_t>::max();
  // Entry::key encodings. Origins are < 2^63.
  static constexpr uint64_t kFreeTag = uint64_t{1} << 63;  // | prev free slot
  static constexpr uint64_t kReservedKey = ~uint64_t{0};
  // Entry::bits encodings for blocks of more than 16 sub-blocks; any other
  // value v is overflow record v - kExtFirstRecord.
  static constexpr uint32_t kExtEmpty = 0;
  static constexpr uint32_t kExtAllClean = 1;
  static constexpr uint32_t kExtAllDirty = 2;
  static constexpr uint32_t kExtFirstRecord = 3;

  // 16 bytes: the whole per-slot record.
  struct Entry {
    // mapped: the origin block. free: kFreeTag | previous free slot.
    // reserved: kReservedKey.
    uint64_t key = 0;
    // mapped: next slot in the hash chain. free: next free slot. else kNil.
    uint32_t next = kNil;
    // <= 16 sub-blocks: valid mask (low 16 bits) | dirty mask << 16.
    // > 16 sub-blocks: kExt* state or an overflow record number.
    uint32_t bits = 0;
  };
  static_assert(sizeof(Entry) == 16);

  Mapping(uint32_t nr_blocks, uint32_t block_size);

  uint32_t bucket_of(OriginBlock ob) const;
  bool mapped(const Entry& e) const { return (e.key & kFreeTag) == 0; }
  bool free_entry(const Entry& e) const {
    return (e.key & kFreeTag) != 0 && e.key != kReservedKey;
  }
  void free_list_unlink(uint32_t slot);
  void free_list_push(uint32_t slot);
  void hash_unlink(uint32_t slot);

  void load(const Entry& e, SubBlockMask& valid, SubBlockMask& dirty) const;
  // Stores new masks (dirty must be a subset of valid) and keeps the
  // counters, the dirty bitmap and the overflow records in step.
  void store(uint32_t slot, const SubBlockMask& valid, const SubBlockMask& dirty);
  uint32_t ext_alloc();
  void ext_free(uint32_t record);
  uint64_t* ext_words(uint32_t record) { return &ext_[size_t{record} * ext_record_words_]; }
  const uint64_t* ext_words(uint32_t record) const {
    return &ext_[size_t{record} * ext_record_words_];
  }

  uint32_t nr_blocks_ = 0;
  uint32_t block_size_ = 0;
  uint32_t subs_ = 0;
  SubBlockMask full_;  // every sub-block of a block

  std::vector<Entry> entries_;        // one per slot
  std::vector<uint32_t> buckets_;     // hash chain heads, ceil(nr_blocks/2)
  std::vector<uint64_t> dirty_bits_;  // one bit per slot: any sub-block dirty

  uint32_t free_head_ = kNil;
  uint32_t free_count_ = 0;
  uint32_t mapped_count_ = 0;
  uint32_t dirty_blocks_ = 0;
  uint64_t dirty_subs_ = 0;
  uint64_t valid_subs_ = 0;

  // Overflow records (> 16 sub-blocks): ext_record_words_ words each,
  // valid bitmap then dirty bitmap. Free records are chained through their
  // first word.
  std::vector<uint64_t> ext_;
  uint32_t ext_record_words_ = 0;
  uint32_t ext_mask_words_ = 0;
  uint32_t ext_free_head_ = kNil;
  uint32_t ext_in_use_ = 0;
};

}  // namespace rbdcache::cache
