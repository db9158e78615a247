// CacheEngine's operator controls: invalidation, the operator's flush with
// its progress and rate limit, and the writeback rate figures. See the
// "Operator controls" part of cache/engine.h.
#include <algorithm>
#include <cassert>
#include <future>

#include "cache/engine.h"
#include "util/log.h"

namespace rbdcache::cache {

namespace {

using Clock = std::chrono::steady_clock;
constexpr uint32_t kSub = kSubBlockSize;

bool overlaps(const std::vector<ByteExtent>& extents, uint64_t off, uint64_t len) {
  // extents are sorted; a linear scan is fine for the sizes seen here.
  for (const ByteExtent& e : extents) {
    if (e.offset >= off + len) break;
    if (e.offset + e.length > off) return true;
  }
  return false;
}

}  // namespace

Status CacheEngine::run_on_bg(std::function<void(std::function<void(Status)>)> fn) {
  assert(!bg_->on_reactor_thread());
  auto promise = std::make_shared<std::promise<Status>>();
  auto result = promise->get_future();
  bg_->post([fn = std::move(fn), promise] {
    fn([promise](Status st) { promise->set_value(std::move(st)); });
  });
  return result.get();
}

void CacheEngine::drop_mask_locked(CacheBlock cb, SubBlockMask mask) {
  note_rewritten_locked(cb);
  const bool was_dirty = map_.is_dirty(cb);
  mask.for_each_run([&](SubBlockRange r) { map_.invalidate(cb, r); });
  note_clean_locked(cb, was_dirty);
  if (!map_.any_valid(cb, map_.whole_block())) {
    evict_locked(cb);
  } else {
    append_state_locked(cb);
  }
}

Result<InvalidateResult> CacheEngine::invalidate(
    const std::optional<std::vector<ByteExtent>>& extents, bool discard_dirty) {
  // The blocks to visit, in origin order.
  auto blocks = std::make_shared<std::vector<OriginBlock>>();
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (uint32_t i = 0; i < dev_.blocks(); ++i) {
      CacheBlock cb(i);
      if (!map_.is_mapped(cb)) continue;
      OriginBlock ob = *map_.origin_of(cb);
      if (extents && !overlaps(*extents, ob.value() * bs_, bs_)) continue;
      blocks->push_back(ob);
    }
  }
  std::sort(blocks->begin(), blocks->end());
  auto result = std::make_shared<InvalidateResult>();

  // Under the block's lock: drop what the caller asked for.
  auto drop_one = [this, discard_dirty, result](OriginBlock ob) {
    std::lock_guard<std::mutex> lock(mu_);
    auto slot = map_.lookup(ob);
    if (!slot) return;
    SubBlockMask valid = map_.valid_mask(*slot);
    SubBlockMask dirty = map_.dirty_mask(*slot);
    SubBlockMask drop = discard_dirty ? valid : valid.without(dirty);
    if (!discard_dirty) result->dirty_kept_bytes += uint64_t{dirty.count()} * kSub;
    if (drop.none()) return;
    ++result->blocks;
    result->dirty_bytes += uint64_t{(drop & dirty).count()} * kSub;
    result->clean_bytes += uint64_t{drop.without(dirty).count()} * kSub;
    drop_mask_locked(*slot, drop);
  };

