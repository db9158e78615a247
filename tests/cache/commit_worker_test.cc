// CommitWorker: group commits once per interval, at once on request, and
// at once when the log's intent ring passes half full.
#include <gtest/gtest.h>

#include <stdlib.h>

#include <chrono>
#include <filesystem>
#include <thread>

#include "../metalog/test_util.h"
#include "cache/commit_worker.h"
#include "metalog/writer.h"

namespace rbdcache::cache {
namespace {

using metalog::Entry;

class CommitWorkerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/dev/shm/rbdcache-commit-worker-test-XXXXXX";
    ASSERT_NE(::mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
    dev_ = std::make_unique<metalog::MemBlockDevice>(metalog::testing::formatted_image(geo_, &sb_));
    metalog::LogOptions o;
    o.ring = metalog::LogOptions::Ring::kOn;
    o.ring_options.dir = dir_;
    o.ring_options.slots = 16;
    auto r = metalog::MetadataLog::open(*dev_, o);
    ASSERT_TRUE(r.is_ok()) << r.status().to_string();
    log_ = std::move(*r);
  }
  void TearDown() override {
    worker_.reset();
    log_.reset();
    std::filesystem::remove_all(dir_);
  }
  void append(uint32_t c) {
    const auto all = SubBlockMask::first(sb_.sub_blocks());
    ASSERT_TRUE(log_->append(Entry::map(CacheBlock(c), OriginBlock(c), all, all)).is_ok());
  }
  // Waits up to 10 s for at least `n` commits.
  bool commits_reach(uint64_t n) {
    for (int i = 0; i < 1000 && worker_->commits() < n; ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    return worker_->commits() >= n;
  }

  std::string dir_;
  metalog::testing::Geometry geo_;
  metalog::Superblock sb_;
  std::unique_ptr<metalog::MemBlockDevice> dev_;
  std::unique_ptr<metalog::MetadataLog> log_;
  std::unique_ptr<CommitWorker> worker_;
};

TEST_F(CommitWorkerTest, AHalfFullRingCommitsBeforeTheInterval) {
  worker_ = std::make_unique<CommitWorker>(*log_, std::chrono::hours(1));
  for (uint32_t c = 0; c < 7; ++c) append(c);
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  EXPECT_EQ(worker_->commits(), 0u) << "committed with the ring less than half full";
  append(7);  // 8 of 16 slots
  ASSERT_TRUE(commits_reach(1)) << "the half-full ring's request did not start a commit";
  for (int i = 0; i < 100 && log_->stats().ring_pending != 0; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  EXPECT_EQ(log_->stats().ring_pending, 0u);
  EXPECT_EQ(log_->stats().ring_grows, 0u);
}

TEST_F(CommitWorkerTest, ARingThatKeepsFillingNeverHasToGrow) {
  worker_ = std::make_unique<CommitWorker>(*log_, std::chrono::hours(1));
  // Each burst fills the ring to half; the next one waits for its commit.
  for (uint32_t burst = 0; burst < 5; ++burst) {
    for (uint32_t c = 0; c < 8; ++c) append(burst * 8 + c);
    ASSERT_TRUE(commits_reach(burst + 1)) << "burst " << burst;
    for (int i = 0; i < 100 && log_->stats().ring_pending != 0; ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
  }
  EXPECT_EQ(log_->stats().ring_grows, 0u);
  EXPECT_GE(log_->stats().ring_commit_requests, 5u);
}

}  // namespace
}  // namespace rbdcache::cache
