#include "fault_origin.h"

#include <algorithm>
#include <cassert>
#include <cstring>
#include <mutex>
#include <thread>

#include "io/reactor.h"

namespace rbdcache::cache::testing {

namespace {
Status injected(const char* what) { return Status::io_error(std::string("injected fault: ") + what); }
Status power_lost() { return Status::io_error("power lost"); }
}  // namespace

const char* op_name(FaultOrigin::Op op) {
  switch (op) {
    case FaultOrigin::Op::kRead: return "read";
    case FaultOrigin::Op::kWrite: return "write";
    case FaultOrigin::Op::kFlush: return "flush";
    case FaultOrigin::Op::kDiscard: return "discard";
    case FaultOrigin::Op::kWriteZeroes: return "write_zeroes";
    case FaultOrigin::Op::kCount: break;
  }
  return "?";
}

FaultOrigin::FaultOrigin(Origin& inner, std::vector<std::byte> durable_image,
                         std::shared_ptr<PowerSwitch> power)
    : inner_(inner), power_(std::move(power)), durable_(std::move(durable_image)) {
  assert(durable_.size() == inner_.size());
}

FaultOrigin::~FaultOrigin() {
  // A completion may still be finishing on its reactor thread (its caller
  // has seen it already): wait for it to let go of this object. An operation
  // whose caller vanished never finishes; do not wait for it for ever.
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(2);
  while (in_flight_.load() > 0 && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::microseconds(100));
  }
}

bool FaultOrigin::check_locked(const OpInfo& info, Status& st) {
  const int k = static_cast<int>(info.op);
  ++issued_[k];
  if (!power_->on_locked()) {
    st = power_lost();
    return false;
  }
  if (fail_next_[k] > 0) {
    --fail_next_[k];
    st = injected(op_name(info.op));
    return false;
  }
  if (fault_ && fault_(info)) {
    st = injected(op_name(info.op));
    return false;
  }
  return true;
}

bool FaultOrigin::start(OpInfo& info, Status& st, const std::byte* data, bool is_write) {
  std::lock_guard<std::mutex> lock(power_->mutex());
  info.id = next_id_++;
  if (!check_locked(info, st)) return false;
  if (is_write) {
    Pending p{info.id, info.offset, info.length, {}, info.fua};
    if (data) p.data.assign(data, data + info.length);
    pending_.push_back(std::move(p));
  }
  in_flight_.fetch_add(1);
  return true;
}

namespace {
// Fails an operation that never reached the inner origin; the completion
// is posted, never run inline.
void post_failure(io::Reactor& r, Status st, IoCallback done) {
  r.post([st = std::move(st), done = std::move(done)] { done(st); });
}
}  // namespace

void FaultOrigin::read(io::Reactor& r, uint64_t offset, std::span<std::byte> buf,
                       IoCallback done) {
  OpInfo info{0, Op::kRead, offset, buf.size(), false};
  Status st;
  if (!start(info, st, nullptr, false)) return post_failure(r, std::move(st), std::move(done));
  inner_.read(r, offset, buf, [this, &r, info, done = std::move(done)](Status ist) mutable {
    completed(r, info, std::move(ist), 0, std::move(done));
  });
}

void FaultOrigin::write(io::Reactor& r, uint64_t offset, std::span<const std::byte> buf,
                        WriteFlags flags, IoCallback done) {
  OpInfo info{0, Op::kWrite, offset, buf.size(), flags.fua};
  Status st;
  if (!start(info, st, buf.data(), true)) return post_failure(r, std::move(st), std::move(done));
  inner_.write(r, offset, buf, flags, [this, &r, info, done = std::move(done)](Status ist) mutable {
    completed(r, info, std::move(ist), 0, std::move(done));
  });
}

void FaultOrigin::discard(io::Reactor& r, uint64_t offset, uint64_t length, WriteFlags flags,
                          IoCallback done) {
  OpInfo info{0, Op::kDiscard, offset, length, flags.fua};
  Status st;
  if (!start(info, st, nullptr, true)) return post_failure(r, std::move(st), std::move(done));
  inner_.discard(r, offset, length, flags,
                 [this, &r, info, done = std::move(done)](Status ist) mutable {
                   completed(r, info, std::move(ist), 0, std::move(done));
                 });
}

