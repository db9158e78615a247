// The status document: what `rbdcache status --json` prints and what the
// metrics endpoint exposes. Field names are stable and documented, one by
// one, in docs/status.md; tests/control checks the two against each other.
#pragma once

#include <nlohmann/json.hpp>

#include "cache/attach.h"
#include "origin/origin.h"

namespace rbdcache::control {

inline constexpr int kStatusFormatVersion = 1;

// Builds the document. `cache` is nullptr when serve runs without a cache;
// the cache sections are then absent and "mode" is "uncached". Thread-safe
// (reads counters under the engine's and the log's own locks); never blocks
// on the cluster.
nlohmann::json status_document(Origin& origin, cache::AttachedCache* cache);

}  // namespace rbdcache::control
