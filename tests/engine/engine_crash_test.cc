// Crash test of the cache engine: the engine runs over a cache device and a
// metadata device that lose their unsynced writes on a power cut (keeping a
// random selection, one of them torn at a 512-byte boundary), and an origin
// that loses the writes no completed origin flush covered (keeping a random
// selection), so that the origin's durability rules are checked too: a
// writeback marks blocks clean only after the origin flush, and FLUSH in
// writethrough and passthrough reaches the origin. Each round formats a fresh cache, runs a
// random workload (aligned and unaligned writes, FUA writes, flushes,
// write-zeroes, reads, mode switches, forced writeback), cuts the power at
// an arbitrary moment (sometimes with requests in flight), recovers from
// what survived and checks every 512-byte sector of the device against a
// model: a sector may read back as its value at the last completed FLUSH (or
// FUA write covering it whole) with any subset of the later writes to it
// applied in order (completed FUA writes always among them), and as nothing
// else, such as another block's data. Recovery itself must always succeed.
//
// Single deterministic cases are in engine_crash_case_test.cc and
// engine_clean_copy_crash_test.cc.
//
// Usage: engine_crash_test [gtest flags] [ROUNDS] [SEED]   (default 200, 1)
#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <cstring>
#include <future>
#include <mutex>
#include <random>
#include <sstream>
#include <string>
#include <string_view>
#include <thread>
#include <unordered_map>
#include <vector>

#include "../unit/io_test_util.h"
#include "cache/engine.h"
#include "crash_stack.h"
#include "util/aligned_buffer.h"
#include "util/log.h"

namespace rbdcache::cache {
namespace {

using rbdcache::testing::ReactorThread;
using testing::CacheGeometry;
using testing::crash_images;
using testing::Cut;
using testing::discard_engine;
using testing::open_stack;
using testing::Stack;
using testing::StackImages;

uint64_t g_rounds = 200;
uint64_t g_seed = 1;

constexpr uint32_t kBlockSize = 16u << 10;                  // 4 sub-blocks per cache block
constexpr uint64_t kCacheDevSize = uint64_t{kBlockSize} * 33;  // header + 32 blocks
constexpr uint64_t kMetaSize = 1u << 20;                    // 64 segments of 16 KiB
constexpr uint64_t kOriginSize = 2u << 20;                  // 4x the cache
constexpr uint32_t kSector = 512;
constexpr uint64_t kSectors = kOriginSize / kSector;

uint64_t sector_hash(const std::byte* p) {
  return std::hash<std::string_view>{}(std::string_view(reinterpret_cast<const char*>(p), kSector));
}

// What each sector may hold after a crash: its contents at the last
// completed FLUSH (the base) with any subset of the later writes that touched
// it applied in order, where a completed FUA write belongs to every subset.
// A write that covers a sector whole with FUA, and a FLUSH, make the sector's
// current contents its new base.
class CrashModel {
 public:
  explicit CrashModel(std::vector<std::byte> initial)
      : cur_(std::move(initial)), pieces_(kSectors) {
    for (uint64_t s = 0; s < kSectors; ++s) {
      history_[sector_hash(cur_.data() + s * kSector)].push_back({s, "the start of the round"});
    }
  }

  const std::vector<std::byte>& current() const { return cur_; }

