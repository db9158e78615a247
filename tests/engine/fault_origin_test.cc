// The fault-injecting origin itself: what survives a cut, held completions
// released out of order, and injected failures.
#include "fault_origin.h"

#include <gtest/gtest.h>

#include <future>
#include <mutex>
#include <random>
#include <thread>

#include "../unit/io_test_util.h"
#include "crash_stack.h"

namespace rbdcache::cache::testing {
namespace {

using rbdcache::testing::ReactorThread;

constexpr uint64_t kSize = 64u << 10;

class FaultOriginTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_TRUE(rt_.ok());
    initial_ = rbdcache::testing::pattern(kSize, 1);
    file_ = std::make_unique<OriginFile>(initial_);
    ASSERT_TRUE(file_->origin);
    origin_ = std::make_unique<FaultOrigin>(*file_->origin, initial_, power_);
  }

  Status write(uint64_t off, const std::vector<std::byte>& data, bool fua = false) {
    return rt_.call<Status>([&](std::function<void(Status)> done) {
      origin_->write(rt_.reactor(), off, data, WriteFlags{fua, true, false}, done);
    });
  }
  Status flush() {
    return rt_.call<Status>(
        [&](std::function<void(Status)> done) { origin_->flush(rt_.reactor(), done); });
  }
  // Waits (up to 5 s) until at most `n` operations are in flight. An
  // operation stops counting only once its completion has returned, which
  // is after its caller (here: call() on the test thread) has seen it.
  uint64_t wait_in_flight_at_most(uint64_t n) {
    for (int i = 0; i < 5000 && origin_->in_flight() > n; ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    return origin_->in_flight();
  }
  std::vector<std::byte> with(std::vector<std::byte> img, uint64_t off,
                              const std::vector<std::byte>& data) {
    std::copy(data.begin(), data.end(), img.begin() + static_cast<ptrdiff_t>(off));
    return img;
  }

  ReactorThread rt_;
  std::shared_ptr<PowerSwitch> power_ = std::make_shared<PowerSwitch>();
  std::vector<std::byte> initial_;
  std::unique_ptr<OriginFile> file_;
  std::unique_ptr<FaultOrigin> origin_;
};

TEST_F(FaultOriginTest, OnlyFlushedAndFuaWritesAreDurable) {
  auto a = rbdcache::testing::pattern(4096, 2), b = rbdcache::testing::pattern(4096, 3),
       c = rbdcache::testing::pattern(4096, 4);
  ASSERT_TRUE(write(0, a).is_ok());
  ASSERT_TRUE(flush().is_ok());
  ASSERT_TRUE(write(4096, b).is_ok());
  ASSERT_TRUE(write(8192, c, /*fua=*/true).is_ok());
  EXPECT_EQ(origin_->synced_image(), with(with(initial_, 0, a), 8192, c));
  EXPECT_EQ(origin_->current_image(), with(with(with(initial_, 0, a), 4096, b), 8192, c));
  // A power cut keeps b or not, nothing else.
  bool seen_with = false, seen_without = false;
  for (uint64_t seed = 0; seed < 32; ++seed) {
    std::mt19937_64 rng(seed);
    auto img = origin_->crash_image(rng);
    if (img == origin_->current_image()) {
      seen_with = true;
    } else {
      EXPECT_EQ(img, origin_->synced_image());
      seen_without = true;
    }
  }
  EXPECT_TRUE(seen_with && seen_without);
}

TEST_F(FaultOriginTest, AFlushCoversOnlyWritesCompletedBeforeIt) {
  origin_->hold(FaultOrigin::Op::kWrite);
  auto a = rbdcache::testing::pattern(4096, 5);
  std::promise<Status> wrote;
  rt_.reactor().post([&] {
    origin_->write(rt_.reactor(), 0, a, WriteFlags{}, [&](Status st) { wrote.set_value(st); });
  });
  ASSERT_TRUE(origin_->wait_for_held(1, std::chrono::seconds(10)));
  // The write is held: not completed, so the flush does not cover it.
  ASSERT_TRUE(flush().is_ok());
  EXPECT_EQ(origin_->synced_image(), initial_);
  // The flush stops counting; the held write still counts.
  EXPECT_EQ(wait_in_flight_at_most(1), 1u);
  origin_->release_all();
  EXPECT_TRUE(wrote.get_future().get().is_ok());
  EXPECT_EQ(wait_in_flight_at_most(0), 0u);
  EXPECT_EQ(origin_->synced_image(), initial_);
  ASSERT_TRUE(flush().is_ok());
  EXPECT_EQ(origin_->synced_image(), with(initial_, 0, a));
}

TEST_F(FaultOriginTest, HeldCompletionsAreReleasedInTheOrderChosen) {
  origin_->hold(FaultOrigin::Op::kWrite);
  std::vector<std::vector<std::byte>> data;
  for (int i = 0; i < 3; ++i) data.push_back(rbdcache::testing::pattern(4096, 10 + i));
  std::mutex mu;
  std::vector<int> order;
  std::promise<void> all;
  rt_.reactor().post([&] {
    for (int i = 0; i < 3; ++i) {
      origin_->write(rt_.reactor(), uint64_t(i) * 4096, data[i], WriteFlags{}, [&, i](Status st) {
        EXPECT_TRUE(st.is_ok());
        bool last;
        {
          std::lock_guard<std::mutex> lock(mu);
          order.push_back(i);
          last = order.size() == 3;
        }
        if (last) all.set_value();  // the last use of the test's locals
      });
    }
  });
  ASSERT_TRUE(origin_->wait_for_held(3, std::chrono::seconds(10)));
  auto held = origin_->held();
  ASSERT_EQ(held.size(), 3u);
  for (int i : {2, 0, 1}) ASSERT_TRUE(origin_->release(held[i].id));
  all.get_future().get();
  EXPECT_EQ(order, (std::vector<int>{2, 0, 1}));
}

TEST_F(FaultOriginTest, ChosenOperationsFailWithEioAndChangeNothing) {
  auto a = rbdcache::testing::pattern(4096, 6);
  origin_->fail_next(FaultOrigin::Op::kWrite);
  EXPECT_EQ(write(0, a).err(), EIO);
  EXPECT_EQ(origin_->current_image(), initial_);
  EXPECT_TRUE(write(0, a).is_ok());
  origin_->set_fault([](const FaultOrigin::OpInfo& i) { return i.op == FaultOrigin::Op::kFlush; });
  EXPECT_EQ(flush().err(), EIO);
  EXPECT_EQ(origin_->synced_image(), initial_);
  origin_->set_fault(nullptr);
  EXPECT_TRUE(flush().is_ok());
  EXPECT_EQ(origin_->synced_image(), with(initial_, 0, a));
}

TEST_F(FaultOriginTest, AfterAPowerCutEveryOperationFails) {
  auto a = rbdcache::testing::pattern(4096, 7);
  ASSERT_TRUE(write(0, a).is_ok());
  power_->cut();
  EXPECT_FALSE(write(4096, a).is_ok());
  EXPECT_FALSE(flush().is_ok());
  EXPECT_EQ(origin_->current_image(), with(initial_, 0, a));
  EXPECT_EQ(origin_->synced_image(), initial_);
}

}  // namespace
}  // namespace rbdcache::cache::testing
