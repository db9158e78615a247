// WritePath: client WRITEs (with FUA), TRIM and WRITE_ZEROES.
//
// A write holds the block locks of its blocks for its whole life, and in
// writethrough and passthrough modes their origin locks too. In writeback
// mode a cached (or newly cached) part goes to the cache device only; a
// part that is not cached (a long sequential stream, a full cache) goes
// straight to the origin under that block's origin lock, so it can never be
// overtaken by an older writeback of the same block. Partial head and tail
// sub-blocks are first read (from the cache when valid there, else from
// the origin) and the write is merged into them, since the cache holds
// whole sub-blocks. What each outcome does to the slot is write_outcome().
//
// In the failed state (SlotTable: the metadata device failed) every write,
// TRIM and WRITE_ZEROES fails with EIO: the committed metadata no longer
// follows memory, so no cached block may change.
//
// Threads: the request's reactor. Locks: block locks, then origin locks,
// then the slot table for bookkeeping (engine_context.h).
#pragma once

#include <span>

#include "cache/engine_context.h"
#include "cache/read_path.h"
#include "cache/write_outcome.h"

namespace rbdcache::cache {

class WritePath {
 public:
  WritePath(EngineContext& ctx, ReadPath& reads) : ctx_(ctx), reads_(reads) {}

  void write(io::Reactor& r, uint64_t offset, std::span<const std::byte> buf, WriteFlags flags,
             IoCallback done);
  void discard(io::Reactor& r, uint64_t offset, uint64_t length, WriteFlags flags,
               IoCallback done);
  void write_zeroes(io::Reactor& r, uint64_t offset, uint64_t length, WriteFlags flags,
                    IoCallback done);

 private:
  // OK, or the EIO every write gets once the cache is read-only. Also
  // checked after a section that stopped cached copies being valid, before
  // any I/O: that section's metadata entry may be the append that failed.
  // Any thread; takes the slot-table lock.
  [[nodiscard]] Status read_only_status();
  // Fails the request at once when the cache is read-only; true if it did.
  bool refuse_if_failed(const std::shared_ptr<Request>& req);
  // Replies to a write-type request: after a commit of the metadata when
  // FUA asked for durability; with EIO when the cache turned read-only
  // while it ran.
  void reply(const std::shared_ptr<Request>& req, bool fua, Status st);
  void write_part(const std::shared_ptr<Request>& req, const Part& p, bool fua, StatusFn done);
  // The merged sub-blocks `subs` of a part are in `data`: writes them where
  // the mode says and applies write_outcome().
  void write_merged(const std::shared_ptr<Request>& req, const Part& p, bool fua, CacheBlock cb,
                    bool fresh, bool had_dirty, std::span<const std::byte> data,
                    std::shared_ptr<void> keep, StatusFn done);
  void apply(const Part& p, CacheBlock cb, SlotAction a);
  // Runs fn once the origin writes completed so far are durable, when
  // `replaces_dirty` (an origin write replaced dirty cached data); at once
  // otherwise.
  void once_durable(io::Reactor& r, bool replaces_dirty, StatusFn fn);
  void zero_cached(const std::shared_ptr<Request>& req, bool fua);
  void drop_covered(const std::vector<Part>& parts);
  // Zeroes [s, e) of one cached sub-block of `ob` in place.
  void zero_partial(const std::shared_ptr<Request>& req, OriginBlock ob, uint32_t s, uint32_t e,
                    StatusFn done);

  EngineContext& ctx_;
  ReadPath& reads_;
};

}  // namespace rbdcache::cache
