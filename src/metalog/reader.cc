#include "metalog/reader.h"

#include <algorithm>
#include <cstring>

#include "metalog/block_codec.h"
#include "metalog/entry.h"

namespace rbdcache::metalog {

std::string Problem::to_string() const {
  return fmt::format("segment {} block {} (log block {}): {}", segment.value(), block,
                     position.value(), what);
}

namespace {

// Scans one segment whose index verified as open or sealed.
class SegmentScanner {
 public:
  SegmentScanner(Recovery& rec, SegmentSummary& seg, std::span<const std::byte> data, bool is_head,
                 uint32_t sealed_used)
      : sealed_used_(sealed_used), rec_(rec), seg_(seg), data_(data), is_head_(is_head),
        bps_(rec.superblock.blocks_per_segment()),
        log_id_(log_id_of(rec.superblock.uuid.bytes)) {}

  // Position of the last block that verified, 0 if none.
  uint32_t last_written() const {
    for (uint32_t i = bps_ - 1; i > 0; --i) {
      if (checks_[i] == BlockCheck::kOk) return i;
    }
    return 0;
  }

  void run() {
    verify_blocks();
    uint32_t n = seg_.state == SegmentState::kSealed ? sealed_extent() : open_extent();
    n = complete_groups(n);
    check_flags();
    seg_.applied_blocks = n;
    apply(n);
  }

 private:
  LogBlock position(uint32_t i) const { return LogBlock(uint64_t{seg_.id.value()} * bps_ + i); }
  uint64_t expected(uint32_t i) const { return seg_.sequence + i - 1; }
  std::span<const std::byte> block(uint32_t i) const {
    return data_.subspan(size_t{i} * kLogBlockSize, kLogBlockSize);
  }
  void problem(uint32_t i, std::string what) {
    rec_.problems.push_back(Problem{seg_.id, i, position(i), std::move(what)});
  }
  std::string reason(uint32_t i) const {
    std::string r = to_string(checks_[i]);
    if (checks_[i] == BlockCheck::kStale || checks_[i] == BlockCheck::kFromFuture ||
        checks_[i] == BlockCheck::kMisplaced) {
      RecordHeaderDisk d;
      std::memcpy(&d, block(i).data(), sizeof(d));
      r += fmt::format(" (holds position {} sequence {}, expected position {} sequence {})",
                       d.position, d.sequence, position(i).value(), expected(i));
    }
    return r;
  }

  void verify_blocks() {
    checks_.assign(bps_, BlockCheck::kBlank);
    headers_.assign(bps_, RecordHeader{});
    for (uint32_t i = 1; i < bps_; ++i) {
      checks_[i] = check_record(block(i), position(i), log_id_, expected(i), headers_[i]);
      if (checks_[i] == BlockCheck::kOk) ++seg_.written_blocks;
    }
  }

  // Sealed: blocks 1..used must all verify.
  uint32_t sealed_extent() {
    uint32_t used = 0;
    for (uint32_t i = 1; i <= sealed_used_; ++i) {
      if (checks_[i] != BlockCheck::kOk) {
        problem(i, reason(i));
        return used;
      }
      used = i;
    }
    return used;
  }

  // Open: the written blocks form a prefix, except that the head's last
  // commit group may be torn (any subset of its blocks written).
  uint32_t open_extent() {
    uint32_t m = 0;
    for (uint32_t i = 1; i < bps_; ++i) {
      if (checks_[i] == BlockCheck::kOk) m = i;
    }
    uint32_t p = 0;
    for (uint32_t i = 1; i <= m; ++i) {
      if (checks_[i] != BlockCheck::kOk) {
        p = i;
        break;
      }
    }
    if (p == 0) {
      if (m + 1 < bps_ && checks_[m + 1] == BlockCheck::kBadChecksum) {
        rec_.notes.push_back(fmt::format("segment {} block {}: torn block at the head of the log ignored",
                                         seg_.id.value(), m + 1));
      }
      return m;
    }
    if (!is_head_) {
      problem(p, reason(p));
      return p - 1;
    }
    // Every verified block after the hole must belong to the group that
    // was in flight when the hole was written.
    std::optional<uint64_t> group;
    for (uint32_t i = p + 1; i <= m; ++i) {
      if (checks_[i] != BlockCheck::kOk) continue;
      uint64_t g = headers_[i].group_sequence;
      if (g > expected(p) || (group && *group != g)) {
        problem(p, reason(p));
        return p - 1;
      }
      group = g;
    }
    uint64_t g = *group;  // m > p, so at least one block verified after p
    if (g < seg_.sequence) {
      problem(p, reason(p));
      return p - 1;
    }
    rec_.notes.push_back(fmt::format("segment {} block {}: torn commit group at the head of the log ignored",
                                     seg_.id.value(), g - seg_.sequence + 1));
    return static_cast<uint32_t>(g - seg_.sequence);
  }

