// Writeback against a stalled origin: a wrapper around a real FileOrigin
// holds every origin write, unissued, until the test opens its gate, as a
// paused OSD would. While a writeback is stuck there:
//   - cache hits and writeback-mode writes to the blocks being written back
//     complete at once;
//   - a block written again stays dirty after that writeback, and the origin
//     ends up with the newest data;
//   - a writethrough write to such a block waits for the writeback (it must
//     not race it on the origin), then lands after it.
#include <gtest/gtest.h>

#include <atomic>
#include <mutex>

#include "../unit/io_test_util.h"
#include "cache/attach.h"
#include "cache/engine.h"
#include "metalog/formatter.h"
#include "origin/file_origin.h"

namespace rbdcache::cache {
namespace {

using rbdcache::testing::ReactorThread;
using rbdcache::testing::ScratchFile;

constexpr uint64_t kOriginSize = 8u << 20;
constexpr uint64_t kBlock = 64u << 10;

// Passes everything to a FileOrigin; writes wait while the gate is shut.
// A held write is not issued to the FileOrigin (so the data it lands is
// read from the caller's buffer only then, and a later writeback cannot
// overtake it). It is issued later on the reactor it was issued on: only
// that reactor's thread may use its ring. The FaultOrigin of the crash
// tests cannot stand in: it holds completions, its writes land at once.
//
// Threads: any thread may call any member.
class GatedOrigin final : public Origin {
 public:
  explicit GatedOrigin(Origin& inner) : inner_(inner) {}
  uint64_t size() const override { return inner_.size(); }
  OriginCaps caps() const override { return inner_.caps(); }
  std::string describe() const override { return "gated " + inner_.describe(); }
  std::string identity() const override { return inner_.identity(); }
  void read(io::Reactor& r, uint64_t off, std::span<std::byte> buf, IoCallback done) override {
    inner_.read(r, off, buf, std::move(done));
  }
  void write(io::Reactor& r, uint64_t off, std::span<const std::byte> buf, WriteFlags f,
             IoCallback done) override {
    std::unique_lock lk(mu_);
    if (!open_) {
      ++held_;
      held_writes_.push_back(Held{&r, [this, &r, off, buf, f, done = std::move(done)]() mutable {
                                    inner_.write(r, off, buf, f, std::move(done));
                                  }});
      return;
    }
    lk.unlock();
    inner_.write(r, off, buf, f, std::move(done));
  }
  void flush(io::Reactor& r, IoCallback done) override { inner_.flush(r, std::move(done)); }
  void discard(io::Reactor& r, uint64_t off, uint64_t len, WriteFlags f, IoCallback done) override {
    inner_.discard(r, off, len, f, std::move(done));
  }
  void write_zeroes(io::Reactor& r, uint64_t off, uint64_t len, WriteFlags f,
                    IoCallback done) override {
    inner_.write_zeroes(r, off, len, f, std::move(done));
  }
  void block_status(io::Reactor& r, uint64_t off, uint64_t len, ExtentsCallback done) override {
    inner_.block_status(r, off, len, std::move(done));
  }
  void prefetch(io::Reactor& r, uint64_t off, uint64_t len, IoCallback done) override {
    inner_.prefetch(r, off, len, std::move(done));
  }

  void shut() {
    std::lock_guard lk(mu_);
    open_ = false;
  }
  // Opens the gate; the held writes are issued, each on its own reactor.
  void open() { let_through(true); }
  // Issues the writes held so far; later ones are held again.
  void release_held() { let_through(false); }
  int held() const { return held_.load(); }

 private:
  struct Held {
    io::Reactor* reactor;  // the one the write was issued on
    std::function<void()> issue;
  };
  void let_through(bool open) {
    std::vector<Held> go;
    {
      std::lock_guard lk(mu_);
      open_ = open;
      go.swap(held_writes_);
    }
    for (Held& h : go) h.reactor->post(std::move(h.issue));
  }

  Origin& inner_;
  std::mutex mu_;
  bool open_ = true;                // guarded by mu_
  std::vector<Held> held_writes_;  // guarded by mu_
  std::atomic<int> held_{0};
};

class WritebackIsolationTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_EQ(::ftruncate(origin_file_.fd(), kOriginSize), 0);
    ASSERT_EQ(::ftruncate(cache_file_.fd(), 4u << 20), 0);
    ASSERT_EQ(::ftruncate(meta_file_.fd(), 8u << 20), 0);
    auto meta = metalog::FileBlockDevice::open(meta_file_.path(), false);
    auto cache = metalog::FileBlockDevice::open(cache_file_.path(), false);
    ASSERT_TRUE(meta.is_ok() && cache.is_ok());
    metalog::FormatOptions fo;
    fo.segment_size = 256 << 10;
    ASSERT_TRUE(metalog::format_devices(*meta.value(), *cache.value(), fo).is_ok());
    auto o = FileOrigin::open(origin_file_.path(), false);
    ASSERT_TRUE(o.is_ok());
    file_ = std::move(o).value();
    gated_ = std::make_unique<GatedOrigin>(*file_);
    AttachOptions ao;
    ao.meta_dev = meta_file_.path();
    ao.cache_dev = cache_file_.path();
    ao.engine.max_dirty_age = std::chrono::hours(1);  // writeback only when asked
    ao.engine.dirty_high_watermark = 2.0;
    ao.engine.sequential_cutoff = 0;
    auto c = AttachedCache::open(*gated_, ao);
    ASSERT_TRUE(c.is_ok()) << c.status().to_string();
    cache_ = std::move(c).value();
  }
  void TearDown() override {
    if (gated_) gated_->open();
    if (cache_) {
      EXPECT_TRUE(cache_->close().is_ok());
    }
  }

