#include "cache/engine.h"

#include <algorithm>
#include <cassert>
#include <cstring>

#include <nlohmann/json.hpp>

#include "cache/smq_policy.h"
#include "util/aligned_buffer.h"
#include "util/log.h"

namespace rbdcache::cache {

namespace {

using Clock = std::chrono::steady_clock;
constexpr uint32_t kSub = kSubBlockSize;

bool is_aligned(const void* p) { return reinterpret_cast<uintptr_t>(p) % kSub == 0; }

// Joins several asynchronous steps: `done` runs with the first error once
// every step has reported. Used on one reactor thread only.
struct Join {
  int pending = 0;
  Status status;
  std::function<void(Status)> done;
  void arm() { ++pending; }
  void report(Status st) {
    if (!st.is_ok() && status.is_ok()) status = std::move(st);
    if (--pending == 0) done(status);
  }
};

std::shared_ptr<Join> make_join(std::function<void(Status)> done) {
  auto j = std::make_shared<Join>();
  j->done = std::move(done);
  j->pending = 1;  // released by the caller once every step is issued
  return j;
}

}  // namespace

const char* mode_name(Mode m) {
  switch (m) {
    case Mode::kWriteback: return "writeback";
    case Mode::kWritethrough: return "writethrough";
    case Mode::kPassthrough: return "passthrough";
  }
  return "?";
}

Result<Mode> parse_mode(const std::string& s) {
  if (s == "writeback") return Mode::kWriteback;
  if (s == "writethrough") return Mode::kWritethrough;
  if (s == "passthrough") return Mode::kPassthrough;
  return Status::invalid_argument(
      fmt::format("unknown cache mode '{}': expected writeback, writethrough or passthrough", s));
}

// One client request, from lock to reply.
struct CacheEngine::Request {
  io::Reactor* r = nullptr;
  uint64_t offset = 0;
  uint64_t length = 0;
  OriginBlock first, last;
  IoCallback done;
  Mode mode = Mode::kWriteback;  // for writes: the mode when it arrived
  bool writes_origin = false;    // takes the origin locks too
  bool locked = false;
};

// The part of a request that falls in one origin block.
struct CacheEngine::Part {
  OriginBlock ob;
  uint32_t s = 0;  // byte range [s, e) inside the block
  uint32_t e = 0;
  std::byte* user = nullptr;  // the part's bytes in the caller's buffer
  SubBlockRange subs() const { return touched_sub_blocks(s, e - s); }
  uint64_t origin_offset(uint32_t block_size) const { return ob.value() * block_size + s; }
};


CacheEngine::CacheEngine(Origin& origin, metalog::MetadataLog& log, CacheDevice& dev, Mapping map,
                         std::unique_ptr<Policy> policy, EngineOptions opts)
    : origin_(origin),
      log_(log),
      dev_(dev),
      opts_(opts),
      mode_(opts.mode),
      bs_(dev.block_size()),
      subs_(dev.block_size() / kSub),
      map_(std::move(map)),
      policy_(std::move(policy)) {}

Result<std::unique_ptr<CacheEngine>> CacheEngine::create(Origin& origin, metalog::MetadataLog& log,
                                                         CacheDevice& dev, EngineOptions opts) {
  if (origin.size() % kSub != 0) {
    return Status::invalid_argument(fmt::format(
        "the origin's size ({} bytes) is not a multiple of 4096; it cannot be cached",
        origin.size()));
  }
  auto map = Mapping::create(dev.blocks(), dev.block_size());
  if (!map.is_ok()) return map.status();
  SmqConfig pc;
  pc.nr_blocks = dev.blocks();
  pc.block_size = dev.block_size();
  pc.sequential_cutoff_bytes = opts.sequential_cutoff;
  auto policy = SmqPolicy::create(pc);
  if (!policy.is_ok()) return policy.status();
  std::unique_ptr<CacheEngine> e(new CacheEngine(origin, log, dev, std::move(map).value(),
                                                 std::move(policy).value(), opts));
  RBDCACHE_RETURN_IF_ERROR(e->load());

  auto bg = io::Reactor::create(256, 1000);
  if (!bg.is_ok()) return bg.status();
  e->bg_ = std::move(bg).value();

  CacheEngine* self = e.get();
  auto committed_gen = std::make_shared<uint64_t>(0);
  CommitWorker::Hooks hooks;
  hooks.mark = [self, committed_gen] {
    std::lock_guard<std::mutex> lock(self->mu_);
    *committed_gen = self->unmap_gen_;
  };
  hooks.before = [self] { return self->dev_.sync(); };
  hooks.after = [self, committed_gen](const Status& st) {
    if (st.is_ok()) self->after_commit_release(*committed_gen);
  };
  e->commits_ = std::make_unique<CommitWorker>(log, opts.commit_interval, std::move(hooks));
  e->bg_thread_ = std::thread([self] { self->bg_->run(); });
  e->bg_->post([self] { self->bg_tick(); });
  return e;
}

CacheEngine::~CacheEngine() {
  if (!shut_down_) shutdown().ignore_error();
}

Status CacheEngine::load() {
  const auto now = Clock::now();
  const uint64_t origin_blocks = (origin_.size() + bs_ - 1) / bs_;
  for (const auto& [cb, m] : log_.mappings()) {
    if (cb.value() >= dev_.blocks() || m.origin.value() >= origin_blocks) {
      return Status::corruption(fmt::format(
          "metadata maps cache block {} to origin block {}, outside this cache or origin; "
          "is this cache formatted for another origin?",
          cb.value(), m.origin.value()));
    }
    RBDCACHE_RETURN_IF_ERROR(map_.insert(m.origin, cb));
    map_.set_masks(cb, m.valid, m.dirty);
    policy_->on_insert(cb);
    if (map_.is_dirty(cb)) {
      policy_->set_dirty(cb, true);
      dirty_since_[cb] = now;
    }
  }
  // Every slot the committed metadata does not use is durably free.
  while (auto cb = map_.allocate_free()) ready_.push_back(*cb);
  std::reverse(ready_.begin(), ready_.end());  // hand out low slots first
  log::info("cache loaded: {} of {} blocks in use, {} dirty", map_.mapped_count(), dev_.blocks(),
            map_.dirty_block_count());
  return Status::ok();
}

Status CacheEngine::shutdown() {
  if (shut_down_) return Status::ok();
  shut_down_ = true;
  stopping_.store(true);
  if (bg_) {
    bg_->stop();
    if (bg_thread_.joinable()) bg_thread_.join();
  }
  commits_.reset();  // runs a final commit
  Status st = log_.close();
  if (!st.is_ok()) log::error("closing the metadata log: {}", st.to_string());
  return st;
}

OriginCaps CacheEngine::caps() const {
  OriginCaps c = origin_.caps();
  c.can_cache = true;
  return c;
}

std::string CacheEngine::describe() const {
  return fmt::format("{} cached in {} mode", origin_.describe(), mode_name(mode()));
}

void CacheEngine::set_mode(Mode m) {
  Mode old = mode_.exchange(m);
  if (old != m) log::info("cache mode: {} -> {}", mode_name(old), mode_name(m));
}

void CacheEngine::request_full_writeback() {
  full_writeback_.store(true);
  bg_->post([this] { bg_tick(); });
}

// ------------------------------------------------------------ request plumbing

std::shared_ptr<CacheEngine::Request> CacheEngine::make_request(io::Reactor& r, uint64_t offset,
                                                                uint64_t length, IoCallback done) {
  auto req = std::make_shared<Request>();
  req->r = &r;
  req->offset = offset;
  req->length = length;
  req->first = OriginBlock(offset / bs_);
  req->last = OriginBlock((offset + std::max<uint64_t>(length, 1) - 1) / bs_);
  req->done = std::move(done);
  fg_in_flight_.fetch_add(1);
  return req;
}

void CacheEngine::with_locks(const std::shared_ptr<Request>& req, std::function<void()> fn) {
  locks_.lock_range(*req->r, req->first, req->last, [this, req, fn = std::move(fn)]() mutable {
    if (!req->writes_origin) {
      req->locked = true;
      fn();
      return;
    }
    // After the block locks, so that this cannot deadlock with writeback,
    // which takes the origin locks while holding the block locks.
    origin_locks_.lock_range(*req->r, req->first, req->last, [req, fn = std::move(fn)] {
      req->locked = true;
      fn();
    });
  });
}

void CacheEngine::finish(const std::shared_ptr<Request>& req) {
  if (req->locked) {
    if (req->writes_origin) origin_locks_.unlock_range(req->first, req->last);
    locks_.unlock_range(req->first, req->last);
    req->locked = false;
  }
  fg_in_flight_.fetch_sub(1);
}

void CacheEngine::split(const std::shared_ptr<Request>& req, std::byte* user,
                        std::vector<Part>& parts) {
  uint64_t pos = req->offset;
  const uint64_t end = req->offset + req->length;
  while (pos < end) {
    Part p;
    p.ob = OriginBlock(pos / bs_);
    p.s = static_cast<uint32_t>(pos % bs_);
    p.e = static_cast<uint32_t>(std::min<uint64_t>(bs_, p.s + (end - pos)));
    p.user = user ? user + (pos - req->offset) : nullptr;
    parts.push_back(p);
    pos += p.e - p.s;
  }
}

// ------------------------------------------------------------ slots and metadata

std::optional<CacheBlock> CacheEngine::take_ready_slot_locked() {
  const size_t low = std::max<size_t>(8, dev_.blocks() / 64);
  if (ready_.size() <= low && bg_) bg_->post([this] { reclaim_slots(); });
  if (ready_.empty()) return std::nullopt;
  CacheBlock cb = ready_.back();
  ready_.pop_back();
  return cb;
}

void CacheEngine::append_state_locked(CacheBlock cb) {
  metalog::Entry e = metalog::Entry::unmap(cb);
  if (map_.is_mapped(cb)) {
    e = metalog::Entry::map(cb, *map_.origin_of(cb), map_.valid_mask(cb),
                            map_.dirty_mask(cb));
  }
  Status st = log_.append(e);
  if (!st.is_ok() && meta_error_.is_ok()) {
    meta_error_ = st;
    log::error("metadata log failed; cache state changes are no longer persisted: {}",
               st.to_string());
  }
}

// Precondition: the block's origin lock is held (or the caller otherwise
// knows no request uses the slot).
void CacheEngine::note_rewritten_locked(CacheBlock cb) {
  auto it = wb_in_flight_.find(cb);
  if (it != wb_in_flight_.end()) it->second = true;
}

void CacheEngine::evict_locked(CacheBlock cb) {
  note_rewritten_locked(cb);
  dirty_since_.erase(cb);
  flush_pending_.erase(cb);
  policy_->on_remove(cb);
  map_.remove(cb);
  // Keep the slot reserved: it is ours until its unmap is durable. The free
  // list is LIFO, so the slot just freed is the one handed back.
  std::optional<CacheBlock> again = map_.allocate_free();
  assert(again && *again == cb);
  (void)again;
  quarantine_.push_back(Quarantined{cb, ++unmap_gen_});
  Status st = log_.append(metalog::Entry::unmap(cb));
  if (!st.is_ok() && meta_error_.is_ok()) meta_error_ = st;
  ++counters_.demotions;
}

void CacheEngine::drop_subs_locked(CacheBlock cb, SubBlockRange r) {
  note_rewritten_locked(cb);
  bool was_dirty = map_.is_dirty(cb);
  map_.invalidate(cb, r);
  note_clean_locked(cb, was_dirty);
  if (!map_.any_valid(cb, map_.whole_block())) {
    evict_locked(cb);
  } else {
    append_state_locked(cb);
  }
}

void CacheEngine::drop_covered_locked(const std::vector<Part>& parts) {
  for (const Part& p : parts) {
    auto slot = map_.lookup(p.ob);
    SubBlockRange full = covered_sub_blocks(p.s, p.e - p.s);
    if (slot && full.count > 0) drop_subs_locked(*slot, full);
  }
}

void CacheEngine::note_dirty_locked(CacheBlock cb, bool was_dirty) {
  if (!was_dirty && map_.is_dirty(cb)) {
    policy_->set_dirty(cb, true);
    dirty_since_[cb] = Clock::now();
  }
}

void CacheEngine::note_clean_locked(CacheBlock cb, bool was_dirty) {
  if (was_dirty && !(map_.is_mapped(cb) && map_.is_dirty(cb))) {
    if (map_.is_mapped(cb)) policy_->set_dirty(cb, false);
    dirty_since_.erase(cb);
    flush_pending_.erase(cb);
  }
}

void CacheEngine::after_commit_release(uint64_t gen) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = std::partition(quarantine_.begin(), quarantine_.end(),
                           [gen](const Quarantined& q) { return q.gen > gen; });
  for (auto i = it; i != quarantine_.end(); ++i) ready_.push_back(i->slot);
  quarantine_.erase(it, quarantine_.end());
}

