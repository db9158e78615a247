// metalog-fill: appends random mapping entries to a formatted metadata
// device and commits them, for the command-line tool tests.
//
// Usage: metalog-fill META_DEV COMMITS ENTRIES_PER_COMMIT [SEED]
#include <cstdio>
#include <cstdlib>
#include <random>

#include "metalog/writer.h"
#include "test_util.h"

using namespace rbdcache;
using namespace rbdcache::metalog;

int main(int argc, char** argv) {
  if (argc < 4) {
    std::fprintf(stderr, "usage: %s META_DEV COMMITS ENTRIES_PER_COMMIT [SEED]\n", argv[0]);
    return 2;
  }
  auto dev = FileBlockDevice::open(argv[1], false);
  if (!dev.is_ok()) {
    std::fprintf(stderr, "%s\n", dev.status().to_string().c_str());
    return 1;
  }
  auto log = MetadataLog::open(**dev);
  if (!log.is_ok()) {
    std::fprintf(stderr, "%s\n", log.status().to_string().c_str());
    return 1;
  }
  const Superblock& sb = (*log)->superblock();
  std::mt19937_64 rng(argc > 4 ? std::strtoull(argv[4], nullptr, 10) : 1);
  MappingTable model = (*log)->mappings();
  long commits = std::atol(argv[2]), per = std::atol(argv[3]);
  for (long c = 0; c < commits; ++c) {
    for (long i = 0; i < per; ++i) {
      Entry e = testing::random_entry(rng, model, static_cast<uint32_t>(sb.cache_block_count), sb.sub_blocks());
      if (Status st = (*log)->append(e); !st.is_ok()) {
        std::fprintf(stderr, "%s\n", st.to_string().c_str());
        return 1;
      }
      testing::model_apply(model, e);
    }
    if (Status st = (*log)->commit(); !st.is_ok()) {
      std::fprintf(stderr, "%s\n", st.to_string().c_str());
      return 1;
    }
  }
  std::printf("%zu mappings\n", model.size());
  return 0;
}
