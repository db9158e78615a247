// Compaction: when free segments run low, the live mappings are rewritten as
// one checkpoint, after which every block older than the checkpoint is dead
// and its segment can be erased.
//
// A checkpoint is a run of record blocks in the checkpoint stream holding
//   kCheckpointBegin, one kMap per live mapping, kCheckpointEnd(start)
// where `start` is the sequence of its first block. It starts in a fresh
// segment. Replaying a checkpoint is idempotent (its kMap entries equal the
// state they follow), so a checkpoint cut short by a crash is harmless; only
// a completed one (its kCheckpointEnd replayed) kills the older blocks.
#pragma once

#include <cstdint>
#include <vector>

#include "metalog/entry.h"

namespace rbdcache::metalog {

// Record blocks needed for `entries` worst-case-sized entries.
uint64_t blocks_for_entries(uint64_t entries, uint32_t sub_blocks);

// Segments needed for a checkpoint of `mappings` mappings.
uint32_t checkpoint_segments(uint64_t mappings, uint32_t sub_blocks, uint32_t blocks_per_segment);

// Whether to write a checkpoint now. `available` counts reusable segments,
// `in_use` segments holding live blocks (the head included).
// Compacts when fewer than checkpoint_segments + 2 segments are reusable, and
// only if the checkpoint would free at least one segment (so it cannot loop).
bool should_compact(uint32_t available, uint32_t in_use, uint64_t mappings, uint32_t sub_blocks,
                    uint32_t blocks_per_segment);

// The entries of a checkpoint of `table` whose first block has sequence
// `start`, in cache-block order.
std::vector<Entry> checkpoint_entries(const MappingTable& table, uint64_t start);

}  // namespace rbdcache::metalog
