// `status`, `flush`, `mode`, `invalidate` and `release`: clients of the
// control socket of a running `rbdcache serve` (control/commands.h).
#include <fmt/format.h>
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <memory>

#include "cli/commands.h"
#include "control/control_client.h"
#include "util/log.h"

namespace rbdcache::cli {

namespace {

using nlohmann::json;

constexpr int kExitTimeout = 3;

std::string human_bytes(double b) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB"};
  int u = 0;
  while (b >= 1024 && u < 5) {
    b /= 1024;
    ++u;
  }
  return u == 0 ? fmt::format("{:.0f} {}", b, units[u]) : fmt::format("{:.1f} {}", b, units[u]);
}

std::string human_seconds(double s) {
  if (s < 60) return fmt::format("{:.0f} s", s);
  const auto t = static_cast<uint64_t>(s);
  if (t < 3600) return fmt::format("{}:{:02}", t / 60, t % 60);
  return fmt::format("{}:{:02}:{:02}", t / 3600, (t / 60) % 60, t % 60);
}

double num(const json& j, const char* key) {
  auto it = j.find(key);
  return it != j.end() && it->is_number() ? it->get<double>() : 0.0;
}

std::string percent(const json& j, const char* key) {
  auto it = j.find(key);
  if (it == j.end() || !it->is_number()) return "-";
  return fmt::format("{:.1f}%", it->get<double>() * 100);
}

// Adds --control to a client subcommand.
void add_control_option(CLI::App* cmd, std::string& path) {
  cmd->add_option("-c,--control", path,
                  "The server's control socket (serve --control; by default the NBD socket's\n"
                  "path with .sock replaced by .ctl). Also read from $RBDCACHE_CONTROL")
      ->envname("RBDCACHE_CONTROL")
      ->required()
      ->type_name("PATH");
}

// Sends one request and prints a failure; returns the final line or nullopt.
std::optional<json> request(const std::string& path, const json& req,
                            const std::function<bool(const json&)>& on_progress = nullptr) {
  auto r = control::call(
      path, req, on_progress ? on_progress : [](const json&) { return true; });
  if (!r.is_ok()) {
    log::error("{}", r.status().message());
    return std::nullopt;
  }
  return std::move(r).value();
}

int print_failure(const json& reply) {
  std::string code = reply.value("code", "failed");
  log::error("{}", reply.value("error", "the server reported a failure"));
  return code == "timeout" ? kExitTimeout : 1;
}

// Sends a one-answer request; on success hands the reply to `on_ok`.
// Returns the exit status.
int simple_command(const std::string& path, const json& req,
                   const std::function<void(const json&)>& on_ok) {
  auto reply = request(path, req);
  if (!reply) return 1;
  if (!reply->value("ok", false)) return print_failure(*reply);
  on_ok(*reply);
  return 0;
}

void print_status_table(const json& d) {
  auto row = [](const std::string& k, const std::string& v) { fmt::print("  {:<22}{}\n", k, v); };
  fmt::print("rbdcache: {} ({})\n", d.value("origin", "?"),
             human_bytes(num(d, "origin_size_bytes")));
  row("mode", d.value("mode", "?"));
  if (!d.contains("cache")) return;
  const json& c = d["cache"];
  const json& io = d["io"];
  const json& wb = d["writeback"];
  const json& fl = d["flush"];
  const json& md = d["metadata"];
  const json& mem = d["memory"];
  const json& own = d["ownership"];
  const double size = num(c, "size_bytes");
  row("cache", fmt::format("{}, {} blocks of {}", human_bytes(size), num(c, "blocks"),
                           human_bytes(num(c, "block_size_bytes"))));
  row("used", fmt::format("{} ({:.1f}%), {} blocks", human_bytes(num(c, "used_bytes")),
                          size ? 100 * num(c, "used_bytes") / size : 0.0, num(c, "mapped_blocks")));
  std::string dirty =
      fmt::format("{} ({:.1f}%) in {} blocks", human_bytes(num(c, "dirty_bytes")),
                  size ? 100 * num(c, "dirty_bytes") / size : 0.0, num(c, "dirty_blocks"));
  if (num(c, "dirty_bytes") > 0) {
    dirty += fmt::format(", oldest {}", human_seconds(num(c, "oldest_dirty_age_seconds")));
  }
  row("dirty", dirty);
  row("read hits", fmt::format("{} ({} hits, {} misses)", percent(io, "read_hit_ratio"),
                               num(io, "read_hits"), num(io, "read_misses")));
  row("write hits", fmt::format("{} ({} hits, {} misses)", percent(io, "write_hit_ratio"),
                                num(io, "write_hits"), num(io, "write_misses")));
  row("promotions", fmt::format("{}, demotions {}", num(io, "promotions"), num(io, "demotions")));
  row("bypassed", human_bytes(num(io, "bypassed_bytes")));
  std::string origin_bw =
      wb["origin_write_bandwidth_bytes_per_second"].is_number()
          ? human_bytes(num(wb, "origin_write_bandwidth_bytes_per_second")) + "/s"
          : "not measured yet";
  row("writeback",
      fmt::format("{}/s now, {} written back", human_bytes(num(wb, "rate_bytes_per_second")),
                  human_bytes(num(wb, "written_back_bytes"))));
  row("origin bandwidth", origin_bw);
  row("time to flush", wb["flush_eta_seconds"].is_number()
                           ? human_seconds(num(wb, "flush_eta_seconds"))
                           : "unknown (no writeback measured yet)");
  row("writeback errors", fmt::format("{}", num(wb, "errors")));
  if (fl.value("active", false)) {
    row("flush", fmt::format("running, {} left", human_bytes(num(fl, "left_bytes"))));
  }
  row("metadata log",
      fmt::format("{}, {} in use, {} segments ({} free)", human_bytes(num(md, "log_size_bytes")),
                  percent(md, "log_usage_ratio"), num(md, "segments"), num(md, "free_segments")));
  row("segment wear",
      fmt::format("erase counts min {} / mean {:.2f} / max {}", num(md, "erase_count_min"),
                  num(md, "erase_count_mean"), num(md, "erase_count_max")));
  row("mapping RAM",
      fmt::format("{} ({:.1f} B per cache block)", human_bytes(num(mem, "mapping_bytes")),
                  num(mem, "mapping_bytes_per_block")));
  if (own.value("shared_image", false)) {
    row("exclusive lock", own.value("exclusive_lock", false) ? "held" : "not held");
    row("cache epoch", fmt::format("{}", num(own, "cache_epoch")));
  }
  row("cache uuid", own.value("cache_uuid", "?"));
}

// Renders flush progress: a bar on a terminal, a plain line per second
// otherwise.
class FlushProgress {
 public:
  explicit FlushProgress(bool tty) : tty_(tty) {}
  void update(const json& p) {
    const double total = num(p, "total_bytes");
    const double left = num(p, "left_bytes");
    const double rate = num(p, "rate_bytes_per_second");
    const double elapsed = num(p, "elapsed_seconds");
    std::string eta = p["eta_seconds"].is_number() ? human_seconds(num(p, "eta_seconds")) : "?";
    const double done = total > 0 ? (total - left) / total : 1.0;
    if (tty_) {
      constexpr int kWidth = 30;
      const int fill = static_cast<int>(std::lround(done * kWidth));
      fmt::print("\r[{}{}] {:3.0f}%  {} left  {}/s  ETA {}   ", std::string(fill, '#'),
                 std::string(kWidth - fill, '.'), done * 100, human_bytes(left), human_bytes(rate),
                 eta);
      std::fflush(stdout);
      drawn_ = true;
    } else if (elapsed >= next_line_ || left == 0) {
      fmt::print("flush: {} of {} left, {}/s, ETA {}\n", human_bytes(left), human_bytes(total),
                 human_bytes(rate), eta);
      std::fflush(stdout);
      next_line_ = elapsed + 1.0;
    }
  }
  void finish() {
    if (drawn_) fmt::print("\n");
  }

