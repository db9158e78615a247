// The engine's clean cached copies across a process crash: a clean copy
// survives it (crash-consistency rule 14), so it must never differ from the
// origin, whatever write was in flight over it and whatever failed. The
// fixture is in crash_case_fixture.h.
#include <gtest/gtest.h>

#include <chrono>
#include <future>
#include <string>

#include "crash_case_fixture.h"

namespace rbdcache::cache {
namespace {

using testing::Cut;
using testing::EngineCrashCaseTest;
using testing::FaultOrigin;
using testing::kBlockSize;

// A process crash keeps clean cached data (crash-consistency rule 14), so
// a clean copy must never differ from the origin, not even while a write
// that changes the origin under it is in flight: the write stops it being
// valid before the origin is touched. Here the origin write reaches the
// origin but the process dies before it completes.
enum class Overwrite { kPassthroughWrite, kWritethroughWrite, kWriteZeroes, kWritebackWrite, kTrim };
std::string overwrite_name(const ::testing::TestParamInfo<Overwrite>& i) {
  switch (i.param) {
    case Overwrite::kPassthroughWrite: return "passthrough";
    case Overwrite::kWritethroughWrite: return "writethrough";
    case Overwrite::kWriteZeroes: return "write_zeroes";
    case Overwrite::kWritebackWrite: return "writeback";
    case Overwrite::kTrim: return "trim";
  }
  return "?";
}

class EngineOverwriteCrashTest : public EngineCrashCaseTest,
                                 public ::testing::WithParamInterface<Overwrite> {};

TEST_P(EngineOverwriteCrashTest, CleanCopyNeverDiffersFromTheOriginAfterAProcessCrash) {
  ASSERT_NO_FATAL_FAILURE(open(Mode::kWriteback));
  CacheEngine& e = *before_.engine;
  const uint64_t off = 5 * kBlockSize;
  auto v1 = rbdcache::testing::pattern(kBlockSize, 61), v2 = rbdcache::testing::pattern(kBlockSize, 62);
  ASSERT_TRUE(write(e, off, v1, false).is_ok());
  ASSERT_NO_FATAL_FAILURE(write_back_all(e));
  ASSERT_TRUE(flush(e).is_ok());  // v1: clean in the cache and on the origin
  ASSERT_GT(e.stats().used_bytes, 0u);
  const Overwrite how = GetParam();
  e.set_mode(how == Overwrite::kWritethroughWrite ? Mode::kWritethrough : Mode::kPassthrough);
  if (how == Overwrite::kWriteZeroes) v2.assign(kBlockSize, std::byte{0});
  before_.origin->hold(how == Overwrite::kWriteZeroes ? FaultOrigin::Op::kWriteZeroes
                                                      : FaultOrigin::Op::kWrite);
  rt_.reactor().post([&e, this, how, off, &v2] {
    auto done = [](Status) {};
    if (how == Overwrite::kWriteZeroes) {
      e.write_zeroes(rt_.reactor(), off, kBlockSize, WriteFlags{false, true, false}, done);
    } else {
      e.write(rt_.reactor(), off, std::as_const(v2), WriteFlags{false, true, false}, done);
    }
  });
  ASSERT_TRUE(before_.origin->wait_for_held(1, std::chrono::seconds(10)))
      << "the write never reached the origin";
  ASSERT_NO_FATAL_FAILURE(crash_and_recover(Cut::kProcessCrash));
  auto first = read(*after_.engine, off, kBlockSize);
  EXPECT_TRUE(first == v1 || first == v2) << "the block holds neither the old nor the new data";
  ASSERT_NO_FATAL_FAILURE(drop_clean(*after_.engine));
  EXPECT_TRUE(read(*after_.engine, off, kBlockSize) == first)
      << "the block read back as " << (first == v2 ? "the new data" : "the old data")
      << " while cached as clean, and as something else once dropped";
}

INSTANTIATE_TEST_SUITE_P(Writes, EngineOverwriteCrashTest,
                         ::testing::Values(Overwrite::kPassthroughWrite,
                                           Overwrite::kWritethroughWrite, Overwrite::kWriteZeroes),
                         overwrite_name);

// The same rule when the metadata log fails while such a write waits for its
// block: the entry that stops the clean copy being valid is then refused, so
// the write must touch neither the copy (writeback overwrites it in place)
// nor the origin under it. Here a read holds the block (its origin part is
// held) while the write queues behind it and the log fails.
class EngineOverwriteAfterMetadataFailureTest : public EngineOverwriteCrashTest {};

TEST_P(EngineOverwriteAfterMetadataFailureTest, CleanCopyStillMatchesTheOriginAfterAProcessCrash) {
  ASSERT_NO_FATAL_FAILURE(open(Mode::kWriteback));
  CacheEngine& e = *before_.engine;
  // One 4 KiB sub-block of the cache block is cached, clean.
  const uint64_t block = 6 * kBlockSize, sub = 4096;
  auto v1 = rbdcache::testing::pattern(sub, 81), v2 = rbdcache::testing::pattern(sub, 82);
  ASSERT_TRUE(write(e, block, v1, false).is_ok());
  ASSERT_NO_FATAL_FAILURE(write_back_all(e));
  ASSERT_TRUE(flush(e).is_ok());
  const Overwrite how = GetParam();
  switch (how) {
    case Overwrite::kWritethroughWrite: e.set_mode(Mode::kWritethrough); break;
    case Overwrite::kPassthroughWrite: e.set_mode(Mode::kPassthrough); break;
    default: break;
  }
  // A read of the whole block: the cached sub-block from the cache, the
  // rest from the origin, where it waits.
  before_.origin->hold(FaultOrigin::Op::kRead);
  AlignedBuffer whole(kBlockSize);
  std::promise<Status> read_done, write_done;
  rt_.reactor().post([&] {
    e.read(rt_.reactor(), block, whole.span(), [&](Status st) { read_done.set_value(st); });
  });
  ASSERT_TRUE(before_.origin->wait_for_held(1, std::chrono::seconds(10)))
      << "the read never reached the origin";
  rt_.reactor().post([&, how] {
    auto done = [&](Status st) { write_done.set_value(st); };
    const WriteFlags f{false, true, false};
    if (how == Overwrite::kWriteZeroes) {
      e.write_zeroes(rt_.reactor(), block, sub, f, done);
    } else if (how == Overwrite::kTrim) {
      e.discard(rt_.reactor(), block, sub, f, done);
    } else {
      e.write(rt_.reactor(), block, std::as_const(v2), f, done);
    }
    // The write waits for the block; the log fails meanwhile.
    Status st = before_.log->commit([] { return Status::io_error("injected metadata failure"); });
    EXPECT_FALSE(st.is_ok());
  });
  auto wf = write_done.get_future();
  EXPECT_EQ(wf.wait_for(std::chrono::milliseconds(200)), std::future_status::timeout)
      << "the write did not wait for the read holding its block";
  before_.origin->hold(FaultOrigin::Op::kRead, false);
  before_.origin->release_all();
  ASSERT_EQ(wf.wait_for(std::chrono::seconds(10)), std::future_status::ready);
  EXPECT_FALSE(wf.get().is_ok()) << "a write was acknowledged after the metadata log failed";
  EXPECT_TRUE(read_done.get_future().get().is_ok());

  ASSERT_NO_FATAL_FAILURE(crash_and_recover(Cut::kProcessCrash));
  auto first = read(*after_.engine, block, sub);
  ASSERT_NO_FATAL_FAILURE(drop_clean(*after_.engine));
  EXPECT_TRUE(read(*after_.engine, block, sub) == first)
      << "the sub-block read back as "
      << (first == v1 ? "the old data" : first == v2 ? "the new data" : "other data")
      << " while cached as clean, and as something else once dropped";
}

INSTANTIATE_TEST_SUITE_P(Writes, EngineOverwriteAfterMetadataFailureTest,
                         ::testing::Values(Overwrite::kWritebackWrite, Overwrite::kWritethroughWrite,
                                           Overwrite::kPassthroughWrite, Overwrite::kWriteZeroes,
                                           Overwrite::kTrim),
                         overwrite_name);

}  // namespace
}  // namespace rbdcache::cache
