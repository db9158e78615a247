// The metadata log's intent ring: entries accepted by append() survive a
// crash of the process (the in-memory device below keeps every write, synced
// or not, as the kernel does when only the process dies), and nothing else
// is ever taken back: torn or corrupt slots, another log's ring, a ring from
// an earlier boot. Also: replay order, a full ring, the early-commit request,
// and stats() racing commits (run under ThreadSanitizer).
#include <gtest/gtest.h>

#include <fcntl.h>
#include <stdlib.h>
#include <sys/vfs.h>
#include <linux/magic.h>
#include <unistd.h>

#include <atomic>
#include <cstring>
#include <filesystem>
#include <random>
#include <thread>

#include "metalog/format.h"
#include "metalog/intent_ring.h"
#include "metalog/reader.h"
#include "metalog/writer.h"
#include "rbdcache/crc32c.h"
#include "test_util.h"

namespace rbdcache::metalog {
namespace {

class RingTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/dev/shm/rbdcache-ring-test-XXXXXX";
    ASSERT_NE(::mkdtemp(tmpl), nullptr);
    dir = tmpl;
    dev = std::make_unique<MemBlockDevice>(testing::formatted_image(geo, &sb));
    all = SubBlockMask::first(sb.sub_blocks());
  }
  void TearDown() override {
    log.reset();
    std::filesystem::remove_all(dir);
  }
  LogOptions options(uint32_t slots = 64) {
    LogOptions o;
    o.ring = LogOptions::Ring::kOn;
    o.ring_options.dir = dir;
    o.ring_options.slots = slots;
    return o;
  }
  void open(uint32_t slots = 64) {
    auto r = MetadataLog::open(*dev, options(slots));
    ASSERT_TRUE(r.is_ok()) << r.status().to_string();
    log = std::move(*r);
  }
  // The process dies: the log object is gone without close(); the device
  // and the ring file keep what was written.
  void crash() { log.reset(); }
  void append(const Entry& e) {
    ASSERT_TRUE(log->append(e).is_ok());
    testing::model_apply(model, e);
  }
  std::string ring_file() const { return IntentRing::path_for(dir, sb.uuid); }
  std::vector<std::byte> read_ring() {
    std::vector<std::byte> img(std::filesystem::file_size(ring_file()));
    int fd = ::open(ring_file().c_str(), O_RDONLY);
    EXPECT_EQ(::pread(fd, img.data(), img.size(), 0), static_cast<ssize_t>(img.size()));
    ::close(fd);
    return img;
  }
  void write_ring(const std::vector<std::byte>& img) {
    int fd = ::open(ring_file().c_str(), O_WRONLY);
    EXPECT_EQ(::pwrite(fd, img.data(), img.size(), 0), static_cast<ssize_t>(img.size()));
    ::close(fd);
  }
  static uint64_t slot_offset(const std::vector<std::byte>& img, uint64_t seq) {
    RingHeaderDisk h;
    std::memcpy(&h, img.data(), sizeof(h));
    return kRingHeaderSize + (seq % h.slot_count) * kRingSlotSize;
  }
  static void reseal_header(std::vector<std::byte>& img) {
    RingHeaderDisk h;
    std::memcpy(&h, img.data(), sizeof(h));
    h.crc = 0;
    h.crc = crc32c(std::span<const std::byte>(reinterpret_cast<const std::byte*>(&h),
                                              offsetof(RingHeaderDisk, committed)));
    std::memcpy(img.data(), &h, sizeof(h));
  }
  Entry map(uint32_t c, uint64_t o) { return Entry::map(CacheBlock(c), OriginBlock(o), all, all); }

  testing::Geometry geo;
  Superblock sb;
  SubBlockMask all;
  std::string dir;
  std::unique_ptr<MemBlockDevice> dev;
  std::unique_ptr<MetadataLog> log;
  MappingTable model;
};

TEST_F(RingTest, UncommittedEntriesSurviveAProcessCrash) {
  open();
  append(map(1, 10));
  append(map(2, 20));
  ASSERT_TRUE(log->commit().is_ok());
  append(map(3, 30));
  append(Entry::unmap(CacheBlock(1)));
  crash();
  // Without the ring only the commit survived.
  auto before = recover_log(*dev);
  ASSERT_TRUE(before.is_ok());
  EXPECT_EQ(before->state.mappings().size(), 2u);

  open();
  EXPECT_EQ(log->mappings(), model);
  EXPECT_EQ(log->stats().ring_recovered, 2u);
  // The taken-back entries are committed the normal way.
  ASSERT_TRUE(log->commit().is_ok());
  EXPECT_EQ(log->mappings(), model);
  auto rec = recover_log(*dev);
  ASSERT_TRUE(rec.is_ok());
  EXPECT_EQ(rec->state.mappings(), model);
  EXPECT_EQ(log->stats().ring_pending, 0u);
}

