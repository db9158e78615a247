// SmqPolicy: a frequency-aware cache policy in the spirit of dm-cache's smq
// (stochastic multi-queue). Design notes, not a port:
//
// Glossary:
//   level      - a block's standing, 0 (coldest) .. kLevels-1 (hottest).
//                Each level is an LRU queue; clean and dirty blocks have
//                separate queues, so a victim is always clean.
//   region     - a hotspot-tracking unit: 2^hotspot_region_shift consecutive
//                origin blocks (coarser than a cache block, as smq's
//                hotspot blocks are).
//   epoch      - hotspot_epoch_accesses accesses. A region counts at most one
//                hit per epoch, so a burst on one region is one hit.
//   sweep      - the ageing cursor; it visits every slot once per
//                aging_period_accesses accesses.
//
// Promotion. Misses are counted in a fixed-size hotspot table of regions
// (the blocks there are not in the cache). A miss promotes once its region
// has been hit in `promote_hits` distinct epochs within the window, so a
// single touch never promotes. A promoted region leaves the table (its heat
// now lives in the cache). A new block enters level 0. kPromote is only
// answered when a free slot or a clean victim exists.
//
// Standing. The first hit on a block since the sweep last visited it moves
// it up one level; later hits only make it the newest of its level. When the
// sweep visits a block that was not hit since the previous visit, the block
// drops one level (to the oldest end of it). A block that is used at least
// once per sweep climbs; one that is not sinks. This is what ages a stale
// hot set out, in place of smq's sentinels.
//
// Eviction. The victim is the oldest clean block of the lowest non-empty
// level. Blocks of a one-pass scan that do get promoted (a random scan, say)
// sit at level 0 and evict each other, while the hot set sits above them.
//
// Sequential streams. A small table tracks the streams in flight; once a
// stream has covered sequential_cutoff_bytes, its misses pass through and
// neither count in the hotspot table nor raise cached blocks.
//
// Determinism. No clock: epochs and the sweep are driven by the number of
// accesses, so tests replay exactly.
//
// Memory per cache block: prev/next queue links 8, flags 1, hotspot table
// 2 (nr_blocks/2 entries of 4 bytes): about 11 bytes, plus constant state.
// With the mapping's 18.1 that is 29.1 bytes per cache block in all.
//
// Thread safety: none; see policy.h.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <vector>

#include "cache/policy.h"
#include "rbdcache/status.h"
#include "rbdcache/types.h"

namespace rbdcache::cache {

struct SmqConfig {
  uint32_t nr_blocks = 0;          // cache slots managed, 1 .. 2^32-2
  uint32_t block_size = 64u << 10;  // bytes per cache block
  // Misses of a stream that has covered this many contiguous bytes pass
  // through. 0 turns detection off.
  uint64_t sequential_cutoff_bytes = 4u << 20;
  // Distance (bytes) a request may land behind or ahead of a stream's
  // expected next offset and still continue it (requests reordered in flight).
  uint32_t sequential_slack_bytes = 256u << 10;
  // Region hits, in distinct epochs, before a miss promotes (>= 1).
  uint32_t read_promote_hits = 2;
  uint32_t write_promote_hits = 2;
  // Promote on the first touch while free slots remain.
  bool promote_into_free_slots = false;
  // log2 of the cache blocks per hotspot region (0 .. 16).
  uint32_t hotspot_region_shift = 2;
  // Hotspot table entries; 0: nr_blocks / 2 (at least 64), enough to
  // remember the first touch of a working set half the cache's size until
  // its second touch. Rounded up to a multiple of the 8-way set size.
  uint32_t hotspot_entries = 0;
  // Accesses per epoch; 0: max(16, nr_blocks / 16).
  uint32_t hotspot_epoch_accesses = 0;
  // A region's count restarts when it was last hit more than this many
  // epochs ago (1 .. 127).
  uint32_t hotspot_window_epochs = 32;
  // Accesses per full sweep; 0: 2 * nr_blocks. Must be >= nr_blocks so a
  // single access ages at most one block.
  uint64_t aging_period_accesses = 0;
};

// Detects sequential streams among interleaved requests. Fixed memory.
class StreamDetector {
 public:
  static constexpr uint32_t kStreams = 8;

  StreamDetector(uint64_t cutoff_bytes, uint32_t slack_bytes)
      : cutoff_(cutoff_bytes), slack_(slack_bytes) {}

  // Records [offset, offset + bytes). True when the access continues a
  // stream that has now covered at least the cutoff. Re-reading bytes a
  // stream already covered adds nothing to it.
  bool observe(uint64_t offset, uint32_t bytes);

 private:
  // A slot unused for this many accesses holds a finished stream.
  static constexpr uint64_t kIdleAccesses = 1024;

  struct Stream {
    uint64_t next = 0;       // expected next offset
    uint64_t covered = 0;    // contiguous bytes covered so far
    uint64_t last_use = 0;   // detector clock at the last access
    bool live = false;
    bool continued = false;  // more than one request: a stream in the making
  };
  // Replacement rank of a slot; the lowest is replaced.
  int rank(const Stream& s) const;
  std::array<Stream, kStreams> streams_{};
  uint64_t cutoff_;
  uint32_t slack_;
  uint64_t clock_ = 0;
};

// Hit counters for origin regions not in the cache: a fixed-size table of
// 32-bit entries (20-bit tag, 4-bit count, 8-bit epoch of the last counted
// hit) in 8-way sets. Each region may live in either of two sets (two
// hash choices), which keeps the table usable close to full: a new region
// takes an empty way of either set, else replaces the entry with the lowest
// live count, oldest first. Tags can collide; a collision only makes a
// promotion come early, which a hint may do.
class HotspotTable {
 public:
  static constexpr uint32_t kWays = 8;
  static constexpr uint32_t kMaxCount = 15;

