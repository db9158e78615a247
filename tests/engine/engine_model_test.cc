// Model-based concurrency test of the cache engine. Several clients, each on
// its own reactor as NBD connections are, issue random READ, WRITE, TRIM,
// WRITE_ZEROES, FLUSH and FUA writes against one engine, while a control
// thread switches modes, invalidates, runs the operator's flush and
// sync_origin, and asks for writeback; the origin holds completions and
// releases them in random order. At random points the stack is cut (a power
// cut, or a process crash) or shut down cleanly, and the engine restarts on
// what its devices hold. Every read, and the whole export after every
// restart, is checked against SectorModel (sector_model.h).
//
// Environment:
//   RBDCACHE_MODEL_SEED=N     run with seed N (printed by every run)
//   RBDCACHE_MODEL_SECONDS=S  run for S seconds per case instead of the CI
//                             budget of kCiOps client operations
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <future>
#include <mutex>
#include <random>
#include <sstream>
#include <thread>

#include "../unit/io_test_util.h"
#include "cache/engine.h"
#include "crash_stack.h"
#include "sector_model.h"
#include "util/aligned_buffer.h"
#include "util/log.h"

namespace rbdcache::cache {
namespace {

using rbdcache::testing::ReactorThread;
using testing::crash_images;
using testing::Cut;
using testing::FaultOrigin;
using testing::SectorModel;
using testing::Stack;
using testing::StackImages;
using After = SectorModel::After;
using Clock = std::chrono::steady_clock;

constexpr uint64_t kBlock = 4096;  // requests are whole 4 KiB blocks
constexpr uint64_t kBlocks = 256;  // a 1 MiB export
constexpr uint64_t kSize = kBlocks * kBlock;
constexpr uint64_t kPer = kBlock / SectorModel::kSector;  // model sectors per block
constexpr int kClients = 3;
constexpr uint64_t kCiOps = 2'000;
constexpr uint64_t kEpochOps = 150;  // client operations between cuts or restarts

uint64_t env_u64(const char* name, uint64_t dflt) {
  const char* v = std::getenv(name);
  return v ? std::strtoull(v, nullptr, 10) : dflt;
}

struct Params {
  Mode mode;
  bool process_crash;  // cuts are process crashes, not power cuts
};
void PrintTo(const Params& p, std::ostream* os) {
  *os << mode_name(p.mode) << (p.process_crash ? ", process crashes" : ", power cuts");
}

class ModelRun {
 public:
  ModelRun(Params p, uint64_t seed) : p_(p), seed_(seed), model_(kBlocks * kPer), rng_(seed) {}

  // Runs until the budget is spent; returns "" or the first failure.
  std::string run();
  uint64_t ops() const { return ops_.load(); }
  uint64_t restarts = 0;

 private:
  EngineOptions options();
  Status open(const StackImages& img);
  void client(int k, uint64_t seed, uint64_t until);
  void control(uint64_t seed);
  void releaser(uint64_t seed);
  void fail(const std::string& why);
  std::string restart(After how);

