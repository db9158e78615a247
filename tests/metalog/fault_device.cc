#include "fault_device.h"

#include <algorithm>
#include <cstring>

namespace rbdcache::metalog::testing {

FaultInjectionDevice::FaultInjectionDevice(std::vector<std::byte> durable_image)
    : durable_(durable_image), current_(std::move(durable_image)) {}

Status FaultInjectionDevice::step() {
  if (power_lost_) return Status::io_error("power lost");
  ++ops_;
  if (ops_left_ == 0) {
    power_lost_ = true;
    return Status::io_error("power lost");
  }
  if (ops_left_ != UINT64_MAX) --ops_left_;
  return Status::ok();
}

Status FaultInjectionDevice::read(uint64_t offset, std::span<std::byte> data) {
  if (power_lost_) return Status::io_error("power lost");
  if (offset > current_.size() || data.size() > current_.size() - offset) return Status::invalid_argument("read past end");
  std::memcpy(data.data(), current_.data() + offset, data.size());
  return Status::ok();
}

Status FaultInjectionDevice::write(uint64_t offset, std::span<const std::byte> data) {
  if (offset > current_.size() || data.size() > current_.size() - offset) return Status::invalid_argument("write past end");
  RBDCACHE_RETURN_IF_ERROR(step());
  std::memcpy(current_.data() + offset, data.data(), data.size());
  pending_.push_back(Pending{offset, std::vector<std::byte>(data.begin(), data.end())});
  return Status::ok();
}

Status FaultInjectionDevice::discard(uint64_t offset, uint64_t length) {
  if (offset > current_.size() || length > current_.size() - offset) return Status::invalid_argument("discard past end");
  RBDCACHE_RETURN_IF_ERROR(step());
  std::fill_n(current_.begin() + static_cast<ptrdiff_t>(offset), length, std::byte{0});
  pending_.push_back(Pending{offset, std::vector<std::byte>(length)});
  return Status::ok();
}

Status FaultInjectionDevice::sync() {
  RBDCACHE_RETURN_IF_ERROR(step());
  durable_ = current_;
  pending_.clear();
  return Status::ok();
}

std::vector<std::byte> FaultInjectionDevice::crash_image(std::mt19937_64& rng, Survival how) const {
  std::vector<std::byte> img = durable_;
  if (pending_.empty()) return img;
  auto tear = [&](const Pending& p) {
    // Only whole 512-byte sectors of the torn write reach the medium.
    uint64_t sectors = p.data.size() / 512;
    uint64_t keep = std::uniform_int_distribution<uint64_t>(0, sectors)(rng);
    std::memcpy(img.data() + p.offset, p.data.data(), keep * 512);
  };
  if (how == Survival::kPrefix) {
    size_t k = std::uniform_int_distribution<size_t>(0, pending_.size())(rng);
    for (size_t i = 0; i + 1 < k; ++i) {
      std::memcpy(img.data() + pending_[i].offset, pending_[i].data.data(), pending_[i].data.size());
    }
    if (k > 0) tear(pending_[k - 1]);
    return img;
  }
  // Split into 4 KiB blocks; each survives with probability 1/2, one is torn.
  std::vector<Pending> blocks;
  for (const Pending& p : pending_) {
    for (size_t at = 0; at < p.data.size(); at += 4096) {
      size_t n = std::min<size_t>(4096, p.data.size() - at);
      blocks.push_back(Pending{p.offset + at, std::vector<std::byte>(p.data.begin() + static_cast<ptrdiff_t>(at),
                                                                     p.data.begin() + static_cast<ptrdiff_t>(at + n))});
    }
  }
  size_t torn = std::uniform_int_distribution<size_t>(0, blocks.size() - 1)(rng);
  for (size_t i = 0; i < blocks.size(); ++i) {
    if (i == torn) {
      tear(blocks[i]);
    } else if (rng() & 1) {
      std::memcpy(img.data() + blocks[i].offset, blocks[i].data.data(), blocks[i].data.size());
    }
  }
  return img;
}

}  // namespace rbdcache::metalog::testing
