// A heap buffer aligned for O_DIRECT I/O.
#pragma once

#include <cstddef>
#include <cstdlib>
#include <memory>
#include <new>
#include <span>

namespace rbdcache {

class AlignedBuffer {
 public:
  static constexpr size_t kAlign = 4096;

  AlignedBuffer() = default;
  // Allocates `size` bytes (uninitialised) aligned to kAlign; aborts on
  // allocation failure, as operator new would.
  explicit AlignedBuffer(size_t size) : size_(size) {
    if (size == 0) return;
    void* p = std::aligned_alloc(kAlign, (size + kAlign - 1) / kAlign * kAlign);
    if (p == nullptr) throw std::bad_alloc();
    data_.reset(static_cast<std::byte*>(p));
  }

  std::byte* data() { return data_.get(); }
  const std::byte* data() const { return data_.get(); }
  size_t size() const { return size_; }
  std::span<std::byte> span() { return {data_.get(), size_}; }
  std::span<const std::byte> span() const { return {data_.get(), size_}; }

 private:
  struct Free {
    void operator()(std::byte* p) const { std::free(p); }
  };
  std::unique_ptr<std::byte, Free> data_;
  size_t size_ = 0;
};

}  // namespace rbdcache
