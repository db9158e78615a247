#include "control/status_doc.h"

namespace rbdcache::control {

namespace {

// null when the denominator is 0: a ratio of nothing is unknown, not 0.
nlohmann::json ratio(uint64_t hits, uint64_t misses) {
  if (hits + misses == 0) return nullptr;
  return static_cast<double>(hits) / static_cast<double>(hits + misses);
}

nlohmann::json positive_or_null(double v) {
  if (v <= 0) return nullptr;
  return v;
}

}  // namespace

nlohmann::json status_document(Origin& origin, cache::AttachedCache* cache) {
  nlohmann::json d;
  d["format_version"] = kStatusFormatVersion;
  d["origin"] = origin.describe();
  d["origin_size_bytes"] = origin.size();
  if (cache == nullptr) {
    d["mode"] = "uncached";
    return d;
  }
  cache::CacheEngine& e = cache->engine();
  const cache::EngineStats s = e.stats();
  d["mode"] = cache::mode_name(s.mode);

  d["cache"] = {
      {"size_bytes", s.cache_bytes},
      {"block_size_bytes", s.block_size},
      {"blocks", s.blocks},
      {"mapped_blocks", s.mapped_blocks},
      {"used_bytes", s.used_bytes},
      {"dirty_bytes", s.dirty_bytes},
      {"dirty_blocks", s.dirty_blocks},
      {"oldest_dirty_age_seconds", s.oldest_dirty_age_s},
  };
  d["io"] = {
      {"read_hits", s.read_hits},
      {"read_misses", s.read_misses},
      {"read_hit_ratio", ratio(s.read_hits, s.read_misses)},
      {"write_hits", s.write_hits},
      {"write_misses", s.write_misses},
      {"write_hit_ratio", ratio(s.write_hits, s.write_misses)},
      {"promotions", s.promotions},
      {"demotions", s.demotions},
      {"bypassed_bytes", s.bypassed_bytes},
  };
  // The time to flush everything: dirty bytes over what the origin has
  // been measured to take, or over the flush's rate limit if lower.
  double bw = s.origin_write_bps;
  if (s.flush_max_rate_bps > 0 && (bw == 0 || static_cast<double>(s.flush_max_rate_bps) < bw)) {
    bw = static_cast<double>(s.flush_max_rate_bps);
  }
  nlohmann::json eta = nullptr;
  if (s.dirty_bytes == 0) {
    eta = 0.0;
  } else if (bw > 0) {
    eta = static_cast<double>(s.dirty_bytes) / bw;
  }
  d["writeback"] = {
      {"written_back_bytes", s.bytes_written_back},
      {"rate_bytes_per_second", s.writeback_rate_bps},
      {"origin_write_bandwidth_bytes_per_second", positive_or_null(s.origin_write_bps)},
      {"flush_eta_seconds", eta},
      {"errors", s.writeback_errors},
  };
  d["health"] = {
      {"state", cache::health_name(s.health)},
      {"reason", s.health_reason.empty() ? nlohmann::json(nullptr) : nlohmann::json(s.health_reason)},
      {"failed", s.health == cache::Health::kFailed},
      {"degraded", s.health == cache::Health::kDegraded},
      {"unknown_bytes", s.unknown_bytes},
      {"cache_read_errors", s.cache_read_errors},
      {"cache_write_errors", s.cache_write_errors},
  };
  d["flush"] = {
      {"active", s.flush_active},
      {"left_bytes", s.flush_left_bytes},
      {"max_rate_bytes_per_second", s.flush_max_rate_bps ? nlohmann::json(s.flush_max_rate_bps)
                                                         : nlohmann::json(nullptr)},
  };
  const metalog::LogStats ls = cache->log().stats();
  const metalog::Superblock& sb = cache->superblock();
  d["metadata"] = {
      {"log_size_bytes", uint64_t{sb.segment_size} * sb.segment_count},
      {"log_usage_ratio", ls.log_usage},
      {"segments", ls.wear.total},
      {"free_segments", ls.wear.free + ls.wear.erasable},
      {"erase_count_min", ls.wear.erase_min},
      {"erase_count_mean", ls.wear.erase_mean},
      {"erase_count_max", ls.wear.erase_max},
      {"commits", ls.commits},
  };
  d["memory"] = {
      {"mapping_bytes", s.mapping_bytes},
      {"mapping_bytes_per_block", s.mapping_bytes_per_block},
  };
  nlohmann::json own = {{"cache_uuid", sb.uuid.to_string()}};
  if (cache::CacheOwnership* o = cache->ownership()) {
    own["shared_image"] = true;
    own["exclusive_lock"] = o->holds_lock();
    own["cache_epoch"] = o->epoch();
  } else {
    own["shared_image"] = false;
    own["exclusive_lock"] = false;
    own["cache_epoch"] = nullptr;
  }
  d["ownership"] = own;
  return d;
}

}  // namespace rbdcache::control
