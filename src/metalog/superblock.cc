#include "metalog/superblock.h"

#include <sys/random.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "rbdcache/crc32c.h"

namespace rbdcache::metalog {

Result<Uuid> Uuid::random() {
  Uuid u;
  size_t done = 0;
  while (done < u.bytes.size()) {
    ssize_t n = ::getrandom(u.bytes.data() + done, u.bytes.size() - done, 0);
    if (n < 0) {
      if (errno == EINTR) continue;
      return Status::system_error(errno, "getrandom");
    }
    done += static_cast<size_t>(n);
  }
  u.bytes[6] = static_cast<uint8_t>((u.bytes[6] & 0x0f) | 0x40);
  u.bytes[8] = static_cast<uint8_t>((u.bytes[8] & 0x3f) | 0x80);
  return u;
}

bool Uuid::is_nil() const {
  return std::all_of(bytes.begin(), bytes.end(), [](uint8_t b) { return b == 0; });
}

std::string Uuid::to_string() const {
  std::string s;
  for (size_t i = 0; i < bytes.size(); ++i) {
    if (i == 4 || i == 6 || i == 8 || i == 10) s += '-';
    s += fmt::format("{:02x}", bytes[i]);
  }
  return s;
}

namespace {

bool all_zero(std::span<const std::byte> b) {
  return std::all_of(b.begin(), b.end(), [](std::byte x) { return x == std::byte{0}; });
}

bool is_pow2(uint64_t v) { return v != 0 && (v & (v - 1)) == 0; }

// crc32c of a 4096-byte block whose crc field (4 bytes at `crc_at`) reads as zero.
uint32_t block_crc(std::span<const std::byte> block, size_t crc_at) {
  const std::byte zero[4] = {};
  uint32_t c = crc32c(block.first(crc_at));
  c = crc32c_extend(c, zero);
  return crc32c_extend(c, block.subspan(crc_at + 4));
}

}  // namespace

void encode_superblock(const Superblock& sb, uint64_t self_block, std::span<std::byte> block) {
  std::fill(block.begin(), block.end(), std::byte{0});
  SuperblockDisk d{};
  d.magic = kSuperblockMagic;
  d.version = kFormatVersion;
  d.generation = sb.generation;
  d.self_block = self_block;
  d.compat = sb.compat;
  d.ro_compat = sb.ro_compat;
  d.incompat = sb.incompat;
  std::memcpy(d.uuid, sb.uuid.bytes.data(), 16);
  d.log_block_size = kLogBlockSize;
  d.segment_size = sb.segment_size;
  d.meta_dev_size = sb.meta_dev_size;
  d.segment_count = sb.segment_count;
  d.max_erase_count = sb.max_erase_count;
  d.cache_block_size = sb.cache_block_size;
  d.sub_block_size = kSubBlockSize;
  d.cache_dev_size = sb.cache_dev_size;
  std::memcpy(d.cache_dev_uuid, sb.cache_dev_uuid.bytes.data(), 16);
  d.cache_data_offset = sb.cache_data_offset;
  d.cache_block_count = sb.cache_block_count;
  d.created_unix = sb.created_unix;
  d.cache_epoch = sb.cache_epoch;
  d.origin_size = sb.origin_size;
  size_t n = std::min(sb.origin_id.size(), sizeof(d.origin_id));
  d.origin_id_len = static_cast<uint32_t>(n);
  std::memcpy(d.origin_id, sb.origin_id.data(), n);
  std::memcpy(block.data(), &d, sizeof(d));
  d.crc = block_crc(block, offsetof(SuperblockDisk, crc));
  std::memcpy(block.data(), &d, sizeof(d));
}

Result<Superblock> decode_superblock(std::span<const std::byte> block, uint64_t self_block) {
  if (block.size() != kLogBlockSize) return Status::invalid_argument("superblock: wrong block size");
  if (all_zero(block)) {
    return Status::from_errno(ENODATA, fmt::format("superblock copy {}: blank (not formatted)", self_block));
  }
  SuperblockDisk d;
  std::memcpy(&d, block.data(), sizeof(d));
  if (d.magic != kSuperblockMagic) {
    return Status::from_errno(EMEDIUMTYPE,
                              fmt::format("superblock copy {}: bad magic (not an rbdcache metadata device)", self_block));
  }
  if (d.crc != block_crc(block, offsetof(SuperblockDisk, crc))) {
    return Status::corruption(fmt::format("superblock copy {}: checksum mismatch", self_block));
  }
  if (d.version != kFormatVersion) {
    return Status::not_supported(
        fmt::format("superblock copy {}: unsupported format version {} (this build reads {})",
                    self_block, d.version, kFormatVersion));
  }
  if (d.self_block != self_block) {
    return Status::corruption(fmt::format("superblock copy {}: misplaced (it says it belongs at block {})",
                                          self_block, d.self_block));
  }
  if (uint64_t unknown = d.incompat & ~kIncompatKnown; unknown != 0) {
    return Status::not_supported(
        fmt::format("superblock: unknown incompat feature flags {:#x}; refusing to use this device", unknown));
  }
  auto bad = [&](std::string_view what) {
    return Status::corruption(fmt::format("superblock copy {}: {}", self_block, what));
  };
  if (d.log_block_size != kLogBlockSize) return bad("log block size is not 4096");
  if (d.sub_block_size != kSubBlockSize) return bad("sub-block size is not 4096");
  if (!is_pow2(d.segment_size) || d.segment_size < kMinSegmentSize || d.segment_size > kMaxSegmentSize) {
    return bad(fmt::format("bad segment size {}", d.segment_size));
  }
  if (!is_pow2(d.cache_block_size) || d.cache_block_size < kMinCacheBlockSize ||
      d.cache_block_size > kMaxCacheBlockSize) {
    return bad(fmt::format("bad cache block size {}", d.cache_block_size));
  }
  if (d.segment_count < 1 + kMinLogSegments) return bad(fmt::format("too few segments ({})", d.segment_count));
  if (uint64_t{d.segment_count} * d.segment_size > d.meta_dev_size) return bad("segments exceed the device size");
  if (d.origin_id_len > sizeof(d.origin_id)) return bad("origin id length out of range");
  if (d.max_erase_count == 0) return bad("max erase count is zero");
  Superblock sb;
  sb.generation = d.generation;
  sb.compat = d.compat;
  sb.ro_compat = d.ro_compat;
  sb.incompat = d.incompat;
  std::memcpy(sb.uuid.bytes.data(), d.uuid, 16);
  sb.segment_size = d.segment_size;
  sb.meta_dev_size = d.meta_dev_size;
  sb.segment_count = d.segment_count;
  sb.max_erase_count = d.max_erase_count;
  sb.cache_block_size = d.cache_block_size;
  sb.cache_dev_size = d.cache_dev_size;
  std::memcpy(sb.cache_dev_uuid.bytes.data(), d.cache_dev_uuid, 16);
  sb.cache_data_offset = d.cache_data_offset;
  sb.cache_block_count = d.cache_block_count;
  sb.created_unix = d.created_unix;
  sb.cache_epoch = d.cache_epoch;
  sb.origin_size = d.origin_size;
  sb.origin_id.assign(d.origin_id, d.origin_id_len);
  return sb;
}

Result<Superblock> read_superblock(BlockDevice& dev) {
  if (dev.size() < uint64_t{kSuperblockCopies} * kLogBlockSize) {
    return Status::from_errno(ENODATA, fmt::format("device of {} bytes is too small to hold a superblock", dev.size()));
  }
  std::vector<std::byte> buf(kLogBlockSize);
  Result<Superblock> best = Status::from_errno(ENODATA, "no superblock");
  Status first_error;
  Status fatal;
  for (uint64_t copy = 0; copy < kSuperblockCopies; ++copy) {
    RBDCACHE_RETURN_IF_ERROR(dev.read(copy * kLogBlockSize, buf));
    Result<Superblock> r = decode_superblock(buf, copy);
    if (r.is_ok() && r->meta_dev_size > dev.size()) {
      r = Status::corruption(fmt::format("superblock copy {}: device is {} bytes but was formatted with {}",
                                         copy, dev.size(), r->meta_dev_size));
    }
    if (!r.is_ok()) {
      if (copy == 0) first_error = r.status();
      if (r.status().err() == ENOTSUP) fatal = r.status();
      continue;
    }
    if (!best.is_ok() || r->generation > best->generation) best = std::move(r);
  }
  if (!fatal.is_ok()) return fatal;
  if (best.is_ok()) return best;
  return first_error;
}

Status write_superblock(BlockDevice& dev, Superblock& sb) {
  sb.generation += 1;
  std::vector<std::byte> buf(kLogBlockSize);
  uint64_t copy = sb.generation % kSuperblockCopies;
  encode_superblock(sb, copy, buf);
  RBDCACHE_RETURN_IF_ERROR(dev.write(copy * kLogBlockSize, buf));
  return dev.sync();
}

void encode_cache_header(const CacheDeviceHeader& h, std::span<std::byte> block) {
  std::fill(block.begin(), block.end(), std::byte{0});
  CacheHeaderDisk d{};
  d.magic = kCacheHeaderMagic;
  d.version = kFormatVersion;
  std::memcpy(d.cache_uuid, h.cache_uuid.bytes.data(), 16);
  std::memcpy(d.cache_dev_uuid, h.cache_dev_uuid.bytes.data(), 16);
  d.data_offset = h.data_offset;
  d.cache_block_count = h.cache_block_count;
  d.cache_block_size = h.cache_block_size;
  std::memcpy(block.data(), &d, sizeof(d));
  d.crc = block_crc(block, offsetof(CacheHeaderDisk, crc));
  std::memcpy(block.data(), &d, sizeof(d));
}

Result<CacheDeviceHeader> decode_cache_header(std::span<const std::byte> block) {
  if (block.size() != kLogBlockSize) return Status::invalid_argument("cache header: wrong block size");
  if (all_zero(block)) return Status::from_errno(ENODATA, "cache device header: blank (not formatted)");
  CacheHeaderDisk d;
  std::memcpy(&d, block.data(), sizeof(d));
  if (d.magic != kCacheHeaderMagic) return Status::from_errno(EMEDIUMTYPE, "cache device header: bad magic");
  if (d.crc != block_crc(block, offsetof(CacheHeaderDisk, crc))) {
    return Status::corruption("cache device header: checksum mismatch");
  }
  if (d.version != kFormatVersion) {
    return Status::not_supported(fmt::format("cache device header: unsupported version {}", d.version));
  }
  CacheDeviceHeader h;
  std::memcpy(h.cache_uuid.bytes.data(), d.cache_uuid, 16);
  std::memcpy(h.cache_dev_uuid.bytes.data(), d.cache_dev_uuid, 16);
  h.data_offset = d.data_offset;
  h.cache_block_count = d.cache_block_count;
  h.cache_block_size = d.cache_block_size;
  return h;
}

Result<CacheDeviceHeader> read_cache_header(BlockDevice& cache_dev) {
  if (cache_dev.size() < kLogBlockSize) return Status::from_errno(ENODATA, "cache device too small for a header");
  std::vector<std::byte> buf(kLogBlockSize);
  RBDCACHE_RETURN_IF_ERROR(cache_dev.read(0, buf));
  return decode_cache_header(buf);
}

}  // namespace rbdcache::metalog