void FaultOrigin::write_zeroes(io::Reactor& r, uint64_t offset, uint64_t length,
                               WriteFlags flags, IoCallback done) {
  OpInfo info{0, Op::kWriteZeroes, offset, length, flags.fua};
  Status st;
  if (!start(info, st, nullptr, true)) return post_failure(r, std::move(st), std::move(done));
  inner_.write_zeroes(r, offset, length, flags,
                      [this, &r, info, done = std::move(done)](Status ist) mutable {
                        completed(r, info, std::move(ist), 0, std::move(done));
                      });
}

void FaultOrigin::flush(io::Reactor& r, IoCallback done) {
  OpInfo info{0, Op::kFlush, 0, 0, false};
  Status st;
  if (!start(info, st, nullptr, false)) return post_failure(r, std::move(st), std::move(done));
  uint64_t upto;
  {
    // The writes completed so far are the ones this flush covers.
    std::lock_guard<std::mutex> lock(power_->mutex());
    upto = next_seq_;
  }
  inner_.flush(r, [this, &r, info, upto, done = std::move(done)](Status ist) mutable {
    completed(r, info, std::move(ist), upto, std::move(done));
  });
}

void FaultOrigin::block_status(io::Reactor& r, uint64_t offset, uint64_t length,
                               ExtentsCallback done) {
  if (!power_->on()) {
    r.post([done = std::move(done)] { done(power_lost()); });
    return;
  }
  inner_.block_status(r, offset, length, std::move(done));
}

void FaultOrigin::prefetch(io::Reactor& r, uint64_t offset, uint64_t length, IoCallback done) {
  if (!power_->on()) return post_failure(r, power_lost(), std::move(done));
  inner_.prefetch(r, offset, length, std::move(done));
}

void FaultOrigin::completed(io::Reactor& r, const OpInfo& info, Status st, uint64_t flush_upto,
                            IoCallback done) {
  {
    std::lock_guard<std::mutex> lock(power_->mutex());
    if (hold_[static_cast<int>(info.op)]) {
      auto fn = [this, info, st, flush_upto, done = std::move(done)] {
        deliver(info, st, flush_upto, done);
      };
      held_.push_back(Held{info, std::move(fn), &r});
      held_cv_.notify_all();
      return;
    }
  }
  deliver(info, std::move(st), flush_upto, done);
}

void FaultOrigin::deliver(const OpInfo& info, Status st, uint64_t flush_upto,
                          const IoCallback& done) {
  {
    std::lock_guard<std::mutex> lock(power_->mutex());
    auto it = std::find_if(pending_.begin(), pending_.end(),
                           [&](const Pending& p) { return p.id == info.id; });
    if (!power_->on_locked()) {
      // The reply is lost; a write stays in flight: it may or may not have
      // reached the medium.
      st = power_lost();
    } else if (!st.is_ok()) {
      // The inner origin refused it; its data never landed (as far as
      // crash images go: the file origin fails before writing).
      if (it != pending_.end()) pending_.erase(it);
    } else if (info.op == Op::kFlush) {
      // The covered writes reach the medium in the order they completed.
      for (const Pending* p : in_order_locked()) {
        if (p->seq < flush_upto) apply_locked(durable_, *p);
      }
      std::erase_if(pending_, [&](const Pending& p) { return p.seq < flush_upto; });
      ++flushes_;
    } else if (it != pending_.end()) {
      // Completed; a FUA write is durable from now on (durable()).
      it->seq = next_seq_++;
    }
  }
  done(st);
  // Only now: whoever waits for in_flight() == 0 may destroy the caller.
  in_flight_.fetch_sub(1);
}

void FaultOrigin::apply_locked(std::vector<std::byte>& img, const Pending& p) const {
  if (p.data.empty()) {
    std::memset(img.data() + p.offset, 0, p.length);
  } else {
    std::memcpy(img.data() + p.offset, p.data.data(), p.length);
  }
}

