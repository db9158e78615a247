// The cache engine's statistics as one line of JSON (field names as in
// cache::EngineStats), for the log (SIGUSR1).
#pragma once

#include <string>

#include "cache/engine_stats.h"

namespace rbdcache::control {

std::string stats_json(const cache::EngineStats& s);

}  // namespace rbdcache::control
