// On-disk format of the metadata log: constants and block layouts.
//
// The format is specified in docs/metadata-format.md; this header is the code
// side of that document and pins every offset with static_assert. Change one,
// change the other, and bump kFormatVersion or add a feature flag as the
// versioning rules there require.
//
// Glossary:
//   log block     - a 4096-byte unit of the metadata device (LogBlock).
//   segment       - a run of segment_size bytes (SegmentId); the erase unit.
//                   Segment 0 holds the superblock; segments 1.. hold the log.
//   index block   - block 0 of a log segment: erase count, sequence, flags.
//   record block  - any other block of a log segment: a batch of entries.
//   sequence      - log-wide rising number of a record block. A segment's
//                   sequence is the sequence of its block 1; block i carries
//                   segment_sequence + i - 1.
//   group         - the record blocks written by one commit inside one
//                   segment; applied all or nothing.
//
// All integers are little-endian. The structs below are laid out with natural
// alignment and no padding, so they can be memcpy'd to and from a block on a
// little-endian host (which the static_asserts require).
#pragma once

#include <bit>
#include <cstddef>
#include <cstdint>

#include "rbdcache/sub_block.h"

namespace rbdcache::metalog {

static_assert(std::endian::native == std::endian::little,
              "the metadata format is little-endian and this code memcpy's it");

// Eight ASCII characters read as a little-endian 64-bit integer.
constexpr uint64_t magic8(const char (&s)[9]) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | static_cast<unsigned char>(s[i]);
  return v;
}
constexpr uint32_t magic4(const char (&s)[5]) {
  uint32_t v = 0;
  for (int i = 3; i >= 0; --i) v = (v << 8) | static_cast<unsigned char>(s[i]);
  return v;
}

inline constexpr uint32_t kFormatVersion = 1;
inline constexpr uint32_t kLogBlockSize = 4096;
// The device is assumed to write 512-byte sectors atomically.
inline constexpr uint32_t kSectorSize = 512;
// Cache blocks are tracked in 4 KiB sub-blocks (valid and dirty masks);
// kSubBlockSize, kMaxCacheBlockSize and kMaxSubBlocks are in
// rbdcache/sub_block.h.
inline constexpr uint32_t kMinCacheBlockSize = 4096;
inline constexpr uint32_t kMinSegmentSize = 16 * 1024;
inline constexpr uint32_t kMaxSegmentSize = 4u << 20;
inline constexpr uint32_t kDefaultSegmentSize = 1u << 20;
inline constexpr uint32_t kDefaultCacheBlockSize = 64 * 1024;
inline constexpr uint32_t kDefaultMaxEraseCount = 100000;
// The log needs at least this many segments besides segment 0.
inline constexpr uint32_t kMinLogSegments = 4;

inline constexpr uint64_t kSuperblockMagic = magic8("RBDCSUPR");
inline constexpr uint64_t kCacheHeaderMagic = magic8("RBDCDATA");
inline constexpr uint64_t kIndexMagic = magic8("RBDCSEGX");
inline constexpr uint32_t kRecordMagic = magic4("RBDR");

// Superblock copies live in blocks 0 and 1 of segment 0.
inline constexpr uint32_t kSuperblockCopies = 2;

// ---------------------------------------------------------------------------
// Feature flags (superblock). A reader must refuse a device with an unknown
// incompat bit, may only open read-only with an unknown ro_compat bit, and
// ignores unknown compat bits.
inline constexpr uint64_t kCompatOriginIdentity = 1ull << 0;  // origin fields set
// Set by MetadataLog::close() after its final sync, cleared (durably) by
// MetadataLog::open(): set at open means the last shutdown was clean.
inline constexpr uint64_t kCompatCleanShutdown = 1ull << 1;
inline constexpr uint64_t kCompatKnown = kCompatOriginIdentity | kCompatCleanShutdown;
inline constexpr uint64_t kRoCompatKnown = 0;
inline constexpr uint64_t kIncompatKnown = 0;

