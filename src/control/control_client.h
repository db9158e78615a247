// The client side of the control socket (control/control_server.h), for the
// CLI: one request, then the reply lines. Blocking; not for reactor threads.
#pragma once

#include <functional>
#include <string>

#include <nlohmann/json.hpp>

#include "rbdcache/status.h"

namespace rbdcache::control {

// Sends `request` to the server at `path`, calls `on_progress` for each
// progress line (it returns false to stop reading and disconnect), and
// returns the final line. Fails with a clear message when nobody listens at
// `path` or the server closes without a final line.
[[nodiscard]] Result<nlohmann::json> call(const std::string& path, const nlohmann::json& request,
                                          const std::function<bool(const nlohmann::json&)>& on_progress);

}  // namespace rbdcache::control