// ------------------------------------------------------------ READ

void CacheEngine::read(io::Reactor& r, uint64_t offset, std::span<std::byte> buf, IoCallback done) {
  auto req = make_request(r, offset, buf.size(), std::move(done));
  std::byte* user = buf.data();
  with_locks(req, [this, req, user] {
    std::vector<Part> parts;
    split(req, user, parts);
    auto join = make_join([this, req](Status st) {
      finish(req);
      req->done(std::move(st));
    });
    for (const Part& p : parts) {
      join->arm();
      read_part(req, p, [join](Status st) { join->report(std::move(st)); });
    }
    join->report(Status::ok());
  });
}

void CacheEngine::read_subs(io::Reactor& r, OriginBlock ob, SubBlockRange subs, std::byte* base,
                            std::optional<CacheBlock> slot, SubBlockMask valid, StatusFn done) {
  auto join = make_join(std::move(done));
  SubBlockMask want = SubBlockMask::of(subs);
  SubBlockMask from_cache = slot ? (valid & want) : SubBlockMask();
  SubBlockMask from_origin = want.without(from_cache);
  from_cache.for_each_run([&](SubBlockRange run) {
    join->arm();
    std::span<std::byte> dst(base + (run.first - subs.first) * kSub, run.count * kSub);
    dev_.read(r, *slot, run.first * kSub, dst, [join](Status st) { join->report(std::move(st)); });
  });
  from_origin.for_each_run([&](SubBlockRange run) {
    join->arm();
    std::span<std::byte> dst(base + (run.first - subs.first) * kSub, run.count * kSub);
    origin_.read(r, ob.value() * bs_ + uint64_t{run.first} * kSub, dst,
                 [join](Status st) { join->report(std::move(st)); });
  });
  join->report(Status::ok());
}