// ---------------------------------------------------------------------------
// Superblock: blocks 0 and 1 of the device; only the first 512 bytes are used,
// the rest of the block is zero. The copy with the higher generation whose
// checksum holds is current.
struct SuperblockDisk {
  uint64_t magic;               // kSuperblockMagic
  uint32_t crc;                 // crc32c of the whole 4096-byte block, this field as 0
  uint32_t version;             // kFormatVersion
  uint64_t generation;          // +1 on every rewrite
  uint64_t self_block;          // LogBlock this copy was written to (0 or 1)
  uint64_t compat;              // feature flags
  uint64_t ro_compat;
  uint64_t incompat;
  uint8_t uuid[16];             // identity of this cache instance
  uint32_t log_block_size;      // kLogBlockSize
  uint32_t segment_size;        // bytes, power of two
  uint64_t meta_dev_size;       // bytes of the metadata device at format time
  uint32_t segment_count;       // segments including segment 0
  uint32_t max_erase_count;     // a segment is retired past this
  uint32_t cache_block_size;    // bytes, power of two
  uint32_t sub_block_size;      // kSubBlockSize
  uint64_t cache_dev_size;      // bytes of the cache device at format time
  uint8_t cache_dev_uuid[16];   // matches the cache device header
  uint64_t cache_data_offset;   // byte offset of cache block 0 on the cache device
  uint64_t cache_block_count;   // cache blocks in the data area
  uint64_t created_unix;        // seconds since the epoch
  uint8_t reserved1[104];       // zero
  // Origin identity, filled later (compat kCompatOriginIdentity).
  uint64_t cache_epoch;
  uint64_t origin_size;         // bytes
  uint32_t origin_id_len;       // bytes used in origin_id
  uint32_t reserved2;           // zero
  char origin_id[232];          // e.g. "pool/image@snap", not NUL-terminated
};
static_assert(sizeof(SuperblockDisk) == 512);
static_assert(offsetof(SuperblockDisk, crc) == 8);
static_assert(offsetof(SuperblockDisk, generation) == 16);
static_assert(offsetof(SuperblockDisk, self_block) == 24);
static_assert(offsetof(SuperblockDisk, compat) == 32);
static_assert(offsetof(SuperblockDisk, incompat) == 48);
static_assert(offsetof(SuperblockDisk, uuid) == 56);
static_assert(offsetof(SuperblockDisk, log_block_size) == 72);
static_assert(offsetof(SuperblockDisk, meta_dev_size) == 80);
static_assert(offsetof(SuperblockDisk, segment_count) == 88);
static_assert(offsetof(SuperblockDisk, cache_block_size) == 96);
static_assert(offsetof(SuperblockDisk, cache_dev_size) == 104);
static_assert(offsetof(SuperblockDisk, cache_dev_uuid) == 112);
static_assert(offsetof(SuperblockDisk, cache_data_offset) == 128);
static_assert(offsetof(SuperblockDisk, cache_block_count) == 136);
static_assert(offsetof(SuperblockDisk, created_unix) == 144);
static_assert(offsetof(SuperblockDisk, cache_epoch) == 256);
static_assert(offsetof(SuperblockDisk, origin_size) == 264);
static_assert(offsetof(SuperblockDisk, origin_id_len) == 272);
static_assert(offsetof(SuperblockDisk, origin_id) == 280);

// ---------------------------------------------------------------------------
// Cache device header: the first 4096 bytes of the cache device; only the
// first 512 are used. Cache block 0 starts at data_offset.
struct CacheHeaderDisk {
  uint64_t magic;               // kCacheHeaderMagic
  uint32_t crc;                 // crc32c of the whole 4096-byte block, this field as 0
  uint32_t version;             // kFormatVersion
  uint8_t cache_uuid[16];       // SuperblockDisk::uuid
  uint8_t cache_dev_uuid[16];   // SuperblockDisk::cache_dev_uuid
  uint64_t data_offset;         // bytes
  uint64_t cache_block_count;
  uint32_t cache_block_size;    // bytes
  uint32_t reserved;            // zero
};
static_assert(sizeof(CacheHeaderDisk) == 72);
static_assert(offsetof(CacheHeaderDisk, cache_uuid) == 16);
static_assert(offsetof(CacheHeaderDisk, cache_dev_uuid) == 32);
static_assert(offsetof(CacheHeaderDisk, data_offset) == 48);
static_assert(offsetof(CacheHeaderDisk, cache_block_size) == 64);

