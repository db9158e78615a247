// SlotTable: the state of every cache slot, and the only code that changes
// it. It owns the mapping (which origin block a slot holds, its valid and
// dirty sub-blocks), the policy, the slot life cycle, the dirty ages, and the
// metadata entries that make each change persistent.
//
// Slot life cycle (each slot is in exactly one state):
//
//   ready --take_ready()--> reserved --insert()--> mapped
//     ^                        |                     |
//     +------give_back()-------+                  evict()
//     |                                              v
//     +-----release_quarantine(gen) <--------- quarantined
//
//   ready        reserved for new data: its previous contents are durably
//                unmapped, so anything may be written into it.
//   reserved     handed to one request (a promotion or a write miss), which
//                writes its data and then inserts it, or gives it back.
//   mapped       holds an origin block; found by lookup().
//   quarantined  unmapped in memory; its unmap entry is not yet committed,
//                so the committed metadata may still point at its old data.
//                It becomes ready once a commit started after the unmap has
//                finished.
//
// Persistence: every change a Locked section makes to a mapped slot is
// appended to the metadata log once, as the slot's full state, when the
// section ends (evict() appends the unmap). Callers change a slot only after
// the data it describes is on the cache device, so an entry never names data
// that was not written.
//
// Health: a failed metadata append puts the table in the failed state (the
// committed metadata no longer follows memory: the engine turns read-only).
// Sub-blocks whose cache contents are unknown after a device error and whose
// dirty data could not be saved to the origin are marked unknown: reads of
// them fail, writeback skips them, a full overwrite or a discard clears them.
//
// Invariants (check()): every slot is in one state; the ready and quarantine
// lists and the mapping agree with the states; a slot has a dirty age iff it
// is mapped and dirty; the operator flush's pending set holds only dirty
// slots; unknown sub-blocks are dirty. Tests check every slot after every
// section (Checks::kFull); debug builds check the slots each section touched.
//
// Threads and locks: any thread, through lock(). The table's mutex is the
// third lock in the engine's order (block lock, origin lock, slot table,
// BlockLocks internals): it is taken while holding block or origin locks,
// never the other way round, and never held across I/O or a callback.
#pragma once

#include <array>
#include <chrono>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "cache/block_locks.h"
#include "cache/mapping.h"
#include "cache/policy.h"
#include "metalog/writer.h"
#include "rbdcache/status.h"

namespace rbdcache::cache {

struct EngineStats;

class SlotTable {
 public:
  using Clock = std::chrono::steady_clock;
  enum class Checks { kNone, kTouched, kFull };

  SlotTable(Mapping map, std::unique_ptr<Policy> policy, metalog::MetadataLog& log);

  // Loads the committed mappings of `log`; every slot they do not name is
  // ready. Fails on an entry outside this cache or origin. Unless the log
  // vouches for clean data (MetadataLog::clean_data_trusted: a clean close,
  // or a crash of the process alone), every clean sub-block is dropped: the
  // map entries are appended, and slots left empty are quarantined until a
  // commit. Call once, before any other use; any thread.
  [[nodiscard]] Status load(uint64_t origin_blocks);

  void set_checks(Checks c) { checks_ = c; }
  uint32_t nr_blocks() const { return nr_blocks_; }
  uint32_t block_size() const { return block_size_; }

  class Locked;
  // Takes the table's mutex for one section.
  Locked lock();

 private:
  enum class State : uint8_t { kReady, kReserved, kMapped, kQuarantined };
  struct Quarantined {
    CacheBlock slot;
    uint64_t gen;
  };

  Status load_mappings(uint64_t origin_blocks);
  void check(const std::vector<CacheBlock>& touched) const;
  void check_slot(CacheBlock cb) const;
  // O(1): the per-state counts against the lists and the mapping; with
  // `recount`, the counts themselves against every slot's state (O(n)).
  void check_counts(bool recount) const;
  void set_state(CacheBlock cb, State s);

  const uint32_t nr_blocks_;
  const uint32_t block_size_;
  metalog::MetadataLog& log_;
  Checks checks_;

  mutable std::mutex mu_;
  Mapping map_;
  std::unique_ptr<Policy> policy_;
  std::vector<State> state_;
  std::array<uint32_t, 4> state_count_{};  // slots in each State
  std::vector<CacheBlock> ready_;
  std::vector<Quarantined> quarantine_;
  uint64_t unmap_gen_ = 0;
  std::unordered_map<CacheBlock, Clock::time_point> dirty_since_;
  // Slots whose dirty data a writeback has copied out and is writing to the
  // origin, and whether they changed since.
  std::unordered_map<CacheBlock, bool> wb_in_flight_;
  // The operator's flush: slots dirty when it began and not yet cleaned.
  std::unordered_set<CacheBlock> flush_pending_;
  bool flush_active_ = false;
  std::unordered_map<CacheBlock, SubBlockMask> unknown_;
  uint64_t unknown_subs_ = 0;
  uint64_t demotions_ = 0;
  Status meta_error_;  // sticky: the first failed append
};

// One critical section of the table, returned by lock() (by guaranteed
// elision: it is neither copied nor moved). When it is destroyed it appends
// the section's metadata entries, checks the invariants and unlocks.
class SlotTable::Locked {
 public:
  Locked(const Locked&) = delete;
  Locked& operator=(const Locked&) = delete;
  ~Locked();