void CacheEngine::read_part(const std::shared_ptr<Request>& req, Part p, StatusFn done) {
  const SubBlockRange subs = p.subs();
  std::optional<CacheBlock> slot;
  SubBlockMask valid;
  bool hit = false;
  Decision d;
  {
    std::lock_guard<std::mutex> lock(mu_);
    slot = map_.lookup(p.ob);
    hit = slot && map_.is_fully_valid(*slot, subs);
    if (slot) valid = map_.valid_mask(*slot, subs);
    Access a{p.ob, p.origin_offset(bs_), p.e - p.s, false, hit ? slot : std::nullopt};
    d = policy_->on_access(a);
    ++(hit ? counters_.read_hits : counters_.read_misses);
  }
  const bool direct = p.s % kSub == 0 && p.e % kSub == 0 && is_aligned(p.user);
  if (hit && direct) {
    dev_.read(*req->r, *slot, p.s, std::span<std::byte>(p.user, p.e - p.s), std::move(done));
    return;
  }
  // Whole sub-blocks land in `base`: the caller's buffer when it is aligned,
  // else a bounce buffer whose requested bytes are copied out afterwards.
  std::shared_ptr<AlignedBuffer> owner;
  std::byte* base = p.user;
  if (!direct) {
    owner = std::make_shared<AlignedBuffer>(subs.count * kSub);
    base = owner->data();
  }
  const Mode m = mode();
  const bool fill = m != Mode::kPassthrough && !hit && (slot || d == Decision::kPromote);
  read_subs(*req->r, p.ob, subs, base, slot, valid,
            [this, req, p, base, owner, slot, fill, done = std::move(done)](Status st) mutable {
              if (!st.is_ok()) {
                done(std::move(st));
                return;
              }
              if (owner) std::memcpy(p.user, base + (p.s - p.subs().first * kSub), p.e - p.s);
              if (!fill) {
                done(Status::ok());
                return;
              }
              fill_after_read(req, p, base, owner, slot, true, std::move(done));
            });
}

// After a read miss: copies the sub-blocks just read into the cache (a
// promotion into a ready slot, or filling the invalid part of a mapped
// slot). A failure here only costs the cache a block: the read succeeded.
void CacheEngine::fill_after_read(const std::shared_ptr<Request>& req, const Part& p,
                                  std::byte* base, std::shared_ptr<AlignedBuffer> owner,
                                  std::optional<CacheBlock> slot, bool /*promote*/, StatusFn done) {
  const SubBlockRange subs = p.subs();
  bool fresh = false;
  if (!slot) {
    std::lock_guard<std::mutex> lock(mu_);
    slot = take_ready_slot_locked();
    fresh = slot.has_value();
  }
  if (!slot) {
    done(Status::ok());
    return;
  }
  CacheBlock cb = *slot;
  dev_.write(*req->r, cb, subs.first * kSub,
             std::span<const std::byte>(base, subs.count * kSub), false,
             [this, p, cb, fresh, subs, owner, done = std::move(done)](Status st) {
               {
                 std::lock_guard<std::mutex> lock(mu_);
                 if (!st.is_ok()) {
                   log::warn("cache device write failed while caching a read: {}", st.to_string());
                   if (fresh) ready_.push_back(cb);
                 } else {
                   if (fresh) {
                     Status ins = map_.insert(p.ob, cb);
                     assert(ins.is_ok());
                     ins.ignore_error();
                     policy_->on_insert(cb);
                     ++counters_.promotions;
                   }
                   map_.mark_valid(cb, subs);
                   append_state_locked(cb);
                 }
               }
               done(Status::ok());
             });
}