  const Params p_;
  const uint64_t seed_;
  SectorModel model_;
  std::mt19937_64 rng_;  // the test thread's
  std::mutex stack_mu_;  // held while stack_ is replaced, and by the releaser
  std::unique_ptr<Stack> stack_;
  ReactorThread rt_[kClients];
  std::atomic<uint64_t> ops_{0};
  std::atomic<bool> stop_epoch_{false};
  std::atomic<bool> done_{false};
  std::atomic<bool> paused_{false};  // the releaser waits (a clean shutdown runs)
  std::atomic<uint64_t> cut_at_{UINT64_MAX};  // ops_ value at which a client cuts
  std::mutex mu_;
  std::string failure_;  // guarded by mu_
  std::ostringstream trace_;  // guarded by mu_
};

void ModelRun::fail(const std::string& why) {
  std::lock_guard<std::mutex> lock(mu_);
  if (failure_.empty()) failure_ = why;
  stop_epoch_.store(true);
}

EngineOptions ModelRun::options() {
  EngineOptions o;
  o.mode = p_.mode;
  const int commit_ms[] = {5, 50, 1000};
  o.commit_interval = std::chrono::milliseconds(commit_ms[rng_() % 3]);
  o.max_dirty_age = std::chrono::milliseconds(rng_() % 2 ? 20 : 3'600'000);
  o.dirty_high_watermark = rng_() % 2 ? 0.05 : 0.5;
  o.dirty_low_watermark = o.dirty_high_watermark / 2;
  o.sequential_cutoff = rng_() % 2 ? (32u << 10) : (4u << 20);
  o.writeback_max_io = rng_() % 2 ? (32u << 10) : (4u << 20);
  return o;
}

Status ModelRun::open(const StackImages& img) {
  auto fresh = std::make_unique<Stack>();
  EngineOptions o = options();
  {
    std::lock_guard<std::mutex> lock(mu_);
    trace_ << "open: commit_ms=" << o.commit_interval.count()
           << " max_dirty_age_ms=" << o.max_dirty_age.count()
           << " high=" << o.dirty_high_watermark << " cutoff=" << o.sequential_cutoff << "\n";
  }
  Status st = testing::open_stack(*fresh, img, o, std::chrono::microseconds(rng_() % 300));
  if (st.is_ok()) {
    // Origin writes and flushes complete in an order of the releaser's choice.
    fresh->origin->hold(FaultOrigin::Op::kWrite);
    fresh->origin->hold(FaultOrigin::Op::kFlush);
  }
  // Only a complete stack is handed to the releaser.
  std::unique_ptr<Stack> old;
  {
    std::lock_guard<std::mutex> lock(stack_mu_);
    old = std::move(stack_);
    stack_ = std::move(fresh);
  }
  return st;
}

// One client: one request at a time on its own reactor.
void ModelRun::client(int k, uint64_t seed, uint64_t until) {
  std::mt19937_64 rng(seed);
  CacheEngine& e = *stack_->engine;
  io::Reactor& r = rt_[k].reactor();
  auto call = [&](std::function<void(IoCallback)> start) {
    return rt_[k].call<Status>([&](std::function<void(Status)> done) { start(done); });
  };
  while (!stop_epoch_.load() && stack_->power->on()) {
    const uint64_t n = ops_.fetch_add(1);
    if (n >= until) break;
    if (n == cut_at_.load()) stack_->power->cut();  // others may be mid-request
    const uint64_t len = 1 + (rng() % 4 == 0 ? rng() % 16 : rng() % 3);
    const uint64_t span = rng() % 2 ? 32 : kBlocks;  // a hot region, or anywhere
    const uint64_t block = rng() % (span - std::min(span - 1, len - 1));
    const uint64_t nblocks = std::min(len, kBlocks - block);
    const uint64_t off = block * kBlock, bytes = nblocks * kBlock;
    const uint64_t first = block * kPer, nsec = nblocks * kPer;  // in model sectors
    const uint64_t kind = rng() % 100;
    const bool fua = rng() % 6 == 0;
    const WriteFlags wf{fua, true, false};
    if (kind < 35) {  // WRITE
      const uint64_t id = model_.new_id();
      AlignedBuffer buf(bytes);
      for (uint64_t s = 0; s < nsec; ++s) {
        SectorModel::fill(id, first + s, buf.span().subspan(s * SectorModel::kSector, SectorModel::kSector));
      }
      model_.issued(id, id, false, first, nsec, model_.now());
      Status st = call([&](IoCallback d) { e.write(r, off, std::as_const(buf).span(), wf, d); });
      model_.completed(id, st.is_ok(), fua, model_.now());
    } else if (kind < 45 || kind >= 95) {  // WRITE_ZEROES, TRIM
      const bool trim = kind >= 95;
      const uint64_t id = model_.new_id();
      model_.issued(id, SectorModel::kZero, trim, first, nsec, model_.now());
      Status st = call([&](IoCallback d) {
        if (trim) {
          e.discard(r, off, bytes, wf, d);
        } else {
          e.write_zeroes(r, off, bytes, WriteFlags{fua, rng() % 2 == 0, false}, d);
        }
      });
      model_.completed(id, st.is_ok(), fua, model_.now());
    } else if (kind < 80) {  // READ
      AlignedBuffer buf(bytes);
      const uint64_t issue = model_.now();
      Status st = call([&](IoCallback d) { e.read(r, off, buf.span(), d); });
      const uint64_t done = model_.now();
      if (st.is_ok()) {
        std::string why = model_.check_read(first, std::as_const(buf).span(), issue, done);
        if (!why.empty()) fail(why);
      } else if (stack_->power->on()) {
        fail("read failed with the power on: " + st.to_string());
      }
    } else {  // FLUSH
      const uint64_t issue = model_.now();
      Status st = call([&](IoCallback d) { e.flush(r, d); });
      if (st.is_ok()) model_.flushed(issue);
    }
  }
}

// The operator and the background: modes, invalidation, flushes.
void ModelRun::control(uint64_t seed) {
  std::mt19937_64 rng(seed);
  CacheEngine& e = *stack_->engine;
  const Mode modes[] = {Mode::kWriteback, Mode::kWritethrough, Mode::kPassthrough};
  while (!stop_epoch_.load()) {
    std::this_thread::sleep_for(std::chrono::microseconds(rng() % 3000));
    switch (rng() % 8) {
      case 0: e.set_mode(rng() % 3 == 0 ? modes[rng() % 3] : p_.mode); break;
      case 1: {
        std::vector<ByteExtent> ex{{(rng() % kBlocks) * kBlock, 64u << 10}};
        if (ex[0].offset + ex[0].length > kSize) ex[0].length = kSize - ex[0].offset;
        auto res = e.invalidate(rng() % 2 ? std::nullopt : std::optional(ex), false);
        if (!res.is_ok() && stack_->power->on()) fail("invalidate: " + res.status().to_string());
        break;
      }
      case 2: e.begin_flush(rng() % 2 ? 0 : (1u << 20)); break;
      case 3: e.end_flush(); break;
      case 4: {
        Status st = e.sync_origin();
        if (!st.is_ok() && stack_->power->on()) fail("sync_origin: " + st.to_string());
        break;
      }
      default: e.request_full_writeback(); break;
    }
  }
  e.set_mode(p_.mode);
}

// Releases held origin completions in random order, after random delays.
void ModelRun::releaser(uint64_t seed) {
  std::mt19937_64 rng(seed);
  while (!done_.load()) {
    std::this_thread::sleep_for(std::chrono::microseconds(rng() % 500));
    if (paused_.load()) continue;
    std::lock_guard<std::mutex> lock(stack_mu_);
    FaultOrigin* o = stack_ ? stack_->origin.get() : nullptr;
    if (o == nullptr) continue;
    auto held = o->held();
    if (held.empty()) continue;
    const FaultOrigin::OpInfo& pick = held[rng() % held.size()];
    // Origin flushes stay held longer than writes: a FLUSH answered before
    // the origin flush that covers its writes then meets a cut more often.
    if (pick.op == FaultOrigin::Op::kFlush && rng() % 4 != 0) continue;
    o->release(pick.id);
  }
}

std::string ModelRun::restart(After how) {
  Stack& s = *stack_;
  const uint64_t t = model_.now();
  StackImages img;
  if (how == After::kCleanShutdown) {
    // Held origin operations are released slowly now, one every 20 ms, so
    // that a shutdown that does not wait for them returns while one is
    // still held.
    paused_.store(true);
    auto shut = std::async(std::launch::async, [&s] { return s.engine->shutdown(); });
    while (shut.wait_for(std::chrono::milliseconds(20)) != std::future_status::ready) {
      auto held = s.origin->held();
      if (!held.empty()) s.origin->release(held.front().id);
    }
    const uint64_t n = s.origin->in_flight();
    paused_.store(false);
    Status st = shut.get();
    if (n != 0) {
      s.origin->abandon_held();
      done_.store(true);
      return "shutdown returned with " + std::to_string(n) + " origin operations in flight";
    }
    if (!st.is_ok()) return "clean shutdown failed: " + st.to_string();
    img = crash_images(s, Cut::kProcessCrash, rng_);  // everything it wrote
  } else {
    model_.cut(t);
    img = crash_images(s, how == After::kPowerCut ? Cut::kPowerCut : Cut::kProcessCrash, rng_);
  }
  testing::discard_engine(s);
  ++restarts;
  if (Status st = open(img); !st.is_ok()) return "restart failed: " + st.to_string();
  // The whole export, read back through the restarted engine.
  AlignedBuffer all(kSize);
  Status st = rt_[0].call<Status>([&](std::function<void(Status)> done) {
    stack_->engine->read(rt_[0].reactor(), 0, all.span(), done);
  });
  if (!st.is_ok()) return "reading after the restart failed: " + st.to_string();
  std::string why = model_.restarted(how, std::as_const(all).span(), model_.now());
  if (!why.empty()) return std::string("after a restart: ") + why;
  return "";
}

std::string ModelRun::run() {
  const uint64_t seconds = env_u64("RBDCACHE_MODEL_SECONDS", 0);
  const auto deadline = Clock::now() + std::chrono::seconds(seconds);
  StackImages img;
  testing::CacheGeometry g;
  g.block_size = 16u << 10;
  g.blocks = 32;
  testing::format_images(g, img);
  img.origin = model_.initial_image();
  if (Status st = open(img); !st.is_ok()) return "open: " + st.to_string();
  std::thread rel([this] { releaser(seed_ ^ 0x5eed); });
  std::string why;
  for (uint64_t epoch = 0; why.empty(); ++epoch) {
    if (seconds ? Clock::now() >= deadline : ops_.load() >= kCiOps) break;
    // How this epoch ends: a cut in the middle of it, or a quiet end
    // followed (sometimes) by a clean restart.
    const uint64_t start = ops_.load(), until = start + kEpochOps;
    const uint64_t end_kind = rng_() % 4;
    cut_at_.store(end_kind < 2 ? start + rng_() % kEpochOps : UINT64_MAX);
    {
      std::lock_guard<std::mutex> lock(mu_);
      trace_ << "epoch " << epoch << ": ops " << start << ".." << until
             << (end_kind < 2 ? " cut at " + std::to_string(cut_at_.load()) : "") << "\n";
    }
    stop_epoch_.store(false);
    std::vector<std::thread> threads;
    for (int k = 0; k < kClients; ++k) {
      threads.emplace_back([this, k, until, s = rng_()] { client(k, s, until); });
    }
    std::thread ctl([this, s = rng_()] { control(s); });
    for (auto& th : threads) th.join();
    stop_epoch_.store(true);
    ctl.join();
    {
      std::lock_guard<std::mutex> lock(mu_);
      why = failure_;
    }
    if (!why.empty()) break;
    if (!stack_->power->on()) {
      why = restart(p_.process_crash ? After::kProcessCrash : After::kPowerCut);
    } else if (end_kind == 2) {
      why = restart(After::kCleanShutdown);
    } else {
      model_.prune();
    }
  }
  done_.store(true);
  rel.join();
  if (stack_ && stack_->engine) {
    stack_->origin->hold(FaultOrigin::Op::kWrite, false);
    stack_->origin->hold(FaultOrigin::Op::kFlush, false);
    stack_->origin->release_all();
    Status st = stack_->engine->shutdown();
    if (why.empty() && !st.is_ok() && stack_->power->on()) why = "final shutdown: " + st.to_string();
  }
  if (!why.empty()) {
    std::lock_guard<std::mutex> lock(mu_);
    why += "\n" + trace_.str();
  }
  return why;
}

class EngineModelTest : public ::testing::TestWithParam<Params> {
 protected:
  void SetUp() override { log::set_level(log::Level::kError); }
  void TearDown() override { log::set_level(log::Level::kInfo); }

