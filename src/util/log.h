// Minimal logging to stderr. Every line starts with "rbdcache: " and a level
// word, so that journald and test logs can be grepped. Thread-safe: each
// line is written with one write(2).
#pragma once

#include <unistd.h>

#include <string>

#include <fmt/format.h>

namespace rbdcache::log {

enum class Level { kDebug = 0, kInfo = 1, kWarn = 2, kError = 3 };

// Lines below this level are dropped. Set once at start-up.
void set_level(Level level);
Level level();

void write_line(Level level, const std::string& message);

template <typename... Args>
void debug(fmt::format_string<Args...> f, Args&&... args) {
  if (level() <= Level::kDebug) write_line(Level::kDebug, fmt::format(f, std::forward<Args>(args)...));
}
template <typename... Args>
void info(fmt::format_string<Args...> f, Args&&... args) {
  if (level() <= Level::kInfo) write_line(Level::kInfo, fmt::format(f, std::forward<Args>(args)...));
}
template <typename... Args>
void warn(fmt::format_string<Args...> f, Args&&... args) {
  write_line(Level::kWarn, fmt::format(f, std::forward<Args>(args)...));
}
template <typename... Args>
void error(fmt::format_string<Args...> f, Args&&... args) {
  write_line(Level::kError, fmt::format(f, std::forward<Args>(args)...));
}

}  // namespace rbdcache::log