// ------------------------------------------------------------ WRITE

void CacheEngine::write(io::Reactor& r, uint64_t offset, std::span<const std::byte> buf,
                        WriteFlags flags, IoCallback done) {
  auto req = make_request(r, offset, buf.size(), std::move(done));
  std::byte* user = const_cast<std::byte*>(buf.data());  // only read from
  req->mode = mode();
  // Writethrough and passthrough write cached blocks to the origin, which
  // must not race a writeback of the same blocks.
  req->writes_origin = req->mode != Mode::kWriteback;
  with_locks(req, [this, req, user, flags] {
    std::vector<Part> parts;
    split(req, user, parts);
    auto join = make_join([this, req, flags](Status st) {
      finish(req);
      if (st.is_ok() && flags.fua) {
        // The data is on stable storage; make the metadata naming it durable.
        commits_->request(*req->r, req->done);
        return;
      }
      req->done(std::move(st));
    });
    for (const Part& p : parts) {
      join->arm();
      write_part(req, p, flags.fua, [join](Status st) { join->report(std::move(st)); });
    }
    join->report(Status::ok());
  });
}

void CacheEngine::write_part(const std::shared_ptr<Request>& req, Part p, bool fua, StatusFn done) {
  const SubBlockRange subs = p.subs();
  const Mode m = req->mode;
  std::optional<CacheBlock> slot;
  bool fresh = false;
  bool sequential = false;
  SubBlockMask valid;
  {
    std::lock_guard<std::mutex> lock(mu_);
    slot = map_.lookup(p.ob);
    const uint64_t seq_before = policy_->stats().sequential_misses;
    Access a{p.ob, p.origin_offset(bs_), p.e - p.s, true, slot};
    Decision d = policy_->on_access(a);
    sequential = policy_->stats().sequential_misses != seq_before;
    ++(slot ? counters_.write_hits : counters_.write_misses);
    if (!slot) {
      // Writeback absorbs every write but those of a long sequential stream;
      // writethrough caches a write only when the policy would promote it.
      bool want = (m == Mode::kWriteback && !sequential) ||
                  (m == Mode::kWritethrough && d == Decision::kPromote);
      if (want) {
        slot = take_ready_slot_locked();
        fresh = slot.has_value();
      }
    } else {
      valid = map_.valid_mask(*slot, subs);
    }
    if (!slot) counters_.bypassed_bytes += p.e - p.s;
  }
  io::Reactor& r = *req->r;

  if (!slot) {
    // Not cached: straight to the origin.
    origin_.write(r, p.origin_offset(bs_), std::span<const std::byte>(p.user, p.e - p.s),
                  WriteFlags{fua, true, false}, [this, done = std::move(done)](Status st) {
                    if (st.is_ok()) origin_written_.store(true);
                    done(std::move(st));
                  });
    return;
  }

  // The cache holds whole sub-blocks: merge the write into them. Partial
  // head and tail sub-blocks are first read (from the cache when valid
  // there, else from the origin).
  const bool direct = p.s % kSub == 0 && p.e % kSub == 0 && is_aligned(p.user);
  std::shared_ptr<AlignedBuffer> owner;
  std::byte* base = p.user;
  auto after_merge = [this, req, p, m, fua, subs, fresh, owner_slot = *slot](
                         std::byte* merged, std::shared_ptr<AlignedBuffer> keep, StatusFn fin) {
    io::Reactor& rr = *req->r;
    std::span<const std::byte> data(merged, subs.count * kSub);
    const CacheBlock cb = owner_slot;
    if (m == Mode::kWriteback) {
      dev_.write(rr, cb, subs.first * kSub, data, fua,
                 [this, p, cb, fresh, subs, keep, fin = std::move(fin)](Status st) {
                   {
                     std::lock_guard<std::mutex> lock(mu_);
                     if (!st.is_ok()) {
                       if (fresh) {
                         ready_.push_back(cb);
                       } else {
                         // The sub-blocks' contents are unknown now.
                         bool was_dirty = map_.is_dirty(cb);
                         map_.invalidate(cb, subs);
                         note_clean_locked(cb, was_dirty);
                         append_state_locked(cb);
                       }
                     } else {
                       if (fresh) {
                         Status ins = map_.insert(p.ob, cb);
                         assert(ins.is_ok());
                         ins.ignore_error();
                         policy_->on_insert(cb);
                       }
                       bool was_dirty = map_.is_dirty(cb);
                       map_.mark_dirty(cb, subs);
                       note_dirty_locked(cb, was_dirty);
                       note_rewritten_locked(cb);
                       append_state_locked(cb);
                     }
                   }
                   fin(std::move(st));
                 });
      return;
    }
    // Writethrough and passthrough: the merged sub-blocks go to the origin,
    // so every sub-block written is clean afterwards.
    const uint64_t origin_off = p.ob.value() * bs_ + uint64_t{subs.first} * kSub;
    auto join = make_join(nullptr);
    auto origin_st = std::make_shared<Status>();
    auto cache_st = std::make_shared<Status>();
    join->done = [this, p, cb, m, fresh, subs, keep, origin_st, cache_st,
                  fin = std::move(fin)](Status) {
      {
        std::lock_guard<std::mutex> lock(mu_);
        bool was_dirty = !fresh && map_.is_dirty(cb);
        if (fresh) {
          if (origin_st->is_ok() && cache_st->is_ok()) {
            Status ins = map_.insert(p.ob, cb);
            assert(ins.is_ok());
            ins.ignore_error();
            policy_->on_insert(cb);
            map_.mark_valid(cb, subs);
            ++counters_.promotions;
            append_state_locked(cb);
          } else {
            ready_.push_back(cb);
          }
        } else if (m == Mode::kPassthrough) {
          if (origin_st->is_ok()) drop_subs_locked(cb, subs);
        } else if (origin_st->is_ok() && cache_st->is_ok()) {
          map_.mark_valid(cb, subs);
          map_.mark_clean(cb, subs);
          note_clean_locked(cb, was_dirty);
          append_state_locked(cb);
        } else if (cache_st->is_ok()) {
          // Only the cache has the new data: keep it, as dirty.
          map_.mark_dirty(cb, subs);
          note_dirty_locked(cb, was_dirty);
          append_state_locked(cb);
        } else {
          map_.invalidate(cb, subs);
          note_clean_locked(cb, was_dirty);
          append_state_locked(cb);
        }
      }
      if (origin_st->is_ok()) origin_written_.store(true);
      fin(*origin_st);
    };
    join->arm();
    origin_.write(rr, origin_off, data, WriteFlags{fua, true, false}, [join, origin_st](Status st) {
      *origin_st = st;
      join->report(std::move(st));
    });
    if (m != Mode::kPassthrough) {
      join->arm();
      dev_.write(rr, cb, subs.first * kSub, data, false, [join, cache_st](Status st) {
        *cache_st = st;
        join->report(std::move(st));
      });
    }
    join->report(Status::ok());
  };

  if (direct) {
    after_merge(base, nullptr, std::move(done));
    return;
  }
  owner = std::make_shared<AlignedBuffer>(subs.count * kSub);
  base = owner->data();
  // Old contents of the partially written head and tail sub-blocks.
  const uint32_t head = p.s / kSub;
  const uint32_t tail = (p.e - 1) / kSub;
  auto join = make_join(nullptr);
  join->done = [p, base, owner, subs, after_merge, done = std::move(done)](Status st) mutable {
    if (!st.is_ok()) {
      done(std::move(st));
      return;
    }
    std::memcpy(base + (p.s - subs.first * kSub), p.user, p.e - p.s);
    after_merge(base, owner, std::move(done));
  };
  std::optional<CacheBlock> read_slot = fresh ? std::nullopt : slot;
  if (p.s % kSub != 0) {
    join->arm();
    read_subs(r, p.ob, SubBlockRange{head, 1}, base, read_slot, valid,
              [join](Status st) { join->report(std::move(st)); });
  }
  if (p.e % kSub != 0 && (tail != head || p.s % kSub == 0)) {
    join->arm();
    read_subs(r, p.ob, SubBlockRange{tail, 1}, base + (tail - subs.first) * kSub, read_slot, valid,
              [join](Status st) { join->report(std::move(st)); });
  }
  join->report(Status::ok());
}

