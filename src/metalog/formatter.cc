#include "metalog/formatter.h"

#include <ctime>
#include <vector>

#include "metalog/block_codec.h"
#include "metalog/compactor.h"

namespace rbdcache::metalog {

namespace {
bool is_pow2(uint64_t v) { return v != 0 && (v & (v - 1)) == 0; }
}  // namespace

Result<Superblock> plan_format(uint64_t meta_size, uint64_t cache_size, const FormatOptions& opt) {
  if (!is_pow2(opt.cache_block_size) || opt.cache_block_size < kMinCacheBlockSize ||
      opt.cache_block_size > kMaxCacheBlockSize) {
    return Status::invalid_argument(fmt::format(
        "block size {} is not a power of two from 4K to 1M", opt.cache_block_size));
  }
  if (!is_pow2(opt.segment_size) || opt.segment_size < kMinSegmentSize ||
      opt.segment_size > kMaxSegmentSize) {
    return Status::invalid_argument(fmt::format(
        "segment size {} is not a power of two from 16K to 4M", opt.segment_size));
  }
  if (opt.max_erase_count == 0) return Status::invalid_argument("max erase count must be positive");
  Superblock sb;
  sb.segment_size = opt.segment_size;
  sb.cache_block_size = opt.cache_block_size;
  sb.max_erase_count = opt.max_erase_count;
  sb.meta_dev_size = meta_size;
  sb.cache_dev_size = cache_size;
  // Cache block 0 starts at the first cache-block boundary after the header.
  sb.cache_data_offset = std::max<uint64_t>(kLogBlockSize, opt.cache_block_size);
  sb.cache_block_count =
      cache_size > sb.cache_data_offset ? (cache_size - sb.cache_data_offset) / opt.cache_block_size : 0;
  if (sb.cache_block_count < kMinCacheBlocks) {
    return Status::invalid_argument(fmt::format(
        "cache device too small: {} bytes hold {} cache blocks of {} bytes after the {}-byte header; "
        "at least {} are needed ({} bytes)",
        cache_size, sb.cache_block_count, opt.cache_block_size, sb.cache_data_offset, kMinCacheBlocks,
        sb.cache_data_offset + kMinCacheBlocks * opt.cache_block_size));
  }
  if (sb.cache_block_count > UINT32_MAX) {
    return Status::invalid_argument("cache device too large: more than 2^32 cache blocks");
  }
  uint64_t segments = meta_size / opt.segment_size;
  uint32_t ckpt = checkpoint_segments(sb.cache_block_count, sb.sub_blocks(), sb.blocks_per_segment());
  uint64_t need = std::max<uint64_t>(1 + kMinLogSegments, 1 + 2 * uint64_t{ckpt} + 3);
  if (segments < need) {
    return Status::invalid_argument(fmt::format(
        "metadata device too small: {} bytes hold {} segments of {} bytes; this cache ({} blocks) needs "
        "at least {} segments ({} bytes): the superblock segment, room for two checkpoints of a full "
        "cache and three more",
        meta_size, segments, opt.segment_size, sb.cache_block_count, need, need * opt.segment_size));
  }
  if (segments > UINT32_MAX) return Status::invalid_argument("metadata device too large");
  sb.segment_count = static_cast<uint32_t>(segments);
  sb.created_unix = static_cast<uint64_t>(::time(nullptr));
  return sb;
}

Result<Superblock> format_devices(BlockDevice& meta, BlockDevice& cache, const FormatOptions& opt) {
  if (!opt.force) {
    Result<Superblock> old = read_superblock(meta);
    if (old.is_ok() || old.status().err() == EUCLEAN || old.status().err() == ENOTSUP) {
      return Status::from_errno(EEXIST,
                                "the metadata device already holds an rbdcache superblock; use --force to overwrite it");
    }
    Result<CacheDeviceHeader> hdr = read_cache_header(cache);
    if (hdr.is_ok() || hdr.status().err() == EUCLEAN || hdr.status().err() == ENOTSUP) {
      return Status::from_errno(EEXIST,
                                "the cache device already holds an rbdcache header; use --force to overwrite it");
    }
  }
  Result<Superblock> plan = plan_format(meta.size(), cache.size(), opt);
  if (!plan.is_ok()) return plan;
  Superblock sb = *plan;
  Result<Uuid> u1 = Uuid::random();
  if (!u1.is_ok()) return u1.status();
  Result<Uuid> u2 = Uuid::random();
  if (!u2.is_ok()) return u2.status();
  sb.uuid = *u1;
  sb.cache_dev_uuid = *u2;

  std::vector<std::byte> block(kLogBlockSize);
  CacheDeviceHeader h{sb.uuid, sb.cache_dev_uuid, sb.cache_data_offset, sb.cache_block_count,
                      sb.cache_block_size};
  encode_cache_header(h, block);
  RBDCACHE_RETURN_IF_ERROR(cache.write(0, block));
  RBDCACHE_RETURN_IF_ERROR(cache.sync());

  // Superblocks go last: a format cut short leaves no superblock, so the
  // device never looks formatted with a half-written log.
  std::vector<std::byte> zero(kLogBlockSize);
  for (uint32_t c = 0; c < kSuperblockCopies; ++c) {
    RBDCACHE_RETURN_IF_ERROR(meta.write(uint64_t{c} * kLogBlockSize, zero));
  }
  RBDCACHE_RETURN_IF_ERROR(meta.sync());
  IndexBlock ix;
  ix.blocks_per_segment = sb.blocks_per_segment();
  ix.log_id = log_id_of(sb.uuid.bytes);
  ix.flags.assign(ix.blocks_per_segment, kFlagFree);
  for (uint32_t s = 1; s < sb.segment_count; ++s) {
    ix.segment = SegmentId(s);
    encode_index(ix, block);
    RBDCACHE_RETURN_IF_ERROR(meta.write(sb.segment_offset(s), block));
    RBDCACHE_RETURN_IF_ERROR(meta.discard(sb.segment_offset(s) + kLogBlockSize,
                                          uint64_t{sb.segment_size} - kLogBlockSize));
  }
  RBDCACHE_RETURN_IF_ERROR(meta.sync());
  sb.generation = 0;
  for (uint32_t c = 0; c < kSuperblockCopies; ++c) {
    encode_superblock(sb, c, block);
    RBDCACHE_RETURN_IF_ERROR(meta.write(uint64_t{c} * kLogBlockSize, block));
  }
  RBDCACHE_RETURN_IF_ERROR(meta.sync());
  return sb;
}

}  // namespace rbdcache::metalog
