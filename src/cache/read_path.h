// ReadPath: client READs, BLOCK_STATUS and the cache fills that follow a
// read miss.
//
// A read holds the block locks of its blocks for its whole life. A part
// that the cache holds completely is read from the cache device; otherwise
// the valid sub-blocks come from the cache and the rest from the origin,
// and the missing sub-blocks are then written into the cache (a promotion
// into a ready slot, or filling the invalid part of a mapped slot). A fill
// writes only sub-blocks that were not valid: valid ones, perhaps dirty,
// are never rewritten, so a failed fill costs nothing but the fill.
//
// Cache device read errors: a clean sub-block is read from the origin
// instead and dropped from the cache; a dirty one fails that request with
// EIO (the data exists nowhere else). Unknown sub-blocks (SlotTable) fail
// with EIO without a device read.
//
// Threads: the request's reactor. Locks: the block lock of every block read
// (taken here for client reads; read_subs() expects its caller to hold it),
// then the slot table for bookkeeping.
#pragma once

#include <optional>
#include <span>

#include "cache/engine_context.h"

namespace rbdcache::cache {

class ReadPath {
 public:
  explicit ReadPath(EngineContext& ctx) : ctx_(ctx) {}

  void read(io::Reactor& r, uint64_t offset, std::span<std::byte> buf, IoCallback done);
  void block_status(io::Reactor& r, uint64_t offset, uint64_t length, ExtentsCallback done);

  // Reads sub-blocks `subs` of block `ob` into `base` (which maps sub-block
  // subs.first): those in `valid` from slot `slot`, the rest from the
  // origin. The caller holds the block lock.
  void read_subs(io::Reactor& r, OriginBlock ob, SubBlockRange subs, std::byte* base,
                 std::optional<CacheBlock> slot, SubBlockMask valid, StatusFn done);

 private:
  void read_part(const std::shared_ptr<Request>& req, const Part& p, StatusFn done);
  // A cache read of `run` failed: the origin's copy if the run is clean.
  void recover_run(io::Reactor& r, OriginBlock ob, CacheBlock slot, SubBlockRange run,
                   std::span<std::byte> dst, StatusFn done);
  // Writes the sub-blocks of `fill` (a subset of the part's sub-blocks,
  // held in `base`) into `slot`, or a fresh slot when nullopt.
  void fill(io::Reactor& r, OriginBlock ob, SubBlockRange subs, SubBlockMask fill,
            std::byte* base, std::shared_ptr<void> keep, std::optional<CacheBlock> slot,
            StatusFn done);

  EngineContext& ctx_;
};

}  // namespace rbdcache::cache