// ------------------------------------------------------------ FLUSH

void CacheEngine::flush(io::Reactor& r, IoCallback done) {
  auto join = make_join(std::move(done));
  // Writes that went straight to the origin, and every write in the
  // write-through modes, need the origin's own flush.
  if (origin_written_.exchange(false) || mode() != Mode::kWriteback) {
    join->arm();
    origin_.flush(r, [this, join](Status st) {
      if (!st.is_ok()) origin_written_.store(true);
      join->report(std::move(st));
    });
  }
  // Syncs the cache device, then commits the metadata log.
  join->arm();
  commits_->request(r, [join](Status st) { join->report(std::move(st)); });
  join->report(Status::ok());
}

// ------------------------------------------------------------ TRIM and WRITE_ZEROES

void CacheEngine::discard(io::Reactor& r, uint64_t offset, uint64_t length, WriteFlags flags,
                          IoCallback done) {
  auto req = make_request(r, offset, length, std::move(done));
  req->writes_origin = true;
  with_locks(req, [this, req, flags] {
    std::vector<Part> parts;
    split(req, nullptr, parts);
    {
      std::lock_guard<std::mutex> lock(mu_);
      drop_covered_locked(parts);
    }
    origin_.discard(*req->r, req->offset, req->length, flags, [this, req, flags](Status st) {
      if (st.is_ok()) origin_written_.store(true);
      finish(req);
      if (st.is_ok() && flags.fua) {
        // Make the invalidation durable too.
        commits_->request(*req->r, req->done);
        return;
      }
      req->done(std::move(st));
    });
  });
}

void CacheEngine::zero_partial(io::Reactor& r, OriginBlock ob, uint32_t s, uint32_t e,
                               StatusFn done) {
  // Zeroes [s, e) of one cached sub-block by read-modify-write, keeping its
  // dirty state. Called with the block locked.
  const uint32_t sub = s / kSub;
  std::optional<CacheBlock> slot;
  {
    std::lock_guard<std::mutex> lock(mu_);
    slot = map_.lookup(ob);
    if (slot && !map_.is_fully_valid(*slot, SubBlockRange{sub, 1})) slot.reset();
  }
  if (!slot) {
    done(Status::ok());
    return;
  }
  auto buf = std::make_shared<AlignedBuffer>(kSub);
  CacheBlock cb = *slot;
  dev_.read(r, cb, sub * kSub, buf->span(), [this, &r, cb, sub, s, e, buf, done = std::move(done)](Status st) {
    if (!st.is_ok()) {
      done(std::move(st));
      return;
    }
    std::memset(buf->data() + (s - sub * kSub), 0, e - s);
    dev_.write(r, cb, sub * kSub, std::as_const(*buf).span(), false,
               [buf, done = std::move(done)](Status st2) { done(std::move(st2)); });
  });
}

