// The control socket's commands, served by ControlServer. Each request is a
// JSON object with "cmd"; docs/operations.md lists them with their fields:
//
//   status                         -> {"ok", "status": <status document>}
//   mode {"mode"}                  -> {"ok", "mode", "previous"}
//   flush {"wait", "then", "timeout", "max_rate"}
//                                  -> progress lines, then {"ok", ...}
//   invalidate {"discard_dirty"}   -> {"ok", "blocks", "clean_bytes", "dirty_bytes"}
//   release                        -> {"ok"}
//
// Failures are {"ok": false, "code": C, "error": text} with code one of
// bad-request, no-cache, busy, dirty, locked, timeout, stopping, failed.
#pragma once

#include <mutex>

#include "cache/attach.h"
#include "control/control_server.h"
#include "origin/origin.h"

namespace rbdcache::control {

struct ControlContext {
  Origin& origin;               // what serve exports (for status)
  cache::AttachedCache* cache;  // nullptr when serving uncached
  // One state-changing command at a time (mode, flush, invalidate, release).
  std::mutex ops;
};

// The handler for ControlServer. `ctx` must outlive the server.
ControlHandler make_control_handler(ControlContext& ctx);

}  // namespace rbdcache::control
