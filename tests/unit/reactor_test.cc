// Tests for the io_uring reactor (io/reactor.h): cross-thread post(), whole
// transfers, timeouts and stopping.
#include "io/reactor.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <future>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "io_test_util.h"

namespace rbdcache::io {
namespace {

using namespace std::chrono_literals;

using testing::pattern;
using testing::ReactorThread;
using TempFile = testing::ScratchFile;

TEST(Reactor, CreateGivesIndex) {
  auto r = Reactor::create(8, 3);
  ASSERT_TRUE(r.is_ok()) << r.status().to_string();
  EXPECT_EQ(r.value()->index(), 3u);
  EXPECT_FALSE(r.value()->on_reactor_thread());
}

TEST(Reactor, PostFromAnotherThreadRunsOnReactorThread) {
  ReactorThread rt;
  ASSERT_TRUE(rt.ok());
  EXPECT_FALSE(rt.reactor().on_reactor_thread());
  std::promise<std::pair<std::thread::id, bool>> ran;
  std::thread poster([&] {
    rt.reactor().post([&] { ran.set_value({std::this_thread::get_id(), rt.reactor().on_reactor_thread()}); });
  });
  poster.join();
  auto f = ran.get_future();
  ASSERT_EQ(f.wait_for(10s), std::future_status::ready);
  auto [id, on_thread] = f.get();
  EXPECT_EQ(id, rt.thread_id());
  EXPECT_NE(id, std::this_thread::get_id());
  EXPECT_TRUE(on_thread);
}

// A posted closure may run, and its owner destroy the reactor, before post()
// has returned on the posting thread (the engine's model test met this). A
// post() that still used the reactor's eventfd after queueing the closure
// races its close: ThreadSanitizer reports it, and a write that comes late
// can land in whatever file took the eventfd's number (the pipe here).
TEST(Reactor, MayBeDestroyedAsSoonAsAClosurePostedFromAnotherThreadHasRun) {
  for (int i = 0; i < 200; ++i) {
    auto rt = std::make_unique<ReactorThread>();
    ASSERT_TRUE(rt->ok());
    Reactor& reactor = rt->reactor();
    std::promise<void> ran;
    auto ran_future = ran.get_future();
    std::jthread poster([&] { reactor.post([&] { ran.set_value(); }); });  // joined on any exit
    ASSERT_EQ(ran_future.wait_for(10s), std::future_status::ready);
    rt.reset();
    int fds[2];
    ASSERT_EQ(::pipe2(fds, O_NONBLOCK), 0);
    poster.join();
    char buf[8];
    EXPECT_EQ(::read(fds[0], buf, sizeof(buf)), -1) << "a late eventfd write reached the pipe";
    ::close(fds[0]);
    ::close(fds[1]);
  }
}

TEST(Reactor, PostsFromManyThreadsAllRunInOrderPerThread) {
  ReactorThread rt;
  ASSERT_TRUE(rt.ok());
  constexpr int kThreads = 4;
  constexpr int kPerThread = 2000;
  std::atomic<int> count{0};
  std::vector<int> last(kThreads, -1);  // touched only on the reactor thread
  std::atomic<bool> in_order{true};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < kPerThread; ++i) {
        rt.reactor().post([&, t, i] {
          if (last[static_cast<size_t>(t)] != i - 1) in_order = false;
          last[static_cast<size_t>(t)] = i;
          ++count;
        });
      }
    });
  }
  for (auto& th : threads) th.join();
  // A final post runs after every earlier one.
  EXPECT_EQ(rt.call<int>([&](auto done) { done(count.load()); }), kThreads * kPerThread);
  EXPECT_TRUE(in_order);
}

TEST(Reactor, WriteFullThenReadFullRoundTripsMoreThanOneMiB) {
  ReactorThread rt;
  ASSERT_TRUE(rt.ok());
  TempFile f;
  const size_t len = (3u << 20) + 123;
  const uint64_t offset = 4096 + 7;
  std::vector<std::byte> data = pattern(len, 1);
  EXPECT_EQ(rt.call<int>([&](auto done) { rt.reactor().write_full(f.fd(), data.data(), len, offset, 0, done); }),
            0);
  std::vector<std::byte> back(len);
  EXPECT_EQ(rt.call<int>([&](auto done) { rt.reactor().read_full(f.fd(), back.data(), len, offset, done); }),
            0);
  EXPECT_TRUE(back == data);
  // The data really reached the file.
  std::vector<std::byte> direct(len);
  ASSERT_EQ(::pread(f.fd(), direct.data(), len, static_cast<off_t>(offset)), static_cast<ssize_t>(len));
  EXPECT_TRUE(direct == data);
}