void CacheEngine::write_zeroes(io::Reactor& r, uint64_t offset, uint64_t length, WriteFlags flags,
                               IoCallback done) {
  auto req = make_request(r, offset, length, std::move(done));
  req->writes_origin = true;
  with_locks(req, [this, req, flags] {
    // The origin is zeroed first: if it cannot (FAST_ZERO refused), the
    // cache is left untouched.
    origin_.write_zeroes(*req->r, req->offset, req->length, flags, [this, req, flags](Status st) {
      if (!st.is_ok()) {
        finish(req);
        req->done(std::move(st));
        return;
      }
      origin_written_.store(true);
      std::vector<Part> parts;
      split(req, nullptr, parts);
      auto join = make_join([this, req, flags](Status jst) {
        finish(req);
        if (jst.is_ok() && flags.fua) {
          commits_->request(*req->r, req->done);
          return;
        }
        req->done(std::move(jst));
      });
      {
        std::lock_guard<std::mutex> lock(mu_);
        drop_covered_locked(parts);
      }
      // Cached sub-blocks the range covers only in part get zeroed in place.
      for (const Part& p : parts) {
        const uint32_t up = (p.s + kSub - 1) / kSub * kSub;
        const uint32_t down = p.e / kSub * kSub;
        const bool head = p.s % kSub != 0;
        if (head) {
          join->arm();
          zero_partial(*req->r, p.ob, p.s, std::min(p.e, up),
                       [join](Status z) { join->report(std::move(z)); });
        }
        if (p.e % kSub != 0 && !(head && down <= p.s)) {
          join->arm();
          zero_partial(*req->r, p.ob, std::max(p.s, down), p.e,
                       [join](Status z) { join->report(std::move(z)); });
        }
      }
      join->report(Status::ok());
    });
  });
}

// ------------------------------------------------------------ BLOCK_STATUS, CACHE

void CacheEngine::block_status(io::Reactor& r, uint64_t offset, uint64_t length,
                               ExtentsCallback done) {
  origin_.block_status(r, offset, length,
                       [this, offset, done = std::move(done)](Result<std::vector<Extent>> res) {
                         if (!res.is_ok()) {
                           done(std::move(res));
                           return;
                         }
                         // Cached data makes a hole in the origin data.
                         std::vector<Extent>& ex = res.value();
                         uint64_t pos = offset;
                         std::lock_guard<std::mutex> lock(mu_);
                         for (Extent& e : ex) {
                           if (e.flags != 0) {
                             for (uint64_t b = pos / bs_; b <= (pos + e.length - 1) / bs_; ++b) {
                               auto slot = map_.lookup(OriginBlock(b));
                               if (slot && map_.any_valid(*slot, map_.whole_block())) {
                                 e.flags = 0;
                                 break;
                               }
                             }
                           }
                           pos += e.length;
                         }
                         done(std::move(res));
                       });
}

void CacheEngine::prefetch(io::Reactor& r, uint64_t offset, uint64_t length, IoCallback done) {
  origin_.prefetch(r, offset, length, std::move(done));
}

// ------------------------------------------------------------ stats

std::string stats_json(const EngineStats& s) {
  nlohmann::json j = {
      {"mode", mode_name(s.mode)},
      {"cache_bytes", s.cache_bytes},
      {"block_size", s.block_size},
      {"blocks", s.blocks},
      {"mapped_blocks", s.mapped_blocks},
      {"dirty_blocks", s.dirty_blocks},
      {"used_bytes", s.used_bytes},
      {"dirty_bytes", s.dirty_bytes},
      {"oldest_dirty_age_s", s.oldest_dirty_age_s},
      {"read_hits", s.read_hits},
      {"read_misses", s.read_misses},
      {"write_hits", s.write_hits},
      {"write_misses", s.write_misses},
      {"promotions", s.promotions},
      {"demotions", s.demotions},
      {"bytes_written_back", s.bytes_written_back},
      {"writeback_errors", s.writeback_errors},
      {"bypassed_bytes", s.bypassed_bytes},
      {"mapping_bytes", s.mapping_bytes},
      {"mapping_bytes_per_block", s.mapping_bytes_per_block},
      {"ready_slots", s.ready_slots},
  };
  return j.dump();
}

EngineStats CacheEngine::stats() const {
  std::lock_guard<std::mutex> lock(mu_);
  EngineStats s = counters_;
  s.mode = mode();
  s.block_size = bs_;
  s.blocks = dev_.blocks();
  s.cache_bytes = uint64_t{bs_} * dev_.blocks();
  s.mapped_blocks = map_.mapped_count();
  s.dirty_blocks = map_.dirty_block_count();
  s.used_bytes = map_.valid_sub_block_count() * kSub;
  s.dirty_bytes = map_.dirty_sub_block_count() * kSub;
  auto now = Clock::now();
  for (const auto& [cb, t] : dirty_since_) {
    s.oldest_dirty_age_s = std::max(s.oldest_dirty_age_s, std::chrono::duration<double>(now - t).count());
  }
  s.mapping_bytes = map_.memory_bytes() + policy_->memory_bytes();
  s.mapping_bytes_per_block = static_cast<double>(s.mapping_bytes) / dev_.blocks();
  s.ready_slots = static_cast<uint32_t>(ready_.size());
  PolicyStats ps = policy_->stats();
  s.bypassed_bytes += ps.sequential_bypassed_bytes;
  s.writeback_rate_bps = rate_bps_;
  s.origin_write_bps = origin_bps_;
  s.flush_active = flush_active_;
  s.flush_max_rate_bps = flush_max_rate_.load();
  if (flush_active_) {
    for (CacheBlock cb : flush_pending_) s.flush_left_bytes += map_.dirty_mask(cb).count() * kSub;
  }
  return s;
}

// ------------------------------------------------------------ background work
//
// Everything below runs on the background reactor's thread.

