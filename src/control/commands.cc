#include "control/commands.h"

#include <chrono>
#include <thread>

#include <fmt/format.h>

#include "control/status_doc.h"
#include "util/log.h"

namespace rbdcache::control {

namespace {

using Clock = std::chrono::steady_clock;
using nlohmann::json;

json failure(const std::string& code, const std::string& error) {
  return {{"ok", false}, {"code", code}, {"error", error}};
}

json failure(const Status& st) {
  std::string code = "failed";
  if (st.err() == EBUSY || st.err() == EROFS) code = "locked";
  return failure(code, st.message());
}

// Records the cache's state in a shared image; ok for file origins.
Status record_state(cache::AttachedCache& c) {
  cache::CacheOwnership* own = c.ownership();
  if (own == nullptr) return Status::ok();
  return own->record_state(c.engine().mode(), c.engine().stats().dirty_bytes);
}

json cmd_mode(ControlContext& ctx, const json& req) {
  if (!req.contains("mode") || !req["mode"].is_string()) {
    return failure("bad-request", "mode needs \"mode\": writeback, writethrough or passthrough");
  }
  auto m = cache::parse_mode(req["mode"].get<std::string>());
  if (!m.is_ok()) return failure("bad-request", m.status().message());
  std::unique_lock lk(ctx.ops, std::try_to_lock);
  if (!lk) return failure("busy", "another command (a flush?) is changing the cache; try again");
  cache::CacheEngine& e = ctx.cache->engine();
  const cache::Mode old = e.mode();
  if (*m == cache::Mode::kWriteback && ctx.cache->ownership() != nullptr) {
    // Writeback may create dirty data: only with the image's lock.
    Status st = ctx.cache->take_lock();
    if (!st.is_ok()) return failure(st);
    e.set_mode(*m);
    st = record_state(*ctx.cache);
    if (!st.is_ok()) {
      e.set_mode(old);
      return failure(st);
    }
  } else {
    e.set_mode(*m);
  }
  return {{"ok", true}, {"mode", cache::mode_name(*m)}, {"previous", cache::mode_name(old)}};
}

json cmd_flush(ControlContext& ctx, const json& req, Responder& out) {
  const bool wait = req.value("wait", false);
  std::optional<cache::Mode> then;
  if (req.contains("then") && !req["then"].is_null()) {
    auto m = req["then"].is_string() ? cache::parse_mode(req["then"].get<std::string>())
                                     : Result<cache::Mode>(Status::invalid_argument("not a string"));
    if (!m.is_ok() || *m == cache::Mode::kWriteback) {
      return failure("bad-request", "\"then\" must be writethrough or passthrough");
    }
    then = *m;
  }
  double timeout_s = 0;
  if (req.contains("timeout") && req["timeout"].is_number()) timeout_s = req["timeout"].get<double>();
  uint64_t max_rate = 0;
  if (req.contains("max_rate") && req["max_rate"].is_number_unsigned()) {
    max_rate = req["max_rate"].get<uint64_t>();
  }

  std::unique_lock lk(ctx.ops, std::try_to_lock);
  if (!lk) return failure("busy", "another flush or mode change is running");
  cache::CacheEngine& e = ctx.cache->engine();
  // Switch first, so that no new dirty data can appear behind the flush.
  if (then) e.set_mode(*then);
  const auto t0 = Clock::now();
  e.begin_flush(max_rate);
  const uint64_t total = e.stats().flush_left_bytes;
  log::info("flush: writing back {} dirty bytes{}{}", total,
            then ? fmt::format(", mode now {}", cache::mode_name(*then)) : std::string(),
            max_rate ? fmt::format(", at most {} bytes/s", max_rate) : std::string());
  if (!wait) out.progress({{"started", true}, {"total_bytes", total}});

  for (;;) {
    const cache::EngineStats s = e.stats();
    const uint64_t left = s.flush_left_bytes;
    // With --then nothing new can become dirty: wait for all of it.
    const bool done = left == 0 && (!then || s.dirty_bytes == 0);
    const double elapsed = std::chrono::duration<double>(Clock::now() - t0).count();
    json eta = nullptr;
    if (left == 0) {
      eta = 0.0;
    } else if (s.writeback_rate_bps > 0) {
      eta = static_cast<double>(left) / s.writeback_rate_bps;
    }
    if (wait) {
      out.progress({{"progress",
                     {{"total_bytes", total},
                      {"left_bytes", left},
                      {"dirty_bytes", s.dirty_bytes},
                      {"rate_bytes_per_second", s.writeback_rate_bps},
                      {"eta_seconds", eta},
                      {"elapsed_seconds", elapsed},
                      {"writeback_errors", s.writeback_errors}}}});
    }
    if (done) break;
    if (out.stopping()) {
      e.end_flush();
      return failure("stopping", "the server is stopping; the flush did not finish");
    }
    if (timeout_s > 0 && elapsed >= timeout_s) {
      e.end_flush();
      return failure("timeout", fmt::format("timed out after {:.0f} s with {} bytes still to write "
                                            "back; the cache keeps them dirty",
                                            elapsed, left));
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(250));
  }
  // Writes that went straight to the origin need its flush too.
  Status st = e.sync_origin();
  e.end_flush();
  if (!st.is_ok()) return failure(st);
  st = record_state(*ctx.cache);
  if (!st.is_ok()) return failure("failed", "the data is on the origin, but recording it in the "
                                            "image's metadata failed: " + st.message());
  const cache::EngineStats s = e.stats();
  const double elapsed = std::chrono::duration<double>(Clock::now() - t0).count();
  log::info("flush: done in {:.1f} s; {} bytes dirty now, mode {}", elapsed, s.dirty_bytes,
            cache::mode_name(s.mode));
  return {{"ok", true},
          {"written_bytes", total},
          {"seconds", elapsed},
          {"dirty_bytes", s.dirty_bytes},
          {"mode", cache::mode_name(s.mode)},
          {"image_state", ctx.cache->ownership() == nullptr
                              ? json(nullptr)
                              : json(s.dirty_bytes == 0 && s.mode != cache::Mode::kWriteback
                                         ? "clean"
                                         : "dirty")}};
}

json cmd_invalidate(ControlContext& ctx, const json& req) {
  const bool discard_dirty = req.value("discard_dirty", false);
  std::unique_lock lk(ctx.ops, std::try_to_lock);
  if (!lk) return failure("busy", "another command (a flush?) is changing the cache; try again");
  cache::CacheEngine& e = ctx.cache->engine();
  const cache::EngineStats s = e.stats();
  if (s.dirty_bytes > 0 && !discard_dirty) {
    return failure("dirty", fmt::format(
        "{} bytes in the cache are dirty (not yet on the origin); run 'rbdcache flush --wait' "
        "first, or pass --discard-dirty to DESTROY them", s.dirty_bytes));
  }
  if (discard_dirty && s.dirty_bytes > 0) {
    log::warn("invalidate --discard-dirty: DISCARDING {} DIRTY BYTES; those writes are lost and "
              "the origin keeps older data", s.dirty_bytes);
  }
  auto r = e.invalidate(std::nullopt, discard_dirty);
  if (!r.is_ok()) return failure(r.status());
  Status st = record_state(*ctx.cache);
  if (!st.is_ok()) log::warn("recording the cache's state in the image: {}", st.to_string());
  return {{"ok", true},
          {"blocks", r->blocks},
          {"clean_bytes", r->clean_bytes},
          {"dirty_bytes", r->dirty_bytes}};
}

json cmd_release(ControlContext& ctx) {
  cache::CacheOwnership* own = ctx.cache->ownership();
  if (own == nullptr) return failure("bad-request", "the origin is not a shared (RBD) image; there is no lock to release");
  std::unique_lock lk(ctx.ops, std::try_to_lock);
  if (!lk) return failure("busy", "another command (a flush?) is changing the cache; try again");
  Status st = ctx.cache->release();
  if (!st.is_ok()) return failure(st.err() == EBUSY ? "dirty" : "failed", st.message());
  log::info("released the image's exclusive lock; another host may take it now");
  return {{"ok", true}};
}

}  // namespace

ControlHandler make_control_handler(ControlContext& ctx) {
  return [&ctx](const json& req, Responder& out) -> json {
    const std::string cmd = req["cmd"].get<std::string>();
    if (cmd == "status") return {{"ok", true}, {"status", status_document(ctx.origin, ctx.cache)}};
    if (cmd != "mode" && cmd != "flush" && cmd != "invalidate" && cmd != "release") {
      return failure("bad-request", fmt::format("unknown command '{}'", cmd));
    }
    if (ctx.cache == nullptr) return failure("no-cache", "this server runs without a cache");
    if (cmd == "mode") return cmd_mode(ctx, req);
    if (cmd == "flush") return cmd_flush(ctx, req, out);
    if (cmd == "invalidate") return cmd_invalidate(ctx, req);
    return cmd_release(ctx);
  };
}

}  // namespace rbdcache::control
