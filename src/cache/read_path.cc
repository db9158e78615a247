#include "cache/read_path.h"

#include <cerrno>
#include <cstring>

#include "util/aligned_buffer.h"
#include "util/log.h"

namespace rbdcache::cache {

namespace {

constexpr uint32_t kSub = kSubBlockSize;

std::span<std::byte> sub_span(std::byte* base, SubBlockRange subs, SubBlockRange run) {
  return std::span<std::byte>(base + (run.first - subs.first) * kSub, run.count * kSub);
}

}  // namespace

void ReadPath::read(io::Reactor& r, uint64_t offset, std::span<std::byte> buf, IoCallback done) {
  auto req = ctx_.begin(r, offset, buf.size(), std::move(done));
  std::byte* user = buf.data();
  ctx_.with_locks(req, [this, req, user] {
    auto join = Join::make([this, req](Status st) {
      ctx_.finish(req);
      req->done(std::move(st));
    });
    for (const Part& p : split(*req, user, ctx_.bs)) read_part(req, p, join->step());
    join->report(Status::ok());
  });
}

void ReadPath::read_part(const std::shared_ptr<Request>& req, const Part& p, StatusFn done) {
  const SubBlockRange subs = p.subs();
  std::optional<CacheBlock> slot;
  SubBlockMask valid;
  bool hit = false;
  bool unknown = false;
  bool fill_allowed = false;
  // Without clean hits only dirty data (newer than the origin's) is read
  // from the cache, and nothing is filled.
  const bool clean_ok = ctx_.clean_hits.load();
  Decision d;
  {
    auto t = ctx_.slots.lock();
    slot = t.lookup(p.ob);
    if (slot) {
      valid = clean_ok ? t.map().valid_mask(*slot, subs) : t.map().dirty_mask(*slot, subs);
      hit = valid.contains(SubBlockMask::of(subs));
      unknown = (t.unknown_mask(*slot) & SubBlockMask::of(subs)).any();
    }
    Access a{p.ob, p.origin_offset(ctx_.bs), p.e - p.s, false, hit ? slot : std::nullopt};
    d = t.access(a);
    fill_allowed = clean_ok && !t.failed();
  }
  EngineCounters::bump(hit ? ctx_.counters.read_hits : ctx_.counters.read_misses);
  if (unknown) {
    done(Status::io_error(fmt::format(
        "origin block {}: cached data lost to a cache device error cannot be read", p.ob.value())));
    return;
  }
  // Whole sub-blocks land in `base`: the caller's buffer when it is aligned,
  // else a bounce buffer whose requested bytes are copied out afterwards.
  std::shared_ptr<AlignedBuffer> owner;
  std::byte* base = p.user;
  if (!p.direct()) {
    owner = std::make_shared<AlignedBuffer>(subs.count * kSub);
    base = owner->data();
  }
  const bool fill = fill_allowed && req->mode != Mode::kPassthrough && !hit &&
                    ctx_.mode.load() != Mode::kPassthrough && (slot || d == Decision::kPromote);
  io::Reactor& r = *req->r;
  read_subs(r, p.ob, subs, base, slot, valid,
            [this, &r, p, subs, base, owner, slot, valid, fill,
             done = std::move(done)](Status st) mutable {
              if (!st.is_ok()) {
                done(std::move(st));
                return;
              }
              if (owner) std::memcpy(p.user, base + (p.s - subs.first * kSub), p.e - p.s);
              if (!fill) {
                done(Status::ok());
                return;
              }
              const SubBlockMask missing = SubBlockMask::of(subs).without(slot ? valid : SubBlockMask());
              this->fill(r, p.ob, subs, missing, base, owner, slot, std::move(done));
            });
}

void ReadPath::read_subs(io::Reactor& r, OriginBlock ob, SubBlockRange subs, std::byte* base,
                         std::optional<CacheBlock> slot, SubBlockMask valid, StatusFn done) {
  auto join = Join::make(std::move(done));
  const SubBlockMask want = SubBlockMask::of(subs);
  const SubBlockMask from_cache = slot ? (valid & want) : SubBlockMask();
  from_cache.for_each_run([&](SubBlockRange run) {
    std::span<std::byte> dst = sub_span(base, subs, run);
    StatusFn step = join->step();
    ctx_.dev.read(r, *slot, run.first * kSub, dst,
                  [this, &r, ob, cb = *slot, run, dst, step = std::move(step)](Status st) mutable {
                    if (st.is_ok()) {
                      step(std::move(st));
                      return;
                    }
                    recover_run(r, ob, cb, run, dst, std::move(step));
                  });
  });
  want.without(from_cache).for_each_run([&](SubBlockRange run) {
    ctx_.origin.read(r, ob.value() * ctx_.bs + uint64_t{run.first} * kSub,
                     sub_span(base, subs, run), join->step());
  });
  join->report(Status::ok());
}

void ReadPath::recover_run(io::Reactor& r, OriginBlock ob, CacheBlock slot, SubBlockRange run,
                           std::span<std::byte> dst, StatusFn done) {
  EngineCounters::bump(ctx_.counters.cache_read_errors);
  bool dirty;
  {
    auto t = ctx_.slots.lock();
    dirty = t.map().any_dirty(slot, run);
  }
  if (dirty) {
    log::error("cache device read error on dirty data of origin block {}: the request fails; "
               "the data stays dirty in the cache",
               ob.value());
    done(Status::io_error(
        fmt::format("cache device read error on dirty data of origin block {}", ob.value())));
    return;
  }
  log::warn("cache device read error on clean data of origin block {}: served from the origin, "
            "dropped from the cache",
            ob.value());
  ctx_.origin.read(r, ob.value() * ctx_.bs + uint64_t{run.first} * kSub, dst,
                   [this, ob, slot, run, done = std::move(done)](Status st) {
                     if (st.is_ok()) {
                       auto t = ctx_.slots.lock();
                       if (t.map().origin_of(slot) == ob) t.drop(slot, run);
                     }
                     done(std::move(st));
                   });
}

void ReadPath::fill(io::Reactor& r, OriginBlock ob, SubBlockRange subs, SubBlockMask missing,
                    std::byte* base, std::shared_ptr<void> keep, std::optional<CacheBlock> slot,
                    StatusFn done) {
  bool fresh = false;
  if (!slot) {
    bool low = false;
    {
      auto t = ctx_.slots.lock();
      slot = t.take_ready(&low);
    }
    if (low && ctx_.want_slots) ctx_.want_slots();
    fresh = slot.has_value();
  }
  if (!slot || missing.none()) {
    done(Status::ok());
    return;
  }
  // One device write per run of missing sub-blocks; each that lands counts.
  const CacheBlock cb = *slot;
  auto written = std::make_shared<SubBlockMask>();
  auto join = Join::make([this, ob, cb, fresh, written, keep, done = std::move(done)](Status) {
    {
      auto t = ctx_.slots.lock();
      if (fresh && written->none()) {
        t.give_back(cb);
      } else {
        if (fresh) {
          t.insert(ob, cb);
          EngineCounters::bump(ctx_.counters.promotions);
        }
        t.mark_valid(cb, *written);
      }
    }
    // The read itself succeeded: a failed fill only costs the cache a block.
    done(Status::ok());
  });
  missing.for_each_run([&](SubBlockRange run) {
    join->arm();
    ctx_.dev.write(r, cb, run.first * kSub, sub_span(base, subs, run), false,
                   [this, join, written, run](Status st) {
                     if (st.is_ok()) {
                       written->set(run);
                     } else {
                       EngineCounters::bump(ctx_.counters.cache_write_errors);
                       log::warn("cache device write failed while caching a read: {}",
                                 st.to_string());
                     }
                     join->report(Status::ok());
                   });
  });
  join->report(Status::ok());
}

void ReadPath::block_status(io::Reactor& r, uint64_t offset, uint64_t length,
                            ExtentsCallback done) {
  ctx_.origin.block_status(
      r, offset, length, [this, offset, done = std::move(done)](Result<std::vector<Extent>> res) {
        if (!res.is_ok()) {
          done(std::move(res));
          return;
        }
        // Cached data makes a hole in the origin data.
        std::vector<Extent>& ex = res.value();
        uint64_t pos = offset;
        {
          auto t = ctx_.slots.lock();
          for (Extent& e : ex) {
            if (e.flags != 0) {
              for (uint64_t b = pos / ctx_.bs; b <= (pos + e.length - 1) / ctx_.bs; ++b) {
                auto slot = t.lookup(OriginBlock(b));
                if (slot && t.map().any_valid(*slot, t.map().whole_block())) {
                  e.flags = 0;
                  break;
                }
              }
            }
            pos += e.length;
          }
        }
        done(std::move(res));
      });
}

}  // namespace rbdcache::cache
