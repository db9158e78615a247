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
#include "rbdcache/sub_block.h"
#include "rbdcache/status.h"
#include "rbdcache/types.h"

namespace rbdcache::metalog {

// The sub-block mask is the one shared type (rbdcache/sub_block.h).
using rbdcache::SubBlockMask;

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
