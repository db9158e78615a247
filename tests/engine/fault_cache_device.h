// FaultCacheDevice: an in-memory CacheDevice for crash tests. It keeps the
// durable image (what survives a power cut) apart from the writes completed
// since the last sync, and builds the image a real device could hold after a
// power cut:
//   - unsynced writes are dropped, except a random selection that made it
//     (applied in the order they were written);
//   - one surviving unsynced write is torn at a random 512-byte boundary;
//   - FUA writes were durable when they completed, so they always survive.
//
// A sync or flush makes durable the writes completed before it started, not
// those that complete while it runs (like fdatasync on a real device). An
// optional latency of sync() widens that window, so that races between data
// writes and a flush in progress show up in tests.
//
// PowerSwitch ties several fault devices together: every operation on any of
// them runs under the switch's lock while the power is on, so cut() stops
// all of them at one instant. Afterwards every operation fails with EIO and
// changes nothing.
//
// Threads: any thread may call any member. Completions are posted to the
// caller's reactor, never run inline.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <random>
#include <vector>

#include "cache/cache_device.h"

namespace rbdcache::cache::testing {

class PowerSwitch {
 public:
  // Turns the power off; returns once no operation is running on any device
  // attached to this switch.
  void cut() {
    std::lock_guard<std::mutex> lock(mu_);
    on_ = false;
  }
  bool on() const {
    std::lock_guard<std::mutex> lock(mu_);
    return on_;
  }

  // Held by the devices around every operation; check on_locked() inside.
  std::mutex& mutex() const { return mu_; }
  bool on_locked() const { return on_; }

 private:
  mutable std::mutex mu_;
  bool on_ = true;
};

class FaultCacheDevice final : public CacheDevice {
 public:
  // `durable_image` is the data area: blocks * block_size bytes, cache block
  // b at byte b * block_size.
  FaultCacheDevice(uint32_t block_size, uint32_t blocks, std::vector<std::byte> durable_image,
                   std::shared_ptr<PowerSwitch> power = std::make_shared<PowerSwitch>(),
                   std::chrono::microseconds sync_latency = std::chrono::microseconds(0));

  void read(io::Reactor& r, CacheBlock cb, uint32_t offset, std::span<std::byte> buf,
            IoCallback done) override;
  void write(io::Reactor& r, CacheBlock cb, uint32_t offset, std::span<const std::byte> buf,
             bool fua, IoCallback done) override;
  void flush(io::Reactor& r, IoCallback done) override;
  Status sync() override;

  // The image after a power cut (call after the switch is cut, or when no
  // other thread uses the device).
  std::vector<std::byte> crash_image(std::mt19937_64& rng) const;
  // The image after a power cut that lost every unsynced write but FUA ones.
  std::vector<std::byte> synced_image() const;
  // The image with every completed write (a process crash: they had
  // reached the kernel).
  std::vector<std::byte> current_image() const;

  // Runs `fn` once, on the syncing thread, during the next sync(): after
  // the writes that sync covers are fixed and before it completes. Lets a
  // test complete a write while a flush is in progress, deterministically.
  void during_next_sync(std::function<void()> fn);

  // Writes completed since the last sync (FUA ones included).
  size_t unsynced_writes() const;
  uint64_t syncs() const;

 private:
  struct Pending {
    uint64_t offset;
    std::vector<std::byte> data;
    bool fua;
    uint64_t seq;
  };
  // A sync: the writes completed before it started (seq < next_seq_ then)
  // reach the medium once the latency (sync() only) has passed.
  Status do_sync(bool with_latency);

  std::shared_ptr<PowerSwitch> power_;
  const std::chrono::microseconds sync_latency_;
  // Guarded by power_->mutex().
  std::vector<std::byte> durable_;
  std::vector<std::byte> current_;
  std::vector<Pending> pending_;
  uint64_t next_seq_ = 0;  // numbers the writes
  uint64_t syncs_ = 0;
  std::function<void()> sync_hook_;
};

}  // namespace rbdcache::cache::testing