TEST(Reactor, ReadFullPastEndOfFileReportsEio) {
  ReactorThread rt;
  ASSERT_TRUE(rt.ok());
  TempFile f;
  std::vector<std::byte> data = pattern(1000, 2);
  ASSERT_EQ(::pwrite(f.fd(), data.data(), data.size(), 0), 1000);
  std::vector<std::byte> back(4096);
  EXPECT_EQ(rt.call<int>([&](auto done) { rt.reactor().read_full(f.fd(), back.data(), 4096, 0, done); }), -EIO);
}

TEST(Reactor, ZeroLengthTransfersCompleteAtOnce) {
  ReactorThread rt;
  ASSERT_TRUE(rt.ok());
  TempFile f;
  std::byte b{};
  EXPECT_EQ(rt.call<int>([&](auto done) { rt.reactor().read_full(f.fd(), &b, 0, 0, done); }), 0);
  EXPECT_EQ(rt.call<int>([&](auto done) { rt.reactor().write_full(f.fd(), &b, 0, 0, 0, done); }), 0);
}

TEST(Reactor, ErrorsArriveAsNegativeErrno) {
  ReactorThread rt;
  ASSERT_TRUE(rt.ok());
  std::byte b{};
  EXPECT_EQ(rt.call<int>([&](auto done) { rt.reactor().read(-1, &b, 1, 0, done); }), -EBADF);
  EXPECT_EQ(rt.call<int>([&](auto done) { rt.reactor().write_full(-1, &b, 1, 0, 0, done); }), -EBADF);
}

TEST(Reactor, FsyncAndFallocateComplete) {
  ReactorThread rt;
  ASSERT_TRUE(rt.ok());
  TempFile f;
  EXPECT_EQ(rt.call<int>([&](auto done) { rt.reactor().fallocate(f.fd(), 0, 0, 1 << 20, done); }), 0);
  struct stat st {};
  ASSERT_EQ(::fstat(f.fd(), &st), 0);
  EXPECT_EQ(st.st_size, 1 << 20);
  EXPECT_EQ(rt.call<int>([&](auto done) { rt.reactor().fsync(f.fd(), true, done); }), 0);
  EXPECT_EQ(rt.call<int>([&](auto done) { rt.reactor().fsync(f.fd(), false, done); }), 0);
}

TEST(Reactor, TimeoutFiresAfterItsDelay) {
  ReactorThread rt;
  ASSERT_TRUE(rt.ok());
  const auto start = std::chrono::steady_clock::now();
  int res = rt.call<int>([&](auto done) { rt.reactor().timeout(50'000'000, done); });
  const auto elapsed = std::chrono::steady_clock::now() - start;
  EXPECT_EQ(res, -ETIME);
  EXPECT_GE(elapsed, 45ms);
  EXPECT_LT(elapsed, 10s);
}

TEST(Reactor, StopReturnsFromRun) {
  auto r = Reactor::create(16, 0);
  ASSERT_TRUE(r.is_ok());
  Reactor& reactor = *r.value();
  std::promise<void> returned;
  std::thread t([&] {
    reactor.run();
    returned.set_value();
  });
  reactor.post([] {});
  reactor.stop();
  auto f = returned.get_future();
  ASSERT_EQ(f.wait_for(10s), std::future_status::ready) << "run() did not return after stop()";
  t.join();
  EXPECT_EQ(reactor.in_flight(), 1u);  // only the eventfd read remains armed
}

TEST(Reactor, StopBeforeRunMakesRunReturn) {
  auto r = Reactor::create(16, 0);
  ASSERT_TRUE(r.is_ok());
  Reactor& reactor = *r.value();
  reactor.stop();
  std::promise<void> returned;
  std::thread t([&] {
    reactor.run();
    returned.set_value();
  });
  auto f = returned.get_future();
  ASSERT_EQ(f.wait_for(10s), std::future_status::ready) << "run() did not return after stop()";
  t.join();
}

TEST(Reactor, RunFinishesInFlightOperationsAfterStop) {
  auto r = Reactor::create(16, 0);
  ASSERT_TRUE(r.is_ok());
  Reactor& reactor = *r.value();
  std::atomic<int> timeout_res{1};
  std::promise<void> armed;
  reactor.post([&] {
    reactor.timeout(100'000'000, [&](int res) { timeout_res = res; });
    armed.set_value();
  });
  std::thread t([&] { reactor.run(); });
  armed.get_future().wait();
  reactor.stop();
  t.join();
  // run() returned only after the pending timeout completed.
  EXPECT_EQ(timeout_res.load(), -ETIME);
}

TEST(Reactor, PostedClosuresQueuedBeforeStopStillRun) {
  auto r = Reactor::create(16, 0);
  ASSERT_TRUE(r.is_ok());
  Reactor& reactor = *r.value();
  std::atomic<int> ran{0};
  for (int i = 0; i < 100; ++i) reactor.post([&] { ++ran; });
  reactor.stop();
  std::thread t([&] { reactor.run(); });
  t.join();
  EXPECT_EQ(ran.load(), 100);
}

}  // namespace
}  // namespace rbdcache::io