void CacheEngine::bg_tick() {
  if (stopping_.load()) return;
  const size_t low = std::max<size_t>(8, dev_.blocks() / 64);
  bool need_slots;
  bool pressure;
  bool aged = false;
  {
    std::lock_guard<std::mutex> lock(mu_);
    need_slots = ready_.size() + quarantine_.size() < low;
    const uint64_t dirty = map_.dirty_sub_block_count() * kSub;
    const uint64_t total = uint64_t{bs_} * dev_.blocks();
    pressure = static_cast<double>(dirty) > opts_.dirty_high_watermark * static_cast<double>(total);
    const auto limit = Clock::now() - opts_.max_dirty_age;
    for (const auto& [cb, t] : dirty_since_) {
      if (t <= limit) {
        aged = true;
        break;
      }
    }
  }
  sample_rates();
  if (need_slots) reclaim_slots();
  const bool everything = full_writeback_.load();
  if (!wb_running_ && Clock::now() >= wb_backoff_until_ && (pressure || aged || everything)) {
    run_writeback(everything || pressure);
  }
  bg_->timeout(100'000'000, [this](int) { bg_tick(); });
}

void CacheEngine::run_writeback(bool everything) {
  // Gathers the next batch of dirty blocks in origin order, from the cursor
  // on; when only age triggered it, just the blocks dirty for too long.
  std::vector<DirtyBlock> batch;
  {
    std::lock_guard<std::mutex> lock(mu_);
    batch = map_.dirty_in_origin_order(wb_cursor_, 256);
    if (batch.empty() && wb_cursor_ != OriginBlock(0)) {
      wb_cursor_ = OriginBlock(0);
      batch = map_.dirty_in_origin_order(wb_cursor_, 256);
    }
    if (!everything) {
      const auto limit = Clock::now() - opts_.max_dirty_age;
      std::erase_if(batch, [&](const DirtyBlock& d) {
        auto it = dirty_since_.find(d.slot);
        return it == dirty_since_.end() || it->second > limit;
      });
      if (batch.empty()) {
        // Aged blocks lie before the cursor: start again from the bottom.
        auto all = map_.dirty_in_origin_order(OriginBlock(0));
        for (const auto& d : all) {
          auto it = dirty_since_.find(d.slot);
          if (it != dirty_since_.end() && it->second <= limit) batch.push_back(d);
          if (batch.size() >= 256) break;
        }
      }
    }
  }
  if (batch.empty()) {
    full_writeback_.store(false);
    return;
  }
  // Neighbouring blocks form one unit, written to the origin together.
  auto units = std::make_shared<std::vector<WbUnit>>();
  const uint64_t max_blocks = std::max<uint64_t>(1, opts_.writeback_max_io / bs_);
  for (const auto& d : batch) {
    if (!units->empty() && units->back().last.value() + 1 == d.origin.value() &&
        d.origin.value() - units->back().first.value() < max_blocks) {
      units->back().last = d.origin;
    } else {
      units->push_back(WbUnit{d.origin, d.origin});
    }
  }
  wb_cursor_ = OriginBlock(batch.back().origin.value() + 1);
  wb_running_ = true;

  auto b = std::make_shared<WbBatch>();
  b->units = std::move(*units);
  b->everything = everything;
  wb_pump(b);
}

