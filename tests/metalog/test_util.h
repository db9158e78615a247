// Helpers for the metadata log tests: formatted in-memory devices, a model
// of the mapping state, and byte-mutation helpers for corruption tests.
#pragma once

#include <cstdint>
#include <cstring>
#include <memory>
#include <random>
#include <vector>

#include "metalog/block_codec.h"
#include "metalog/block_device.h"
#include "metalog/entry.h"
#include "metalog/formatter.h"
#include "metalog/superblock.h"
#include "rbdcache/crc32c.h"

namespace rbdcache::metalog::testing {

struct Geometry {
  uint32_t segment_size = 16 * 1024;  // 3 record blocks per segment
  uint32_t segments = 24;             // including segment 0
  uint32_t cache_block_size = 16 * 1024;
  uint32_t cache_blocks = 64;
  uint32_t max_erase_count = kDefaultMaxEraseCount;
};

// A formatted metadata image (and the superblock written to it).
inline std::vector<std::byte> formatted_image(const Geometry& g, Superblock* sb_out = nullptr) {
  MemBlockDevice meta(uint64_t{g.segment_size} * g.segments);
  MemBlockDevice cache(uint64_t{g.cache_block_size} * (g.cache_blocks + 1));
  FormatOptions opt;
  opt.segment_size = g.segment_size;
  opt.cache_block_size = g.cache_block_size;
  opt.max_erase_count = g.max_erase_count;
  Result<Superblock> sb = format_devices(meta, cache, opt);
  if (!sb.is_ok()) std::abort();
  if (sb_out) *sb_out = *sb;
  return std::move(meta.image());
}

// The model the log is compared with: the same rules as LogState::apply.
inline void model_apply(MappingTable& t, const Entry& e) {
  switch (e.op) {
    case EntryOp::kMap: t[e.cache] = Mapping{e.origin, e.valid, e.dirty}; break;
    case EntryOp::kUnmap: t.erase(e.cache); break;
    case EntryOp::kSetDirty:
      if (auto it = t.find(e.cache); it != t.end() && e.dirty.is_subset_of(it->second.valid)) it->second.dirty = e.dirty;
      break;
    default: break;
  }
}

// A random mapping entry for a cache of `cache_blocks` blocks of `sub_blocks`
// sub-blocks, consistent with `model` (dirty only on mapped blocks).
inline Entry random_entry(std::mt19937_64& rng, const MappingTable& model, uint32_t cache_blocks, uint32_t sub_blocks) {
  CacheBlock c(static_cast<uint32_t>(rng() % cache_blocks));
  unsigned kind = static_cast<unsigned>(rng() % 10);
  SubBlockMask valid;
  for (uint32_t i = 0; i < sub_blocks; ++i) if (rng() % 3) valid.set(i);
  if (valid.none()) valid.set(0);
  auto it = model.find(c);
  if (kind < 6 || it == model.end()) {
    SubBlockMask dirty = (rng() & 1) ? valid : SubBlockMask();
    return Entry::map(c, OriginBlock(rng() % 1000000), valid, dirty);
  }
  if (kind < 8) return Entry::set_dirty(c, (rng() & 1) ? it->second.valid : SubBlockMask());
  return Entry::unmap(c);
}

// --- byte mutation helpers -------------------------------------------------
inline void increment_byte(std::vector<std::byte>& img, uint64_t offset) {
  img[offset] = static_cast<std::byte>(static_cast<uint8_t>(img[offset]) + 1);
}
inline void overwrite(std::vector<std::byte>& img, uint64_t offset, size_t n, uint8_t v) {
  std::memset(img.data() + offset, v, n);
}
// Recomputes the checksum of the record block at log block `pos`.
inline void fix_record_checksum(std::vector<std::byte>& img, uint64_t pos) {
  std::span<std::byte> b(img.data() + pos * kLogBlockSize, kLogBlockSize);
  uint32_t crc = crc32c(b.subspan(4));
  std::memcpy(b.data(), &crc, 4);
}
// Rewrites a field of the record header at log block `pos` and fixes the checksum.
template <typename T>
inline void set_record_field(std::vector<std::byte>& img, uint64_t pos, size_t field_offset, T v) {
  std::memcpy(img.data() + pos * kLogBlockSize + field_offset, &v, sizeof(T));
  fix_record_checksum(img, pos);
}
inline void copy_block(std::vector<std::byte>& img, uint64_t from, uint64_t to) {
  std::memcpy(img.data() + to * kLogBlockSize, img.data() + from * kLogBlockSize, kLogBlockSize);
}

}  // namespace rbdcache::metalog::testing