  const Mapping& map() const { return t_->map_; }
  std::optional<CacheBlock> lookup(OriginBlock ob) const { return t_->map_.lookup(ob); }
  Decision access(const Access& a) { return t_->policy_->on_access(a); }
  PolicyStats policy_stats() const { return t_->policy_->stats(); }

  // --- Life cycle ---
  // A ready slot, now reserved, or nullopt. `low` is set when few ready
  // slots are left (the caller should ask for reclaim).
  std::optional<CacheBlock> take_ready(bool* low = nullptr);
  // A reserved slot goes back to ready, unused.
  void give_back(CacheBlock cb);
  // A reserved slot now holds `ob` (nothing valid yet).
  void insert(OriginBlock ob, CacheBlock cb);
  // Unmaps a mapped slot (its dirty data too) into quarantine.
  void evict(CacheBlock cb);
  // The current unmap generation: quarantined slots up to it become ready
  // once a commit started after this call has finished.
  uint64_t unmap_generation() const { return t_->unmap_gen_; }
  void release_quarantine(uint64_t gen);
  // Evicts clean, unlocked victims until `target` slots are ready or
  // quarantined; returns how many it evicted.
  size_t reclaim(BlockLocks& locks, size_t target);
  size_t ready_count() const { return t_->ready_.size(); }
  size_t quarantined_count() const { return t_->quarantine_.size(); }

  // --- Sub-block state of a mapped slot ---
  // Filled from the origin: `subs` become valid (and clean).
  void mark_valid(CacheBlock cb, const SubBlockMask& subs);
  // A client write landed in the slot: `r` becomes valid and dirty, and no
  // longer unknown.
  void mark_dirty(CacheBlock cb, SubBlockRange r);
  // A write-through landed in the slot and the origin: `r` valid, clean.
  void mark_written_through(CacheBlock cb, SubBlockRange r);
  // Writeback of `r` is durable on the origin: clean, unless the slot
  // changed since begin_writeback().
  void mark_written_back(CacheBlock cb, OriginBlock ob, SubBlockRange r, bool changed);
  // A write is about to change the clean sub-blocks of `mask` in place
  // (writeback) or the origin under them (writethrough, passthrough,
  // WRITE_ZEROES): those stop being valid now, before the write is issued,
  // so that a crash in between never leaves a "clean" copy that differs
  // from the origin (a process crash keeps clean data, rule 14). Dirty sub-blocks are left alone: they are
  // the newer copy. The slot stays mapped even with nothing valid left (the
  // caller holds the block's lock and applies the write's outcome next).
  void forget_clean(CacheBlock cb, const SubBlockMask& mask);
  // Drops sub-blocks `mask` (dirty data too); evicts the slot when nothing
  // valid is left.
  void drop(CacheBlock cb, const SubBlockMask& mask);
  void drop(CacheBlock cb, SubBlockRange r) { drop(cb, SubBlockMask::of(r)); }
  // The slot's dirty sub-blocks `mask` hold contents nobody can vouch for.
  void mark_unknown(CacheBlock cb, const SubBlockMask& mask);
  SubBlockMask unknown_mask(CacheBlock cb) const;

  // --- Writeback ---
  void begin_writeback(CacheBlock cb) { t_->wb_in_flight_[cb] = false; }
  // Ends a slot's writeback, once for all its pieces: true if the slot
  // changed while it was in flight (or none was in flight).
  bool end_writeback(CacheBlock cb);
  std::vector<DirtyBlock> dirty_in_origin_order(OriginBlock from, size_t limit) const {
    return t_->map_.dirty_in_origin_order(from, limit);
  }
  // Dirty since at or before `limit`.
  bool dirty_before(CacheBlock cb, Clock::time_point limit) const;
  bool any_dirty_before(Clock::time_point limit) const;
  uint64_t dirty_bytes() const { return t_->map_.dirty_sub_block_count() * kSubBlockSize; }

  // --- The operator's flush ---
  void begin_flush();
  void end_flush();
  bool flush_active() const { return t_->flush_active_; }

  // --- Health ---
  bool failed() const { return !t_->meta_error_.is_ok(); }
  // A metadata commit failed: the table fails as after a failed append.
  void fail(const Status& st);
  const Status& failure() const { return t_->meta_error_; }

  // Fills the slot-related fields of `s`.
  void fill_stats(EngineStats& s) const;

 private:
  friend class SlotTable;
  explicit Locked(SlotTable& t) : t_(&t), lock_(t.mu_) {}
  void touch(CacheBlock cb);
  void note_dirty(CacheBlock cb, bool was_dirty);
  void note_clean(CacheBlock cb, bool was_dirty);
  void note_rewritten(CacheBlock cb);
  void clear_unknown(CacheBlock cb, const SubBlockMask& mask);
  void append(const metalog::Entry& e);

  SlotTable* t_;
  std::unique_lock<std::mutex> lock_;
  std::vector<CacheBlock> touched_;   // slots whose state entry is due
  std::vector<CacheBlock> unmapped_;  // slots evicted in this section
};

}  // namespace rbdcache::cache
