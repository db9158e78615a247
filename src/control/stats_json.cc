#include "control/stats_json.h"

#include <nlohmann/json.hpp>

namespace rbdcache::control {

std::string stats_json(const cache::EngineStats& s) {
  nlohmann::json j = {
      {"mode", cache::mode_name(s.mode)},
      {"health", cache::health_name(s.health)},
      {"cache_bytes", s.cache_bytes},
      {"block_size", s.block_size},
      {"blocks", s.blocks},
      {"mapped_blocks", s.mapped_blocks},
      {"dirty_blocks", s.dirty_blocks},
      {"used_bytes", s.used_bytes},
      {"dirty_bytes", s.dirty_bytes},
      {"unknown_bytes", s.unknown_bytes},
      {"oldest_dirty_age_s", s.oldest_dirty_age_s},
      {"read_hits", s.read_hits},
      {"read_misses", s.read_misses},
      {"write_hits", s.write_hits},
      {"write_misses", s.write_misses},
      {"promotions", s.promotions},
      {"demotions", s.demotions},
      {"bytes_written_back", s.bytes_written_back},
      {"writeback_errors", s.writeback_errors},
      {"cache_read_errors", s.cache_read_errors},
      {"cache_write_errors", s.cache_write_errors},
      {"bypassed_bytes", s.bypassed_bytes},
      {"mapping_bytes", s.mapping_bytes},
      {"mapping_bytes_per_block", s.mapping_bytes_per_block},
      {"ready_slots", s.ready_slots},
  };
  return j.dump();
}

}  // namespace rbdcache::control
