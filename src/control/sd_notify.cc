// Readiness notifications through libsystemd's sd_notify(3).
#include "control/sd_notify.h"

#include <systemd/sd-daemon.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>

#include "util/log.h"

namespace rbdcache::control {

namespace {

// STATUS=... with newlines (which would start another assignment) replaced.
std::string status_line(std::string_view status) {
  std::string line = "STATUS=";
  line.reserve(line.size() + status.size());
  for (char c : status) line.push_back(c == '\n' || c == '\r' ? ' ' : c);
  return line;
}

// Sends `state` (newline-separated assignments); logs a failure at debug.
void send(const std::string& state) {
  if (!notify_socket_set()) return;
  // unset_environment = 0: later notifications go to the same socket.
  int r = sd_notify(0, state.c_str());
  if (r < 0) {
    log::debug("sd_notify({}) failed: {}", state, std::strerror(-r));
  } else if (r == 0) {
    log::debug("sd_notify({}): no service manager to notify", state);
  }
}

}  // namespace

bool notify_socket_set() {
  const char* s = std::getenv("NOTIFY_SOCKET");
  return s != nullptr && s[0] != '\0';
}

void notify_ready(std::string_view status) {
  send("READY=1\n" + status_line(status) + "\nMAINPID=" + std::to_string(getpid()));
}

void notify_status(std::string_view status) { send(status_line(status)); }

void notify_stopping(std::string_view status) {
  std::string state = "STOPPING=1";
  if (!status.empty()) state += "\n" + status_line(status);
  send(state);
}

void notify_extend_timeout(std::chrono::microseconds extra) {
  send("EXTEND_TIMEOUT_USEC=" + std::to_string(std::max<int64_t>(0, extra.count())));
}

std::chrono::microseconds watchdog_interval() {
  uint64_t usec = 0;
  // unset_environment = 0; > 0 means enabled for this process.
  int r = sd_watchdog_enabled(0, &usec);
  if (r < 0) log::debug("sd_watchdog_enabled failed: {}", std::strerror(-r));
  return std::chrono::microseconds(r > 0 ? static_cast<int64_t>(usec) : 0);
}

void notify_watchdog() { send("WATCHDOG=1"); }

}  // namespace rbdcache::control