  // Trims `n` to whole commit groups. An incomplete last group is a torn
  // tail at the head and corruption anywhere else.
  uint32_t complete_groups(uint32_t n) {
    uint32_t i = 1;
    while (i <= n) {
      const RecordHeader& h = headers_[i];
      if (h.group_sequence != h.sequence) {
        problem(i, fmt::format("commit group starts at sequence {}, but the group before it ended at {}",
                               h.group_sequence, h.sequence - 1));
        return i - 1;
      }
      uint32_t end = i + h.group_blocks - 1;
      if (end > n) {
        if (is_head_ && seg_.state == SegmentState::kOpen) {
          rec_.notes.push_back(fmt::format("segment {} block {}: incomplete commit group at the head of the log ignored",
                                           seg_.id.value(), i));
        } else {
          problem(n + 1 < bps_ ? n + 1 : n,
                  fmt::format("commit group starting at block {} needs {} blocks but the segment ends at block {}",
                              i, h.group_blocks, n));
        }
        return i - 1;
      }
      for (uint32_t j = i + 1; j <= end; ++j) {
        if (headers_[j].group_sequence != h.group_sequence || headers_[j].group_blocks != h.group_blocks) {
          problem(j, "block disagrees with its commit group");
          return i - 1;
        }
      }
      i = end + 1;
    }
    return n;
  }

  // Flags only ever gain bits: free -> in use -> obsolete.
  void check_flags() {
    if (!seg_.flags_ok) {
      rec_.notes.push_back(fmt::format("segment {}: flag words unreadable (torn index rewrite); rebuilt from records",
                                       seg_.id.value()));
      return;
    }
    const auto& f = seg_.disk_flags;
    for (uint32_t i = 1; i < bps_; ++i) {
      uint16_t v = f[i];
      if (v != kFlagFree && v != kFlagInUse && v != kFlagObsolete) {
        problem(0, fmt::format("flag word of block {} has invalid value {:#06x}", i, v));
      } else if (seg_.state == SegmentState::kOpen && v != kFlagFree) {
        problem(0, fmt::format("flag word of block {} is set in an open segment", i));
      } else if (seg_.state == SegmentState::kSealed && i <= sealed_used_ && v == kFlagFree) {
        problem(0, fmt::format("flag word of block {} went back to free in a sealed segment", i));
      } else if (seg_.state == SegmentState::kSealed && i > sealed_used_ && v != kFlagFree) {
        problem(0, fmt::format("flag word of block {} is set past the last used block {}", i, sealed_used_));
      }
    }
  }

  void apply(uint32_t n) {
    const uint32_t sub_blocks = rec_.superblock.sub_blocks();
    std::vector<Entry> entries;
    for (uint32_t i = 1; i <= n; ++i) {
      const RecordHeader& h = headers_[i];
      rec_.state.note_block(position(i), h.sequence);
      ++rec_.blocks_applied;
      // Blocks flagged obsolete hold nothing that matters: skip them.
      if (seg_.state == SegmentState::kSealed && seg_.flags_ok && seg_.disk_flags[i] == kFlagObsolete) {
        continue;
      }
      bool known = h.type == kRecordTypeEntries &&
                   (h.stream == kStreamMapping || h.stream == kStreamCheckpoint);
      if (!known) {
        if (!(h.type & kRecordTypeSafeToIgnore)) {
          problem(i, fmt::format("unknown record type {:#06x} in stream {} (not safe to ignore)", h.type, h.stream));
        }
        continue;
      }
      entries.clear();
      Status st = decode_entries(block(i).subspan(kRecordHeaderSize, h.payload_size), h.entry_count,
                                 sub_blocks, entries);
      if (!st.is_ok()) {
        problem(i, st.message());
        continue;
      }
      for (const Entry& e : entries) {
        rec_.state.apply(e, position(i));
        if (e.op == EntryOp::kCheckpointEnd) rec_.last_checkpoint_start = e.checkpoint_start;
      }
      rec_.entries_applied += entries.size();
    }
  }

