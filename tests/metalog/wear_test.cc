// Wear test: 1,000,000 entry updates on a small metadata device; the most
// erased segment may be erased at most twice as often as the mean.
//
// Usage: metalog_wear_test [UPDATES]   (default 1000000)
#include <cstdio>
#include <cstdlib>
#include <random>

#include "metalog/reader.h"
#include "metalog/writer.h"
#include "test_util.h"

using namespace rbdcache;
using namespace rbdcache::metalog;

int main(int argc, char** argv) {
  uint64_t updates = argc > 1 ? std::strtoull(argv[1], nullptr, 10) : 1000000;
  testing::Geometry g;
  g.segments = 32;
  g.cache_blocks = 256;
  Superblock sb;
  MemBlockDevice dev(testing::formatted_image(g, &sb));
  auto log = MetadataLog::open(dev);
  if (!log.is_ok()) {
    std::fprintf(stderr, "open: %s\n", log.status().to_string().c_str());
    return 1;
  }
  std::mt19937_64 rng(7);
  MappingTable model;
  const SubBlockMask all = SubBlockMask::first(sb.sub_blocks());
  // A skewed workload: a quarter of the cache blocks take most updates, and
  // some blocks are written once and then left alone (static data).
  for (uint64_t u = 0; u < updates;) {
    int batch = std::uniform_int_distribution<int>(16, 128)(rng);
    for (int i = 0; i < batch && u < updates; ++i, ++u) {
      uint32_t c = (rng() % 4 == 0) ? static_cast<uint32_t>(rng() % g.cache_blocks)
                                    : static_cast<uint32_t>(rng() % (g.cache_blocks / 4));
      SubBlockMask dirty = (rng() & 1) ? all : SubBlockMask();
      Entry e = Entry::map(CacheBlock(c), OriginBlock(rng() % 100000), all, dirty);
      if (!(*log)->append(e).is_ok()) return 1;
      testing::model_apply(model, e);
    }
    if (Status st = (*log)->commit(); !st.is_ok()) {
      std::fprintf(stderr, "commit after %llu updates: %s\n", static_cast<unsigned long long>(u),
                   st.to_string().c_str());
      return 1;
    }
  }
  LogStats st = (*log)->stats();
  std::printf("%llu updates, %llu commits, %llu checkpoints: erase count min %u mean %.1f max %u\n",
              static_cast<unsigned long long>(updates), static_cast<unsigned long long>(st.commits),
              static_cast<unsigned long long>(st.checkpoints), st.wear.erase_min, st.wear.erase_mean,
              st.wear.erase_max);
  log = Status::io_error("closed");
  auto rec = recover_log(dev);
  if (!rec.is_ok() || rec->state.mappings() != model) {
    std::fprintf(stderr, "recovered state differs from the model\n");
    return 1;
  }
  if (st.wear.erase_mean <= 0 || st.wear.erase_max > 2 * st.wear.erase_mean) {
    std::fprintf(stderr, "uneven wear: max %u > 2 x mean %.1f\n", st.wear.erase_max, st.wear.erase_mean);
    return 1;
  }
  return 0;
}
