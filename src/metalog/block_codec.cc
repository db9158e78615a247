#include "metalog/block_codec.h"

#include <algorithm>
#include <cstring>

#include "rbdcache/crc32c.h"

namespace rbdcache::metalog {

namespace {

bool all_zero(std::span<const std::byte> b) {
  return std::all_of(b.begin(), b.end(), [](std::byte x) { return x == std::byte{0}; });
}

uint32_t index_header_crc(IndexHeaderDisk d) {
  d.header_crc = 0;
  std::byte raw[sizeof(d)];
  std::memcpy(raw, &d, sizeof(d));
  return crc32c(raw);
}

}  // namespace

const char* to_string(IndexCheck c) {
  switch (c) {
    case IndexCheck::kOk: return "ok";
    case IndexCheck::kBlank: return "blank index block";
    case IndexCheck::kBadMagic: return "bad index magic";
    case IndexCheck::kBadChecksum: return "index header checksum mismatch";
    case IndexCheck::kBadVersion: return "unsupported index version";
    case IndexCheck::kMisplaced: return "index block written for another segment";
    case IndexCheck::kForeign: return "index block from another format of this device";
    case IndexCheck::kBadField: return "index field out of range";
  }
  return "?";
}

const char* to_string(BlockCheck c) {
  switch (c) {
    case BlockCheck::kOk: return "ok";
    case BlockCheck::kBlank: return "blank block";
    case BlockCheck::kBadMagic: return "bad record magic";
    case BlockCheck::kBadChecksum: return "checksum mismatch";
    case BlockCheck::kBadVersion: return "unsupported record version";
    case BlockCheck::kMisplaced: return "block belongs at another position";
    case BlockCheck::kForeign: return "block from another format of this device";
    case BlockCheck::kStale: return "stale block from an earlier pass";
    case BlockCheck::kFromFuture: return "sequence newer than its position allows";
    case BlockCheck::kBadHeader: return "record header field out of range";
  }
  return "?";
}

void encode_index(const IndexBlock& ix, std::span<std::byte> block) {
  std::fill(block.begin(), block.end(), std::byte{0});
  for (size_t i = 0; i < ix.flags.size() && i < kMaxBlocksPerSegment; ++i) {
    std::memcpy(block.data() + kIndexFlagsOffset + 2 * i, &ix.flags[i], 2);
  }
  IndexHeaderDisk d{};
  d.magic = kIndexMagic;
  d.version = kFormatVersion;
  d.segment_id = ix.segment.value();
  d.state = static_cast<uint32_t>(ix.state);
  d.sequence = ix.sequence;
  d.erase_count = ix.erase_count;
  d.used_blocks = ix.used_blocks;
  d.blocks_per_segment = ix.blocks_per_segment;
  d.log_id = ix.log_id;
  d.flags_crc = crc32c(block.subspan(kIndexFlagsOffset));
  d.header_crc = index_header_crc(d);
  std::memcpy(block.data(), &d, sizeof(d));
}

IndexCheck decode_index(std::span<const std::byte> block, SegmentId where, uint64_t log_id,
                        uint32_t blocks_per_segment, IndexBlock& out, bool& flags_ok) {
  flags_ok = false;
  if (all_zero(block)) return IndexCheck::kBlank;
  IndexHeaderDisk d;
  std::memcpy(&d, block.data(), sizeof(d));
  if (d.magic != kIndexMagic) return IndexCheck::kBadMagic;
  if (d.header_crc != index_header_crc(d)) return IndexCheck::kBadChecksum;
  if (d.version != kFormatVersion) return IndexCheck::kBadVersion;
  if (d.segment_id != where.value()) return IndexCheck::kMisplaced;
  if (d.log_id != log_id) return IndexCheck::kForeign;
  if (d.state > static_cast<uint32_t>(SegmentState::kRetired) ||
      d.blocks_per_segment != blocks_per_segment || d.used_blocks >= blocks_per_segment ||
      (d.state != static_cast<uint32_t>(SegmentState::kSealed) && d.used_blocks != 0) ||
      ((d.state == static_cast<uint32_t>(SegmentState::kOpen) ||
        d.state == static_cast<uint32_t>(SegmentState::kSealed)) && d.sequence == 0) ||
      !std::all_of(std::begin(d.reserved), std::end(d.reserved), [](uint8_t b) { return b == 0; })) {
    return IndexCheck::kBadField;
  }
  out.segment = where;
  out.state = static_cast<SegmentState>(d.state);
  out.sequence = d.sequence;
  out.erase_count = d.erase_count;
  out.used_blocks = d.used_blocks;
  out.blocks_per_segment = d.blocks_per_segment;
  out.log_id = d.log_id;
  out.flags.assign(blocks_per_segment, kFlagFree);
  flags_ok = d.flags_crc == crc32c(block.subspan(kIndexFlagsOffset));
  if (flags_ok) {
    for (uint32_t i = 0; i < blocks_per_segment; ++i) {
      std::memcpy(&out.flags[i], block.data() + kIndexFlagsOffset + 2 * i, 2);
    }
  }
  return IndexCheck::kOk;
}

void encode_record(const RecordHeader& h, std::span<const std::byte> payload,
                   std::span<std::byte> block) {
  std::fill(block.begin(), block.end(), std::byte{0});
  RecordHeaderDisk d{};
  d.magic = kRecordMagic;
  d.version = static_cast<uint16_t>(kFormatVersion);
  d.stream = h.stream;
  d.type = h.type;
  d.payload_size = static_cast<uint16_t>(payload.size());
  d.position = h.position.value();
  d.sequence = h.sequence;
  d.group_sequence = h.group_sequence;
  d.group_blocks = h.group_blocks;
  d.entry_count = h.entry_count;
  d.log_id = h.log_id;
  std::memcpy(block.data(), &d, sizeof(d));
  std::memcpy(block.data() + kRecordHeaderSize, payload.data(), payload.size());
  d.crc = crc32c(block.subspan(4));
  std::memcpy(block.data(), &d.crc, 4);
}

BlockCheck check_record(std::span<const std::byte> block, LogBlock position, uint64_t log_id,
                        uint64_t expected, RecordHeader& out) {
  if (all_zero(block)) return BlockCheck::kBlank;
  RecordHeaderDisk d;
  std::memcpy(&d, block.data(), sizeof(d));
  if (d.magic != kRecordMagic) return BlockCheck::kBadMagic;
  if (d.crc != crc32c(block.subspan(4))) return BlockCheck::kBadChecksum;
  if (d.version != kFormatVersion) return BlockCheck::kBadVersion;
  if (d.position != position.value()) return BlockCheck::kMisplaced;
  if (d.log_id != log_id) return BlockCheck::kForeign;
  if (d.sequence < expected) return BlockCheck::kStale;
  if (d.sequence > expected) return BlockCheck::kFromFuture;
  if (d.payload_size > kMaxPayloadSize || d.group_blocks == 0 || d.group_sequence > d.sequence ||
      d.sequence - d.group_sequence >= d.group_blocks || d.reserved0 != 0 ||
      !std::all_of(std::begin(d.reserved), std::end(d.reserved), [](uint8_t b) { return b == 0; })) {
    return BlockCheck::kBadHeader;
  }
  out.stream = d.stream;
  out.type = d.type;
  out.payload_size = d.payload_size;
  out.position = LogBlock(d.position);
  out.sequence = d.sequence;
  out.group_sequence = d.group_sequence;
  out.group_blocks = d.group_blocks;
  out.entry_count = d.entry_count;
  out.log_id = d.log_id;
  return BlockCheck::kOk;
}

uint64_t log_id_of(const std::array<uint8_t, 16>& uuid) {
  uint64_t v;
  std::memcpy(&v, uuid.data(), sizeof(v));
  return v;
}

}  // namespace rbdcache::metalog