  uint32_t sealed_used_;  // used_blocks of a sealed segment's index
  Recovery& rec_;
  SegmentSummary& seg_;
  std::span<const std::byte> data_;
  bool is_head_;
  uint32_t bps_;
  uint64_t log_id_;
  std::vector<BlockCheck> checks_;
  std::vector<RecordHeader> headers_;
};

}  // namespace

Result<Recovery> scan_log(BlockDevice& dev) {
  Result<Superblock> sb = read_superblock(dev);
  if (!sb.is_ok()) return sb.status();
  Recovery rec(*sb);
  const uint32_t count = sb->segment_count;
  const uint32_t bps = sb->blocks_per_segment();
  rec.segments.resize(count);
  std::vector<uint32_t> used(count, 0);
  std::vector<std::byte> buf(kLogBlockSize);

  // Pass 1: index blocks.
  for (uint32_t s = 1; s < count; ++s) {
    SegmentSummary& seg = rec.segments[s];
    seg.id = SegmentId(s);
    RBDCACHE_RETURN_IF_ERROR(dev.read(sb->segment_offset(s), buf));
    rec.bytes_scanned += buf.size();
    IndexBlock ix;
    bool flags_ok = false;
    IndexCheck c = decode_index(buf, seg.id, log_id_of(sb->uuid.bytes), bps, ix, flags_ok);
    if (c == IndexCheck::kBlank) {
      seg.index_ok = true;
      seg.flags_ok = true;
      seg.disk_flags.assign(bps, kFlagFree);
      continue;
    }
    if (c != IndexCheck::kOk) {
      rec.problems.push_back(Problem{seg.id, 0, LogBlock(uint64_t{s} * bps), to_string(c)});
      continue;
    }
    seg.index_ok = true;
    seg.flags_ok = flags_ok;
    seg.state = ix.state;
    seg.sequence = ix.sequence;
    seg.erase_count = ix.erase_count;
    seg.disk_flags = std::move(ix.flags);
    used[s] = ix.used_blocks;
    rec.next_sequence = std::max(rec.next_sequence, ix.sequence + bps);
  }

  // Order the segments of this pass by sequence; the newest is the head.
  std::vector<uint32_t> order;
  for (uint32_t s = 1; s < count; ++s) {
    const SegmentSummary& seg = rec.segments[s];
    if (seg.index_ok && (seg.state == SegmentState::kOpen || seg.state == SegmentState::kSealed)) {
      order.push_back(s);
    }
  }
  std::sort(order.begin(), order.end(),
            [&](uint32_t a, uint32_t b) { return rec.segments[a].sequence < rec.segments[b].sequence; });
  if (!order.empty()) rec.head = SegmentId(order.back());

  // Pass 2: records, oldest segment first.
  std::vector<std::byte> data(sb->segment_size);
  uint64_t prev_end = 0;
  uint32_t prev_seg = 0;
  for (uint32_t s : order) {
    SegmentSummary& seg = rec.segments[s];
    if (prev_seg != 0 && seg.sequence <= prev_end) {
      rec.problems.push_back(Problem{seg.id, 0, LogBlock(uint64_t{s} * bps),
                                     fmt::format("sequence {} overlaps segment {} (which runs to {})",
                                                 seg.sequence, prev_seg, prev_end)});
      continue;
    }
    RBDCACHE_RETURN_IF_ERROR(dev.read(sb->segment_offset(s), data));
    rec.bytes_scanned += data.size();
    SegmentScanner scanner(rec, seg, data, rec.head && rec.head->value() == s, used[s]);
    scanner.run();
    prev_end = seg.sequence + std::max(scanner.last_written(), used[s]) - 1;
    prev_seg = s;
  }

  for (uint32_t s : order) {
    SegmentSummary& seg = rec.segments[s];
    seg.live_blocks = rec.state.live_blocks(seg.id);
    seg.obsolete_blocks = seg.applied_blocks - std::min(seg.applied_blocks, seg.live_blocks);
  }
  // Dead blocks are of no interest to the LogState's dead-segment queue yet;
  // the writer decides what to erase from the live counts.
  rec.state.take_newly_dead().clear();
  return rec;
}

Result<Recovery> recover_log(BlockDevice& dev) {
  Result<Recovery> rec = scan_log(dev);
  if (!rec.is_ok()) return rec;
  if (!rec->problems.empty()) {
    return Status::corruption(fmt::format("metadata log is corrupt ({} problem{}); first: {}",
                                          rec->problems.size(), rec->problems.size() == 1 ? "" : "s",
                                          rec->problems.front().to_string()));
  }
  return rec;
}

}  // namespace rbdcache::metalog