 private:
  bool tty_;
  bool drawn_ = false;
  double next_line_ = 0;
};

struct FlushArgs {
  std::string control;
  bool wait = false;
  std::string then;
  double timeout = 0;
  uint64_t max_rate = 0;
};

int run_flush(const FlushArgs& a) {
  json req = {{"cmd", "flush"}, {"wait", a.wait}};
  if (!a.then.empty()) req["then"] = a.then;
  if (a.timeout > 0) req["timeout"] = a.timeout;
  if (a.max_rate > 0) req["max_rate"] = a.max_rate;
  FlushProgress bar(isatty(STDOUT_FILENO) == 1);
  bool started = false;
  auto reply = request(a.control, req, [&](const json& line) {
    if (line.contains("progress")) bar.update(line["progress"]);
    if (line.value("started", false)) {
      started = true;
      fmt::print("flush started: {} to write back{}; 'rbdcache status' shows progress\n",
                 human_bytes(num(line, "total_bytes")),
                 a.then.empty() ? "" : fmt::format(", mode now {}", a.then));
      return false;  // without --wait: leave it running
    }
    return true;
  });
  bar.finish();
  if (!reply) return 1;
  if (started) return 0;
  if (!reply->value("ok", false)) return print_failure(*reply);
  const json& state = (*reply)["image_state"];
  fmt::print(
      "flush complete: {} written back in {:.1f} s; the origin holds every acknowledged "
      "write (mode {}{})\n",
      human_bytes(num(*reply, "written_bytes")), num(*reply, "seconds"), reply->value("mode", "?"),
      state.is_string() ? ", image recorded as " + state.get<std::string>() : std::string());
  return 0;
}

}  // namespace

