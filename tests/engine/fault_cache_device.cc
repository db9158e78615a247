#include "fault_cache_device.h"

#include <algorithm>
#include <cassert>
#include <cstring>
#include <thread>

#include "io/reactor.h"

namespace rbdcache::cache::testing {

FaultCacheDevice::FaultCacheDevice(uint32_t block_size, uint32_t blocks,
                                   std::vector<std::byte> durable_image,
                                   std::shared_ptr<PowerSwitch> power,
                                   std::chrono::microseconds sync_latency)
    : CacheDevice(block_size, blocks),
      power_(std::move(power)),
      sync_latency_(sync_latency),
      durable_(durable_image),
      current_(std::move(durable_image)) {
  assert(current_.size() == uint64_t{block_size} * blocks);
}

namespace {
Status power_lost() { return Status::io_error("power lost"); }
}  // namespace

void FaultCacheDevice::read(io::Reactor& r, CacheBlock cb, uint32_t offset,
                            std::span<std::byte> buf, IoCallback done) {
  assert(cb.value() < blocks() && offset + buf.size() <= block_size());
  assert(offset % kSubBlockSize == 0 && buf.size() % kSubBlockSize == 0);
  Status st;
  {
    std::lock_guard<std::mutex> lock(power_->mutex());
    if (!power_->on_locked()) {
      st = power_lost();
    } else {
      std::memcpy(buf.data(), current_.data() + uint64_t{cb.value()} * block_size() + offset,
                  buf.size());
    }
  }
  r.post([done = std::move(done), st = std::move(st)] { done(st); });
}

void FaultCacheDevice::write(io::Reactor& r, CacheBlock cb, uint32_t offset,
                             std::span<const std::byte> buf, bool fua, IoCallback done) {
  assert(cb.value() < blocks() && offset + buf.size() <= block_size());
  assert(offset % kSubBlockSize == 0 && buf.size() % kSubBlockSize == 0);
  Status st;
  {
    std::lock_guard<std::mutex> lock(power_->mutex());
    if (!power_->on_locked()) {
      st = power_lost();
    } else {
      const uint64_t at = uint64_t{cb.value()} * block_size() + offset;
      std::memcpy(current_.data() + at, buf.data(), buf.size());
      pending_.push_back(Pending{at, std::vector<std::byte>(buf.begin(), buf.end()), fua,
                                 next_seq_++});
    }
  }
  r.post([done = std::move(done), st = std::move(st)] { done(st); });
}

Status FaultCacheDevice::do_sync(bool with_latency) {
  uint64_t upto;
  std::function<void()> hook;
  {
    std::lock_guard<std::mutex> lock(power_->mutex());
    if (!power_->on_locked()) return power_lost();
    upto = next_seq_;
    if (with_latency) hook.swap(sync_hook_);
  }
  if (hook) hook();
  if (with_latency && sync_latency_.count() > 0) std::this_thread::sleep_for(sync_latency_);
  std::lock_guard<std::mutex> lock(power_->mutex());
  // A power cut while the flush ran: it never completed.
  if (!power_->on_locked()) return power_lost();
  // Pending writes are in sequence order; the covered ones form a prefix.
  auto end = std::find_if(pending_.begin(), pending_.end(),
                          [upto](const Pending& p) { return p.seq >= upto; });
  for (auto it = pending_.begin(); it != end; ++it) {
    std::memcpy(durable_.data() + it->offset, it->data.data(), it->data.size());
  }
  pending_.erase(pending_.begin(), end);
  ++syncs_;
  return Status::ok();
}

void FaultCacheDevice::flush(io::Reactor& r, IoCallback done) {
  // On the reactor thread: no latency, the loop must not sleep.
  Status st = do_sync(false);
  r.post([done = std::move(done), st = std::move(st)] { done(st); });
}

Status FaultCacheDevice::sync() { return do_sync(true); }

std::vector<std::byte> FaultCacheDevice::crash_image(std::mt19937_64& rng) const {
  std::lock_guard<std::mutex> lock(power_->mutex());
  std::vector<std::byte> img = durable_;
  // One write that is not FUA may be torn; pick it among the candidates.
  std::vector<size_t> tearable;
  for (size_t i = 0; i < pending_.size(); ++i) {
    if (!pending_[i].fua) tearable.push_back(i);
  }
  const size_t torn = tearable.empty()
                          ? SIZE_MAX
                          : tearable[std::uniform_int_distribution<size_t>(0, tearable.size() - 1)(rng)];
  for (size_t i = 0; i < pending_.size(); ++i) {
    const Pending& p = pending_[i];
    if (p.fua || (i != torn && (rng() & 1))) {
      std::memcpy(img.data() + p.offset, p.data.data(), p.data.size());
    } else if (i == torn) {
      // Only whole 512-byte sectors of the torn write reach the medium.
      const uint64_t sectors = p.data.size() / 512;
      const uint64_t keep = std::uniform_int_distribution<uint64_t>(0, sectors)(rng);
      std::memcpy(img.data() + p.offset, p.data.data(), keep * 512);
    }
  }
  return img;
}

std::vector<std::byte> FaultCacheDevice::synced_image() const {
  std::lock_guard<std::mutex> lock(power_->mutex());
  std::vector<std::byte> img = durable_;
  for (const Pending& p : pending_) {
    if (p.fua) std::memcpy(img.data() + p.offset, p.data.data(), p.data.size());
  }
  return img;
}

std::vector<std::byte> FaultCacheDevice::current_image() const {
  std::lock_guard<std::mutex> lock(power_->mutex());
  return current_;
}

void FaultCacheDevice::during_next_sync(std::function<void()> fn) {
  std::lock_guard<std::mutex> lock(power_->mutex());
  sync_hook_ = std::move(fn);
}

size_t FaultCacheDevice::unsynced_writes() const {
  std::lock_guard<std::mutex> lock(power_->mutex());
  return pending_.size();
}

uint64_t FaultCacheDevice::syncs() const {
  std::lock_guard<std::mutex> lock(power_->mutex());
  return syncs_;
}

}  // namespace rbdcache::cache::testing
