// The cache's identity: the metadata superblock and the cache device header.
//
// The superblock lives in blocks 0 and 1 of the metadata device (two copies,
// written alternately, so a torn rewrite always leaves one good copy). The
// cache device carries a small header in its first 4 KiB that names the same
// cache uuid, so a cache device cannot be paired with the wrong metadata.
// Layouts: format.h and docs/metadata-format.md.
#pragma once

#include <array>
#include <cstdint>
#include <span>
#include <string>

#include "metalog/block_device.h"
#include "metalog/format.h"
#include "rbdcache/status.h"

namespace rbdcache::metalog {

struct Uuid {
  std::array<uint8_t, 16> bytes{};
  // A random (version 4) uuid from the kernel's random source.
  [[nodiscard]] static Result<Uuid> random();
  bool is_nil() const;
  std::string to_string() const;  // 8-4-4-4-12 lower-case hex
  bool operator==(const Uuid&) const = default;
};

struct Superblock {
  uint64_t generation = 0;
  uint64_t compat = 0;
  uint64_t ro_compat = 0;
  uint64_t incompat = 0;
  Uuid uuid;
  uint32_t segment_size = kDefaultSegmentSize;
  uint64_t meta_dev_size = 0;
  uint32_t segment_count = 0;  // including segment 0 (the superblock segment)
  uint32_t max_erase_count = kDefaultMaxEraseCount;
  uint32_t cache_block_size = kDefaultCacheBlockSize;
  uint64_t cache_dev_size = 0;
  Uuid cache_dev_uuid;
  uint64_t cache_data_offset = 0;  // bytes; cache block b is at offset + b * cache_block_size
  uint64_t cache_block_count = 0;
  uint64_t created_unix = 0;
  // Origin identity; meaningful when compat has kCompatOriginIdentity.
  uint64_t cache_epoch = 0;
  uint64_t origin_size = 0;
  std::string origin_id;  // at most 232 bytes

  uint32_t blocks_per_segment() const { return segment_size / kLogBlockSize; }
  uint32_t sub_blocks() const { return cache_block_size / kSubBlockSize; }
  // Byte offset of segment `s` on the metadata device.
  uint64_t segment_offset(uint32_t s) const { return uint64_t{s} * segment_size; }
  // True when an unknown ro_compat bit forbids writing.
  bool read_only_features() const { return (ro_compat & ~kRoCompatKnown) != 0; }
};

// Encodes `sb` into a 4096-byte block as the copy at `self_block`.
void encode_superblock(const Superblock& sb, uint64_t self_block, std::span<std::byte> block);

// Decodes and checks one superblock copy read from `self_block`. Each fault
// gives its own Status: an all-zero block ENODATA, a wrong magic EMEDIUMTYPE,
// a bad checksum or field EUCLEAN, a wrong position EUCLEAN ("misplaced"),
// an unknown version or incompat feature ENOTSUP.
[[nodiscard]] Result<Superblock> decode_superblock(std::span<const std::byte> block,
                                                   uint64_t self_block);

// Reads both copies and returns the newest good one, checked against the
// device size. When neither is good the error of copy 0 is returned, except
// that an unknown incompat feature or version in any copy wins.
[[nodiscard]] Result<Superblock> read_superblock(BlockDevice& dev);

// Rewrites the superblock: bumps sb.generation and writes the copy that does
// not hold the current generation, then syncs.
[[nodiscard]] Status write_superblock(BlockDevice& dev, Superblock& sb);

// The cache device header (first 4 KiB of the cache device).
struct CacheDeviceHeader {
  Uuid cache_uuid;
  Uuid cache_dev_uuid;
  uint64_t data_offset = 0;
  uint64_t cache_block_count = 0;
  uint32_t cache_block_size = 0;
};
void encode_cache_header(const CacheDeviceHeader& h, std::span<std::byte> block);
[[nodiscard]] Result<CacheDeviceHeader> decode_cache_header(std::span<const std::byte> block);
[[nodiscard]] Result<CacheDeviceHeader> read_cache_header(BlockDevice& cache_dev);

}  // namespace rbdcache::metalog