  // A write of `data` (or zeroes, when data is empty) at [off, off + len);
  // `durable` for a FUA write that completed.
  void write(uint64_t off, uint64_t len, std::span<const std::byte> data, bool durable,
             const std::string& label) {
    for (uint64_t s = off / kSector; s <= (off + len - 1) / kSector; ++s) {
      const uint64_t lo = std::max(off, s * kSector), hi = std::min(off + len, (s + 1) * kSector);
      if (durable && lo == s * kSector && hi == (s + 1) * kSector) {
        pieces_[s].clear();
        base_.erase(s);
        continue;
      }
      if (!base_.count(s)) {
        base_[s].assign(cur_.data() + s * kSector, cur_.data() + (s + 1) * kSector);
        touched_.push_back(s);
      }
      Piece pc{static_cast<uint32_t>(lo - s * kSector), static_cast<uint32_t>(hi - s * kSector),
               {}, durable};
      if (!data.empty()) pc.bytes.assign(data.data() + (lo - off), data.data() + (hi - off));
      pieces_[s].push_back(std::move(pc));
    }
    if (data.empty()) {
      std::memset(cur_.data() + off, 0, len);
    } else {
      std::memcpy(cur_.data() + off, data.data(), len);
    }
    for (uint64_t s = off / kSector; s <= (off + len - 1) / kSector; ++s) {
      history_[sector_hash(cur_.data() + s * kSector)].push_back({s, label});
    }
  }

  // A FLUSH completed: every sector's current contents become its base.
  void flushed() {
    for (uint64_t s : touched_) pieces_[s].clear();
    touched_.clear();
    base_.clear();
  }

  bool acceptable(uint64_t s, const std::byte* got) const {
    if (std::memcmp(got, cur_.data() + s * kSector, kSector) == 0) return true;
    auto b = base_.find(s);
    if (b == base_.end()) return false;  // nothing unflushed: only one value
    const std::vector<Piece>& ps = pieces_[s];
    std::vector<size_t> optional;
    for (size_t i = 0; i < ps.size(); ++i) {
      if (!ps[i].durable) optional.push_back(i);
    }
    std::array<std::byte, kSector> img;
    if (optional.size() > 16) {
      // Too many subsets: check byte by byte instead.
      for (uint32_t i = 0; i < kSector; ++i) {
        bool ok = got[i] == b->second[i];
        for (const Piece& pc : ps) ok = ok || (i >= pc.lo && i < pc.hi && got[i] == pc.at(i));
        if (!ok) return false;
      }
      return true;
    }
    for (uint64_t mask = 0; mask < (uint64_t{1} << optional.size()); ++mask) {
      std::memcpy(img.data(), b->second.data(), kSector);
      size_t next_opt = 0;
      for (size_t i = 0; i < ps.size(); ++i) {
        bool take = ps[i].durable;
        if (!take) take = (mask >> next_opt++) & 1;
        if (!take) continue;
        for (uint32_t j = ps[i].lo; j < ps[i].hi; ++j) img[j] = ps[i].at(j);
      }
      if (std::memcmp(img.data(), got, kSector) == 0) return true;
    }
    return false;
  }

  // Writes since the sector's base.
  size_t unflushed_writes(uint64_t s) const { return pieces_[s].size(); }

  // Which writes ever gave some sector the contents `got`, for reports.
  std::string provenance(const std::byte* got) const {
    auto it = history_.find(sector_hash(got));
    if (it == history_.end()) return "";
    std::string out;
    for (const auto& [s, label] : it->second) {
      out += "; once the value of sector " + std::to_string(s) + " after " + label;
    }
    return out;
  }

 private:
  // The part of one write that falls in one sector: bytes [lo, hi).
  struct Piece {
    uint32_t lo, hi;
    std::vector<std::byte> bytes;  // empty: zeroes
    bool durable;
    std::byte at(uint32_t i) const { return bytes.empty() ? std::byte{0} : bytes[i - lo]; }
  };
  std::vector<std::byte> cur_;
  std::vector<std::vector<Piece>> pieces_;
  std::unordered_map<uint64_t, std::vector<std::byte>> base_;  // sectors with pieces
  std::vector<uint64_t> touched_;
  std::unordered_map<uint64_t, std::vector<std::pair<uint64_t, std::string>>> history_;
};

CacheGeometry geometry() {
  CacheGeometry g;
  g.block_size = kBlockSize;
  g.blocks = static_cast<uint32_t>(kCacheDevSize / kBlockSize) - 1;
  g.meta_size = kMetaSize;
  g.segment_size = 16u << 10;
  return g;
}

// Runs rounds on its own reactor; several run in parallel.
class CrashRunner {
 public:
  explicit CrashRunner(const StackImages& f) : fmt_(f) { EXPECT_TRUE(rt_.ok()); }
  bool ok() const { return rt_.ok(); }

