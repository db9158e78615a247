// BlockLocks: ordering of operations on one origin block.
#include "cache/block_locks.h"

#include <gtest/gtest.h>

#include <atomic>
#include <future>
#include <thread>
#include <vector>

#include "../unit/io_test_util.h"

namespace rbdcache::cache {
namespace {

using rbdcache::testing::ReactorThread;

TEST(BlockLocks, UncontendedRangeIsGrantedSynchronously) {
  ReactorThread rt;
  BlockLocks locks;
  bool granted = false;
  locks.lock_range(rt.reactor(), OriginBlock(3), OriginBlock(5), [&] { granted = true; });
  EXPECT_TRUE(granted);
  EXPECT_EQ(locks.locked_count(), 3u);
  locks.unlock_range(OriginBlock(3), OriginBlock(5));
  EXPECT_EQ(locks.locked_count(), 0u);
}

TEST(BlockLocks, TryLockFailsOnAHeldBlockAndSucceedsAfterUnlock) {
  BlockLocks locks;
  EXPECT_TRUE(locks.try_lock(OriginBlock(7)));
  EXPECT_FALSE(locks.try_lock(OriginBlock(7)));
  EXPECT_TRUE(locks.try_lock(OriginBlock(8)));
  locks.unlock(OriginBlock(7));
  EXPECT_TRUE(locks.try_lock(OriginBlock(7)));
}

TEST(BlockLocks, WaiterRunsOnlyAfterHolderUnlocks) {
  ReactorThread rt;
  BlockLocks locks;
  ASSERT_TRUE(locks.try_lock(OriginBlock(1)));
  std::promise<std::thread::id> ran;
  auto f = ran.get_future();
  locks.lock_range(rt.reactor(), OriginBlock(0), OriginBlock(2),
                   [&] { ran.set_value(std::this_thread::get_id()); });
  EXPECT_EQ(f.wait_for(std::chrono::milliseconds(100)), std::future_status::timeout);
  // Block 0 is held by the waiter already; 2 is not yet reached.
  EXPECT_FALSE(locks.try_lock(OriginBlock(0)));
  locks.unlock(OriginBlock(1));
  ASSERT_EQ(f.wait_for(std::chrono::seconds(10)), std::future_status::ready);
  EXPECT_EQ(f.get(), rt.thread_id());  // resumed on the reactor it named
  EXPECT_EQ(locks.locked_count(), 3u);
}

TEST(BlockLocks, WaitersOnOneBlockAreGrantedInArrivalOrder) {
  ReactorThread rt;
  BlockLocks locks;
  ASSERT_TRUE(locks.try_lock(OriginBlock(9)));
  std::vector<int> order;
  std::mutex mu;
  std::promise<void> all;
  for (int i = 0; i < 5; ++i) {
    locks.lock_range(rt.reactor(), OriginBlock(9), OriginBlock(9), [&, i] {
      size_t n;
      {
        std::lock_guard<std::mutex> g(mu);
        order.push_back(i);
        n = order.size();
      }
      locks.unlock(OriginBlock(9));
      if (n == 5) all.set_value();  // last touch of the test's state
    });
  }
  locks.unlock(OriginBlock(9));
  ASSERT_EQ(all.get_future().wait_for(std::chrono::seconds(10)), std::future_status::ready);
  EXPECT_EQ(order, (std::vector<int>{0, 1, 2, 3, 4}));
}

TEST(BlockLocks, OverlappingRangesFromManyThreadsNeverDeadlockOrOverlap) {
  ReactorThread rt;
  BlockLocks locks;
  constexpr int kOps = 2000;
  std::atomic<int> inside[16] = {};
  std::atomic<int> done{0};
  std::atomic<bool> overlap{false};
  std::promise<void> finished;
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < kOps / 4; ++i) {
        uint64_t first = static_cast<uint64_t>((i * 7 + t * 3) % 14);
        uint64_t last = first + static_cast<uint64_t>((i + t) % 3);
        locks.lock_range(rt.reactor(), OriginBlock(first), OriginBlock(last), [&, first, last] {
          for (uint64_t b = first; b <= last; ++b) {
            if (inside[b].fetch_add(1) != 0) overlap = true;
          }
          for (uint64_t b = first; b <= last; ++b) inside[b].fetch_sub(1);
          locks.unlock_range(OriginBlock(first), OriginBlock(last));
          if (done.fetch_add(1) + 1 == kOps) finished.set_value();
        });
      }
    });
  }
  for (auto& th : threads) th.join();
  ASSERT_EQ(finished.get_future().wait_for(std::chrono::seconds(30)), std::future_status::ready);
  EXPECT_FALSE(overlap.load());
  EXPECT_EQ(locks.locked_count(), 0u);
}

}  // namespace
}  // namespace rbdcache::cache
