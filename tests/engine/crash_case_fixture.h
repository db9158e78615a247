// The fixture of the engine's single crash cases (engine_crash_case_test.cc,
// engine_clean_copy_crash_test.cc): the crash stack of crash_stack.h over
// small images, with no timer commits and no background writeback unless a
// test asks, and helpers that run engine calls on a reactor thread and wait.
// Every helper is called from the test's thread.
#pragma once

#include <gtest/gtest.h>

#include <chrono>
#include <functional>
#include <random>
#include <span>
#include <thread>
#include <vector>

#include "../unit/io_test_util.h"
#include "cache/engine.h"
#include "crash_stack.h"
#include "util/aligned_buffer.h"
#include "util/log.h"

namespace rbdcache::cache::testing {

using rbdcache::testing::ReactorThread;

inline constexpr uint32_t kBlockSize = 16u << 10;
inline constexpr uint64_t kOriginSize = 2u << 20;

class EngineCrashCaseTest : public ::testing::Test {
 protected:
  void SetUp() override {
    log::set_level(log::Level::kError);
    ASSERT_TRUE(rt_.ok());
    testing::CacheGeometry g;
    g.block_size = kBlockSize;
    ASSERT_NO_FATAL_FAILURE(testing::format_images(g, images_));
    images_.origin = rbdcache::testing::pattern(kOriginSize, 7);
    initial_ = images_.origin;
    opts_.commit_interval = std::chrono::hours(1);
    opts_.max_dirty_age = std::chrono::hours(1);
    opts_.dirty_high_watermark = 2.0;
  }
  void TearDown() override { log::set_level(log::Level::kInfo); }

  void open(Mode mode = Mode::kWriteback) {
    opts_.mode = mode;
    Status st = open_stack(before_, images_, opts_);
    ASSERT_TRUE(st.is_ok()) << st.to_string();
  }

  Status write(CacheEngine& e, uint64_t off, std::span<const std::byte> data, bool fua) {
    return rt_.call<Status>([&](std::function<void(Status)> done) {
      e.write(rt_.reactor(), off, data, WriteFlags{fua, true, false}, done);
    });
  }
  Status zero(CacheEngine& e, uint64_t off, uint64_t len, bool fua) {
    return rt_.call<Status>([&](std::function<void(Status)> done) {
      e.write_zeroes(rt_.reactor(), off, len, WriteFlags{fua, true, false}, done);
    });
  }
  Status flush(CacheEngine& e) {
    return rt_.call<Status>(
        [&](std::function<void(Status)> done) { e.flush(rt_.reactor(), done); });
  }
  // Writes every dirty block back and waits until none is left: the data is
  // then clean in the cache and on the origin, which a FLUSH makes durable.
  void write_back_all(CacheEngine& e) {
    e.request_full_writeback();
    for (int i = 0; i < 1000 && e.stats().dirty_blocks > 0; ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    ASSERT_EQ(e.stats().dirty_blocks, 0u) << "the writeback did not finish";
  }
  std::vector<std::byte> read(CacheEngine& e, uint64_t off, uint64_t len) {
    AlignedBuffer buf(len);
    Status st = rt_.call<Status>(
        [&](std::function<void(Status)> done) { e.read(rt_.reactor(), off, buf.span(), done); });
    EXPECT_TRUE(st.is_ok()) << st.to_string();
    return std::vector<std::byte>(buf.data(), buf.data() + len);
  }

  // Cuts the power, keeps only what was synced (or, for a process crash,
  // everything every device completed), and opens the stack again.
  void crash_and_recover(Cut how = Cut::kSyncedOnly) {
    std::mt19937_64 rng(1);
    StackImages after = crash_images(before_, how, rng);
    discard_engine(before_);
    Status st = open_stack(after_, after, opts_);
    ASSERT_TRUE(st.is_ok()) << "recovery: " << st.to_string();
  }

  // Drops every clean cached block, so that reads show what the origin holds.
  void drop_clean(CacheEngine& e) {
    auto r = e.invalidate(std::nullopt, /*discard_dirty=*/false);
    ASSERT_TRUE(r.is_ok()) << r.status().to_string();
  }

  ReactorThread rt_;
  ReactorThread rt2_;  // a second connection
  StackImages images_;
  std::vector<std::byte> initial_;
  EngineOptions opts_;
  Stack before_, after_;
};

}  // namespace rbdcache::cache::testing