  Status st = run_on_bg([this, blocks, drop_one](std::function<void(Status)> done) {
    auto i = std::make_shared<size_t>(0);
    auto step = std::make_shared<std::function<void()>>();
    *step = [this, blocks, drop_one, i, step, done] {
      while (*i < blocks->size()) {
        OriginBlock ob = (*blocks)[*i];
        if (!locks_.try_lock(ob)) {
          // In use by a request: wait for it, then go on from the next one.
          locks_.lock_range(*bg_, ob, ob, [this, ob, drop_one, i, step] {
            drop_one(ob);
            locks_.unlock(ob);
            ++*i;
            bg_->post([step] { (*step)(); });
          });
          return;
        }
        drop_one(ob);
        locks_.unlock(ob);
        ++*i;
      }
      commits_->request(*bg_, [step, done](Status cst) {
        *step = nullptr;  // breaks the self-reference
        done(std::move(cst));
      });
    };
    (*step)();
  });
  if (!st.is_ok()) return st.with_context("committing the invalidation");
  if (result->blocks > 0) {
    log::info("invalidated {} cached blocks: {} clean bytes dropped{}", result->blocks,
              result->clean_bytes,
              result->dirty_bytes ? fmt::format(", {} DIRTY BYTES DISCARDED", result->dirty_bytes)
                                  : std::string());
  }
  return *result;
}

void CacheEngine::begin_flush(uint64_t max_rate_bps) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    flush_pending_.clear();
    for (const auto& [cb, since] : dirty_since_) flush_pending_.insert(cb);
    flush_active_ = true;
  }
  flush_max_rate_.store(max_rate_bps);
  bg_->post([this] {
    rate_start_ = Clock::now();
    rate_issued_bytes_ = 0;
  });
  request_full_writeback();
}

void CacheEngine::end_flush() {
  // Back to the watermarks and ages: blocks dirtied during the flush are
  // not forced out.
  full_writeback_.store(false);
  std::lock_guard<std::mutex> lock(mu_);
  flush_pending_.clear();
  flush_active_ = false;
  flush_max_rate_.store(0);
}

Status CacheEngine::sync_origin() {
  return run_on_bg([this](std::function<void(Status)> done) {
    origin_.flush(*bg_, [this, done](Status st) {
      if (!st.is_ok()) {
        done(st.with_context("flushing the origin"));
        return;
      }
      commits_->request(*bg_, [done](Status cst) { done(std::move(cst)); });
    });
  });
}

std::chrono::nanoseconds CacheEngine::rate_limit_delay() {
  const uint64_t rate = flush_max_rate_.load();
  if (rate == 0) return std::chrono::nanoseconds(0);
  // Bytes issued (not completed: several units are in flight at once),
  // allowing one unit's worth of burst.
  const double allowed_s = static_cast<double>(rate_issued_bytes_) / static_cast<double>(rate);
  const double elapsed_s = std::chrono::duration<double>(Clock::now() - rate_start_).count();
  const double ahead_s = allowed_s - elapsed_s - static_cast<double>(opts_.writeback_max_io) / static_cast<double>(rate);
  // The next unit may start only while the issued bytes are strictly below
  // the allowance: starting one at the limit would add a second burst.
  if (ahead_s < 0) return std::chrono::nanoseconds(0);
  // Short waits, so that shutdown is never held up for long.
  return std::chrono::nanoseconds(static_cast<int64_t>(std::clamp(ahead_s, 0.001, 0.1) * 1e9));
}

void CacheEngine::sample_rates() {
  const auto now = Clock::now();
  if (sample_at_ == Clock::time_point{}) {
    sample_at_ = now;
    return;
  }
  const double dt = std::chrono::duration<double>(now - sample_at_).count();
  if (dt < 1.0) {
    sample_wb_active_ = sample_wb_active_ || wb_running_;
    return;
  }
  std::lock_guard<std::mutex> lock(mu_);
  const uint64_t bytes = counters_.bytes_written_back;
  const double rate = static_cast<double>(bytes - sample_bytes_) / dt;
  // Smoothed over a few seconds.
  rate_bps_ = rate_bps_ == 0 ? rate : 0.5 * rate_bps_ + 0.5 * rate;
  if (sample_wb_active_ && rate > 0) {
    origin_bps_ = origin_bps_ == 0 ? rate : 0.7 * origin_bps_ + 0.3 * rate;
  }
  sample_bytes_ = bytes;
  sample_at_ = now;
  sample_wb_active_ = wb_running_;
}

}  // namespace rbdcache::cache
