// Randomized crash test: drive the writer against a device that loses power
// at a random operation, build the image a real device could hold after the
// cut (unsynced writes dropped, the last surviving one torn at a 512-byte
// boundary), recover, and compare with the last committed state.
//
// Usage: metalog_crash_test [CRASH_POINTS] [SEED]   (default 10000, 1)
// Exits 0 when every crash point recovered the committed state.
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>

#include "fault_device.h"
#include "metalog/reader.h"
#include "metalog/writer.h"
#include "test_util.h"

using namespace rbdcache;
using namespace rbdcache::metalog;
using testing::FaultInjectionDevice;

namespace {

struct Outcome {
  bool ok = true;
  std::string why;
};

// One crash point. `base` is a formatted (and possibly already used) image.
Outcome run_point(const std::vector<std::byte>& base, const testing::Geometry& g, uint32_t sub_blocks,
                  uint64_t seed, MappingTable start_state) {
  std::mt19937_64 rng(seed);
  FaultInjectionDevice dev(base);
  MappingTable committed = std::move(start_state);
  MappingTable inflight = committed;
  {
    auto log = MetadataLog::open(dev);
    if (!log.is_ok()) return {false, "open before crash: " + log.status().to_string()};
    dev.lose_power_after(std::uniform_int_distribution<uint64_t>(0, 120)(rng));
    for (int c = 0; c < 200 && !dev.power_lost(); ++c) {
      int n = std::uniform_int_distribution<int>(1, (rng() % 8 == 0) ? 400 : 12)(rng);
      for (int i = 0; i < n; ++i) {
        Entry e = testing::random_entry(rng, inflight, g.cache_blocks, sub_blocks);
        if (!(*log)->append(e).is_ok()) break;
        testing::model_apply(inflight, e);
      }
      Status st = (rng() % 25 == 0) ? (*log)->compact() : (*log)->commit();
      if (!st.is_ok()) break;
      committed = inflight;
    }
  }
  auto how = (seed & 1) ? FaultInjectionDevice::Survival::kPrefix : FaultInjectionDevice::Survival::kAnyBlocks;
  MemBlockDevice after(dev.crash_image(rng, how));
  auto rec = recover_log(after);
  if (!rec.is_ok()) return {false, "recovery: " + rec.status().to_string()};
  const MappingTable& got = rec->state.mappings();
  if (got != committed && got != inflight) {
    return {false, fmt::format("recovered {} mappings; last committed state has {}, in-flight {}", got.size(),
                               committed.size(), inflight.size())};
  }
  // The recovered log must take new commits and recover them again.
  if (seed % 8 == 0) {
    MappingTable model = got;
    auto log = MetadataLog::open(after);
    if (!log.is_ok()) return {false, "reopen: " + log.status().to_string()};
    for (int c = 0; c < 5; ++c) {
      for (int i = 0; i < 10; ++i) {
        Entry e = testing::random_entry(rng, model, g.cache_blocks, sub_blocks);
        if (!(*log)->append(e).is_ok()) return {false, "append after reopen"};
        testing::model_apply(model, e);
      }
      if (Status st = (*log)->commit(); !st.is_ok()) return {false, "commit after reopen: " + st.to_string()};
    }
    log = Status::io_error("closed");
    auto again = recover_log(after);
    if (!again.is_ok()) return {false, "second recovery: " + again.status().to_string()};
    if (again->state.mappings() != model) return {false, "second recovery lost commits"};
  }
  return {};
}

}  // namespace

int main(int argc, char** argv) {
  uint64_t points = argc > 1 ? std::strtoull(argv[1], nullptr, 10) : 10000;
  uint64_t seed = argc > 2 ? std::strtoull(argv[2], nullptr, 10) : 1;
  testing::Geometry g;
  g.segments = 12;
  Superblock sb;
  std::vector<std::byte> fresh = testing::formatted_image(g, &sb);

  // A second starting image that has wrapped around (segments erased and
  // reused), so crash points also land on logs with stale blocks.
  MemBlockDevice used(fresh);
  MappingTable used_state;
  {
    auto log = MetadataLog::open(used);
    if (!log.is_ok()) return 1;
    std::mt19937_64 rng(seed);
    for (int c = 0; c < 300; ++c) {
      for (int i = 0; i < 20; ++i) {
        Entry e = testing::random_entry(rng, used_state, g.cache_blocks, sb.sub_blocks());
        if (!(*log)->append(e).is_ok()) return 1;
        testing::model_apply(used_state, e);
      }
      if (!(*log)->commit().is_ok()) return 1;
    }
  }

  uint64_t failures = 0;
  for (uint64_t p = 0; p < points; ++p) {
    bool wrapped = p % 2 == 1;
    Outcome o = run_point(wrapped ? used.image() : fresh, g, sb.sub_blocks(), seed * 1000003 + p,
                          wrapped ? used_state : MappingTable{});
    if (!o.ok) {
      std::fprintf(stderr, "crash point %llu (seed %llu): %s\n", static_cast<unsigned long long>(p),
                   static_cast<unsigned long long>(seed * 1000003 + p), o.why.c_str());
      if (++failures >= 10) break;
    }
  }
  std::printf("%llu crash points, %llu failures\n", static_cast<unsigned long long>(points),
              static_cast<unsigned long long>(failures));
  return failures == 0 ? 0 : 1;
}
