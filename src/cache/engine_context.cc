#include "cache/engine_context.h"

namespace rbdcache::cache {

void OriginSync::flush(Origin& origin, io::Reactor& r, StatusFn done) {
  const uint64_t target = written_.load(std::memory_order_acquire);
  if (durable_.load(std::memory_order_acquire) >= target) {
    done(Status::ok());
    return;
  }
  origin.flush(r, [this, target, done = std::move(done)](Status st) {
    if (st.is_ok()) {
      uint64_t cur = durable_.load(std::memory_order_acquire);
      while (cur < target &&
             !durable_.compare_exchange_weak(cur, target, std::memory_order_acq_rel)) {
      }
    }
    done(std::move(st));
  });
}

std::shared_ptr<Request> EngineContext::begin(io::Reactor& r, uint64_t offset, uint64_t length,
                                              IoCallback done) {
  auto req = std::make_shared<Request>();
  req->r = &r;
  req->offset = offset;
  req->length = length;
  req->first = OriginBlock(offset / bs);
  req->last = OriginBlock((offset + std::max<uint64_t>(length, 1) - 1) / bs);
  req->done = std::move(done);
  req->mode = mode.load();
  fg_in_flight.fetch_add(1);
  return req;
}

void EngineContext::with_locks(const std::shared_ptr<Request>& req, std::function<void()> fn) {
  locks.lock_range(*req->r, req->first, req->last, [this, req, fn = std::move(fn)]() mutable {
    if (!req->writes_origin) {
      req->locked = true;
      fn();
      return;
    }
    origin_locks.lock_range(*req->r, req->first, req->last, [req, fn = std::move(fn)] {
      req->locked = true;
      fn();
    });
  });
}

void EngineContext::finish(const std::shared_ptr<Request>& req) {
  if (req->locked) {
    if (req->writes_origin) origin_locks.unlock_range(req->first, req->last);
    locks.unlock_range(req->first, req->last);
    req->locked = false;
  }
  fg_in_flight.fetch_sub(1);
}

void EngineContext::with_origin_lock(const Request& req, OriginBlock ob,
                                     std::function<void(std::function<void()>)> fn) {
  if (req.writes_origin) {
    fn([] {});
    return;
  }
  origin_locks.lock_range(*req.r, ob, ob, [this, ob, fn = std::move(fn)] {
    fn([this, ob] { origin_locks.unlock(ob); });
  });
}

void EngineContext::write_origin(const Request& req, OriginBlock ob, uint64_t offset,
                                 std::span<const std::byte> data, WriteFlags flags,
                                 StatusFn done) {
  io::Reactor* r = req.r;
  with_origin_lock(req, ob, [this, r, offset, data, flags, done = std::move(done)](
                                std::function<void()> unlock) mutable {
    origin.write(*r, offset, data, flags,
                 [this, unlock = std::move(unlock), done = std::move(done)](Status st) {
                   if (st.is_ok()) origin_sync.note_write();
                   unlock();
                   done(std::move(st));
                 });
  });
}

}  // namespace rbdcache::cache
