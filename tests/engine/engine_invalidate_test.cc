// invalidate --discard-dirty against a writeback in flight.
//
// Writeback releases a block's block lock once it has copied the dirty data
// out, and keeps only the block's origin lock while it writes that data to
// the origin and flushes it. An invalidation that discards the dirty data
// meanwhile unmaps the block, so the next write to it may bypass the cache
// and go straight to the origin. Were that write issued while the writeback
// of the old data is still in flight, the two origin writes would overlap
// and the old data could land last. So a discarding invalidation waits for
// the block's origin lock (it returns only once the writeback settled), and
// a bypass write takes the block's origin lock as well.
//
// The fault origin holds the writeback's origin write (or its flush) in
// flight, so every case is deterministic: no timer commits, no background
// writeback unless asked. Its images order the writes by completion, as an
// origin may apply two overlapping writes in flight in either order.
#include <gtest/gtest.h>

#include <chrono>
#include <future>
#include <ostream>
#include <random>
#include <thread>

#include "../unit/io_test_util.h"
#include "cache/engine.h"
#include "crash_stack.h"
#include "util/aligned_buffer.h"
#include "util/log.h"

namespace rbdcache::cache::testing {
// gtest prints a parameter with this (found by argument-dependent lookup).
void PrintTo(FaultOrigin::Op op, std::ostream* os) { *os << op_name(op); }
}  // namespace rbdcache::cache::testing

namespace rbdcache::cache {
namespace {

using namespace std::chrono_literals;
using rbdcache::testing::ReactorThread;
using testing::FaultOrigin;
using testing::open_stack;
using testing::Stack;
using testing::StackImages;

constexpr uint32_t kBlockSize = 16u << 10;
constexpr uint64_t kOriginSize = 1u << 20;
constexpr uint64_t kBlockOff = 5 * kBlockSize;  // the block every case uses
// How long a case waits to see that a call does NOT return. Only a defect
// makes it return, so a slow machine can hide a defect but never fail a
// correct engine.
constexpr auto kNotYet = 300ms;

class EngineInvalidateTest : public ::testing::Test {
 protected:
  void SetUp() override {
    log::set_level(log::Level::kError);
    ASSERT_TRUE(rt_.ok());
    testing::CacheGeometry g;
    g.block_size = kBlockSize;
    ASSERT_NO_FATAL_FAILURE(testing::format_images(g, images_));
    images_.origin = rbdcache::testing::pattern(kOriginSize, 3);
    opts_.commit_interval = std::chrono::hours(1);
    opts_.max_dirty_age = std::chrono::hours(1);
    opts_.dirty_high_watermark = 2.0;
    // A write that covers a whole block continues the stream its block's
    // first write started and reaches the cutoff: if the block is not
    // cached, it bypasses the cache. A single sub-block write does not.
    opts_.sequential_cutoff = kBlockSize;
    Status st = open_stack(s_, images_, opts_);
    ASSERT_TRUE(st.is_ok()) << st.to_string();
  }
  void TearDown() override {
    testing::discard_engine(s_);  // releases whatever a failed case left held
    log::set_level(log::Level::kInfo);
  }

  CacheEngine& engine() { return *s_.engine; }
  FaultOrigin& origin() { return *s_.origin; }

  Status write(uint64_t off, std::span<const std::byte> data) {
    return rt_.call<Status>([&](std::function<void(Status)> done) {
      engine().write(rt_.reactor(), off, data, WriteFlags{false, true, false}, done);
    });
  }
  Status flush() {
    return rt_.call<Status>(
        [&](std::function<void(Status)> done) { engine().flush(rt_.reactor(), done); });
  }
  std::vector<std::byte> read(uint64_t off, uint64_t len) {
    AlignedBuffer buf(len);
    Status st = rt_.call<Status>([&](std::function<void(Status)> done) {
      engine().read(rt_.reactor(), off, buf.span(), done);
    });
    EXPECT_TRUE(st.is_ok()) << st.to_string();
    return std::vector<std::byte>(buf.data(), buf.data() + len);
  }
  std::future<Result<InvalidateResult>> invalidate_block_async() {
    return std::async(std::launch::async, [this] {
      return engine().invalidate(std::vector<ByteExtent>{{kBlockOff, kBlockSize}},
                                 /*discard_dirty=*/true);
    });
  }
  static std::vector<std::byte> block_of(const std::vector<std::byte>& image) {
    return std::vector<std::byte>(image.begin() + kBlockOff,
                                  image.begin() + kBlockOff + kBlockSize);
  }
  bool wait_idle() {
    for (int i = 0; i < 2000 && origin().in_flight() > 0; ++i) std::this_thread::sleep_for(5ms);
    return origin().in_flight() == 0;
  }

