// Distinct index types, so that an origin block number can never be passed
// where a cache block number is expected (dm-cache's oblock/cblock split).
//
// Glossary:
//   ByteOffset  - a byte position in the exported (origin) address space.
//   OriginBlock - the index of a cache-block-sized chunk of the origin
//                 (origin byte offset / cache block size).
//   CacheBlock  - the index of a block slot on the cache device.
//   LogBlock    - the index of a fixed-size block on the metadata device.
//   SegmentId   - the index of a segment (erase unit) of the metadata device.
#pragma once

#include <compare>
#include <cstdint>
#include <functional>

namespace rbdcache {

template <typename Tag, typename Rep = uint64_t>
class StrongIndex {
 public:
  using rep_type = Rep;
  constexpr StrongIndex() = default;
  constexpr explicit StrongIndex(Rep v) : v_(v) {}
  constexpr Rep value() const { return v_; }
  constexpr auto operator<=>(const StrongIndex&) const = default;
  constexpr StrongIndex& operator++() {
    ++v_;
    return *this;
  }

 private:
  Rep v_{};
};

using OriginBlock = StrongIndex<struct OriginBlockTag, uint64_t>;
using CacheBlock = StrongIndex<struct CacheBlockTag, uint32_t>;
using LogBlock = StrongIndex<struct LogBlockTag, uint64_t>;
using SegmentId = StrongIndex<struct SegmentIdTag, uint32_t>;

}  // namespace rbdcache

template <typename Tag, typename Rep>
struct std::hash<rbdcache::StrongIndex<Tag, Rep>> {
  size_t operator()(const rbdcache::StrongIndex<Tag, Rep>& i) const noexcept {
    return std::hash<Rep>()(i.value());
  }
};