void FaultOrigin::fail_next(Op op, uint64_t n) {
  std::lock_guard<std::mutex> lock(power_->mutex());
  fail_next_[static_cast<int>(op)] += n;
}

void FaultOrigin::set_fault(std::function<bool(const OpInfo&)> pred) {
  std::lock_guard<std::mutex> lock(power_->mutex());
  fault_ = std::move(pred);
}

void FaultOrigin::hold(Op op, bool on) {
  std::lock_guard<std::mutex> lock(power_->mutex());
  hold_[static_cast<int>(op)] = on;
}

std::vector<FaultOrigin::OpInfo> FaultOrigin::held() const {
  std::lock_guard<std::mutex> lock(power_->mutex());
  std::vector<OpInfo> out;
  for (const Held& h : held_) out.push_back(h.info);
  return out;
}

bool FaultOrigin::release(uint64_t id) {
  Held h;
  {
    std::lock_guard<std::mutex> lock(power_->mutex());
    auto it = std::find_if(held_.begin(), held_.end(), [id](const Held& x) { return x.info.id == id; });
    if (it == held_.end()) return false;
    h = std::move(*it);
    held_.erase(it);
  }
  h.reactor->post(std::move(h.deliver));
  return true;
}

void FaultOrigin::release_all() {
  std::vector<Held> all;
  {
    std::lock_guard<std::mutex> lock(power_->mutex());
    all.swap(held_);
  }
  for (Held& h : all) h.reactor->post(std::move(h.deliver));
}

bool FaultOrigin::wait_for_held(size_t n, std::chrono::milliseconds timeout) const {
  std::unique_lock<std::mutex> lock(power_->mutex());
  return held_cv_.wait_for(lock, timeout, [&] { return held_.size() >= n; });
}

void FaultOrigin::abandon_held() {
  std::vector<Held> all;
  {
    std::lock_guard<std::mutex> lock(power_->mutex());
    all.swap(held_);
  }
  in_flight_.fetch_sub(all.size());
  // Their callbacks are destroyed here, unrun.
}

std::vector<const FaultOrigin::Pending*> FaultOrigin::in_order_locked() const {
  std::vector<const Pending*> order;
  for (const Pending& p : pending_) order.push_back(&p);
  std::stable_sort(order.begin(), order.end(),
                   [](const Pending* a, const Pending* b) { return a->seq < b->seq; });
  return order;
}

std::vector<std::byte> FaultOrigin::crash_image(std::mt19937_64& rng) const {
  std::lock_guard<std::mutex> lock(power_->mutex());
  std::vector<std::byte> img = durable_;
  for (const Pending* p : in_order_locked()) {
    if (p->durable() || (rng() & 1)) apply_locked(img, *p);
  }
  return img;
}

std::vector<std::byte> FaultOrigin::synced_image() const {
  std::lock_guard<std::mutex> lock(power_->mutex());
  std::vector<std::byte> img = durable_;
  for (const Pending* p : in_order_locked()) {
    if (p->durable()) apply_locked(img, *p);
  }
  return img;
}

std::vector<std::byte> FaultOrigin::current_image() const {
  std::lock_guard<std::mutex> lock(power_->mutex());
  std::vector<std::byte> img = durable_;
  for (const Pending* p : in_order_locked()) apply_locked(img, *p);
  return img;
}

uint64_t FaultOrigin::flushes() const {
  std::lock_guard<std::mutex> lock(power_->mutex());
  return flushes_;
}

uint64_t FaultOrigin::issued(Op op) const {
  std::lock_guard<std::mutex> lock(power_->mutex());
  return issued_[static_cast<int>(op)];
}

size_t FaultOrigin::unsynced_writes() const {
  std::lock_guard<std::mutex> lock(power_->mutex());
  return static_cast<size_t>(
      std::count_if(pending_.begin(), pending_.end(), [](const Pending& p) { return !p.durable(); }));
}

}  // namespace rbdcache::cache::testing
