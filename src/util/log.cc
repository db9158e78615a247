#include "util/log.h"

#include <atomic>

namespace rbdcache::log {

namespace {
std::atomic<Level> g_level{Level::kInfo};
const char* level_word(Level l) {
  switch (l) {
    case Level::kDebug: return "debug";
    case Level::kInfo: return "info";
    case Level::kWarn: return "warning";
    case Level::kError: return "error";
  }
  return "";
}
}  // namespace

void set_level(Level l) { g_level.store(l); }
Level level() { return g_level.load(); }

void write_line(Level l, const std::string& message) {
  std::string line = fmt::format("rbdcache: {}: {}\n", level_word(l), message);
  ssize_t n = ::write(STDERR_FILENO, line.data(), line.size());
  (void)n;  // nowhere left to report a failed log write
}

}  // namespace rbdcache::log
