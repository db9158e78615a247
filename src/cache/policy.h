// The cache policy interface: which misses to promote, which clean block to
// evict, which dirty block to write back first.
//
// Glossary:
//   promotion  - copying an origin block into a free cache slot (a miss that
//                the policy says is worth caching).
//   demotion   - dropping a clean block from the cache to free its slot.
//   victim     - the clean block the policy offers for demotion.
//   pass-through - serving a miss straight from/to the origin, caching nothing.
//   sequential stream - consecutive accesses covering a contiguous byte range;
//                past a cutoff its misses pass through (a backup or a dd must
//                not flush the hot set out).
//
// Rules every implementation keeps (dm-cache's): every call is O(1)
// amortised, never blocks, never does I/O and never fails. The answers are
// hints: they affect performance, never correctness. The engine owns the
// truth (Mapping) and checks it, e.g. it never demotes a block the mapping
// says is dirty, whatever choose_victim() returned.
//
// Thread safety: none. The engine calls its one policy only inside a slot
// table section (cache/slot_table.h), under the table's mutex.
//
// The engine tells the policy every change of the cache's contents:
//   promotion done        -> on_insert(cb); then set_dirty(cb, true) if the
//                            data came from a write
//   block became dirty    -> set_dirty(cb, true)
//   writeback made it clean -> set_dirty(cb, false)
//   block dropped         -> on_remove(cb)
// Recovery at start-up replays the same calls for every block it loads.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>

#include "rbdcache/types.h"

namespace rbdcache::cache {

// One request's access to one cache block (a request spanning several blocks
// makes one Access per block).
struct Access {
  OriginBlock block;
  uint64_t offset = 0;  // origin byte offset of the access (inside `block`)
  uint32_t bytes = 0;   // length of the access inside `block`
  bool is_write = false;
  // The slot holding `block`, when the access hits; nullopt on a miss.
  std::optional<CacheBlock> cached;
};

enum class Decision : uint8_t {
  kHit,          // the block is cached; nothing to decide
  kPassThrough,  // miss: serve it from/to the origin, do not cache
  kPromote,      // miss: worth caching (take a free slot, or demote a victim)
};

struct PolicyStats {
  uint64_t accesses = 0;
  uint64_t hits = 0;
  uint64_t misses = 0;
  uint64_t promote_decisions = 0;  // misses answered kPromote
  uint64_t promotions = 0;         // on_insert calls
  uint64_t demotions = 0;          // on_remove calls
  uint64_t victims_chosen = 0;
  uint64_t victims_restored = 0;   // restore() calls
  uint64_t sequential_misses = 0;  // misses passed through as sequential
  uint64_t sequential_bypassed_bytes = 0;
};

class Policy {
 public:
  virtual ~Policy() = default;

  // Records an access and, for a miss, says whether to promote. Hits
  // (a.cached set) are counted as on_hit(*a.cached) unless they belong to a
  // sequential stream. kPromote is only returned when a slot could be had
  // (a free one, or a clean victim).
  virtual Decision on_access(const Access& a) = 0;

  // The block was used (raises its standing). on_access() calls this for
  // hits; the engine calls it directly only for uses on_access does not see.
  virtual void on_hit(CacheBlock cb) = 0;

  // A promotion filled slot `cb` (clean, until set_dirty).
  virtual void on_insert(CacheBlock cb) = 0;
  // Slot `cb` no longer holds a block (demoted, discarded, or failed fill).
  virtual void on_remove(CacheBlock cb) = 0;
  // The block's dirty state changed. Dirty blocks are never victims.
  virtual void set_dirty(CacheBlock cb, bool dirty) = 0;

  // The coldest clean block, taken out of the running: until on_remove(cb)
  // or restore(cb), it is not offered again. nullopt when no clean block is
  // available. Never returns a block marked dirty.
  virtual std::optional<CacheBlock> choose_victim() = 0;
  // Puts back a victim the engine could not demote (say, I/O in flight on
  // it); it becomes the newest block of its level. Cannot fail.
  virtual void restore(CacheBlock cb) = 0;

  virtual PolicyStats stats() const = 0;
  // RAM held by the policy, bytes.
  virtual size_t memory_bytes() const = 0;
};

}  // namespace rbdcache::cache