// Runs a batch's units with a small window, narrower while clients are busy.
void CacheEngine::wb_pump(const std::shared_ptr<WbBatch>& b) {
  if (b->rate_wait) return;  // the rate limit's timer pumps again
  const size_t window = fg_in_flight_.load() > 0 ? 1 : 4;
  while (!stopping_.load() && !b->failed && b->next < b->units.size() && b->active < window) {
    if (auto delay = rate_limit_delay(); delay.count() > 0) {
      b->rate_wait = true;
      bg_->timeout(static_cast<uint64_t>(delay.count()), [this, b](int) {
        b->rate_wait = false;
        wb_pump(b);
      });
      return;
    }
    auto u = std::make_shared<WbUnit>(b->units[b->next++]);
    ++b->active;
    write_back_unit(u, [this, b](bool ok) {
      --b->active;
      if (!ok) b->failed = true;
      wb_pump(b);
    });
  }
  if (b->active > 0) return;
  if (b->next < b->units.size() && !b->failed && !stopping_.load()) return;
  // The batch is over.
  wb_running_ = false;
  if (b->failed) {
    wb_backoff_ = std::min<std::chrono::milliseconds>(
        std::max<std::chrono::milliseconds>(wb_backoff_ * 2, std::chrono::milliseconds(500)),
        std::chrono::milliseconds(30'000));
    wb_backoff_until_ = Clock::now() + wb_backoff_;
    log::warn("writeback failed; retrying in {} ms", wb_backoff_.count());
    return;
  }
  wb_backoff_ = std::chrono::milliseconds(0);
  if (stopping_.load()) return;
  // Go on while the level is above the low watermark, or until clean when a
  // full writeback was asked for.
  bool more;
  {
    std::lock_guard<std::mutex> lock(mu_);
    const uint64_t dirty = map_.dirty_sub_block_count() * kSub;
    const uint64_t total = uint64_t{bs_} * dev_.blocks();
    more = full_writeback_.load()
               ? dirty > 0
               : static_cast<double>(dirty) > opts_.dirty_low_watermark * static_cast<double>(total);
  }
  if (more && (b->everything || full_writeback_.load())) {
    bg_->post([this] { run_writeback(true); });
  } else if (!more && full_writeback_.load()) {
    full_writeback_.store(false);
  }
}

void CacheEngine::write_back_unit(std::shared_ptr<WbUnit> unit, std::function<void(bool)> done) {
  io::Reactor& r = *bg_;
  locks_.lock_range(r, unit->first, unit->last, [this, &r, unit, done = std::move(done)] {
    // What is dirty now, block by block (the snapshot may be stale).
    struct Piece {
      OriginBlock ob;
      CacheBlock slot;
      SubBlockRange run;
    };
    std::vector<Piece> pieces;
    {
      std::lock_guard<std::mutex> lock(mu_);
      for (OriginBlock b = unit->first;; ++b) {
        auto slot = map_.lookup(b);
        if (slot && map_.is_dirty(*slot)) {
          map_.dirty_mask(*slot).for_each_run(
              [&](SubBlockRange run) { pieces.push_back(Piece{b, *slot, run}); });
        }
        if (b == unit->last) break;
      }
    }
    if (pieces.empty()) {
      locks_.unlock_range(unit->first, unit->last);
      done(true);
      return;
    }
    // Pieces that touch in origin space become one origin write.
    struct Write {
      uint64_t offset;
      uint64_t length;
      std::vector<size_t> pieces;
    };
    auto writes = std::make_shared<std::vector<Write>>();
    for (size_t i = 0; i < pieces.size(); ++i) {
      const Piece& pc = pieces[i];
      uint64_t off = pc.ob.value() * bs_ + uint64_t{pc.run.first} * kSub;
      uint64_t len = uint64_t{pc.run.count} * kSub;
      if (!writes->empty() && writes->back().offset + writes->back().length == off) {
        writes->back().length += len;
        writes->back().pieces.push_back(i);
      } else {
        writes->push_back(Write{off, len, {i}});
      }
    }
    for (const Write& w : *writes) rate_issued_bytes_ += w.length;  // flush --max-rate
    auto shared_pieces = std::make_shared<std::vector<Piece>>(std::move(pieces));
    auto bufs = std::make_shared<std::vector<std::shared_ptr<AlignedBuffer>>>();

    // Phase 3, origin locks held, block locks free: origin writes, origin
    // flush, then clean whatever did not change meanwhile.
    auto write_out = [this, &r, unit, shared_pieces, writes, bufs, done] {
      auto join = make_join(nullptr);
      join->done = [this, &r, unit, shared_pieces, writes, bufs, done](Status st) {
        auto finish_unit = [this, unit, shared_pieces, done](bool ok) {
          {
            std::lock_guard<std::mutex> lock(mu_);
            for (const Piece& pc : *shared_pieces) {
              auto it = wb_in_flight_.find(pc.slot);
              const bool changed = it == wb_in_flight_.end() || it->second;
              if (ok && !changed && map_.origin_of(pc.slot) == pc.ob) {
                bool was_dirty = map_.is_dirty(pc.slot);
                map_.mark_clean(pc.slot, pc.run);
                note_clean_locked(pc.slot, was_dirty);
              }
              if (ok) counters_.bytes_written_back += uint64_t{pc.run.count} * kSub;
            }
            for (const Piece& pc : *shared_pieces) {
              if (ok && map_.is_mapped(pc.slot) && map_.origin_of(pc.slot) == pc.ob) {
                append_state_locked(pc.slot);
              }
              wb_in_flight_.erase(pc.slot);
            }
            if (!ok) ++counters_.writeback_errors;
          }
          origin_locks_.unlock_range(unit->first, unit->last);
          done(ok);
        };
        if (!st.is_ok()) {
          log::warn("writeback of origin blocks {}..{} failed: {}", unit->first.value(),
                    unit->last.value(), st.to_string());
          finish_unit(false);
          return;
        }
        // The origin must hold the data durably before the blocks are clean.
        origin_.flush(r, [finish_unit](Status fst) {
          if (!fst.is_ok()) log::warn("origin flush after writeback failed: {}", fst.to_string());
          finish_unit(fst.is_ok());
        });
      };
      for (size_t i = 0; i < writes->size(); ++i) {
        const Write& w = (*writes)[i];
        auto buf = (*bufs)[i];
        join->arm();
        origin_.write(r, w.offset, std::as_const(*buf).span(), WriteFlags{},
                      [buf, join](Status wst) { join->report(std::move(wst)); });
      }
      join->report(Status::ok());
    };

    // Phase 2, block locks held: copy the dirty data out of the cache.
    auto copied = make_join(nullptr);
    copied->done = [this, &r, unit, shared_pieces, write_out, done](Status st) {
      if (!st.is_ok()) {
        log::warn("writeback of origin blocks {}..{}: reading the cache failed: {}",
                  unit->first.value(), unit->last.value(), st.to_string());
        {
          std::lock_guard<std::mutex> lock(mu_);
          ++counters_.writeback_errors;
        }
        locks_.unlock_range(unit->first, unit->last);
        done(false);
        return;
      }
      // Hand over to the origin locks: from here on, cache hits and
      // writeback-mode writes to these blocks go on while the origin works.
      origin_locks_.lock_range(r, unit->first, unit->last, [this, unit, shared_pieces, write_out] {
        {
          std::lock_guard<std::mutex> lock(mu_);
          for (const Piece& pc : *shared_pieces) wb_in_flight_[pc.slot] = false;
        }
        locks_.unlock_range(unit->first, unit->last);
        write_out();
      });
    };
    for (const Write& w : *writes) {
      auto buf = std::make_shared<AlignedBuffer>(w.length);
      bufs->push_back(buf);
      uint64_t at = 0;
      for (size_t i : w.pieces) {
        const Piece& pc = (*shared_pieces)[i];
        copied->arm();
        std::span<std::byte> dst(buf->data() + at, uint64_t{pc.run.count} * kSub);
        dev_.read(r, pc.slot, pc.run.first * kSub, dst,
                  [copied](Status st) { copied->report(std::move(st)); });
        at += dst.size();
      }
    }
    copied->report(Status::ok());
  });
}

void CacheEngine::reclaim_slots() {
  if (stopping_.load()) return;
  const size_t target = std::max<size_t>(16, dev_.blocks() / 32);
  size_t evicted = 0;
  {
    std::lock_guard<std::mutex> lock(mu_);
    size_t have = ready_.size() + quarantine_.size();
    while (have + evicted < target) {
      auto v = policy_->choose_victim();
      if (!v) break;
      auto ob = map_.origin_of(*v);
      if (!ob || map_.is_dirty(*v) || !locks_.try_lock(*ob)) {
        // In use right now: try again on a later tick.
        policy_->restore(*v);
        break;
      }
      evict_locked(*v);
      locks_.unlock(*ob);
      ++evicted;
    }
  }
  if (evicted > 0) {
    // The slots become ready once their unmap entries are committed.
    commits_->request(*bg_, [](Status) {});
  }
}

}  // namespace rbdcache::cache
