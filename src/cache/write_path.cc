#include "cache/write_path.h"

#include <cstring>

#include "util/aligned_buffer.h"
#include "util/log.h"

namespace rbdcache::cache {

namespace {

constexpr uint32_t kSub = kSubBlockSize;

IoResult result_of(const Status& st) { return st.is_ok() ? IoResult::kOk : IoResult::kFailed; }

Status read_only_error(const Status& why) {
  return Status::io_error(
      fmt::format("the cache is read-only after a metadata device failure ({})", why.to_string()));
}

}  // namespace

Status WritePath::read_only_status() {
  auto t = ctx_.slots.lock();
  return t.failed() ? read_only_error(t.failure()) : Status::ok();
}

bool WritePath::refuse_if_failed(const std::shared_ptr<Request>& req) {
  Status st = read_only_status();
  if (st.is_ok()) return false;
  ctx_.finish(req);
  req->done(std::move(st));
  return true;
}

// A write that was in flight when the metadata failed is not acknowledged:
// the entry naming its data (or dropping a copy it made stale) may be the
// append that failed, and then no restart would find it. It may or may not
// have happened, as the NBD rules allow for a failed write.
void WritePath::reply(const std::shared_ptr<Request>& req, bool fua, Status st) {
  ctx_.finish(req);
  if (st.is_ok()) st = read_only_status();
  if (st.is_ok() && fua) {
    // The data is on stable storage; make the metadata naming it durable.
    ctx_.commits->request(*req->r, req->done);
    return;
  }
  req->done(std::move(st));
}

// Dirty data the origin now has a newer copy of may be dropped (or marked
// clean) only once that copy is durable: else a power cut could bring back
// origin data older than a FLUSH that covered the dirty data.
void WritePath::once_durable(io::Reactor& r, bool replaces_dirty, StatusFn fn) {
  if (!replaces_dirty) {
    fn(Status::ok());
    return;
  }
  ctx_.origin_sync.flush(ctx_.origin, r, std::move(fn));
}

// ------------------------------------------------------------ WRITE

void WritePath::write(io::Reactor& r, uint64_t offset, std::span<const std::byte> buf,
                      WriteFlags flags, IoCallback done) {
  auto req = ctx_.begin(r, offset, buf.size(), std::move(done));
  // Writethrough and passthrough write cached blocks to the origin, which
  // must not race a writeback of the same blocks.
  req->writes_origin = req->mode != Mode::kWriteback;
  if (refuse_if_failed(req)) return;
  std::byte* user = const_cast<std::byte*>(buf.data());  // only read from
  ctx_.with_locks(req, [this, req, user, fua = flags.fua] {
    auto join = Join::make([this, req, fua](Status st) { reply(req, fua, std::move(st)); });
    for (const Part& p : split(*req, user, ctx_.bs)) write_part(req, p, fua, join->step());
    join->report(Status::ok());
  });
}

void WritePath::write_part(const std::shared_ptr<Request>& req, const Part& p, bool fua,
                           StatusFn done) {
  const SubBlockRange subs = p.subs();
  const Mode m = req->mode;
  std::optional<CacheBlock> slot;
  bool fresh = false;
  bool low = false;
  bool had_dirty = false;
  bool sequential = false;
  SubBlockMask valid;
  {
    auto t = ctx_.slots.lock();
    slot = t.lookup(p.ob);
    const uint64_t seq_before = t.policy_stats().sequential_misses;
    Access a{p.ob, p.origin_offset(ctx_.bs), p.e - p.s, true, slot};
    const Decision d = t.access(a);
    sequential = t.policy_stats().sequential_misses != seq_before;
    if (!slot) {
      // Writeback absorbs every write but those of a long sequential stream;
      // writethrough caches a write only when the policy would promote it.
      const bool want = (m == Mode::kWriteback && !sequential) ||
                        (m == Mode::kWritethrough && d == Decision::kPromote);
      if (want) {
        slot = t.take_ready(&low);
        fresh = slot.has_value();
      }
    } else {
      // Without clean hits the clean cached copy may be stale: partial
      // sub-blocks then merge with the origin's data, not with it.
      valid = ctx_.clean_hits.load() ? t.map().valid_mask(*slot, subs)
                                     : t.map().dirty_mask(*slot, subs);
      had_dirty = t.map().any_dirty(*slot, subs);
    }
  }
  EngineCounters::bump(slot && !fresh ? ctx_.counters.write_hits : ctx_.counters.write_misses);
  if (low && ctx_.want_slots) ctx_.want_slots();

  if (!slot) {
    // Not cached: straight to the origin. The policy counts the bytes of a
    // sequential miss itself (stats() adds them); count the others here.
    if (!sequential) EngineCounters::bump(ctx_.counters.bypassed_bytes, p.e - p.s);
    ctx_.write_origin(*req, p.ob, p.origin_offset(ctx_.bs),
                      std::span<const std::byte>(p.user, p.e - p.s), WriteFlags{fua, true, false},
                      std::move(done));
    return;
  }
  const CacheBlock cb = *slot;
  if (p.direct()) {
    write_merged(req, p, fua, cb, fresh, had_dirty,
                 std::span<const std::byte>(p.user, subs.count * kSub), nullptr, std::move(done));
    return;
  }
  // The cache holds whole sub-blocks: read the old contents of the
  // partially written head and tail sub-blocks, then merge.
  auto owner = std::make_shared<AlignedBuffer>(subs.count * kSub);
  std::byte* base = owner->data();
  const uint32_t head = p.s / kSub;
  const uint32_t tail = (p.e - 1) / kSub;
  auto join = Join::make([this, req, p, fua, cb, fresh, had_dirty, subs, base, owner,
                          done = std::move(done)](Status st) mutable {
    if (!st.is_ok()) {
      if (fresh) ctx_.slots.lock().give_back(cb);
      done(std::move(st));
      return;
    }
    std::memcpy(base + (p.s - subs.first * kSub), p.user, p.e - p.s);
    write_merged(req, p, fua, cb, fresh, had_dirty,
                 std::span<const std::byte>(base, subs.count * kSub), owner, std::move(done));
  });
  const std::optional<CacheBlock> read_slot = fresh ? std::nullopt : slot;
  io::Reactor& r = *req->r;
  if (p.s % kSub != 0) {
    reads_.read_subs(r, p.ob, SubBlockRange{head, 1}, base, read_slot, valid, join->step());
  }
  if (p.e % kSub != 0 && (tail != head || p.s % kSub == 0)) {
    reads_.read_subs(r, p.ob, SubBlockRange{tail, 1}, base + (tail - subs.first) * kSub,
                     read_slot, valid, join->step());
  }
  join->report(Status::ok());
}

void WritePath::write_merged(const std::shared_ptr<Request>& req, const Part& p, bool fua,
                             CacheBlock cb, bool fresh, bool had_dirty,
                             std::span<const std::byte> data, std::shared_ptr<void> keep,
                             StatusFn done) {
  const Mode m = req->mode;
  const SubBlockRange subs = p.subs();
  const uint64_t origin_off = p.ob.value() * ctx_.bs + uint64_t{subs.first} * kSub;
  io::Reactor& r = *req->r;
  const WriteFlags oflags{fua, true, false};
  // The write overwrites its sub-blocks in place (writeback), or the origin
  // under them (writethrough, passthrough): their clean cached copy stops
  // being valid first, so that no crash can leave a "clean" copy that
  // differs from the origin (slot_table.h, forget_clean).
  // The entry forget_clean appends when its section ends may be the append
  // that fails: then the surviving metadata still calls the old copy valid
  // and clean, and neither it nor the origin under it may be written. A
  // write that began before the metadata failed stops here, before any I/O
  // (the same holds for the drops and forgets of TRIM and WRITE_ZEROES).
  if (!fresh) ctx_.slots.lock().forget_clean(cb, SubBlockMask::of(subs));
  if (Status st = read_only_status(); !st.is_ok()) {
    if (fresh) ctx_.slots.lock().give_back(cb);
    done(std::move(st));
    return;
  }

  if (m == Mode::kWriteback) {
    ctx_.dev.write(r, cb, subs.first * kSub, data, fua,
                   [this, req, p, cb, fresh, had_dirty, data, keep, origin_off, oflags,
                    done = std::move(done)](Status st) mutable {
                     if (st.is_ok()) {
                       apply(p, cb,
                             write_outcome(Mode::kWriteback, fresh, IoResult::kOk,
                                           IoResult::kNotTried, had_dirty)
                                 .action);
                       done(Status::ok());
                       return;
                     }
                     EngineCounters::bump(ctx_.counters.cache_write_errors);
                     log::warn("cache device write failed ({}); writing origin block {} through "
                               "to the origin instead",
                               st.to_string(), p.ob.value());
                     ctx_.write_origin(
                         *req, p.ob, origin_off, data, oflags,
                         [this, req, p, cb, fresh, had_dirty, keep,
                          done = std::move(done)](Status ost) mutable {
                           once_durable(*req->r, had_dirty && ost.is_ok(),
                                        [this, p, cb, fresh, had_dirty, ost,
                                         done = std::move(done)](Status fst) {
                                          const Status through = ost.is_ok() ? fst : ost;
                                          WriteOutcome o =
                                              write_outcome(Mode::kWriteback, fresh,
                                                            IoResult::kFailed, result_of(through),
                                                            had_dirty);
                                          apply(p, cb, o.action);
                                          done(o.ok ? Status::ok() : through);
                                        });
                         });
                   });
    return;
  }

  // Writethrough and passthrough: the merged sub-blocks go to the origin
  // (and, in writethrough, to the cache as well).
  auto origin_st = std::make_shared<Status>();
  auto cache_res = std::make_shared<IoResult>(IoResult::kNotTried);
  auto join = Join::make([this, &r, p, m, cb, fresh, had_dirty, keep, origin_st, cache_res,
                          done = std::move(done)](Status) mutable {
    once_durable(r, had_dirty && origin_st->is_ok(),
                 [this, p, m, cb, fresh, had_dirty, origin_st, cache_res,
                  done = std::move(done)](Status fst) {
                   if (!fst.is_ok()) *origin_st = fst;
                   WriteOutcome o =
                       write_outcome(m, fresh, *cache_res, result_of(*origin_st), had_dirty);
                   apply(p, cb, o.action);
                   done(o.ok ? Status::ok() : *origin_st);
                 });
  });
  StatusFn origin_step = join->step();
  ctx_.write_origin(*req, p.ob, origin_off, data, oflags,
                    [origin_st, origin_step = std::move(origin_step)](Status st) {
                      *origin_st = st;
                      origin_step(std::move(st));
                    });
  if (m == Mode::kWritethrough) {
    StatusFn cache_step = join->step();
    ctx_.dev.write(r, cb, subs.first * kSub, data, false,
                   [this, cache_res, cache_step = std::move(cache_step)](Status st) {
                     if (!st.is_ok()) EngineCounters::bump(ctx_.counters.cache_write_errors);
                     *cache_res = result_of(st);
                     cache_step(Status::ok());
                   });
  }
  join->report(Status::ok());
}

void WritePath::apply(const Part& p, CacheBlock cb, SlotAction a) {
  const SubBlockRange subs = p.subs();
  auto t = ctx_.slots.lock();
  switch (a) {
    case SlotAction::kNone:
      break;
    case SlotAction::kInsertDirty:
      t.insert(p.ob, cb);
      t.mark_dirty(cb, subs);
      break;
    case SlotAction::kMarkDirty:
      t.mark_dirty(cb, subs);
      break;
    case SlotAction::kInsertClean:
      t.insert(p.ob, cb);
      t.mark_written_through(cb, subs);
      EngineCounters::bump(ctx_.counters.promotions);
      break;
    case SlotAction::kMarkClean:
      t.mark_written_through(cb, subs);
      break;
    case SlotAction::kGiveBack:
      t.give_back(cb);
      break;
    case SlotAction::kDrop:
      t.drop(cb, subs);
      break;
    case SlotAction::kMarkUnknown: {
      const SubBlockMask all = SubBlockMask::of(subs);
      const SubBlockMask dirty = t.map().dirty_mask(cb) & all;
      if (all.without(dirty).any()) t.drop(cb, all.without(dirty));
      t.mark_unknown(cb, dirty);
      break;
    }
  }
}

// Drops the cached sub-blocks each part covers completely (TRIM and
// WRITE_ZEROES; the request holds the parts' block and origin locks).
void WritePath::drop_covered(const std::vector<Part>& parts) {
  auto t = ctx_.slots.lock();
  for (const Part& p : parts) {
    auto slot = t.lookup(p.ob);
    if (slot && p.covered().count > 0) t.drop(*slot, p.covered());
  }
}

// ------------------------------------------------------------ TRIM

void WritePath::discard(io::Reactor& r, uint64_t offset, uint64_t length, WriteFlags flags,
                        IoCallback done) {
  auto req = ctx_.begin(r, offset, length, std::move(done));
  req->writes_origin = true;
  if (refuse_if_failed(req)) return;
  ctx_.with_locks(req, [this, req, flags] {
    drop_covered(split(*req, nullptr, ctx_.bs));
    if (Status st = read_only_status(); !st.is_ok()) {
      reply(req, false, std::move(st));
      return;
    }
    ctx_.origin.discard(*req->r, req->offset, req->length, flags, [this, req, flags](Status st) {
      if (st.is_ok()) ctx_.origin_sync.note_write();
      reply(req, flags.fua, std::move(st));
    });
  });
}

// ------------------------------------------------------------ WRITE_ZEROES

void WritePath::write_zeroes(io::Reactor& r, uint64_t offset, uint64_t length, WriteFlags flags,
                             IoCallback done) {
  auto req = ctx_.begin(r, offset, length, std::move(done));
  req->writes_origin = true;
  if (refuse_if_failed(req)) return;
  ctx_.with_locks(req, [this, req, flags] {
    // The origin is zeroed first; the clean cached copies of the range stop
    // being valid before that (if the origin cannot zero, FAST_ZERO
    // refused, they are merely gone from the cache; dirty ones are kept).
    {
      auto t = ctx_.slots.lock();
      for (const Part& p : split(*req, nullptr, ctx_.bs)) {
        if (auto slot = t.lookup(p.ob)) t.forget_clean(*slot, SubBlockMask::of(p.subs()));
      }
    }
    if (Status st = read_only_status(); !st.is_ok()) {
      reply(req, false, std::move(st));
      return;
    }
    ctx_.origin.write_zeroes(
        *req->r, req->offset, req->length, flags, [this, req, flags](Status st) {
          if (!st.is_ok()) {
            reply(req, false, std::move(st));
            return;
          }
          ctx_.origin_sync.note_write();
          bool replaces_dirty = false;
          {
            auto t = ctx_.slots.lock();
            for (const Part& p : split(*req, nullptr, ctx_.bs)) {
              auto slot = t.lookup(p.ob);
              if (slot && t.map().any_dirty(*slot, p.subs())) replaces_dirty = true;
            }
          }
          once_durable(*req->r, replaces_dirty, [this, req, flags](Status fst) {
            if (!fst.is_ok()) {
              reply(req, false, std::move(fst));
              return;
            }
            zero_cached(req, flags.fua);
          });
        });
  });
}

// After the origin range is zeroed (and durable, if it replaced dirty data):
// drops the cached sub-blocks the range covers and zeroes the partly
// covered ones in place.
void WritePath::zero_cached(const std::shared_ptr<Request>& req, bool fua) {
          const std::vector<Part> parts = split(*req, nullptr, ctx_.bs);
          auto join = Join::make(
              [this, req, fua](Status jst) { reply(req, fua, std::move(jst)); });
          drop_covered(parts);
          // Cached sub-blocks the range covers only in part get zeroed in place.
          for (const Part& p : parts) {
            const uint32_t up = (p.s + kSub - 1) / kSub * kSub;
            const uint32_t down = p.e / kSub * kSub;
            const bool head = p.s % kSub != 0;
            if (head) zero_partial(req, p.ob, p.s, std::min(p.e, up), join->step());
            if (p.e % kSub != 0 && !(head && down <= p.s)) {
              zero_partial(req, p.ob, std::max(p.s, down), p.e, join->step());
            }
          }
          join->report(Status::ok());
}

// Zeroes [s, e) of one cached sub-block by read-modify-write, keeping its
// dirty state. The request holds the block's block and origin locks. If the
// cache cannot be updated, a clean sub-block is dropped (the origin, zeroed
// already, has the right data) and a dirty one is written through to the
// origin; only if that fails too does it become unknown.
void WritePath::zero_partial(const std::shared_ptr<Request>& req, OriginBlock ob, uint32_t s,
                             uint32_t e, StatusFn done) {
  const uint32_t sub = s / kSub;
  const SubBlockRange one{sub, 1};
  std::optional<CacheBlock> slot;
  bool dirty = false;
  bool unknown = false;
  {
    auto t = ctx_.slots.lock();
    slot = t.lookup(ob);
    if (slot && !t.map().is_fully_valid(*slot, one)) slot.reset();
    if (slot) {
      dirty = t.map().any_dirty(*slot, one);
      unknown = t.unknown_mask(*slot).test(sub);
    }
  }
  if (unknown) {
    done(Status::io_error(fmt::format(
        "origin block {}: cannot zero part of a sub-block lost to a cache device error",
        ob.value())));
    return;
  }
  if (!slot) {
    done(Status::ok());
    return;
  }
  const CacheBlock cb = *slot;
  io::Reactor& r = *req->r;
  auto buf = std::make_shared<AlignedBuffer>(kSub);
  auto drop_sub = [this, ob, cb, one] {
    auto t = ctx_.slots.lock();
    if (t.map().origin_of(cb) == ob) t.drop(cb, one);
  };
  ctx_.dev.read(r, cb, sub * kSub, buf->span(), [this, req, &r, ob, cb, sub, s, e, dirty, buf,
                                                 drop_sub, done = std::move(done)](Status st) mutable {
    if (!st.is_ok()) {
      EngineCounters::bump(ctx_.counters.cache_read_errors);
      if (dirty) {
        done(Status::io_error(fmt::format(
            "cache device read error on dirty data of origin block {}", ob.value())));
        return;
      }
      drop_sub();
      done(Status::ok());
      return;
    }
    std::memset(buf->data() + (s - sub * kSub), 0, e - s);
    ctx_.dev.write(r, cb, sub * kSub, std::as_const(*buf).span(), false,
                   [this, req, ob, cb, sub, dirty, buf, drop_sub,
                    done = std::move(done)](Status wst) mutable {
                     if (wst.is_ok()) {
                       done(Status::ok());
                       return;
                     }
                     EngineCounters::bump(ctx_.counters.cache_write_errors);
                     if (!dirty) {
                       drop_sub();
                       done(Status::ok());
                       return;
                     }
                     const uint64_t off = ob.value() * ctx_.bs + uint64_t{sub} * kSub;
                     // FUA: the dirty data it replaces must be durable on
                     // the origin before the sub-block is dropped.
                     ctx_.write_origin(*req, ob, off, std::as_const(*buf).span(),
                                       WriteFlags{true, true, false},
                                       [this, ob, cb, sub, buf, drop_sub,
                                        done = std::move(done)](Status ost) {
                                         if (ost.is_ok()) {
                                           drop_sub();
                                           done(Status::ok());
                                           return;
                                         }
                                         {
                                           auto t = ctx_.slots.lock();
                                           if (t.map().origin_of(cb) == ob) {
                                             t.mark_unknown(cb, SubBlockMask::of({sub, 1}));
                                           }
                                         }
                                         done(ost);
                                       });
                   });
  });
}

}  // namespace rbdcache::cache