  HotspotTable(uint32_t entries, uint32_t epoch_accesses, uint32_t window_epochs);

  // Counts a hit on `region` and returns its count (1 for a first touch).
  // A second hit in the same epoch is not counted.
  uint32_t touch(uint64_t region);
  // The region's current count (0 when untracked or expired).
  uint32_t count(uint64_t region) const;
  // Stops tracking `region` (its block was promoted: the heat now lives in
  // the cache, and the entry is better spent on a region still outside).
  void forget(uint64_t region);
  // Advances the access clock by one access.
  void tick() {
    if (++in_epoch_ == epoch_accesses_) {
      in_epoch_ = 0;
      ++epoch_;
    }
  }

  uint32_t entries() const { return static_cast<uint32_t>(slots_.size()); }
  size_t memory_bytes() const { return slots_.capacity() * sizeof(uint32_t); }

 private:
  struct Where {
    std::array<uint32_t, 2> sets;
    uint32_t tag;
  };
  // The entry holding `w.tag` in either set, or nullptr.
  uint32_t* find(const Where& w);
  const uint32_t* find(const Where& w) const;
  Where locate(uint64_t region) const;
  // Count of an entry, 0 when its last hit is outside the window.
  uint32_t live_count(uint32_t entry) const;
  uint32_t age(uint32_t entry) const { return (epoch_ - entry) & 0xFFu; }

  std::vector<uint32_t> slots_;  // sets_ * kWays; 0 = empty
  uint32_t sets_;
  uint32_t epoch_accesses_;
  uint32_t window_;
  uint32_t epoch_ = 0;
  uint32_t in_epoch_ = 0;
};

class SmqPolicy final : public Policy {
 public:
  static constexpr uint32_t kLevels = 8;

  // Fails with EINVAL on a config outside the documented ranges.
  static Result<std::unique_ptr<SmqPolicy>> create(const SmqConfig& config);

  Decision on_access(const Access& a) override;
  void on_hit(CacheBlock cb) override;
  void on_insert(CacheBlock cb) override;
  void on_remove(CacheBlock cb) override;
  void set_dirty(CacheBlock cb, bool dirty) override;
  std::optional<CacheBlock> choose_victim() override;
  void restore(CacheBlock cb) override;
  PolicyStats stats() const override { return stats_; }
  size_t memory_bytes() const override;

  // Introspection, for tests and `status`.
  const SmqConfig& config() const { return config_; }
  // Level of a block the policy holds (0 .. kLevels-1); nullopt otherwise.
  std::optional<uint32_t> level_of(CacheBlock cb) const;
  uint32_t resident() const { return resident_; }
  uint32_t hotspot_count(OriginBlock ob) const {
    return hotspot_.count(ob.value() >> config_.hotspot_region_shift);
  }

 private:
  static constexpr uint32_t kNil = 0xFFFFFFFFu;
  // flags_ bits.
  static constexpr uint8_t kLevelMask = 0x07;
  static constexpr uint8_t kDirty = 0x08;
  static constexpr uint8_t kHitSinceSweep = 0x10;
  static constexpr uint8_t kResident = 0x20;
  static constexpr uint8_t kDetached = 0x40;  // offered as victim, out of queues
  static_assert(kLevels - 1 <= kLevelMask);

  struct Queue {
    uint32_t head = kNil;  // oldest
    uint32_t tail = kNil;  // newest
  };

  SmqPolicy(const SmqConfig& config, uint32_t hotspot_entries, uint32_t epoch_accesses);

  uint32_t level(uint32_t b) const { return flags_[b] & kLevelMask; }
  Queue& queue(bool dirty, uint32_t lvl) { return queues_[dirty ? 1 : 0][lvl]; }
  void push_tail(uint32_t b);
  void push_head(uint32_t b);
  void unlink(uint32_t b);
  void set_level(uint32_t b, uint32_t lvl) {
    flags_[b] = static_cast<uint8_t>((flags_[b] & ~kLevelMask) | lvl);
  }
  void age_one();
  bool can_allocate() const;
  std::optional<CacheBlock> oldest_of_lowest(bool dirty) const;

  SmqConfig config_;
  StreamDetector streams_;
  HotspotTable hotspot_;

  std::vector<uint32_t> prev_;
  std::vector<uint32_t> next_;
  std::vector<uint8_t> flags_;
  std::array<std::array<Queue, kLevels>, 2> queues_{};  // [dirty][level]
  std::array<uint32_t, 2> nonempty_{};                  // [dirty]: bit per level

  uint32_t resident_ = 0;  // blocks inserted and not removed
  uint64_t sweep_credit_ = 0;
  uint32_t sweep_cursor_ = 0;
  PolicyStats stats_;
};

}  // namespace rbdcache::cache