  // Writes `old_sub` (one sub-block) into the cache, dirty, and starts its
  // writeback with the completions of origin operation `held` held; returns
  // once the writeback's `held` operation is in flight.
  void start_held_writeback(const std::vector<std::byte>& old_sub, FaultOrigin::Op held) {
    ASSERT_TRUE(write(kBlockOff, old_sub).is_ok());
    ASSERT_EQ(engine().stats().dirty_blocks, 1u);
    ASSERT_EQ(origin().issued(FaultOrigin::Op::kWrite), 0u) << "the write did not stay cached";
    origin().hold(held);
    engine().request_full_writeback();
    ASSERT_TRUE(origin().wait_for_held(1, 10s)) << "the writeback never reached the origin";
    // Only the writeback's operation is held; everything after completes.
    origin().hold(held, false);
    const auto h = origin().held();
    ASSERT_EQ(h.size(), 1u);
    if (held == FaultOrigin::Op::kWrite) {
      ASSERT_EQ(h[0].offset, kBlockOff);
      ASSERT_EQ(h[0].length, old_sub.size());
    }
  }
  void release_held() {
    for (const auto& h : origin().held()) ASSERT_TRUE(origin().release(h.id));
  }

  ReactorThread rt_;
  StackImages images_;
  EngineOptions opts_;
  Stack s_;
};

// Issue 11 defect 6, as found: the discarding invalidation returned at once, the
// block was no longer cached, a new write to it bypassed the cache, and the
// writeback of the old data, still in flight, could land after it.
TEST_F(EngineInvalidateTest, BypassWriteAfterDiscardingInvalidateIsNotOvertakenByOldWriteback) {
  const auto old_sub = rbdcache::testing::pattern(kSubBlockSize, 61);
  const auto new_block = rbdcache::testing::pattern(kBlockSize, 62);
  ASSERT_NO_FATAL_FAILURE(start_held_writeback(old_sub, FaultOrigin::Op::kWrite));

  auto inv = invalidate_block_async();
  std::future<Status> bypass;
  if (inv.wait_for(kNotYet) == std::future_status::ready) {
    // The invalidation did not wait for the writeback (the other case says
    // so): the new write now runs alongside the old data's origin write.
    ADD_FAILURE() << "invalidate --discard-dirty returned with the writeback in flight";
    bypass = std::async(std::launch::async, [&] { return write(kBlockOff, new_block); });
    bypass.wait_for(kNotYet);  // let it reach the origin if nothing stops it
  }
  ASSERT_NO_FATAL_FAILURE(release_held());
  auto r = inv.get();
  ASSERT_TRUE(r.is_ok()) << r.status().to_string();
  if (!bypass.valid()) {
    bypass = std::async(std::launch::async, [&] { return write(kBlockOff, new_block); });
  }
  ASSERT_TRUE(bypass.get().is_ok());
  // The writeback's write, then the new one: it went straight to the origin.
  ASSERT_EQ(origin().issued(FaultOrigin::Op::kWrite), 2u)
      << "the new write did not bypass the cache: the case tests nothing";
  EXPECT_EQ(engine().stats().bypassed_bytes, kBlockSize);  // counted once
  ASSERT_TRUE(flush().is_ok());
  ASSERT_TRUE(wait_idle());

  EXPECT_TRUE(block_of(origin().current_image()) == new_block)
      << "the origin ends with the old data: the writeback overtook the later write";
  EXPECT_TRUE(block_of(origin().synced_image()) == new_block)
      << "after FLUSH the origin durably holds the old data";
  EXPECT_TRUE(read(kBlockOff, kBlockSize) == new_block);
  EXPECT_EQ(engine().stats().dirty_blocks, 0u);
}

// What the fix implies: a discarding invalidation returns only once no
// writeback of the discarded data is in flight, neither its origin write nor
// the origin flush that makes it durable.
class EngineInvalidateWaitTest : public EngineInvalidateTest,
                                 public ::testing::WithParamInterface<FaultOrigin::Op> {};

TEST_P(EngineInvalidateWaitTest, DiscardingInvalidateWaitsForTheWritebackInFlight) {
  const auto old_sub = rbdcache::testing::pattern(kSubBlockSize, 63);
  ASSERT_NO_FATAL_FAILURE(start_held_writeback(old_sub, GetParam()));

  auto inv = invalidate_block_async();
  EXPECT_FALSE(inv.wait_for(kNotYet) == std::future_status::ready)
      << "invalidate --discard-dirty returned while the writeback's origin "
      << op_name(GetParam()) << " was in flight";
  ASSERT_NO_FATAL_FAILURE(release_held());
  ASSERT_EQ(inv.wait_for(10s), std::future_status::ready)
      << "invalidate did not return once the writeback settled";
  auto r = inv.get();
  ASSERT_TRUE(r.is_ok()) << r.status().to_string();
  EXPECT_EQ(r->blocks, 1u);
  ASSERT_TRUE(wait_idle());

  // Nothing is cached for the block any more, and nothing is dirty.
  const auto st = engine().stats();
  EXPECT_EQ(st.dirty_blocks, 0u);
  EXPECT_EQ(st.mapped_blocks, 0u);
  // The writeback finished as it began: the origin holds the data it wrote,
  // and reads through the engine see the origin.
  auto expect = block_of(images_.origin);
  std::copy(old_sub.begin(), old_sub.end(), expect.begin());
  EXPECT_TRUE(block_of(origin().current_image()) == expect);
  EXPECT_TRUE(read(kBlockOff, kBlockSize) == expect);
}

INSTANTIATE_TEST_SUITE_P(HeldOriginOp, EngineInvalidateWaitTest,
                         ::testing::Values(FaultOrigin::Op::kWrite, FaultOrigin::Op::kFlush),
                         [](const auto& p) { return std::string(op_name(p.param)); });

// Without discarding, an invalidation leaves dirty data alone, so it need
// not wait for the writeback: it returns at once and the data stays cached.
TEST_F(EngineInvalidateTest, KeepingInvalidateDoesNotWaitForTheWritebackInFlight) {
  const auto old_sub = rbdcache::testing::pattern(kSubBlockSize, 64);
  ASSERT_NO_FATAL_FAILURE(start_held_writeback(old_sub, FaultOrigin::Op::kWrite));
  auto inv = std::async(std::launch::async, [this] {
    return engine().invalidate(std::vector<ByteExtent>{{kBlockOff, kBlockSize}},
                               /*discard_dirty=*/false);
  });
  const bool returned = inv.wait_for(10s) == std::future_status::ready;
  ASSERT_NO_FATAL_FAILURE(release_held());
  ASSERT_TRUE(returned) << "invalidate without --discard-dirty waited for the writeback";
  auto r = inv.get();
  ASSERT_TRUE(r.is_ok()) << r.status().to_string();
  EXPECT_EQ(r->dirty_kept_bytes, kSubBlockSize);
  EXPECT_EQ(r->dirty_bytes, 0u);
  ASSERT_TRUE(wait_idle());
  auto got = read(kBlockOff, kSubBlockSize);
  EXPECT_TRUE(got == old_sub);
}

}  // namespace
}  // namespace rbdcache::cache
