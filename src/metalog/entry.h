// Metadata entries: what a record block's payload holds, and their encoding.
//
// An entry changes the state of one cache block (map it to an origin block,
// unmap it, change its dirty mask) or marks a checkpoint. Entries are
// variable-length (5 to 77 bytes); the byte layout is in
// docs/metadata-format.md, "Entries".
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <span>
#include <unordered_map>
#include <vector>

#include "metalog/format.h"
#include "rbdcache/status.h"
#include "rbdcache/types.h"

namespace rbdcache::metalog {

// One bit per 4 KiB sub-block of a cache block; up to kMaxSubBlocks bits.
class SubBlockMask {
 public:
  constexpr SubBlockMask() = default;
  // The mask with the first `n` bits set.
  static SubBlockMask first(uint32_t n);

  void set(uint32_t i) { w_[i / 64] |= uint64_t{1} << (i % 64); }
  void clear(uint32_t i) { w_[i / 64] &= ~(uint64_t{1} << (i % 64)); }
  bool test(uint32_t i) const { return (w_[i / 64] >> (i % 64)) & 1; }
  bool none() const { return (w_[0] | w_[1] | w_[2] | w_[3]) == 0; }
  uint32_t count() const;
  // True when no bit at or above `n` is set.
  bool fits(uint32_t n) const { return (*this & first(n)) == *this; }
  bool is_subset_of(const SubBlockMask& o) const { return (*this & o) == *this; }
  SubBlockMask operator&(const SubBlockMask& o) const;
  SubBlockMask operator|(const SubBlockMask& o) const;
  bool operator==(const SubBlockMask&) const = default;

  // Bytes are little-endian bit order: bit i is byte i/8, bit i%8.
  void to_bytes(std::span<std::byte> out) const;
  static SubBlockMask from_bytes(std::span<const std::byte> in);

 private:
  std::array<uint64_t, kMaxSubBlocks / 64> w_{};
};

// The state of one mapped cache block.
struct Mapping {
  OriginBlock origin;
  SubBlockMask valid;  // sub-blocks holding origin data
  SubBlockMask dirty;  // sub-blocks not yet written back; a subset of valid
  bool operator==(const Mapping&) const = default;
};

using MappingTable = std::unordered_map<CacheBlock, Mapping>;

enum class EntryOp : uint8_t {
  kMap = kOpMap,
  kUnmap = kOpUnmap,
  kSetDirty = kOpSetDirty,
  kCheckpointBegin = kOpCkptBegin,
  kCheckpointEnd = kOpCkptEnd,
};

struct Entry {
  EntryOp op = EntryOp::kMap;
  CacheBlock cache;
  OriginBlock origin;            // kMap
  SubBlockMask valid;            // kMap
  SubBlockMask dirty;            // kMap, kSetDirty
  uint64_t checkpoint_start = 0; // kCheckpointEnd: sequence of the checkpoint's first block

  static Entry map(CacheBlock c, OriginBlock o, SubBlockMask valid, SubBlockMask dirty) {
    return Entry{EntryOp::kMap, c, o, valid, dirty, 0};
  }
  static Entry unmap(CacheBlock c) { return Entry{EntryOp::kUnmap, c, {}, {}, {}, 0}; }
  static Entry set_dirty(CacheBlock c, SubBlockMask dirty) {
    return Entry{EntryOp::kSetDirty, c, {}, {}, dirty, 0};
  }
  bool operator==(const Entry&) const = default;
};

// Encoded size of `e` for cache blocks of `sub_blocks` sub-blocks.
size_t encoded_size(const Entry& e, uint32_t sub_blocks);

// Appends the encoding of `e` to `out`.
void encode_entry(const Entry& e, uint32_t sub_blocks, std::vector<std::byte>& out);

// Decodes exactly `count` entries filling `payload`. Malformed input (unknown
// op, reserved bit, truncation, trailing bytes, mask bits past sub_blocks,
// dirty outside valid) is a corruption Status naming the entry.
[[nodiscard]] Status decode_entries(std::span<const std::byte> payload, uint32_t count,
                                    uint32_t sub_blocks, std::vector<Entry>& out);

}  // namespace rbdcache::metalog