TEST_F(RingTest, EntriesSurviveASecondCrashBeforeTheyAreCommitted) {
  open();
  append(map(4, 40));
  crash();
  open();  // takes the entry back, but crashes again before committing it
  crash();
  open();
  EXPECT_EQ(log->mappings(), model);
}

TEST_F(RingTest, ReplayKeepsTheOrderOfAppends) {
  open();
  std::mt19937_64 rng(5);
  for (int i = 0; i < 40; ++i) {
    Entry e = testing::random_entry(rng, model, geo.cache_blocks, sb.sub_blocks());
    append(e);
    if (i == 17) {
      ASSERT_TRUE(log->commit().is_ok());
    }
  }
  // The same cache block, rewritten: only the latest state may come back.
  append(map(7, 1));
  append(map(7, 2));
  append(Entry::unmap(CacheBlock(7)));
  append(map(7, 3));
  crash();
  open();
  EXPECT_EQ(log->mappings(), model);
  EXPECT_EQ(log->mappings().at(CacheBlock(7)).origin, OriginBlock(3));
}

TEST_F(RingTest, TornLastEntryIsIgnored) {
  open();
  append(map(1, 10));
  append(map(2, 20));
  crash();
  auto img = read_ring();
  // The second entry was being written when the process died.
  img[slot_offset(img, 2) + 18] ^= std::byte{0x5a};  // inside the entry
  write_ring(img);
  open();
  ASSERT_EQ(log->mappings().size(), 1u);
  EXPECT_EQ(log->mappings().at(CacheBlock(1)).origin, OriginBlock(10));
}

TEST_F(RingTest, ReplayStopsAtACorruptEntry) {
  open();
  append(map(1, 10));
  append(map(2, 20));
  append(map(3, 30));
  crash();
  auto img = read_ring();
  img[slot_offset(img, 2) + 4] ^= std::byte{0x01};  // the sequence field
  write_ring(img);
  open();
  EXPECT_EQ(log->mappings().size(), 1u);
  EXPECT_EQ(log->mappings().count(CacheBlock(1)), 1u);
}

TEST_F(RingTest, RingOfAnotherLogIsIgnored) {
  open();
  append(map(1, 10));
  crash();
  auto img = read_ring();
  // A second cache formatted with the same geometry: another uuid.
  Superblock other_sb;
  auto other = std::make_unique<MemBlockDevice>(testing::formatted_image(geo, &other_sb));
  ASSERT_FALSE(other_sb.uuid == sb.uuid);
  int fd = ::open(IntentRing::path_for(dir, other_sb.uuid).c_str(), O_CREAT | O_WRONLY, 0600);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(::pwrite(fd, img.data(), img.size(), 0), static_cast<ssize_t>(img.size()));
  ::close(fd);
  auto r = MetadataLog::open(*other, options());
  ASSERT_TRUE(r.is_ok()) << r.status().to_string();
  EXPECT_TRUE((*r)->mappings().empty());
  EXPECT_EQ((*r)->stats().ring_recovered, 0u);
}

TEST_F(RingTest, RingFromAnEarlierBootIsIgnored) {
  open();
  append(map(1, 10));
  crash();
  auto img = read_ring();
  img[offsetof(RingHeaderDisk, boot_id)] ^= std::byte{0xff};
  reseal_header(img);
  write_ring(img);
  open();
  EXPECT_TRUE(log->mappings().empty());
  model.clear();
  // And the stale file was replaced: a later crash recovers the new entries.
  append(map(2, 20));
  crash();
  open();
  EXPECT_EQ(log->mappings(), model);
}

TEST_F(RingTest, CorruptHeaderIsIgnored) {
  open();
  append(map(1, 10));
  crash();
  auto img = read_ring();
  img[offsetof(RingHeaderDisk, slot_count)] ^= std::byte{0x01};  // crc no longer holds
  write_ring(img);
  open();
  EXPECT_TRUE(log->mappings().empty());
}

TEST_F(RingTest, CommittedEntriesAreNotTakenBack) {
  open();
  append(map(1, 10));
  append(map(2, 20));
  ASSERT_TRUE(log->commit().is_ok());
  EXPECT_EQ(log->stats().ring_pending, 0u);
  crash();
  open();
  EXPECT_EQ(log->stats().ring_recovered, 0u);
  EXPECT_EQ(log->mappings(), model);
}

TEST_F(RingTest, ReplayingAlreadyCommittedEntriesIsHarmless) {
  open();
  append(map(1, 10));
  append(map(2, 20));
  append(Entry::unmap(CacheBlock(1)));
  append(map(1, 11));
  ASSERT_TRUE(log->commit().is_ok());
  // The process died after the commit but before it moved the mark.
  auto img = read_ring();
  crash();  // nothing pending: the file is gone; put it back, mark at 0
  std::memset(img.data() + offsetof(RingHeaderDisk, committed), 0, 8);
  int fd = ::open(ring_file().c_str(), O_CREAT | O_WRONLY, 0600);
  ASSERT_GE(fd, 0);
  ::close(fd);
  write_ring(img);
  open();
  EXPECT_EQ(log->stats().ring_recovered, 4u);
  EXPECT_EQ(log->mappings(), model);
  ASSERT_TRUE(log->commit().is_ok());
  auto rec = recover_log(*dev);
  ASSERT_TRUE(rec.is_ok());
  EXPECT_EQ(rec->state.mappings(), model);
}

