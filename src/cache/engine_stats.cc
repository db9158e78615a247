#include "cache/engine_stats.h"

namespace rbdcache::cache {

const char* mode_name(Mode m) {
  switch (m) {
    case Mode::kWriteback: return "writeback";
    case Mode::kWritethrough: return "writethrough";
    case Mode::kPassthrough: return "passthrough";
  }
  return "?";
}

const char* health_name(Health h) {
  switch (h) {
    case Health::kOk: return "ok";
    case Health::kDegraded: return "degraded";
    case Health::kFailed: return "failed";
  }
  return "?";
}

void EngineCounters::fill(EngineStats& s) const {
  auto get = [](const std::atomic<uint64_t>& c) { return c.load(std::memory_order_relaxed); };
  s.read_hits = get(read_hits);
  s.read_misses = get(read_misses);
  s.write_hits = get(write_hits);
  s.write_misses = get(write_misses);
  s.promotions = get(promotions);
  s.bytes_written_back = get(bytes_written_back);
  s.writeback_errors = get(writeback_errors);
  s.cache_read_errors = get(cache_read_errors);
  s.cache_write_errors = get(cache_write_errors);
  s.bypassed_bytes = get(bypassed_bytes);
}

}  // namespace rbdcache::cache
