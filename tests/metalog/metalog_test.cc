// Unit tests of the metadata log: codec checks, recovery rules, the writer.
#include <gtest/gtest.h>

#include <chrono>

#include "metalog/block_codec.h"
#include "metalog/compactor.h"
#include "metalog/reader.h"
#include "metalog/writer.h"
#include "test_util.h"

namespace rbdcache::metalog {
namespace {

using testing::Geometry;

std::span<const std::byte> bytes(const char* s) {
  return {reinterpret_cast<const std::byte*>(s), std::strlen(s)};
}

// --------------------------------------------------------------------- CRC32C
TEST(Crc32c, MatchesPublishedVectors) {
  EXPECT_EQ(crc32c(bytes("123456789")), 0xE3069283u);
  std::vector<std::byte> b(32, std::byte{0});
  EXPECT_EQ(crc32c(b), 0x8A9136AAu);  // RFC 3720 B.4: 32 bytes of zeros
  std::fill(b.begin(), b.end(), std::byte{0xff});
  EXPECT_EQ(crc32c(b), 0x62A8AB43u);  // 32 bytes of ones
  for (int i = 0; i < 32; ++i) b[i] = static_cast<std::byte>(i);
  EXPECT_EQ(crc32c(b), 0x46DD794Eu);  // incrementing
  for (int i = 0; i < 32; ++i) b[i] = static_cast<std::byte>(31 - i);
  EXPECT_EQ(crc32c(b), 0x113FDB5Cu);  // decrementing
}

TEST(Crc32c, ExtendEqualsWhole) {
  auto a = bytes("12345"), c = bytes("6789");
  EXPECT_EQ(crc32c_extend(crc32c(a), c), 0xE3069283u);
}

// -------------------------------------------------------------------- entries
TEST(MetalogEntry, RoundTripsEveryOpAndMaskForm) {
  for (uint32_t sub : {1u, 16u, 256u}) {
    SubBlockMask all = SubBlockMask::first(sub), some;
    some.set(0);
    some.set(sub - 1);
    std::vector<Entry> in = {Entry::map(CacheBlock(1), OriginBlock(7), all, {}),
                             Entry::map(CacheBlock(2), OriginBlock(1ull << 40), some, some),
                             Entry::map(CacheBlock(3), OriginBlock(9), all, some),
                             Entry::unmap(CacheBlock(4)),
                             Entry::set_dirty(CacheBlock(5), some),
                             Entry::set_dirty(CacheBlock(6), {})};
    std::vector<std::byte> buf;
    size_t expect = 0;
    for (const Entry& e : in) {
      encode_entry(e, sub, buf);
      expect += encoded_size(e, sub);
    }
    ASSERT_EQ(buf.size(), expect);
    std::vector<Entry> out;
    ASSERT_TRUE(decode_entries(buf, static_cast<uint32_t>(in.size()), sub, out).is_ok());
    EXPECT_EQ(out, in);
  }
}

TEST(MetalogEntry, CleanFullMapIsThirteenBytes) {
  EXPECT_EQ(encoded_size(Entry::map(CacheBlock(1), OriginBlock(2), SubBlockMask::first(16), {}), 16), 13u);
  EXPECT_EQ(encoded_size(Entry::set_dirty(CacheBlock(1), SubBlockMask::first(1)), 16), 7u);
}

TEST(MetalogEntry, DirtyOutsideValidIsCorruption) {
  std::vector<std::byte> buf;
  SubBlockMask v, d;
  v.set(0);
  d.set(1);
  encode_entry(Entry::map(CacheBlock(1), OriginBlock(2), v, d), 16, buf);
  std::vector<Entry> out;
  Status st = decode_entries(buf, 1, 16, out);
  EXPECT_EQ(st.err(), EUCLEAN);
  EXPECT_NE(st.message().find("not valid"), std::string::npos);
}

TEST(MetalogEntry, TruncatedAndTrailingPayloadsAreCorruption) {
  std::vector<std::byte> buf;
  encode_entry(Entry::unmap(CacheBlock(3)), 16, buf);
  std::vector<Entry> out;
  EXPECT_EQ(decode_entries(std::span(buf).first(3), 1, 16, out).err(), EUCLEAN);
  buf.push_back(std::byte{0});
  EXPECT_EQ(decode_entries(buf, 1, 16, out).err(), EUCLEAN);
}

// ------------------------------------------------------------- block checks
class RecordCheck : public ::testing::Test {
 protected:
  void SetUp() override {
    h.position = LogBlock(37);
    h.sequence = 100;
    h.group_sequence = 100;
    h.group_blocks = 1;
    h.log_id = 0x1122334455667788;
    std::vector<std::byte> payload;
    encode_entry(Entry::unmap(CacheBlock(5)), 16, payload);
    h.entry_count = 1;
    block.resize(kLogBlockSize);
    encode_record(h, payload, block);
  }
  BlockCheck check(uint64_t pos = 37, uint64_t expected = 100) {
    RecordHeader out;
    return check_record(block, LogBlock(pos), h.log_id, expected, out);
  }
  RecordHeader h;
  std::vector<std::byte> block;
};

TEST_F(RecordCheck, GoodBlockPasses) { EXPECT_EQ(check(), BlockCheck::kOk); }
TEST_F(RecordCheck, FlippedPayloadByteFailsChecksum) {
  testing::increment_byte(block, 70);
  EXPECT_EQ(check(), BlockCheck::kBadChecksum);
}
TEST_F(RecordCheck, WrongMagicIsNotARecord) {
  testing::increment_byte(block, 4);
  EXPECT_EQ(check(), BlockCheck::kBadMagic);
}
TEST_F(RecordCheck, OtherVersionIsRejected) {
  uint16_t v = 2;
  std::memcpy(block.data() + 8, &v, 2);
  uint32_t crc = crc32c(std::span(block).subspan(4));
  std::memcpy(block.data(), &crc, 4);
  EXPECT_EQ(check(), BlockCheck::kBadVersion);
}
TEST_F(RecordCheck, BlockReadFromWrongPlaceIsMisplaced) { EXPECT_EQ(check(38), BlockCheck::kMisplaced); }
TEST_F(RecordCheck, OlderSequenceIsStale) { EXPECT_EQ(check(37, 101), BlockCheck::kStale); }
TEST_F(RecordCheck, NewerSequenceIsFromTheFuture) { EXPECT_EQ(check(37, 99), BlockCheck::kFromFuture); }
TEST_F(RecordCheck, OtherLogIdIsForeign) {
  RecordHeader out;
  EXPECT_EQ(check_record(block, LogBlock(37), h.log_id + 1, 100, out), BlockCheck::kForeign);
}
TEST_F(RecordCheck, ZeroBlockIsBlank) {
  std::fill(block.begin(), block.end(), std::byte{0});
  EXPECT_EQ(check(), BlockCheck::kBlank);
}

// ------------------------------------------------------- writer and recovery
// A log on an in-memory device with a model of its committed state.
class LogFixture : public ::testing::Test {
 protected:
  void open(Geometry g = {}) {
    geo = g;
    dev = std::make_unique<MemBlockDevice>(testing::formatted_image(g, &sb));
    reopen();
  }
  void reopen() {
    log.reset();
    auto r = MetadataLog::open(*dev);
    ASSERT_TRUE(r.is_ok()) << r.status().to_string();
    log = std::move(*r);
  }
  // Appends `n` random entries and commits them.
  void commit_random(int n) {
    for (int i = 0; i < n; ++i) {
      Entry e = testing::random_entry(rng, model, geo.cache_blocks, sb.sub_blocks());
      ASSERT_TRUE(log->append(e).is_ok());
      testing::model_apply(model, e);
    }
    ASSERT_TRUE(log->commit().is_ok());
  }
  std::vector<std::byte>& img() { return dev->image(); }
  uint64_t bps() const { return sb.blocks_per_segment(); }
  // The first sealed segment (by sequence) with all blocks used.
  SegmentId oldest_sealed(const Recovery& rec) {
    std::optional<SegmentId> best;
    for (const auto& s : rec.segments) {
      if (s.state == SegmentState::kSealed && s.applied_blocks == bps() - 1 &&
          (!best || s.sequence < rec.segments[best->value()].sequence)) {
        best = s.id;
      }
    }
    EXPECT_TRUE(best.has_value());
    return best.value_or(SegmentId(1));
  }