void add_control_commands(CLI::App& app, int& exit_code) {
  // status
  {
    struct Args {
      std::string control;
      bool json_out = false;
    };
    auto a = std::make_shared<Args>();
    auto* cmd = app.add_subcommand("status", "Show what a running server's cache holds and does");
    cmd->footer("\nThe --json fields are documented in docs/status.md; their names are stable.\n");
    add_control_option(cmd, a->control);
    cmd->add_flag("--json", a->json_out, "Print the status document as JSON");
    cmd->callback([a, &exit_code] {
      exit_code = simple_command(a->control, {{"cmd", "status"}}, [&](const json& reply) {
        if (a->json_out) {
          fmt::print("{}\n", reply["status"].dump(2));
        } else {
          print_status_table(reply["status"]);
        }
      });
    });
  }
  // flush
  {
    auto a = std::make_shared<FlushArgs>();
    auto* cmd = app.add_subcommand(
        "flush", "Write every dirty block back to the origin (before a live migration)");
    cmd->footer(
        "\nWrites back every block that is dirty when the command starts, flushes the origin\n"
        "and records the cache's state in the RBD image's metadata. Client I/O goes on\n"
        "meanwhile. With --then the mode changes first, so that no new dirty data can appear;\n"
        "the image is then recorded as clean.\n\n"
        "Exit status: 0 when the origin holds every write acknowledged before the flush\n"
        "began; 1 on failure; 3 when --timeout ran out (the data stays dirty in the cache).\n\n"
        "Before migrating a VM: rbdcache flush --wait --then passthrough, then rbdcache "
        "release.\n");
    add_control_option(cmd, a->control);
    cmd->add_flag("--wait", a->wait,
                  "Wait until the flush is complete, showing progress (a bar on a terminal,\n"
                  "plain lines otherwise); without it the flush starts and the command returns");
    cmd->add_option("--then", a->then,
                    "Switch to this mode as the flush starts: writethrough or passthrough")
        ->check(CLI::IsMember({"writethrough", "passthrough"}))
        ->type_name("MODE");
    cmd->add_option("--timeout", a->timeout, "Give up after this many seconds (exit status 3)")
        ->check(CLI::PositiveNumber)
        ->type_name("SECONDS");
    cmd->add_option("--max-rate", a->max_rate,
                    "Write back at most this many bytes per second (e.g. 50M; default: no limit)")
        ->transform(CLI::AsSizeValue(false))
        ->type_name("SIZE");
    cmd->callback([a, &exit_code] { exit_code = run_flush(*a); });
  }
  // mode
  {
    struct Args {
      std::string control;
      std::string mode;
    };
    auto a = std::make_shared<Args>();
    auto* cmd = app.add_subcommand("mode", "Change a running server's cache mode");
    cmd->footer(
        "\nLeaving writeback does not write dirty blocks back by itself; 'rbdcache flush' does.\n"
        "Entering writeback on an RBD image takes the image's exclusive lock first.\n");
    add_control_option(cmd, a->control);
    cmd->add_option("mode", a->mode, "writeback, writethrough or passthrough")
        ->required()
        ->check(CLI::IsMember({"writeback", "writethrough", "passthrough"}))
        ->type_name("MODE");
    cmd->callback([a, &exit_code] {
      exit_code =
          simple_command(a->control, {{"cmd", "mode"}, {"mode", a->mode}}, [&](const json& reply) {
            fmt::print("mode: {} (was {})\n", reply.value("mode", "?"),
                       reply.value("previous", "?"));
          });
    });
  }
  // invalidate
  {
    struct Args {
      std::string control;
      bool discard_dirty = false;
    };
    auto a = std::make_shared<Args>();
    auto* cmd =
        app.add_subcommand("invalidate", "Drop every clean block from a running server's cache");
    cmd->footer(
        "\nRefused while any block is dirty: run 'rbdcache flush --wait' first.\n"
        "--discard-dirty DESTROYS the dirty blocks as well: writes that clients were told are\n"
        "done, and that the origin does not have, are lost for good.\n");
    add_control_option(cmd, a->control);
    cmd->add_flag("--discard-dirty", a->discard_dirty,
                  "DESTROY dirty data too (acknowledged writes the origin lacks are lost)");
    cmd->callback([a, &exit_code] {
      if (a->discard_dirty) {
        log::warn(
            "--discard-dirty: every dirty block in the cache will be DESTROYED; the origin "
            "keeps its older data");
      }
      exit_code = simple_command(
          a->control, {{"cmd", "invalidate"}, {"discard_dirty", a->discard_dirty}},
          [&](const json& reply) {
            fmt::print("invalidated {} blocks: {} clean dropped", num(reply, "blocks"),
                       human_bytes(num(reply, "clean_bytes")));
            if (num(reply, "dirty_bytes") > 0) {
              fmt::print(", {} DIRTY DATA DESTROYED", human_bytes(num(reply, "dirty_bytes")));
            }
            fmt::print("\n");
          });
    });
  }
  // release
  {
    auto control = std::make_shared<std::string>();
    auto* cmd = app.add_subcommand(
        "release", "Release the RBD image's exclusive lock after a flush, for a migration target");
    cmd->footer(
        "\nRefused while anything is dirty or the mode is writeback. Afterwards this server must\n"
        "not write to the image any more: stop it once the VM has moved (see "
        "docs/migration.md).\n");
    add_control_option(cmd, *control);
    cmd->callback([control, &exit_code] {
      exit_code = simple_command(*control, {{"cmd", "release"}}, [](const json&) {
        fmt::print("released the image's exclusive lock\n");
      });
    });
  }
}

}  // namespace rbdcache::cli
