// Formatting a metadata device and its cache device.
#pragma once

#include <cstdint>
#include <string>

#include "metalog/block_device.h"
#include "metalog/superblock.h"
#include "rbdcache/status.h"

namespace rbdcache::metalog {

struct FormatOptions {
  uint32_t cache_block_size = kDefaultCacheBlockSize;
  uint32_t segment_size = kDefaultSegmentSize;
  uint32_t max_erase_count = kDefaultMaxEraseCount;
  // Overwrite a device that already holds an rbdcache superblock or cache header.
  bool force = false;
};

// Smallest cache that format accepts, in cache blocks.
inline constexpr uint64_t kMinCacheBlocks = 16;

// Checks the options against the two devices without writing anything: the
// sizes (powers of two in range), a cache of at least kMinCacheBlocks blocks,
// and a metadata device with room for kMinLogSegments segments and for two
// checkpoints of a full cache. Returns the superblock format would write
// (uuids left nil).
[[nodiscard]] Result<Superblock> plan_format(uint64_t meta_size, uint64_t cache_size,
                                             const FormatOptions& opt);

// Formats: writes the cache device header, an index block (free, erase count
// 0) for every log segment, and both superblock copies, syncing each device.
// Refuses (EEXIST) a device holding an rbdcache superblock or cache header
// unless opt.force.
[[nodiscard]] Result<Superblock> format_devices(BlockDevice& meta, BlockDevice& cache,
                                                const FormatOptions& opt);

}  // namespace rbdcache::metalog