  void run() {
    const uint64_t seed = env_u64("RBDCACHE_MODEL_SEED", std::random_device{}());
    std::printf("seed %llu (RBDCACHE_MODEL_SEED=%llu reproduces the operations)\n",
                static_cast<unsigned long long>(seed), static_cast<unsigned long long>(seed));
    ModelRun m(GetParam(), seed);
    std::string why = m.run();
    std::printf("%llu client operations, %llu restarts\n",
                static_cast<unsigned long long>(m.ops()),
                static_cast<unsigned long long>(m.restarts));
    EXPECT_EQ(why, "") << "seed " << seed;
    if (why.empty()) {
      EXPECT_GE(m.ops(), kCiOps);
    }
  }
};

TEST_P(EngineModelTest, EveryReadReturnsAnAllowedValueAcrossPowerCuts) { run(); }

INSTANTIATE_TEST_SUITE_P(Modes, EngineModelTest,
                         ::testing::Values(Params{Mode::kWriteback, false},
                                           Params{Mode::kWritethrough, false},
                                           Params{Mode::kPassthrough, false}),
                         [](const ::testing::TestParamInfo<Params>& i) {
                           return std::string(mode_name(i.param.mode));
                         });

class EngineModelProcessCrashTest : public EngineModelTest {};

// A process crash keeps every completed device write and the intent ring,
// but nothing the engine held only in memory.
TEST_P(EngineModelProcessCrashTest, EveryReadReturnsAnAllowedValueAcrossProcessCrashes) { run(); }

INSTANTIATE_TEST_SUITE_P(Modes, EngineModelProcessCrashTest,
                         ::testing::Values(Params{Mode::kWriteback, true},
                                           Params{Mode::kWritethrough, true},
                                           Params{Mode::kPassthrough, true}),
                         [](const ::testing::TestParamInfo<Params>& i) {
                           return std::string(mode_name(i.param.mode));
                         });

}  // namespace
}  // namespace rbdcache::cache