// ---------------------------------------------------------------------------
// Segment index block: block 0 of every log segment.
enum class SegmentState : uint32_t {
  kFree = 0,     // erased or never used; holds no records of this pass
  kOpen = 1,     // being written; flags not yet written (all kFlagFree)
  kSealed = 2,   // full; blocks 1..used_blocks hold records
  kRetired = 3,  // worn out, never used again
};

// Flag word per block. Between two erases a flag only gains bits:
// free (0x0000) -> in use (0x0001) -> obsolete (0x0003).
inline constexpr uint16_t kFlagFree = 0x0000;
inline constexpr uint16_t kFlagInUse = 0x0001;
inline constexpr uint16_t kFlagObsolete = 0x0003;

struct IndexHeaderDisk {
  uint64_t magic;               // kIndexMagic
  uint32_t header_crc;          // crc32c of these 64 bytes, this field as 0
  uint32_t version;             // kFormatVersion
  uint32_t segment_id;          // SegmentId this index was written for
  uint32_t state;               // SegmentState
  uint64_t sequence;            // sequence of block 1; 0 when free or retired
  uint32_t erase_count;         // erases so far
  uint32_t used_blocks;         // record blocks in use (sealed); else 0
  uint32_t blocks_per_segment;  // segment_size / kLogBlockSize
  uint32_t flags_crc;           // crc32c of bytes 64..4095 of the index block
  uint64_t log_id;              // first 8 bytes of the superblock uuid (little-endian)
  uint8_t reserved[8];          // zero
};
static_assert(sizeof(IndexHeaderDisk) == 64);
static_assert(offsetof(IndexHeaderDisk, segment_id) == 16);
static_assert(offsetof(IndexHeaderDisk, state) == 20);
static_assert(offsetof(IndexHeaderDisk, sequence) == 24);
static_assert(offsetof(IndexHeaderDisk, erase_count) == 32);
static_assert(offsetof(IndexHeaderDisk, used_blocks) == 36);
static_assert(offsetof(IndexHeaderDisk, blocks_per_segment) == 40);
static_assert(offsetof(IndexHeaderDisk, flags_crc) == 44);
static_assert(offsetof(IndexHeaderDisk, log_id) == 48);
// The header must sit in the first (atomically written) sector.
static_assert(sizeof(IndexHeaderDisk) <= kSectorSize);
inline constexpr uint32_t kIndexFlagsOffset = 64;
inline constexpr uint32_t kMaxBlocksPerSegment = (kLogBlockSize - kIndexFlagsOffset) / 2;
static_assert(kMaxSegmentSize / kLogBlockSize <= kMaxBlocksPerSegment);

// ---------------------------------------------------------------------------
// Record block header; the payload follows and the rest of the block is zero.
inline constexpr uint16_t kStreamConfig = 0;      // superblock/config stream (reserved)
inline constexpr uint16_t kStreamMapping = 1;     // mapping updates
inline constexpr uint16_t kStreamCheckpoint = 2;  // compaction checkpoints

inline constexpr uint16_t kRecordTypeSafeToIgnore = 0x8000;
inline constexpr uint16_t kRecordTypeEntries = 1;  // payload is a list of entries

struct RecordHeaderDisk {
  uint32_t crc;                 // crc32c of bytes 4..4095 of the block
  uint32_t magic;               // kRecordMagic
  uint16_t version;             // kFormatVersion
  uint16_t stream;              // kStream*
  uint16_t type;                // kRecordType*, bit 15 = safe to ignore
  uint16_t payload_size;        // bytes of payload after the header
  uint64_t position;            // LogBlock this block was written to
  uint64_t sequence;            // log-wide rising number
  uint64_t group_sequence;      // sequence of the first block of its group
  uint16_t group_blocks;        // blocks in its group
  uint16_t entry_count;         // entries in the payload
  uint32_t reserved0;           // zero
  uint64_t log_id;              // first 8 bytes of the superblock uuid (little-endian)
  uint8_t reserved[8];          // zero
};
static_assert(sizeof(RecordHeaderDisk) == 64);
static_assert(offsetof(RecordHeaderDisk, magic) == 4);
static_assert(offsetof(RecordHeaderDisk, version) == 8);
static_assert(offsetof(RecordHeaderDisk, stream) == 10);
static_assert(offsetof(RecordHeaderDisk, type) == 12);
static_assert(offsetof(RecordHeaderDisk, payload_size) == 14);
static_assert(offsetof(RecordHeaderDisk, position) == 16);
static_assert(offsetof(RecordHeaderDisk, sequence) == 24);
static_assert(offsetof(RecordHeaderDisk, group_sequence) == 32);
static_assert(offsetof(RecordHeaderDisk, group_blocks) == 40);
static_assert(offsetof(RecordHeaderDisk, entry_count) == 42);
static_assert(offsetof(RecordHeaderDisk, log_id) == 48);
inline constexpr uint32_t kRecordHeaderSize = sizeof(RecordHeaderDisk);
inline constexpr uint32_t kMaxPayloadSize = kLogBlockSize - kRecordHeaderSize;  // 4032

