// Recovery: scan a metadata device, verify every block, order the records by
// sequence and replay them.
//
// The rules (docs/metadata-format.md, "Recovery"):
//   - every index block and every record block a segment claims is verified
//     (magic, checksum, version, position, sequence, header fields); each
//     failure is reported with its own reason, segment and block;
//   - a torn commit group at the head of the log is ignored quietly: the
//     head is the open segment with the highest sequence, and its last group
//     may be partly written (any subset of its blocks);
//   - any other missing or bad block is corruption.
//
// scan_log() collects every problem (for `rbdcache check` and `dump`);
// recover_log() is what the server uses: it refuses a log with any problem.
// Both are synchronous, read-only, and may run on any thread; the device
// must not be written while they run.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "metalog/block_device.h"
#include "metalog/log_state.h"
#include "metalog/superblock.h"
#include "rbdcache/status.h"
#include "rbdcache/types.h"

namespace rbdcache::metalog {

// One piece of corruption, located.
struct Problem {
  SegmentId segment;
  uint32_t block = 0;  // block within the segment; 0 is the index block
  LogBlock position;   // absolute log block
  std::string what;
  std::string to_string() const;
};

struct SegmentSummary {
  SegmentId id;
  SegmentState state = SegmentState::kFree;
  bool index_ok = false;  // the index header verified (a blank index counts)
  bool flags_ok = false;  // the flag words verified
  uint64_t sequence = 0;
  uint32_t erase_count = 0;
  uint32_t written_blocks = 0;  // record blocks of this pass that verified
  uint32_t applied_blocks = 0;  // record blocks that belong to committed groups
  uint32_t live_blocks = 0;     // applied blocks still holding live entries
  uint32_t obsolete_blocks = 0; // applied blocks holding none
  std::vector<uint16_t> disk_flags;
};

struct Recovery {
  explicit Recovery(const Superblock& sb)
      : superblock(sb), state(sb.segment_count, sb.blocks_per_segment()) {}

  Superblock superblock;
  std::vector<SegmentSummary> segments;  // indexed by SegmentId; [0] is the superblock segment
  LogState state;                        // replayed mappings and liveness
  std::optional<SegmentId> head;         // segment holding the newest records
  uint64_t next_sequence = 1;            // higher than any sequence on the device
  uint64_t last_checkpoint_start = 0;    // 0 when no checkpoint completed
  uint64_t blocks_applied = 0;
  uint64_t entries_applied = 0;
  uint64_t bytes_scanned = 0;
  std::vector<Problem> problems;         // corruption; empty when the log is consistent
  std::vector<std::string> notes;        // harmless findings (torn tail ignored, ...)
};

// Reads the superblock, then scans and replays the whole log. Fails only when
// the superblock cannot be used (see read_superblock) or the device cannot be
// read; corruption in the log is listed in Recovery::problems.
[[nodiscard]] Result<Recovery> scan_log(BlockDevice& dev);

// scan_log(), then fails with EUCLEAN naming the first problem if there is any.
[[nodiscard]] Result<Recovery> recover_log(BlockDevice& dev);

}  // namespace rbdcache::metalog