TEST_F(RingTest, FullRingGrowsAndLosesNothing) {
  open(8);
  for (uint32_t i = 0; i < 30; ++i) append(map(i % geo.cache_blocks, 100 + i));
  LogStats st = log->stats();
  EXPECT_GE(st.ring_grows, 1u);
  EXPECT_GE(st.ring_slots, 30u);
  EXPECT_EQ(st.ring_pending, 30u);
  crash();
  open(8);
  EXPECT_EQ(log->mappings(), model);
  EXPECT_EQ(log->stats().ring_recovered, 30u);
}

TEST_F(RingTest, SlotsAreReusedOnlyAfterACommit) {
  open(8);
  for (int round = 0; round < 10; ++round) {
    for (uint32_t i = 0; i < 6; ++i) append(map(i, round * 10 + i));
    ASSERT_TRUE(log->commit().is_ok());
  }
  append(map(9, 999));
  EXPECT_EQ(log->stats().ring_grows, 0u);  // 6 per commit fit in 8 slots
  EXPECT_EQ(log->stats().ring_slots, 8u);
  crash();
  open(8);
  EXPECT_EQ(log->stats().ring_recovered, 1u);
  EXPECT_EQ(log->mappings(), model);
}

TEST_F(RingTest, HalfFullRingAsksForACommitOncePerCommit) {
  open(16);
  int asked = 0;
  log->set_commit_wanted([&] { ++asked; });
  for (uint32_t i = 0; i < 7; ++i) append(map(i, i));
  EXPECT_EQ(asked, 0);
  append(map(7, 7));
  EXPECT_EQ(asked, 1);
  for (uint32_t i = 8; i < 12; ++i) append(map(i, i));
  EXPECT_EQ(asked, 1);
  ASSERT_TRUE(log->commit().is_ok());
  for (uint32_t i = 0; i < 8; ++i) append(map(i, i + 50));
  EXPECT_EQ(asked, 2);
  EXPECT_EQ(log->stats().ring_commit_requests, 2u);
}

TEST_F(RingTest, CleanCloseRemovesTheRingFile) {
  open();
  append(map(1, 10));
  EXPECT_TRUE(std::filesystem::exists(ring_file()));
  ASSERT_TRUE(log->close().is_ok());
  log.reset();
  EXPECT_FALSE(std::filesystem::exists(ring_file()));
}

TEST_F(RingTest, DirectoryNotOnTmpfsIsRefused) {
  // The test runs in the build tree, on a disk.
  const std::string disk = std::filesystem::current_path().string();
  struct statfs fs {};
  ASSERT_EQ(::statfs(disk.c_str(), &fs), 0);
  if (fs.f_type == TMPFS_MAGIC) GTEST_SKIP() << "the build tree is on tmpfs";
  LogOptions o = options();
  o.ring_options.dir = disk;
  auto r = MetadataLog::open(*dev, o);
  ASSERT_FALSE(r.is_ok());
  EXPECT_EQ(r.status().err(), ENOTSUP);
}

TEST_F(RingTest, MemoryDeviceHasNoRingByDefault) {
  auto r = MetadataLog::open(*dev);
  ASSERT_TRUE(r.is_ok());
  EXPECT_EQ((*r)->ring_path(), "");
  EXPECT_EQ((*r)->stats().ring_slots, 0u);
}

// Defect: stats() used to read the commit thread's state without a lock.
// Here the control side reads while commits run; ThreadSanitizer checks it.
TEST_F(RingTest, StatsCanBeReadWhileCommitsRun) {
  open();
  std::atomic<bool> stop{false};
  std::atomic<uint64_t> reads{0};
  std::thread reader([&] {
    uint64_t last = 0;
    while (!stop.load()) {
      LogStats st = log->stats();
      EXPECT_GE(st.commits, last);  // never goes back
      last = st.commits;
      reads.fetch_add(1);
    }
  });
  std::mt19937_64 rng(9);
  for (int i = 0; i < 300; ++i) {
    append(testing::random_entry(rng, model, geo.cache_blocks, sb.sub_blocks()));
    ASSERT_TRUE(log->commit().is_ok());
  }
  while (reads.load() == 0) std::this_thread::yield();
  stop.store(true);
  reader.join();
  LogStats st = log->stats();
  EXPECT_EQ(st.commits, 300u);
  EXPECT_EQ(st.entries_committed, 300u);
  EXPECT_EQ(st.mappings, model.size());
}

}  // namespace
}  // namespace rbdcache::metalog
