// FaultInjectionDevice: a BlockDevice for crash tests. It keeps the durable
// image (what survives a power cut) apart from the writes since the last
// sync, can be told to lose power after a number of operations, and then
// builds the image a real device could hold after the cut:
//   - unsynced writes are dropped, except a random selection that made it;
//   - the last write that made it is torn at a random 512-byte boundary.
#pragma once

#include <cstdint>
#include <random>
#include <vector>

#include "metalog/block_device.h"

namespace rbdcache::metalog::testing {

class FaultInjectionDevice final : public BlockDevice {
 public:
  explicit FaultInjectionDevice(std::vector<std::byte> durable_image);

  uint64_t size() const override { return current_.size(); }
  Status read(uint64_t offset, std::span<std::byte> data) override;
  Status write(uint64_t offset, std::span<const std::byte> data) override;
  Status sync() override;
  Status discard(uint64_t offset, uint64_t length) override;

  // After `ops` more writes, syncs or discards, power is lost: that call and
  // every later one fail with EIO and change nothing.
  void lose_power_after(uint64_t ops) { ops_left_ = ops; }
  bool power_lost() const { return power_lost_; }
  uint64_t ops() const { return ops_; }

  // How unsynced writes survive a power cut.
  enum class Survival {
    kPrefix,     // the first k unsynced writes (k random), the k-th torn
    kAnyBlocks,  // any subset of the unsynced 4 KiB blocks, one of them torn
  };
  // The image after the power cut.
  std::vector<std::byte> crash_image(std::mt19937_64& rng, Survival how) const;

 private:
  struct Pending {
    uint64_t offset;
    std::vector<std::byte> data;
  };
  Status step();

  std::vector<std::byte> durable_;
  std::vector<std::byte> current_;
  std::vector<Pending> pending_;
  uint64_t ops_ = 0;
  uint64_t ops_left_ = UINT64_MAX;
  bool power_lost_ = false;
};

}  // namespace rbdcache::metalog::testing