  CacheEngine& engine() { return cache_->engine(); }

  // Starts a write and returns a flag that turns true when it completes.
  std::shared_ptr<std::atomic<int>> start_write(uint64_t off, std::shared_ptr<std::vector<std::byte>> data) {
    auto result = std::make_shared<std::atomic<int>>(-1);  // -1 pending, 0 ok, 1 failed
    rt_.reactor().post([this, off, data, result] {
      engine().write(rt_.reactor(), off, *data, WriteFlags{}, [data, result](Status st) {
        result->store(st.is_ok() ? 0 : 1);
      });
    });
    return result;
  }
  static bool wait_for(const std::function<bool()>& cond, int ms) {
    for (int i = 0; i < ms / 5; ++i) {
      if (cond()) return true;
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    return cond();
  }
  Status read(uint64_t off, std::span<std::byte> buf) {
    return rt_.call<Status>([&](std::function<void(Status)> done) {
      engine().read(rt_.reactor(), off, buf, done);
    });
  }
  std::vector<std::byte> origin_at(uint64_t off, size_t len) {
    std::vector<std::byte> v(len);
    EXPECT_EQ(::pread(origin_file_.fd(), v.data(), len, static_cast<off_t>(off)),
              static_cast<ssize_t>(len));
    return v;
  }

  ScratchFile origin_file_, cache_file_, meta_file_;
  ReactorThread rt_;
  std::unique_ptr<FileOrigin> file_;
  std::unique_ptr<GatedOrigin> gated_;
  std::unique_ptr<AttachedCache> cache_;
};

TEST_F(WritebackIsolationTest, CacheHitsAndWritesDoNotWaitForAStalledWriteback) {
  auto v1 = std::make_shared<std::vector<std::byte>>(rbdcache::testing::pattern(kBlock, 1));
  auto w1 = start_write(0, v1);
  ASSERT_TRUE(wait_for([&] { return w1->load() == 0; }, 5000));

  gated_->shut();
  engine().request_full_writeback();
  ASSERT_TRUE(wait_for([&] { return gated_->held() > 0; }, 5000)) << "writeback never reached the origin";

  // A cache hit and a writeback-mode write to the very block being written back.
  std::vector<std::byte> got(kBlock);
  ASSERT_TRUE(read(0, got).is_ok());
  EXPECT_EQ(got, *v1);
  auto v2 = std::make_shared<std::vector<std::byte>>(rbdcache::testing::pattern(kBlock, 2));
  auto w2 = start_write(0, v2);
  EXPECT_TRUE(wait_for([&] { return w2->load() == 0; }, 2000))
      << "a write to a block under writeback waited for the stalled origin";

  // The writeback finishes (the next one is held at the gate again); the
  // block was rewritten meanwhile, so it must still be dirty.
  gated_->release_held();
  ASSERT_TRUE(wait_for([&] { return engine().stats().bytes_written_back >= kBlock; }, 5000));
  EXPECT_GT(engine().stats().dirty_bytes, 0u) << "a block rewritten during its writeback was marked clean";
  EXPECT_EQ(origin_at(0, kBlock), *v1);  // the first writeback wrote v1

  gated_->open();
  engine().request_full_writeback();
  ASSERT_TRUE(wait_for([&] { return engine().stats().dirty_bytes == 0; }, 5000));
  EXPECT_EQ(origin_at(0, kBlock), *v2) << "the origin lacks the newest data";
  ASSERT_TRUE(read(0, got).is_ok());
  EXPECT_EQ(got, *v2);
}

TEST_F(WritebackIsolationTest, WritethroughWriteWaitsForTheWritebackOfItsBlock) {
  auto v1 = std::make_shared<std::vector<std::byte>>(rbdcache::testing::pattern(kBlock, 3));
  auto w1 = start_write(kBlock, v1);
  ASSERT_TRUE(wait_for([&] { return w1->load() == 0; }, 5000));

  gated_->shut();
  engine().request_full_writeback();
  ASSERT_TRUE(wait_for([&] { return gated_->held() > 0; }, 5000));

  engine().set_mode(Mode::kWritethrough);
  auto v2 = std::make_shared<std::vector<std::byte>>(rbdcache::testing::pattern(kBlock, 4));
  auto w2 = start_write(kBlock, v2);
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  EXPECT_EQ(w2->load(), -1) << "a writethrough write raced the writeback of its block";
  EXPECT_EQ(gated_->held(), 1) << "the writethrough write reached the origin during the writeback";

  gated_->open();
  ASSERT_TRUE(wait_for([&] { return w2->load() == 0; }, 5000));
  ASSERT_TRUE(wait_for([&] { return engine().stats().dirty_bytes == 0; }, 5000));
  EXPECT_EQ(origin_at(kBlock, kBlock), *v2) << "the older writeback overwrote the newer write";
}

}  // namespace
}  // namespace rbdcache::cache