  Geometry geo;
  Superblock sb;
  std::unique_ptr<MemBlockDevice> dev;
  std::unique_ptr<MetadataLog> log;
  MappingTable model;
  std::mt19937_64 rng{42};
};

TEST_F(LogFixture, CommittedEntriesAreRecovered) {
  open();
  for (int i = 0; i < 20; ++i) commit_random(30);
  log.reset();
  auto rec = recover_log(*dev);
  ASSERT_TRUE(rec.is_ok()) << rec.status().to_string();
  EXPECT_EQ(rec->state.mappings(), model);
  EXPECT_TRUE(rec->problems.empty());
}

TEST_F(LogFixture, UncommittedEntriesAreNotRecovered) {
  open();
  commit_random(10);
  MappingTable committed = model;
  ASSERT_TRUE(log->append(Entry::unmap(committed.begin()->first)).is_ok());
  log.reset();
  auto rec = recover_log(*dev);
  ASSERT_TRUE(rec.is_ok());
  EXPECT_EQ(rec->state.mappings(), committed);
}

TEST(MetalogRecovery, TornTailIsIgnored) {
  Geometry g;
  Superblock sb;
  MemBlockDevice dev(testing::formatted_image(g, &sb));
  auto log = MetadataLog::open(dev);
  ASSERT_TRUE(log.is_ok());
  SubBlockMask all = SubBlockMask::first(sb.sub_blocks());
  ASSERT_TRUE((*log)->append(Entry::map(CacheBlock(1), OriginBlock(10), all, {})).is_ok());
  ASSERT_TRUE((*log)->commit().is_ok());
  MappingTable before = (*log)->mappings();
  ASSERT_TRUE((*log)->append(Entry::map(CacheBlock(2), OriginBlock(20), all, all)).is_ok());
  ASSERT_TRUE((*log)->commit().is_ok());
  log = Status::io_error("closed");
  // The last commit is the second record block of the head segment. Tear it:
  // only its first 512-byte sector reached the medium; the rest still holds
  // what was there before.
  auto rec0 = recover_log(dev);
  ASSERT_TRUE(rec0.is_ok());
  uint64_t last = uint64_t{rec0->head->value()} * sb.blocks_per_segment() + 2;
  testing::overwrite(dev.image(), last * kLogBlockSize + 512, kLogBlockSize - 512, 0xab);
  auto rec = recover_log(dev);
  ASSERT_TRUE(rec.is_ok()) << rec.status().to_string();
  EXPECT_EQ(rec->state.mappings(), before);
  ASSERT_FALSE(rec->notes.empty());
  EXPECT_NE(rec->notes.front().find("torn"), std::string::npos);
}

TEST_F(LogFixture, TornMultiBlockGroupAtHeadIsIgnoredWholly) {
  open();
  commit_random(5);
  MappingTable before = model;
  commit_random(700);  // several blocks in one group
  log.reset();
  auto rec0 = recover_log(*dev);
  ASSERT_TRUE(rec0.is_ok());
  ASSERT_EQ(rec0->segments[rec0->head->value()].applied_blocks, 3u);
  // Lose the middle block of the group: later blocks of the same group exist.
  uint64_t mid = uint64_t{rec0->head->value()} * bps() + 2;
  testing::overwrite(img(), mid * kLogBlockSize, kLogBlockSize, 0);
  auto rec = recover_log(*dev);
  ASSERT_TRUE(rec.is_ok()) << rec.status().to_string();
  EXPECT_EQ(rec->state.mappings(), before);
}

TEST_F(LogFixture, CorruptionInTheMiddleIsReported) {
  open();
  for (int i = 0; i < 30; ++i) commit_random(20);
  log.reset();
  auto rec0 = recover_log(*dev);
  ASSERT_TRUE(rec0.is_ok());
  SegmentId victim = oldest_sealed(*rec0);
  uint64_t pos = uint64_t{victim.value()} * bps() + 2;
  testing::increment_byte(img(), pos * kLogBlockSize + 100);
  auto rec = recover_log(*dev);
  ASSERT_FALSE(rec.is_ok());
  EXPECT_EQ(rec.status().err(), EUCLEAN);
  std::string want = fmt::format("segment {} block 2", victim.value());
  EXPECT_NE(rec.status().message().find(want), std::string::npos) << rec.status().message();
  EXPECT_NE(rec.status().message().find("checksum mismatch"), std::string::npos);
}

TEST_F(LogFixture, HoleBeforeANewerCommitInTheHeadIsCorruption) {
  open();
  commit_random(5);
  commit_random(5);
  log.reset();
  auto rec0 = recover_log(*dev);
  ASSERT_TRUE(rec0.is_ok());
  uint64_t first = uint64_t{rec0->head->value()} * bps() + 1;
  testing::increment_byte(img(), first * kLogBlockSize + 200);
  auto rec = scan_log(*dev);
  ASSERT_TRUE(rec.is_ok());
  ASSERT_EQ(rec->problems.size(), 1u);
  EXPECT_EQ(rec->problems[0].segment, *rec0->head);
  EXPECT_EQ(rec->problems[0].block, 1u);
}

TEST_F(LogFixture, StaleBlockFromAnEarlierPassIsRejected) {
  Geometry g;
  g.segments = 8;
  open(g);
  commit_random(5);
  std::vector<std::byte> snapshot = img();
  auto first = recover_log(*dev);
  ASSERT_TRUE(first.is_ok());
  SegmentId s = *first->head;
  // Keep writing until segment `s` has been erased and filled again.
  for (int i = 0; i < 400; ++i) {
    commit_random(5);
    auto r = scan_log(*dev);
    ASSERT_TRUE(r.is_ok());
    const auto& seg = r->segments[s.value()];
    if (seg.erase_count > first->segments[s.value()].erase_count && seg.applied_blocks >= 2 &&
        seg.state == SegmentState::kSealed) {
      break;
    }
  }
  log.reset();
  uint64_t pos = uint64_t{s.value()} * bps() + 1;
  std::memcpy(img().data() + pos * kLogBlockSize, snapshot.data() + pos * kLogBlockSize, kLogBlockSize);
  auto rec = scan_log(*dev);
  ASSERT_TRUE(rec.is_ok());
  ASSERT_FALSE(rec->problems.empty());
  EXPECT_EQ(rec->problems[0].segment, s);
  EXPECT_EQ(rec->problems[0].block, 1u);
  EXPECT_NE(rec->problems[0].what.find("stale"), std::string::npos) << rec->problems[0].what;
}

TEST_F(LogFixture, BlockFoundAtTheWrongPositionIsRejected) {
  open();
  for (int i = 0; i < 12; ++i) commit_random(20);
  log.reset();
  auto rec0 = recover_log(*dev);
  ASSERT_TRUE(rec0.is_ok());
  SegmentId s = oldest_sealed(*rec0);
  uint64_t base = uint64_t{s.value()} * bps();
  testing::copy_block(img(), base + 1, base + 2);
  auto rec = scan_log(*dev);
  ASSERT_TRUE(rec.is_ok());
  ASSERT_FALSE(rec->problems.empty());
  EXPECT_EQ(rec->problems[0].block, 2u);
  EXPECT_NE(rec->problems[0].what.find("another position"), std::string::npos) << rec->problems[0].what;
}

TEST_F(LogFixture, FlagThatMovedBackwardsIsCorruption) {
  open();
  for (int i = 0; i < 12; ++i) commit_random(20);
  log.reset();
  auto rec0 = recover_log(*dev);
  ASSERT_TRUE(rec0.is_ok());
  SegmentId s = oldest_sealed(*rec0);
  // Rewrite the index with block 1's flag back at "free" (checksums fixed).
  IndexBlock ix;
  bool flags_ok = false;
  std::span<std::byte> blk(img().data() + sb.segment_offset(s.value()), kLogBlockSize);
  ASSERT_EQ(decode_index(blk, s, log_id_of(sb.uuid.bytes), bps(), ix, flags_ok), IndexCheck::kOk);
  ASSERT_TRUE(flags_ok);
  ix.flags[1] = kFlagFree;
  encode_index(ix, blk);
  auto rec = scan_log(*dev);
  ASSERT_TRUE(rec.is_ok());
  ASSERT_FALSE(rec->problems.empty());
  EXPECT_EQ(rec->problems[0].segment, s);
  EXPECT_NE(rec->problems[0].what.find("went back to free"), std::string::npos);
}

TEST_F(LogFixture, TornIndexRewriteLosesOnlyTheFlags) {
  open();
  for (int i = 0; i < 12; ++i) commit_random(20);
  log.reset();
  auto rec0 = recover_log(*dev);
  ASSERT_TRUE(rec0.is_ok());
  SegmentId s = oldest_sealed(*rec0);
  testing::increment_byte(img(), sb.segment_offset(s.value()) + 1024);  // a flags sector
  auto rec = recover_log(*dev);
  ASSERT_TRUE(rec.is_ok()) << rec.status().to_string();
  EXPECT_EQ(rec->state.mappings(), model);
  EXPECT_FALSE(rec->segments[s.value()].flags_ok);
}

TEST_F(LogFixture, UnknownIncompatFeatureIsRefused) {
  open();
  commit_random(3);
  log.reset();
  Superblock bad = sb;
  bad.incompat |= 1ull << 17;
  for (uint64_t c = 0; c < 2; ++c) encode_superblock(bad, c, std::span(img()).subspan(c * kLogBlockSize, kLogBlockSize));
  auto r = MetadataLog::open(*dev);
  ASSERT_FALSE(r.is_ok());
  EXPECT_EQ(r.status().err(), ENOTSUP);
  EXPECT_NE(r.status().message().find("incompat"), std::string::npos);
}

TEST_F(LogFixture, UnknownRoCompatFeatureRefusesWriting) {
  open();
  log.reset();
  Superblock ro = sb;
  ro.ro_compat |= 1ull << 3;
  for (uint64_t c = 0; c < 2; ++c) encode_superblock(ro, c, std::span(img()).subspan(c * kLogBlockSize, kLogBlockSize));
  EXPECT_TRUE(recover_log(*dev).is_ok());
  auto r = MetadataLog::open(*dev);
  EXPECT_EQ(r.status().err(), EROFS);
}

TEST(MetalogSuperblock, UnformattedAndForeignDevicesGiveDistinctErrors) {
  MemBlockDevice blank(1 << 20);
  EXPECT_EQ(recover_log(blank).status().err(), ENODATA);
  MemBlockDevice foreign(1 << 20);
  testing::overwrite(foreign.image(), 0, 8192, 0x5a);
  EXPECT_EQ(recover_log(foreign).status().err(), EMEDIUMTYPE);
}

TEST(MetalogSuperblock, DamagedCopyFallsBackToTheOther) {
  Superblock sb;
  MemBlockDevice dev(testing::formatted_image(Geometry{}, &sb));
  ASSERT_TRUE(write_superblock(dev, sb).is_ok());  // generation 1 -> copy 1
  testing::increment_byte(dev.image(), kLogBlockSize + 60);
  auto r = read_superblock(dev);
  ASSERT_TRUE(r.is_ok());
  EXPECT_EQ(r->generation, 0u);
  EXPECT_EQ(r->uuid, sb.uuid);
}

TEST(MetalogSuperblock, CopyAtTheWrongBlockIsMisplaced) {
  Superblock sb;
  MemBlockDevice dev(testing::formatted_image(Geometry{}, &sb));
  auto r = decode_superblock(std::span(dev.image()).first(kLogBlockSize), 1);
  EXPECT_EQ(r.status().err(), EUCLEAN);
  EXPECT_NE(r.status().message().find("misplaced"), std::string::npos);
}

TEST(MetalogFormat, RefusesFormattedDeviceWithoutForce) {
  Geometry g;
  MemBlockDevice meta(testing::formatted_image(g));
  MemBlockDevice cache(uint64_t{g.cache_block_size} * 64);
  FormatOptions opt;
  opt.segment_size = g.segment_size;
  opt.cache_block_size = g.cache_block_size;
  EXPECT_EQ(format_devices(meta, cache, opt).status().err(), EEXIST);
  opt.force = true;
  EXPECT_TRUE(format_devices(meta, cache, opt).is_ok());
}

TEST(MetalogFormat, RejectsBadSizesWithClearErrors) {
  FormatOptions opt;
  opt.cache_block_size = 3000;
  EXPECT_NE(plan_format(64 << 20, 64 << 20, opt).status().message().find("power of two"), std::string::npos);
  opt = FormatOptions{};
  EXPECT_NE(plan_format(64 << 20, 8 * 64 * 1024, opt).status().message().find("cache device too small"),
            std::string::npos);
  EXPECT_NE(plan_format(2 << 20, 64 << 20, opt).status().message().find("metadata device too small"),
            std::string::npos);
  auto ok = plan_format(64 << 20, 64 << 20, opt);
  ASSERT_TRUE(ok.is_ok());
  EXPECT_EQ(ok->cache_data_offset, 64u * 1024);
  EXPECT_EQ(ok->cache_block_count, 1023u);
}

TEST(MetalogFormat, CacheDeviceHeaderNamesTheCache) {
  Geometry g;
  MemBlockDevice meta(uint64_t{g.segment_size} * g.segments);
  MemBlockDevice cache(uint64_t{g.cache_block_size} * 65);
  FormatOptions opt;
  opt.segment_size = g.segment_size;
  opt.cache_block_size = g.cache_block_size;
  auto sb = format_devices(meta, cache, opt);
  ASSERT_TRUE(sb.is_ok());
  auto h = read_cache_header(cache);
  ASSERT_TRUE(h.is_ok());
  EXPECT_EQ(h->cache_uuid, sb->uuid);
  EXPECT_EQ(h->cache_dev_uuid, sb->cache_dev_uuid);
  EXPECT_EQ(h->data_offset, sb->cache_data_offset);
}

TEST_F(LogFixture, AppendRejectsInvalidEntries) {
  open();
  SubBlockMask v, d;
  v.set(0);
  d.set(1);
  EXPECT_EQ(log->append(Entry::map(CacheBlock(1), OriginBlock(1), v, d)).err(), EINVAL);
  EXPECT_EQ(log->append(Entry::unmap(CacheBlock(geo.cache_blocks + 100))).err(), EINVAL);
  SubBlockMask past;
  past.set(sb.sub_blocks());
  EXPECT_EQ(log->append(Entry::map(CacheBlock(1), OriginBlock(1), past, {})).err(), EINVAL);
}

TEST_F(LogFixture, CompactionFreesOldSegmentsAndKeepsState) {
  open();
  for (int i = 0; i < 15; ++i) commit_random(40);
  ASSERT_TRUE(log->compact().is_ok());
  LogStats st = log->stats();
  EXPECT_GE(st.checkpoints, 1u);
  // After a checkpoint only the checkpoint's segments hold live blocks.
  uint32_t ckpt = checkpoint_segments(model.size(), sb.sub_blocks(), sb.blocks_per_segment());
  EXPECT_LE(st.wear.in_use, ckpt + 1);
  log.reset();
  auto rec = recover_log(*dev);
  ASSERT_TRUE(rec.is_ok()) << rec.status().to_string();
  EXPECT_EQ(rec->state.mappings(), model);
  EXPECT_GT(rec->last_checkpoint_start, 0u);
}

TEST_F(LogFixture, ReopenAfterTornTailKeepsWorking) {
  open();
  commit_random(10);
  MappingTable before = model;
  commit_random(10);
  log.reset();
  auto rec0 = recover_log(*dev);
  uint64_t last = uint64_t{rec0->head->value()} * bps() + 2;
  testing::increment_byte(img(), last * kLogBlockSize + 300);
  model = before;
  reopen();
  EXPECT_EQ(log->mappings(), before);
  for (int i = 0; i < 10; ++i) commit_random(10);
  log.reset();
  auto rec = recover_log(*dev);
  ASSERT_TRUE(rec.is_ok()) << rec.status().to_string();
  EXPECT_EQ(rec->state.mappings(), model);
}

TEST_F(LogFixture, SegmentsPastTheEraseLimitAreRetired) {
  Geometry g;
  g.max_erase_count = 3;
  g.segments = 10;
  open(g);
  Status last;
  for (int i = 0; i < 200 && last.is_ok(); ++i) {
    for (int j = 0; j < 5; ++j) {
      Entry e = testing::random_entry(rng, model, 4, sb.sub_blocks());
      ASSERT_TRUE(log->append(e).is_ok());
    }
    last = log->commit();
  }
  LogStats st = log->stats();
  EXPECT_GT(st.wear.retired, 0u);
  EXPECT_LE(st.wear.erase_max, 3u);
  EXPECT_EQ(last.err(), ENOSPC);  // in the end every segment wore out
}

TEST_F(LogFixture, CloseMarksDeadBlocksObsolete) {
  open();
  SubBlockMask all = SubBlockMask::first(sb.sub_blocks());
  // Rewrite the same cache block many times: old blocks die.
  for (int i = 0; i < 20; ++i) {
    ASSERT_TRUE(log->append(Entry::map(CacheBlock(1), OriginBlock(i), all, {})).is_ok());
    ASSERT_TRUE(log->commit().is_ok());
  }
  ASSERT_TRUE(log->close().is_ok());
  auto rec = recover_log(*dev);
  ASSERT_TRUE(rec.is_ok());
  uint32_t obsolete_flags = 0;
  for (const auto& s : rec->segments) {
    for (uint16_t f : s.disk_flags) obsolete_flags += f == kFlagObsolete;
  }
  EXPECT_GT(obsolete_flags, 0u);
  EXPECT_EQ(rec->state.mappings().at(CacheBlock(1)).origin, OriginBlock(19));
}

}  // namespace
}  // namespace rbdcache::metalog
