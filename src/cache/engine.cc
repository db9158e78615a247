#include "cache/engine.h"

#include <algorithm>

#include "cache/smq_policy.h"
#include "util/log.h"

namespace rbdcache::cache {

Result<Mode> parse_mode(const std::string& s) {
  if (s == "writeback") return Mode::kWriteback;
  if (s == "writethrough") return Mode::kWritethrough;
  if (s == "passthrough") return Mode::kPassthrough;
  return Status::invalid_argument(
      fmt::format("unknown cache mode '{}': expected writeback, writethrough or passthrough", s));
}

CacheEngine::CacheEngine(Origin& origin, metalog::MetadataLog& log, CacheDevice& dev, Mapping map,
                         std::unique_ptr<Policy> policy, EngineOptions opts)
    : log_(log),
      slots_(std::move(map), std::move(policy), log),
      ctx_(origin, dev, slots_, opts),
      reads_(ctx_),
      writes_(ctx_, reads_),
      writeback_(ctx_) {
  if (opts.full_invariant_checks) slots_.set_checks(SlotTable::Checks::kFull);
}

Result<std::unique_ptr<CacheEngine>> CacheEngine::create(Origin& origin, metalog::MetadataLog& log,
                                                         CacheDevice& dev, EngineOptions opts) {
  if (origin.size() % kSubBlockSize != 0) {
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
  const uint64_t origin_blocks = (origin.size() + dev.block_size() - 1) / dev.block_size();
  RBDCACHE_RETURN_IF_ERROR(e->slots_.load(origin_blocks));
  {
    auto t = e->slots_.lock();
    EngineStats s;
    t.fill_stats(s);
    log::info("cache loaded: {} of {} blocks in use, {} dirty", s.mapped_blocks, s.blocks,
              s.dirty_blocks);
  }

  auto bg = io::Reactor::create(256, 1000);
  if (!bg.is_ok()) return bg.status();
  EngineContext& ctx = e->ctx_;
  ctx.bg = std::move(bg).value();

  CacheEngine* self = e.get();
  auto committed_gen = std::make_shared<uint64_t>(0);
  CommitWorker::Hooks hooks;
  hooks.mark = [self, committed_gen] { *committed_gen = self->slots_.lock().unmap_generation(); };
  hooks.before = [self] { return self->ctx_.dev.sync(); };
  hooks.after = [self, committed_gen](const Status& st) {
    if (st.is_ok()) {
      self->slots_.lock().release_quarantine(*committed_gen);
    } else {
      self->slots_.lock().fail(st);
    }
  };
  ctx.commits = std::make_unique<CommitWorker>(log, opts.commit_interval, std::move(hooks));
  ctx.want_slots = [self] { self->ctx_.bg->post([self] { self->reclaim_slots(); }); };
  e->bg_thread_ = std::thread([self] { self->ctx_.bg->run(); });
  ctx.bg->post([self] { self->bg_tick(); });
  return e;
}

CacheEngine::~CacheEngine() {
  if (!shut_down_) shutdown().ignore_error();
}

Status CacheEngine::shutdown() {
  if (shut_down_) return Status::ok();
  shut_down_ = true;
  if (ctx_.bg) {
    // No writeback I/O may outlive this call: its completions would reach a
    // reactor that is gone, and the caller may hand the image to another
    // host next.
    run_on_bg([this](std::function<void(Status)> done) {
      stopping_ = true;
      writeback_.stop([done] { done(Status::ok()); });
    }).ignore_error();
    ctx_.bg->stop();
    if (bg_thread_.joinable()) bg_thread_.join();
  }
  ctx_.commits.reset();  // runs a final commit
  Status st = log_.close();
  if (!st.is_ok()) log::error("closing the metadata log: {}", st.to_string());
  return st;
}

OriginCaps CacheEngine::caps() const {
  OriginCaps c = ctx_.origin.caps();
  c.can_cache = true;
  return c;
}

std::string CacheEngine::describe() const {
  return fmt::format("{} cached in {} mode", ctx_.origin.describe(), mode_name(mode()));
}

void CacheEngine::set_mode(Mode m) {
  Mode old = ctx_.mode.exchange(m);
  if (old != m) log::info("cache mode: {} -> {}", mode_name(old), mode_name(m));
}

// ------------------------------------------------------------ requests

void CacheEngine::read(io::Reactor& r, uint64_t offset, std::span<std::byte> buf,
                       IoCallback done) {
  reads_.read(r, offset, buf, std::move(done));
}

void CacheEngine::write(io::Reactor& r, uint64_t offset, std::span<const std::byte> buf,
                        WriteFlags flags, IoCallback done) {
  writes_.write(r, offset, buf, flags, std::move(done));
}

void CacheEngine::discard(io::Reactor& r, uint64_t offset, uint64_t length, WriteFlags flags,
                          IoCallback done) {
  writes_.discard(r, offset, length, flags, std::move(done));
}

void CacheEngine::write_zeroes(io::Reactor& r, uint64_t offset, uint64_t length,
                               WriteFlags flags, IoCallback done) {
  writes_.write_zeroes(r, offset, length, flags, std::move(done));
}

void CacheEngine::block_status(io::Reactor& r, uint64_t offset, uint64_t length,
                               ExtentsCallback done) {
  reads_.block_status(r, offset, length, std::move(done));
}

void CacheEngine::prefetch(io::Reactor& r, uint64_t offset, uint64_t length, IoCallback done) {
  ctx_.origin.prefetch(r, offset, length, std::move(done));
}

// Every write answered before this FLUSH is durable when it is answered:
// origin writes (bypass, writethrough, passthrough, trim, write-zeroes) by
// an origin flush that covers them all, the cache's data by the commit,
// which syncs the cache device before it writes the metadata.
void CacheEngine::flush(io::Reactor& r, IoCallback done) {
  auto join = Join::make(std::move(done));
  ctx_.origin_sync.flush(ctx_.origin, r, join->step());
  ctx_.commits->request(r, join->step());
  join->report(Status::ok());
}

// ------------------------------------------------------------ stats

EngineStats CacheEngine::stats() const {
  EngineStats s;
  s.mode = mode();
  ctx_.counters.fill(s);
  slots_.lock().fill_stats(s);  // adds the policy's bypassed bytes
  writeback_.fill_stats(s);
  return s;
}

// ------------------------------------------------------------ background

void CacheEngine::bg_tick() {
  if (stopping_) return;
  const size_t low = std::max<size_t>(8, slots_.nr_blocks() / 64);
  bool need_slots;
  {
    auto t = slots_.lock();
    need_slots = t.ready_count() + t.quarantined_count() < low;
  }
  if (need_slots) reclaim_slots();
  writeback_.tick();
  ctx_.bg->timeout(100'000'000, [this](int) { bg_tick(); });
}

void CacheEngine::reclaim_slots() {
  if (stopping_) return;
  const size_t target = std::max<size_t>(16, slots_.nr_blocks() / 32);
  size_t evicted;
  {
    auto t = slots_.lock();
    evicted = t.reclaim(ctx_.locks, target);
  }
  // The slots become ready once their unmap entries are committed.
  if (evicted > 0) ctx_.commits->request(*ctx_.bg, [](Status) {});
}

}  // namespace rbdcache::cache
