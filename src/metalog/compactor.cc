#include "metalog/compactor.h"

#include <algorithm>

namespace rbdcache::metalog {

uint64_t blocks_for_entries(uint64_t entries, uint32_t sub_blocks) {
  uint64_t worst = 1 + 4 + 8 + 2 * mask_bytes(sub_blocks);
  uint64_t per_block = kMaxPayloadSize / worst;
  return (entries + 2 + per_block - 1) / per_block;
}

uint32_t checkpoint_segments(uint64_t mappings, uint32_t sub_blocks, uint32_t blocks_per_segment) {
  uint64_t blocks = blocks_for_entries(mappings, sub_blocks);
  uint64_t per_segment = blocks_per_segment - 1;
  return static_cast<uint32_t>((blocks + per_segment - 1) / per_segment);
}

bool should_compact(uint32_t available, uint32_t in_use, uint64_t mappings, uint32_t sub_blocks,
                    uint32_t blocks_per_segment) {
  uint32_t need = checkpoint_segments(mappings, sub_blocks, blocks_per_segment);
  return available < need + 2 && in_use > need + 1;
}

std::vector<Entry> checkpoint_entries(const MappingTable& table, uint64_t start) {
  std::vector<std::pair<CacheBlock, const Mapping*>> sorted;
  sorted.reserve(table.size());
  for (const auto& [c, m] : table) sorted.emplace_back(c, &m);
  std::sort(sorted.begin(), sorted.end(),
            [](const auto& a, const auto& b) { return a.first < b.first; });
  std::vector<Entry> out;
  out.reserve(sorted.size() + 2);
  out.push_back(Entry{EntryOp::kCheckpointBegin, {}, {}, {}, {}, 0});
  for (const auto& [c, m] : sorted) out.push_back(Entry::map(c, m->origin, m->valid, m->dirty));
  out.push_back(Entry{EntryOp::kCheckpointEnd, {}, {}, {}, {}, start});
  return out;
}

}  // namespace rbdcache::metalog
