// Single crash cases of the cache engine, each deterministic: no timer
// commits, no background writeback unless asked, and a power cut that loses
// every write a device did not sync. The stack is in crash_stack.h, the
// fixture in crash_case_fixture.h; the cases about clean copies across a
// process crash are in engine_clean_copy_crash_test.cc.
#include <gtest/gtest.h>

#include <chrono>
#include <cstring>
#include <future>
#include <random>
#include <thread>

#include "crash_case_fixture.h"

namespace rbdcache::cache {
namespace {

using testing::Cut;
using testing::EngineCrashCaseTest;
using testing::FaultOrigin;
using testing::kBlockSize;
using testing::kOriginSize;
using testing::StackImages;

TEST_F(EngineCrashCaseTest, FuaWriteZeroesOverCachedDataSurvivesAPowerCut) {
  ASSERT_NO_FATAL_FAILURE(open());
  const uint64_t off = 4 * kBlockSize, len = 2 * kBlockSize;
  auto data = rbdcache::testing::pattern(len, 21);
  ASSERT_TRUE(write(*before_.engine, off, data, false).is_ok());
  ASSERT_TRUE(flush(*before_.engine).is_ok());  // the data and its mapping are durable
  ASSERT_TRUE(zero(*before_.engine, off, len, /*fua=*/true).is_ok());
  ASSERT_NO_FATAL_FAILURE(crash_and_recover());
  // FUA: the zeroes were durable when the request completed.
  EXPECT_TRUE(read(*after_.engine, off, len) == std::vector<std::byte>(len))
      << "the cache still serves the data the FUA write-zeroes replaced";
}

TEST_F(EngineCrashCaseTest, WriteCompletingDuringAFlushIsNotCommittedAheadOfItsData) {
  ASSERT_NO_FATAL_FAILURE(open());
  // A write into a fresh slot completes while the commit that a FLUSH
  // started is syncing the cache device: the sync does not cover it.
  const uint64_t off = 9 * kBlockSize;
  auto data = rbdcache::testing::pattern(kBlockSize, 22);
  Status during = Status::io_error("the write never ran");
  before_.cache->during_next_sync([&] { during = write(*before_.engine, off, data, false); });
  ASSERT_TRUE(flush(*before_.engine).is_ok());
  ASSERT_TRUE(during.is_ok()) << during.to_string();
  ASSERT_NO_FATAL_FAILURE(crash_and_recover());
  // The write was never flushed, so either its data or the old data may come
  // back; the slot's earlier contents may not.
  auto got = read(*after_.engine, off, kBlockSize);
  const bool old_data = std::equal(got.begin(), got.end(), initial_.begin() + off);
  EXPECT_TRUE(old_data || got == data)
      << "the recovered mapping names cache data that never reached the device";
}

TEST_F(EngineCrashCaseTest, WritebackMarksBlocksCleanOnlyAfterTheOriginFlush) {
  ASSERT_NO_FATAL_FAILURE(open());
  CacheEngine& e = *before_.engine;
  const uint64_t off = 3 * kBlockSize;
  auto data = rbdcache::testing::pattern(kBlockSize, 23);
  ASSERT_TRUE(write(e, off, data, false).is_ok());
  ASSERT_TRUE(flush(e).is_ok());  // dirty in the cache, durably
  ASSERT_EQ(e.stats().dirty_blocks, 1u);
  // The writeback's origin write completes; its origin flush does not.
  before_.origin->hold(FaultOrigin::Op::kFlush);
  e.request_full_writeback();
  ASSERT_TRUE(before_.origin->wait_for_held(1, std::chrono::seconds(10)))
      << "the writeback never flushed the origin";
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  EXPECT_EQ(e.stats().dirty_blocks, 1u) << "the block is clean before the origin flush completed";
  // A client FLUSH commits whatever the engine believes now.
  ASSERT_TRUE(flush(e).is_ok());
  ASSERT_NO_FATAL_FAILURE(crash_and_recover());
  // The origin lost the written-back data; the cache must still hold it as
  // dirty, so dropping clean blocks keeps it.
  ASSERT_NO_FATAL_FAILURE(drop_clean(*after_.engine));
  EXPECT_TRUE(read(*after_.engine, off, kBlockSize) == data)
      << "the block was committed clean before its origin flush completed";
}

TEST_F(EngineCrashCaseTest, FailedWritebackKeepsTheBlockDirtyAndItsData) {
  ASSERT_NO_FATAL_FAILURE(open());
  CacheEngine& e = *before_.engine;
  const uint64_t off = 4 * kBlockSize;
  auto data = rbdcache::testing::pattern(kBlockSize, 25);
  ASSERT_TRUE(write(e, off, data, false).is_ok());
  before_.origin->fail_next(FaultOrigin::Op::kWrite);
  e.request_full_writeback();
  for (int i = 0; i < 1000 && e.stats().writeback_errors == 0; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  ASSERT_GT(e.stats().writeback_errors, 0u) << "the injected origin write error was not seen";
  EXPECT_EQ(e.stats().dirty_blocks, 1u) << "a failed writeback cleaned the block";
  ASSERT_TRUE(flush(e).is_ok());
  ASSERT_NO_FATAL_FAILURE(crash_and_recover());
  ASSERT_NO_FATAL_FAILURE(drop_clean(*after_.engine));
  EXPECT_TRUE(read(*after_.engine, off, kBlockSize) == data);
}

// FLUSH covers every completed write, wherever the engine put it: writes
// that reached the origin must be flushed there before the reply.
class EngineCrashFlushTest : public EngineCrashCaseTest,
                             public ::testing::WithParamInterface<Mode> {};

TEST_P(EngineCrashFlushTest, FlushMakesEveryCompletedWriteDurableOnTheOrigin) {
  if (GetParam() == Mode::kWriteback) {
    // Only bypassed writes reach the origin: a long sequential stream.
    opts_.sequential_cutoff = 64u << 10;
  }
  ASSERT_NO_FATAL_FAILURE(open(GetParam()));
  CacheEngine& e = *before_.engine;
  const uint64_t off = 8 * kBlockSize, len = 16 * kBlockSize;
  auto data = rbdcache::testing::pattern(len, 24);
  for (uint64_t at = 0; at < len; at += kBlockSize) {
    ASSERT_TRUE(write(e, off + at, std::span(data).subspan(at, kBlockSize), false).is_ok());
  }
  if (GetParam() == Mode::kWriteback) {
    ASSERT_GT(e.stats().bypassed_bytes, 0u);
  }
  const uint64_t flushes = before_.origin->flushes();
  ASSERT_TRUE(flush(e).is_ok());
  EXPECT_GT(before_.origin->flushes(), flushes) << "FLUSH did not flush the origin";
  ASSERT_NO_FATAL_FAILURE(crash_and_recover());
  ASSERT_NO_FATAL_FAILURE(drop_clean(*after_.engine));
  EXPECT_TRUE(read(*after_.engine, off, len) == data)
      << "a write acknowledged before the FLUSH is lost after a power cut";
}

INSTANTIATE_TEST_SUITE_P(Modes, EngineCrashFlushTest,
                         ::testing::Values(Mode::kWriteback, Mode::kWritethrough,
                                           Mode::kPassthrough),
                         [](const ::testing::TestParamInfo<Mode>& i) {
                           return std::string(mode_name(i.param));
                         });

// A request that replaces flushed dirty data in the cache must not drop or
// clean it durably before the origin holds the replacement durably: a FUA
// write elsewhere commits the metadata, and the power is cut before any
// origin flush. Afterwards each sector holds the flushed data or the
// replacement, and keeps it when the clean blocks are dropped (as an
// eviction would).
enum class Replace { kWriteZeroes, kPassthroughPartialWrite, kWritethroughWrite };

class EngineCrashReplaceTest : public EngineCrashCaseTest,
                               public ::testing::WithParamInterface<Replace> {};

TEST_P(EngineCrashReplaceTest, ReplacingFlushedDirtyDataKeepsOneOfTheTwoAcrossAPowerCut) {
  ASSERT_NO_FATAL_FAILURE(open(Mode::kWriteback));
  CacheEngine& e = *before_.engine;
  const uint64_t off = 5 * kBlockSize;
  auto old_data = rbdcache::testing::pattern(kBlockSize, 31);
  ASSERT_TRUE(write(e, off, old_data, false).is_ok());
  ASSERT_TRUE(flush(e).is_ok());  // durable, dirty, in the cache only
  std::vector<std::byte> replaced = old_data;
  auto repl = rbdcache::testing::pattern(kBlockSize, 32);
  switch (GetParam()) {
    case Replace::kWriteZeroes:
      ASSERT_TRUE(zero(e, off, kBlockSize, false).is_ok());
      std::fill(replaced.begin(), replaced.end(), std::byte{0});
      break;
    case Replace::kPassthroughPartialWrite:
      // 1 KiB inside the first sub-block: the rest of it is old data.
      e.set_mode(Mode::kPassthrough);
      ASSERT_TRUE(write(e, off + 1024, std::span(repl).first(1024), false).is_ok());
      std::copy_n(repl.begin(), 1024, replaced.begin() + 1024);
      break;
    case Replace::kWritethroughWrite:
      e.set_mode(Mode::kWritethrough);
      ASSERT_TRUE(write(e, off, repl, false).is_ok());
      replaced = repl;
      break;
  }
  // Commits the metadata (FUA), without flushing the origin.
  auto other = rbdcache::testing::pattern(4096, 33);
  e.set_mode(Mode::kWriteback);
  ASSERT_TRUE(write(e, 20 * kBlockSize, other, /*fua=*/true).is_ok());
  ASSERT_NO_FATAL_FAILURE(crash_and_recover());
  auto first = read(*after_.engine, off, kBlockSize);
  ASSERT_NO_FATAL_FAILURE(drop_clean(*after_.engine));
  auto second = read(*after_.engine, off, kBlockSize);
  EXPECT_TRUE(first == second) << "the data changed when clean blocks were dropped";
  for (uint64_t s = 0; s < kBlockSize; s += 512) {
    const bool is_old = std::equal(second.begin() + s, second.begin() + s + 512, old_data.begin() + s);
    const bool is_new = std::equal(second.begin() + s, second.begin() + s + 512, replaced.begin() + s);
    const bool is_initial = std::equal(second.begin() + s, second.begin() + s + 512,
                                       initial_.begin() + off + s);
    ASSERT_TRUE(is_old || is_new) << "sector at byte " << s << " of the block holds "
                                  << (is_initial ? "the data from before the flushed write"
                                                 : "data from neither write");
  }
}

INSTANTIATE_TEST_SUITE_P(Requests, EngineCrashReplaceTest,
                         ::testing::Values(Replace::kWriteZeroes, Replace::kPassthroughPartialWrite,
                                           Replace::kWritethroughWrite),
                         [](const ::testing::TestParamInfo<Replace>& i) {
                           switch (i.param) {
                             case Replace::kWriteZeroes: return std::string("WriteZeroes");
                             case Replace::kPassthroughPartialWrite: return std::string("PassthroughPartialWrite");
                             case Replace::kWritethroughWrite: return std::string("WritethroughWrite");
                           }
                           return std::string("?");
                         });

// A block the cache holds as clean must read the same after it is dropped:
// an overwrite in place of a clean cached block that the power cut catches
// with its cache write on the medium but not its metadata (a state a real
// device may be left in) must not leave a clean block whose data the
// origin lacks.
class EngineCrashCleanTest : public EngineCrashCaseTest,
                             public ::testing::WithParamInterface<Mode> {};

TEST_P(EngineCrashCleanTest, CleanCachedDataMatchesTheOriginAfterAPowerCut) {
  ASSERT_NO_FATAL_FAILURE(open(Mode::kWriteback));
  CacheEngine& e = *before_.engine;
  const uint64_t off = 7 * kBlockSize;
  auto v1 = rbdcache::testing::pattern(kBlockSize, 51), v2 = rbdcache::testing::pattern(kBlockSize, 52);
  ASSERT_TRUE(write(e, off, v1, false).is_ok());
  ASSERT_TRUE(flush(e).is_ok());
  ASSERT_NO_FATAL_FAILURE(write_back_all(e));
  ASSERT_TRUE(flush(e).is_ok());  // v1: clean in the cache, durable on the origin
  e.set_mode(GetParam());
  ASSERT_TRUE(write(e, off, v2, false).is_ok());  // in place, not flushed
  before_.power->cut();
  std::mt19937_64 rng(1);
  StackImages after;
  after.meta = before_.meta_fault->crash_image(rng, metalog::testing::FaultInjectionDevice::Survival::kPrefix);
  after.cache = before_.cache->current_image();  // the overwrite reached the medium
  after.origin = before_.origin->synced_image();  // the origin's copy did not
  discard_engine(before_);
  ASSERT_TRUE(open_stack(after_, after, opts_).is_ok());
  auto first = read(*after_.engine, off, kBlockSize);
  EXPECT_TRUE(first == v1 || first == v2);
  ASSERT_NO_FATAL_FAILURE(drop_clean(*after_.engine));
  EXPECT_TRUE(read(*after_.engine, off, kBlockSize) == first)
      << "the block read back as " << (first == v2 ? "the unflushed write" : "the old data")
      << " while cached as clean, and as something else once dropped";
}

INSTANTIATE_TEST_SUITE_P(Modes, EngineCrashCleanTest,
                         ::testing::Values(Mode::kWriteback, Mode::kWritethrough),
                         [](const ::testing::TestParamInfo<Mode>& i) {
                           return std::string(mode_name(i.param));
                         });

// Issue 11 defect 1: FLUSH on one connection must not be answered while the
// origin flush that covers a bypassed write, started by a FLUSH on another
// connection, is still running.
TEST_F(EngineCrashCaseTest, ConcurrentFlushesEachCoverBypassedWrites) {
  opts_.sequential_cutoff = 64u << 10;
  ASSERT_NO_FATAL_FAILURE(open(Mode::kWriteback));
  CacheEngine& e = *before_.engine;
  const uint64_t off = 8 * kBlockSize, len = 16 * kBlockSize;
  auto data = rbdcache::testing::pattern(len, 41);
  for (uint64_t at = 0; at < len; at += kBlockSize) {
    ASSERT_TRUE(write(e, off + at, std::span(data).subspan(at, kBlockSize), false).is_ok());
  }
  ASSERT_GT(e.stats().bypassed_bytes, 0u) << "no write bypassed the cache";
  before_.origin->hold(FaultOrigin::Op::kFlush);
  auto a = std::make_shared<std::promise<Status>>(), b = std::make_shared<std::promise<Status>>();
  rt_.reactor().post([&e, this, a] { e.flush(rt_.reactor(), [a](Status st) { a->set_value(st); }); });
  ASSERT_TRUE(before_.origin->wait_for_held(1, std::chrono::seconds(10)))
      << "FLUSH did not flush the origin";
  rt2_.reactor().post([&e, this, b] { e.flush(rt2_.reactor(), [b](Status st) { b->set_value(st); }); });
  auto fa = a->get_future(), fb = b->get_future();
  const bool b_answered = fb.wait_for(std::chrono::seconds(1)) == std::future_status::ready;
  EXPECT_FALSE(b_answered && fb.get().is_ok())
      << "the second FLUSH was answered while the origin flush covering the bypassed writes "
         "was still running";
  // The consequence: a power cut now loses writes that FLUSH acknowledged.
  ASSERT_NO_FATAL_FAILURE(crash_and_recover());
  EXPECT_EQ(fa.wait_for(std::chrono::seconds(10)), std::future_status::ready);
  if (!b_answered) {
    EXPECT_EQ(fb.wait_for(std::chrono::seconds(10)), std::future_status::ready)
        << "the second FLUSH was never answered";
  }
  if (b_answered) {
    ASSERT_NO_FATAL_FAILURE(drop_clean(*after_.engine));
    EXPECT_FALSE(read(*after_.engine, off, len) == data) << "expected the loss to show";
  }
}

// Issue 11 defect 2: shutdown() returns only once the writeback in flight has
// finished: no origin operation may still be outstanding then.
TEST_F(EngineCrashCaseTest, ShutdownWaitsForWritebackInFlight) {
  ASSERT_NO_FATAL_FAILURE(open(Mode::kWriteback));
  CacheEngine& e = *before_.engine;
  auto data = rbdcache::testing::pattern(kBlockSize, 42);
  ASSERT_TRUE(write(e, 2 * kBlockSize, data, false).is_ok());
  before_.origin->hold(FaultOrigin::Op::kWrite);
  e.request_full_writeback();
  ASSERT_TRUE(before_.origin->wait_for_held(1, std::chrono::seconds(10)))
      << "the writeback never wrote the origin";
  auto in_flight_at_return = std::async(std::launch::async, [&] {
    e.shutdown().ignore_error();
    return before_.origin->in_flight();
  });
  if (in_flight_at_return.wait_for(std::chrono::milliseconds(300)) == std::future_status::ready) {
    const uint64_t n = in_flight_at_return.get();
    EXPECT_EQ(n, 0u) << "shutdown() returned with " << n << " origin operations in flight";
    // Their completions would run on the engine's stopped reactor.
    before_.origin->abandon_held();
    return;
  }
  before_.origin->hold(FaultOrigin::Op::kWrite, false);
  before_.origin->release_all();
  EXPECT_EQ(in_flight_at_return.get(), 0u) << "shutdown() returned with origin operations in flight";
}

// Issue 11 defect 8: when only the process dies, every device keeps what it
// was given, and no acknowledged write may be lost, flushed or not.
class EngineProcessCrashTest : public EngineCrashCaseTest,
                               public ::testing::WithParamInterface<Mode> {};

TEST_P(EngineProcessCrashTest, ProcessCrashLosesNoAcknowledgedWrite) {
  ASSERT_NO_FATAL_FAILURE(open(GetParam()));
  CacheEngine& e = *before_.engine;
  const uint64_t off = 6 * kBlockSize, len = 4 * kBlockSize;
  auto data = rbdcache::testing::pattern(len, 43);
  for (int pass = 0; pass < 2; ++pass) {  // the second pass hits cached blocks
    for (uint64_t at = 0; at < len; at += kBlockSize) {
      ASSERT_TRUE(write(e, off + at, std::span(data).subspan(at, kBlockSize), false).is_ok());
    }
  }
  ASSERT_NO_FATAL_FAILURE(crash_and_recover(Cut::kProcessCrash));
  EXPECT_TRUE(read(*after_.engine, off, len) == data)
      << "an acknowledged write is lost after a process crash";
}

INSTANTIATE_TEST_SUITE_P(Modes, EngineProcessCrashTest,
                         ::testing::Values(Mode::kWriteback, Mode::kWritethrough,
                                           Mode::kPassthrough),
                         [](const ::testing::TestParamInfo<Mode>& i) {
                           return std::string(mode_name(i.param));
                         });

// A write whose map entry cannot be recorded (the metadata log failed while
// the write was in flight) must not be acknowledged: the data sits in a
// slot that no surviving metadata names. Here the log fails after the cache
// write has reached the device and before the write finishes.
TEST_F(EngineCrashCaseTest, WriteInFlightWhenTheMetadataLogFailsIsNotAcknowledged) {
  ASSERT_NO_FATAL_FAILURE(open(Mode::kWriteback));
  CacheEngine& e = *before_.engine;
  const uint64_t off = 3 * kBlockSize;
  auto data = rbdcache::testing::pattern(kBlockSize, 71);
  std::promise<Status> replied;
  rt_.reactor().post([&] {
    e.write(rt_.reactor(), off, std::as_const(data), WriteFlags{false, true, false},
            [&](Status st) { replied.set_value(st); });
    // The cache write is done (its completion waits on this reactor): the
    // log fails now, as a commit that could not write would make it.
    Status st = before_.log->commit([] { return Status::io_error("injected metadata failure"); });
    EXPECT_FALSE(st.is_ok());
  });
  auto fut = replied.get_future();
  ASSERT_EQ(fut.wait_for(std::chrono::seconds(10)), std::future_status::ready);
  const Status st = fut.get();
  ASSERT_NO_FATAL_FAILURE(crash_and_recover(Cut::kProcessCrash));
  if (st.is_ok()) {
    EXPECT_TRUE(read(*after_.engine, off, kBlockSize) == data)
        << "a write acknowledged after the metadata log failed is lost after a process crash";
  }
  EXPECT_FALSE(st.is_ok()) << "a write whose map entry was never recorded was acknowledged";
}

}  // namespace
}  // namespace rbdcache::cache
