// Sub-blocks: the 4 KiB pieces of a cache block that carry their own valid
// and dirty bits, and the one mask type that the cache engine, the mapping
// and the metadata log all use for them.
#pragma once

#include <array>
#include <bit>
#include <cassert>
#include <cstddef>
#include <cstdint>
#include <span>

namespace rbdcache {

inline constexpr uint32_t kSubBlockShift = 12;
inline constexpr uint32_t kSubBlockSize = 1u << kSubBlockShift;  // 4 KiB
inline constexpr uint32_t kMaxCacheBlockSize = 1u << 20;          // 1 MiB
inline constexpr uint32_t kMaxSubBlocks = kMaxCacheBlockSize / kSubBlockSize;  // 256

// A run of sub-blocks inside one cache block: [first, first + count).
struct SubBlockRange {
  uint32_t first = 0;
  uint32_t count = 0;

  uint32_t end() const { return first + count; }
  bool operator==(const SubBlockRange&) const = default;
};

// A set of sub-blocks of one cache block (up to kMaxSubBlocks), as a value.
class SubBlockMask {
 public:
  static constexpr uint32_t kWords = kMaxSubBlocks / 64;

  constexpr SubBlockMask() = default;
  static SubBlockMask of(SubBlockRange r) {
    SubBlockMask m;
    m.set(r);
    return m;
  }
  // The mask with the first `n` bits set.
  static SubBlockMask first(uint32_t n) { return of(SubBlockRange{0, n}); }

  bool test(uint32_t i) const { return (w_[i / 64] >> (i % 64)) & 1; }
  void set(uint32_t i) { w_[i / 64] |= uint64_t{1} << (i % 64); }
  void clear(uint32_t i) { w_[i / 64] &= ~(uint64_t{1} << (i % 64)); }
  void set(SubBlockRange r) {
    assert(r.end() <= kMaxSubBlocks);
    uint32_t i = r.first;
    const uint32_t end = r.end();
    while (i < end) {
      const uint32_t bit = i % 64;
      const uint32_t n = end - i < 64 - bit ? end - i : 64 - bit;
      const uint64_t run = n == 64 ? ~uint64_t{0} : ((uint64_t{1} << n) - 1) << bit;
      w_[i / 64] |= run;
      i += n;
    }
  }
  uint32_t count() const {
    uint32_t n = 0;
    for (uint64_t w : w_) n += static_cast<uint32_t>(std::popcount(w));
    return n;
  }
  bool none() const { return (w_[0] | w_[1] | w_[2] | w_[3]) == 0; }
  bool any() const { return !none(); }
  // True when every bit of `other` is set here.
  bool contains(const SubBlockMask& other) const { return other.without(*this).none(); }
  bool is_subset_of(const SubBlockMask& other) const { return other.contains(*this); }
  // True when no bit at or above `n` is set.
  bool fits(uint32_t n) const { return first(n).contains(*this); }

  // Calls fn(SubBlockRange) for each maximal run of set bits, in ascending
  // order. A word at a time (this is on every request's path): fn must not
  // change this mask.
  template <typename Fn>
  void for_each_run(Fn&& fn) const {
    for (uint32_t i = next_set(0); i < kMaxSubBlocks;) {
      const uint32_t end = next_clear(i);
      fn(SubBlockRange{i, end - i});
      i = next_set(end);
    }
  }
  // The first set bit at or after `i`, or kMaxSubBlocks if there is none.
  uint32_t next_set(uint32_t i) const {
    while (i < kMaxSubBlocks) {
      const uint64_t w = w_[i / 64] >> (i % 64);
      if (w != 0) return i + static_cast<uint32_t>(std::countr_zero(w));
      i = (i / 64 + 1) * 64;
    }
    return kMaxSubBlocks;
  }
  // The first clear bit at or after `i`, or kMaxSubBlocks if there is none.
  uint32_t next_clear(uint32_t i) const {
    while (i < kMaxSubBlocks) {
      const uint64_t w = ~w_[i / 64] >> (i % 64);
      if (w != 0) return i + static_cast<uint32_t>(std::countr_zero(w));
      i = (i / 64 + 1) * 64;
    }
    return kMaxSubBlocks;
  }

  uint64_t word(uint32_t i) const { return w_[i]; }
  uint64_t& word(uint32_t i) { return w_[i]; }

  SubBlockMask operator&(const SubBlockMask& o) const {
    SubBlockMask r;
    for (uint32_t i = 0; i < kWords; ++i) r.w_[i] = w_[i] & o.w_[i];
    return r;
  }
  SubBlockMask operator|(const SubBlockMask& o) const {
    SubBlockMask r;
    for (uint32_t i = 0; i < kWords; ++i) r.w_[i] = w_[i] | o.w_[i];
    return r;
  }
  // The bits set here and not in `o`.
  SubBlockMask without(const SubBlockMask& o) const {
    SubBlockMask r;
    for (uint32_t i = 0; i < kWords; ++i) r.w_[i] = w_[i] & ~o.w_[i];
    return r;
  }
  bool operator==(const SubBlockMask&) const = default;

  // Bytes are little-endian bit order: bit i is byte i/8, bit i%8.
  void to_bytes(std::span<std::byte> out) const {
    for (size_t i = 0; i < out.size(); ++i) {
      out[i] = static_cast<std::byte>((w_[i / 8] >> (8 * (i % 8))) & 0xff);
    }
  }
  static SubBlockMask from_bytes(std::span<const std::byte> in) {
    SubBlockMask m;
    for (size_t i = 0; i < in.size() && i < kMaxSubBlocks / 8; ++i) {
      m.w_[i / 8] |= static_cast<uint64_t>(in[i]) << (8 * (i % 8));
    }
    return m;
  }

 private:
  std::array<uint64_t, kWords> w_{};
};

}  // namespace rbdcache