  // Runs one round; returns a description of the failure, or "".
  std::string run_round(uint64_t round);

  // Evidence that the crashes really lost something.
  uint64_t rounds_with_lost_cache_writes = 0;
  uint64_t rounds_with_lost_origin_writes = 0;
  uint64_t rounds_with_inflight_requests = 0;

 private:
  const StackImages& fmt_;  // formatted metadata and cache, initial origin
  ReactorThread rt_;
};

std::string CrashRunner::run_round(uint64_t round) {
  const uint64_t seed = g_seed * 1'000'003 + round;
  std::mt19937_64 rng(seed);
  auto pick = [&rng](uint64_t n) { return n == 0 ? 0 : rng() % n; };
  std::ostringstream trace;

  EngineOptions opts;
  const Mode modes[] = {Mode::kWriteback, Mode::kWritethrough, Mode::kPassthrough};
  opts.mode = pick(4) == 0 ? modes[pick(3)] : Mode::kWriteback;
  const int commit_ms[] = {2, 10, 50, 1000};
  opts.commit_interval = std::chrono::milliseconds(commit_ms[pick(4)]);
  const int age_ms[] = {5, 50, 3'600'000};
  opts.max_dirty_age = std::chrono::milliseconds(age_ms[pick(3)]);
  const double high[] = {0.05, 0.25, 2.0};
  opts.dirty_high_watermark = high[pick(3)];
  opts.dirty_low_watermark = opts.dirty_high_watermark / 2;
  opts.sequential_cutoff = pick(2) ? (64u << 10) : (4u << 20);
  opts.writeback_max_io = pick(2) ? (32u << 10) : (4u << 20);
  const int latency_us[] = {0, 200, 2000};
  const auto latency = std::chrono::microseconds(latency_us[pick(3)]);
  trace << "options: mode=" << mode_name(opts.mode) << " commit_ms=" << opts.commit_interval.count()
        << " max_dirty_age_ms=" << opts.max_dirty_age.count()
        << " high_watermark=" << opts.dirty_high_watermark
        << " sequential_cutoff=" << opts.sequential_cutoff
        << " writeback_max_io=" << opts.writeback_max_io
        << " cache_sync_latency_us=" << latency.count() << "\n";

  CrashModel model(fmt_.origin);
  Stack s;
  if (Status st = open_stack(s, fmt_, opts, latency); !st.is_ok()) {
    return "opening the fresh stack failed: " + st.to_string();
  }
  CacheEngine& e = *s.engine;
  io::Reactor& r = rt_.reactor();

  auto do_write = [&](uint64_t off, std::span<const std::byte> data, bool fua) {
    return rt_.call<Status>([&](std::function<void(Status)> done) {
      e.write(r, off, data, WriteFlags{fua, true, false}, done);
    });
  };
  auto do_zero = [&](uint64_t off, uint64_t len, bool fua) {
    return rt_.call<Status>([&](std::function<void(Status)> done) {
      e.write_zeroes(r, off, len, WriteFlags{fua, true, false}, done);
    });
  };

  // The workload, one request at a time; the background writer and the
  // commit thread run meanwhile.
  const int ops = 10 + static_cast<int>(pick(110));
  uint32_t data_seed = static_cast<uint32_t>(seed * 7919);
  for (int i = 0; i < ops; ++i) {
    const uint64_t kind = pick(100);
    uint64_t len;
    switch (pick(4)) {
      case 0: len = 1 + pick(2048); break;
      case 1: len = kSector * (1 + pick(16)); break;
      case 2: len = 4096 * (1 + pick(16)); break;
      default: len = 1 + pick(256u << 10); break;
    }
    const uint64_t span = pick(2) ? (256u << 10) : kOriginSize;  // a hot region, or anywhere
    uint64_t off = pick(span - std::min(span - 1, len));
    if (off + len > kOriginSize) off = kOriginSize - len;
    if (pick(2)) off &= ~uint64_t{kSector - 1};
    if (pick(3) == 0) off &= ~uint64_t{4095};

    if (kind < 45) {
      const bool fua = pick(8) == 0;
      auto data = rbdcache::testing::pattern(len, ++data_seed);
      trace << i << ": write off=" << off << " len=" << len << (fua ? " fua" : "") << "\n";
      Status st = do_write(off, data, fua);
      if (!st.is_ok()) return trace.str() + "write failed: " + st.to_string();
      model.write(off, len, data, fua, "op " + std::to_string(i));
    } else if (kind < 62) {
      AlignedBuffer buf(std::max<uint64_t>(len, 1));
      std::span<std::byte> dst(buf.data(), len);
      trace << i << ": read off=" << off << " len=" << len << "\n";
      Status st = rt_.call<Status>(
          [&](std::function<void(Status)> done) { e.read(r, off, dst, done); });
      if (!st.is_ok()) return trace.str() + "read failed: " + st.to_string();
      if (std::memcmp(dst.data(), model.current().data() + off, len) != 0) {
        return trace.str() + "read before the crash differs from what was written";
      }
    } else if (kind < 72) {
      trace << i << ": flush\n";
      Status st = rt_.call<Status>([&](std::function<void(Status)> done) { e.flush(r, done); });
      if (!st.is_ok()) return trace.str() + "flush failed: " + st.to_string();
      model.flushed();
    } else if (kind < 81) {
      const bool fua = pick(4) == 0;
      len = std::min<uint64_t>(len, 128u << 10);
      trace << i << ": write_zeroes off=" << off << " len=" << len << (fua ? " fua" : "") << "\n";
      Status st = do_zero(off, len, fua);
      if (!st.is_ok()) return trace.str() + "write_zeroes failed: " + st.to_string();
      model.write(off, len, {}, fua, "op " + std::to_string(i));
    } else if (kind < 86) {
      const Mode m = modes[pick(3)];
      trace << i << ": set_mode " << mode_name(m) << "\n";
      e.set_mode(m);
    } else if (kind < 91) {
      trace << i << ": request_full_writeback\n";
      e.request_full_writeback();
    } else {
      const uint64_t us = pick(3000);
      trace << i << ": sleep " << us << "us\n";
      std::this_thread::sleep_for(std::chrono::microseconds(us));
    }
  }

  // Requests in flight at the power cut: writes to distinct cache blocks
  // (so their order does not matter to the model), maybe with a FLUSH.
  struct Inflight {
    uint64_t off = 0, len = 0;
    std::vector<std::byte> data;  // empty: a FLUSH
    bool fua = false;
    std::promise<Status> done;
  };
  std::vector<std::unique_ptr<Inflight>> inflight;
  if (pick(2)) {
    const uint64_t nblocks = kOriginSize / kBlockSize;
    std::vector<uint64_t> used;
    const int n = 1 + static_cast<int>(pick(4));
    for (int k = 0; k < n; ++k) {
      uint64_t b = pick(nblocks);
      if (std::find(used.begin(), used.end(), b) != used.end()) continue;
      used.push_back(b);
      auto w = std::make_unique<Inflight>();
      w->len = 1 + pick(kBlockSize);
      w->off = b * kBlockSize + pick(kBlockSize - w->len + 1);
      if (pick(2)) {
        w->off &= ~uint64_t{4095};
        w->len = std::min<uint64_t>((w->len + 4095) & ~uint64_t{4095}, (b + 1) * kBlockSize - w->off);
      }
      w->data = rbdcache::testing::pattern(w->len, ++data_seed);
      w->fua = pick(3) == 0;
      trace << "in flight: write off=" << w->off << " len=" << w->len << (w->fua ? " fua" : "")
            << "\n";
      inflight.push_back(std::move(w));
    }
    if (pick(2)) {
      trace << "in flight: flush\n";
      inflight.push_back(std::make_unique<Inflight>());
    }
    for (auto& op : inflight) {
      Inflight* p = op.get();
      r.post([&e, &r, p] {
        auto cb = [p](Status st) { p->done.set_value(std::move(st)); };
        if (p->data.empty()) {
          e.flush(r, cb);
        } else {
          e.write(r, p->off, p->data, WriteFlags{p->fua, true, false}, cb);
        }
      });
    }
    ++rounds_with_inflight_requests;
  }

  // The power cut.
  const uint64_t cut_after_us = pick(3000);
  trace << "power cut after " << cut_after_us << "us\n";
  std::this_thread::sleep_for(std::chrono::microseconds(cut_after_us));
  s.power->cut();
  const size_t unsynced = s.cache->unsynced_writes();
  const size_t origin_unsynced = s.origin->unsynced_writes();
  std::vector<Status> inflight_status;
  for (auto& op : inflight) {
    auto f = op->done.get_future();
    if (f.wait_for(std::chrono::seconds(30)) != std::future_status::ready) {
      ADD_FAILURE() << "a request in flight at the power cut never completed\n" << trace.str();
      std::abort();  // the engine still references the request's buffers
    }
    inflight_status.push_back(f.get());
  }
  StackImages after_images = crash_images(s, Cut::kPowerCut, rng);
  if (unsynced > 0) ++rounds_with_lost_cache_writes;
  if (origin_unsynced > 0) ++rounds_with_lost_origin_writes;
  // Nothing the engine does from here on reaches the fault devices.
  discard_engine(s);

  // The model after the in-flight requests: a FLUSH that completed covers
  // the requests completed before it started, which include every earlier
  // request; the in-flight writes may or may not have happened.
  for (size_t k = 0; k < inflight.size(); ++k) {
    if (inflight[k]->data.empty() && inflight_status[k].is_ok()) model.flushed();
  }
  for (size_t k = 0; k < inflight.size(); ++k) {
    const Inflight& w = *inflight[k];
    if (w.data.empty()) continue;
    trace << "in-flight write at " << w.off << ": " << inflight_status[k].to_string() << "\n";
    model.write(w.off, w.len, w.data, w.fua && inflight_status[k].is_ok(),
                "in-flight write " + std::to_string(k));
  }

  // Recovery from what survived.
  Stack after;
  EngineOptions ropts;
  ropts.max_dirty_age = std::chrono::hours(1);
  ropts.dirty_high_watermark = 2.0;
  if (Status st = open_stack(after, after_images, ropts); !st.is_ok()) {
    return trace.str() + "recovery after the crash failed: " + st.to_string();
  }
  CacheEngine& re = *after.engine;
  AlignedBuffer got(kOriginSize);
  constexpr uint64_t kChunk = 64u << 10;
  for (uint64_t off = 0; off < kOriginSize; off += kChunk) {
    std::span<std::byte> dst(got.data() + off, kChunk);
    Status st =
        rt_.call<Status>([&](std::function<void(Status)> done) { re.read(r, off, dst, done); });
    if (!st.is_ok()) return trace.str() + "read after recovery failed: " + st.to_string();
  }
  std::ostringstream bad;
  int nbad = 0;
  for (uint64_t sct = 0; sct < kSectors; ++sct) {
    const std::byte* p = got.data() + sct * kSector;
    if (model.acceptable(sct, p)) continue;
    if (++nbad > 8) continue;
    bad << "sector " << sct << " (byte " << sct * kSector << ", origin block "
        << sct * kSector / kBlockSize << ", " << model.unflushed_writes(sct)
        << " writes since its last flush) holds an unacceptable value";
    // Where the bytes came from, when they can be recognised.
    for (uint64_t o = 0; o < kSectors; ++o) {
      if (o != sct && std::memcmp(model.current().data() + o * kSector, p, kSector) == 0) {
        bad << "; it holds the current data of sector " << o;
        break;
      }
    }
    bad << model.provenance(p);
    for (uint64_t o = 0; o < fmt_.cache.size(); o += kSector) {
      if (std::memcmp(fmt_.cache.data() + o, p, kSector) == 0) {
        bad << "; it holds never-written cache device bytes (slot " << o / kBlockSize << ")";
        break;
      }
    }
    bad << "\n";
  }
  if (nbad > 0) {
    return trace.str() + std::to_string(nbad) + " sectors wrong after recovery:\n" + bad.str();
  }
  Status st = after.engine->shutdown();
  if (!st.is_ok()) return trace.str() + "clean shutdown after recovery failed: " + st.to_string();
  return "";
}

class EngineCrashTest : public ::testing::Test {
 protected:
  void SetUp() override { log::set_level(log::Level::kError); }
  void TearDown() override { log::set_level(log::Level::kInfo); }
};

TEST_F(EngineCrashTest, FlushedWritesSurviveAPowerCutAndNothingElseAppears) {
  StackImages f;
  ASSERT_NO_FATAL_FAILURE(format_images(geometry(), f));
  f.origin = rbdcache::testing::pattern(kOriginSize, 7);
  // Most of a round is spent waiting (for the background writer, commits
  // and shutdown), so a few rounds run at once.
  constexpr int kRunners = 4;
  std::vector<std::unique_ptr<CrashRunner>> runners;
  for (int i = 0; i < kRunners; ++i) {
    runners.push_back(std::make_unique<CrashRunner>(f));
    ASSERT_TRUE(runners.back()->ok());
  }
  std::atomic<uint64_t> next{0};
  std::atomic<uint64_t> done{0};
  std::atomic<int> failures{0};
  std::mutex mu;
  std::vector<std::string> reports;
  const auto start = std::chrono::steady_clock::now();
  std::vector<std::thread> threads;
  for (auto& runner : runners) {
    threads.emplace_back([&, r = runner.get()] {
      for (uint64_t round; failures.load() < 3 && (round = next++) < g_rounds;) {
        std::string why = r->run_round(round);
        ++done;
        if (!why.empty()) {
          ++failures;
          std::lock_guard<std::mutex> lock(mu);
          reports.push_back("seed " + std::to_string(g_seed) + ", round " + std::to_string(round) +
                            ":\n" + why);
        }
      }
    });
  }
  for (auto& t : threads) t.join();
  for (const std::string& why : reports) ADD_FAILURE() << why;
  uint64_t lost = 0, origin_lost = 0, inflight = 0;
  for (auto& r : runners) {
    lost += r->rounds_with_lost_cache_writes;
    origin_lost += r->rounds_with_lost_origin_writes;
    inflight += r->rounds_with_inflight_requests;
  }
  const double secs =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::printf("%llu rounds in %.1f s; unsynced writes at the cut: cache in %llu, origin in "
              "%llu; requests in flight in %llu\n",
              static_cast<unsigned long long>(done.load()), secs,
              static_cast<unsigned long long>(lost), static_cast<unsigned long long>(origin_lost),
              static_cast<unsigned long long>(inflight));
  // The crashes must really have caught unsynced state, or the test proves
  // nothing.
  if (done.load() >= 50 && failures.load() == 0) {
    EXPECT_GT(lost, done.load() / 10);
    EXPECT_GT(origin_lost, done.load() / 10);
    EXPECT_GT(inflight, done.load() / 10);
  }
}

}  // namespace
}  // namespace rbdcache::cache

int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  if (argc > 1) rbdcache::cache::g_rounds = std::strtoull(argv[1], nullptr, 10);
  if (argc > 2) rbdcache::cache::g_seed = std::strtoull(argv[2], nullptr, 10);
  return RUN_ALL_TESTS();
}
