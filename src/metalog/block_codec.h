// Encoding and checking of the two kinds of log block: segment index blocks
// and record blocks. Every check that can fail has its own result value, so
// a reader can say exactly why it rejected a block.
#pragma once

#include <array>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "metalog/format.h"
#include "rbdcache/types.h"

namespace rbdcache::metalog {

// ---------------------------------------------------------------- index blocks
struct IndexBlock {
  SegmentId segment;
  SegmentState state = SegmentState::kFree;
  uint64_t sequence = 0;
  uint32_t erase_count = 0;
  uint32_t used_blocks = 0;
  uint32_t blocks_per_segment = 0;
  uint64_t log_id = 0;
  std::vector<uint16_t> flags;  // blocks_per_segment words; [0] is the index block itself
};

enum class IndexCheck {
  kOk,
  kBlank,        // all zero: never written; treated as a free segment, erase count 0
  kBadMagic,
  kBadChecksum,  // header checksum
  kBadVersion,
  kMisplaced,    // written for another segment
  kForeign,      // written by another format of the device (log id differs)
  kBadField,     // state, geometry or used count out of range
};
const char* to_string(IndexCheck c);

// Encodes `ix` into a 4096-byte block (header and flags checksums included).
void encode_index(const IndexBlock& ix, std::span<std::byte> block);

// Checks and decodes an index block read from segment `where`. On kOk, `out`
// is filled and *flags_ok says whether the flag words passed their own
// checksum (a torn rewrite leaves the header intact but the flags unknown;
// then out->flags is all kFlagFree).
IndexCheck decode_index(std::span<const std::byte> block, SegmentId where, uint64_t log_id,
                        uint32_t blocks_per_segment, IndexBlock& out, bool& flags_ok);

// --------------------------------------------------------------- record blocks
struct RecordHeader {
  uint16_t stream = kStreamMapping;
  uint16_t type = kRecordTypeEntries;
  uint16_t payload_size = 0;
  LogBlock position;
  uint64_t sequence = 0;
  uint64_t group_sequence = 0;
  uint16_t group_blocks = 0;
  uint16_t entry_count = 0;
  uint64_t log_id = 0;
};

enum class BlockCheck {
  kOk,
  kBlank,        // all zero: never written (or discarded)
  kBadMagic,     // not a record block
  kBadChecksum,  // torn or corrupted
  kBadVersion,
  kMisplaced,    // its position field names another block
  kForeign,      // written by another format of the device (log id differs)
  kStale,        // left over from an earlier pass (sequence older than expected)
  kFromFuture,   // sequence newer than its position allows
  kBadHeader,    // payload size, group fields or reserved bytes out of range
};
const char* to_string(BlockCheck c);

// Encodes a record block; payload.size() <= kMaxPayloadSize.
void encode_record(const RecordHeader& h, std::span<const std::byte> payload,
                   std::span<std::byte> block);

// Checks a record block read from `position` where sequence `expected` is due.
// Checks run in this order: blank, magic, checksum, version, position,
// log id, sequence, header fields. On kOk `out` is filled.
BlockCheck check_record(std::span<const std::byte> block, LogBlock position, uint64_t log_id,
                        uint64_t expected, RecordHeader& out);

// The log id of a cache: the first 8 bytes of its uuid, little-endian.
uint64_t log_id_of(const std::array<uint8_t, 16>& uuid);

}  // namespace rbdcache::metalog
