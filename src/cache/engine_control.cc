// CacheEngine's operator controls: invalidation and the origin sync. See
// the "Operator controls" part of cache/engine.h.
#include <algorithm>
#include <cassert>
#include <future>

#include "cache/engine.h"
#include "util/log.h"

namespace rbdcache::cache {

namespace {

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
  assert(!ctx_.bg->on_reactor_thread());
  auto promise = std::make_shared<std::promise<Status>>();
  auto result = promise->get_future();
  ctx_.bg->post([fn = std::move(fn), promise] {
    fn([promise](Status st) { promise->set_value(std::move(st)); });
  });
  return result.get();
}

Result<InvalidateResult> CacheEngine::invalidate(
    const std::optional<std::vector<ByteExtent>>& extents, bool discard_dirty) {
  // The blocks to visit, in origin order.
  auto blocks = std::make_shared<std::vector<OriginBlock>>();
  {
    auto t = slots_.lock();
    for (uint32_t i = 0; i < slots_.nr_blocks(); ++i) {
      auto ob = t.map().origin_of(CacheBlock(i));
      if (!ob) continue;
      if (extents && !overlaps(*extents, ob->value() * ctx_.bs, ctx_.bs)) continue;
      blocks->push_back(*ob);
    }
  }
  std::sort(blocks->begin(), blocks->end());
  auto result = std::make_shared<InvalidateResult>();

  // Under the block's lock (and, when dirty data goes, its origin lock):
  // drop what the caller asked for.
  auto drop_one = [this, discard_dirty, result](OriginBlock ob) {
    auto t = slots_.lock();
    auto slot = t.lookup(ob);
    if (!slot) return;
    const SubBlockMask valid = t.map().valid_mask(*slot);
    const SubBlockMask dirty = t.map().dirty_mask(*slot);
    const SubBlockMask drop = discard_dirty ? valid : valid.without(dirty);
    if (!discard_dirty) result->dirty_kept_bytes += uint64_t{dirty.count()} * kSubBlockSize;
    if (drop.none()) return;
    ++result->blocks;
    result->dirty_bytes += uint64_t{(drop & dirty).count()} * kSubBlockSize;
    result->clean_bytes += uint64_t{drop.without(dirty).count()} * kSubBlockSize;
    t.drop(*slot, drop);
  };

  Status st = run_on_bg([this, blocks, drop_one, discard_dirty](std::function<void(Status)> done) {
    auto i = std::make_shared<size_t>(0);
    auto step = std::make_shared<std::function<void()>>();
    *step = [this, blocks, drop_one, discard_dirty, i, step, done] {
      if (*i == blocks->size()) {
        ctx_.commits->request(*ctx_.bg, [step, done](Status cst) {
          *step = nullptr;  // breaks the self-reference
          done(std::move(cst));
        });
        return;
      }
      const OriginBlock ob = (*blocks)[(*i)++];
      ctx_.locks.lock_range(*ctx_.bg, ob, ob, [this, ob, drop_one, discard_dirty, step] {
        auto locked = [this, ob, drop_one, discard_dirty, step] {
          drop_one(ob);
          if (discard_dirty) ctx_.origin_locks.unlock(ob);
          ctx_.locks.unlock(ob);
          ctx_.bg->post([step] { (*step)(); });
        };
        if (!discard_dirty) {
          locked();
          return;
        }
        // A writeback of this block's old data may be writing the origin:
        // wait for it, so no later write can be overtaken by it.
        ctx_.origin_locks.lock_range(*ctx_.bg, ob, ob, std::move(locked));
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

Status CacheEngine::sync_origin() {
  return run_on_bg([this](std::function<void(Status)> done) {
    ctx_.origin.flush(*ctx_.bg, [this, done](Status st) {
      if (!st.is_ok()) {
        done(st.with_context("flushing the origin"));
        return;
      }
      ctx_.commits->request(*ctx_.bg, [done](Status cst) { done(std::move(cst)); });
    });
  });
}

}  // namespace rbdcache::cache