// ---------------------------------------------------------------------------
// Intent ring (not on the metadata device): a file on tmpfs holding the
// entries accepted since the last commit (metalog/intent_ring.h). A 4096-byte
// header block, then slot_count slots; ring sequence s lives in slot
// s % slot_count.
inline constexpr uint64_t kRingMagic = magic8("RBDCRING");
inline constexpr uint32_t kRingVersion = 1;

struct RingHeaderDisk {
  uint64_t magic;               // kRingMagic
  uint32_t crc;                 // crc32c of bytes 0..63, this field as 0
  uint32_t version;             // kRingVersion
  uint8_t log_uuid[16];         // SuperblockDisk::uuid of the log it belongs to
  uint8_t boot_id[16];          // /proc/sys/kernel/random/boot_id when written
  uint32_t slot_size;           // bytes per slot (128)
  uint32_t slot_count;
  uint32_t sub_blocks;          // mask width of the encoded entries
  uint32_t reserved;            // zero
  uint64_t committed;           // outside the crc: every ring sequence <= this is durable in the log
};
static_assert(sizeof(RingHeaderDisk) == 72);
static_assert(offsetof(RingHeaderDisk, log_uuid) == 16);
static_assert(offsetof(RingHeaderDisk, boot_id) == 32);
static_assert(offsetof(RingHeaderDisk, slot_size) == 48);
static_assert(offsetof(RingHeaderDisk, committed) == 64);

struct RingSlotDisk {
  uint64_t sequence;            // ring sequence, >= 1; 0 in a slot never written
  uint32_t crc;                 // crc32c of bytes 0..16+length-1, this field as 0
  uint16_t length;              // bytes of the encoded entry
  uint16_t reserved;            // zero
  uint8_t entry[112];           // one entry, encoded as in a record payload; rest zero
};
static_assert(sizeof(RingSlotDisk) == 128);
static_assert(offsetof(RingSlotDisk, crc) == 8);
static_assert(offsetof(RingSlotDisk, length) == 12);
static_assert(offsetof(RingSlotDisk, entry) == 16);

// ---------------------------------------------------------------------------
// Entries (record payload). Each entry starts with an op byte: the low four
// bits are the op, the high four bits are modifiers. Mask fields are
// mask_bytes(sub_blocks) bytes, bit i = sub-block i, least significant bit
// of byte 0 first.
inline constexpr uint8_t kOpMap = 1;        // u32 cache, u64 origin, [valid], [dirty]
inline constexpr uint8_t kOpUnmap = 2;      // u32 cache
inline constexpr uint8_t kOpSetDirty = 3;   // u32 cache, [dirty]
inline constexpr uint8_t kOpCkptBegin = 4;  // (nothing)
inline constexpr uint8_t kOpCkptEnd = 5;    // u64 sequence of the checkpoint's first block
inline constexpr uint8_t kOpMask = 0x0f;
inline constexpr uint8_t kModValidAll = 0x10;   // kOpMap: valid mask omitted, all valid
inline constexpr uint8_t kModDirtyNone = 0x20;  // dirty mask omitted, none dirty
inline constexpr uint8_t kModDirtyValid = 0x40; // dirty mask omitted, equal to valid
inline constexpr uint8_t kModReserved = 0x80;   // must be zero

constexpr uint32_t mask_bytes(uint32_t sub_blocks) { return (sub_blocks + 7) / 8; }
inline constexpr uint32_t kMaxEntrySize = 1 + 4 + 8 + 2 * mask_bytes(kMaxSubBlocks);  // 77
static_assert(kMaxEntrySize <= sizeof(RingSlotDisk::entry));

}  // namespace rbdcache::metalog
