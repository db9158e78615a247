// `rbdcache serve`: export an origin over NBD.
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <thread>

#include "cli/commands.h"
#include "cache/attach.h"
#include "control/commands.h"
#include "control/control_server.h"
#include "control/metrics.h"
#include "control/stats_json.h"
#include "control/sd_notify.h"
#include "control/status_doc.h"
#include "nbd/server.h"
#include "origin/file_origin.h"
#include "origin/rbd_origin.h"
#include "util/log.h"

namespace rbdcache::cli {

namespace {

struct ServeArgs {
  std::string cache_dev;
  std::string meta_dev;
  std::string mode = "writeback";
  uint64_t sequential_cutoff = 4u << 20;
  double dirty_high = 10;
  double dirty_low = 5;
  double max_dirty_age = 30;
  double commit_interval = 1;
  std::string origin;
  std::string socket;
  std::string socket_mode;   // octal, e.g. "0660"; empty for the default
  std::string socket_group;  // a group name or a numeric gid; empty for none
  std::string config;
  std::string control;
  bool no_control = false;
  std::string metrics;
  std::string listen;
  std::string export_name;
  bool read_only = false;
  unsigned threads = 0;
  double handshake_timeout = 30;
  bool verbose = false;
  bool force = false;
  RbdOptions rbd;  // --ceph-conf, --ceph-id, --keyring, --ceph-timeout, --rbd-queue-depth
};

// Empty when `v` is an origin URI that serve accepts; otherwise why not.
std::string check_origin_uri(const std::string& v) {
  if (v.rfind("file:", 0) == 0) {
    return v.size() > 5 ? std::string() : "file: needs a path, as in file:/path/to/image";
  }
  if (v.rfind("rbd:", 0) == 0) {
    auto uri = parse_rbd_uri(v);
    return uri.is_ok() ? std::string() : uri.status().message();
  }
  return "expected file:PATH, rbd:POOL/IMAGE or rbd:POOL/NAMESPACE/IMAGE, got '" + v + "'";
}

// Opens the origin named by a URI such as file:/var/lib/img.raw or
// rbd:pool/image (the Ceph options come from `rbd`).
Result<std::unique_ptr<Origin>> open_origin(const std::string& uri, bool read_only,
                                            const RbdOptions& rbd) {
  if (uri.rfind("file:", 0) == 0) {
    std::string path = uri.substr(5);
    if (path.empty()) return Status::invalid_argument("--origin file: needs a path, as in file:/path/to/image");
    auto o = FileOrigin::open(path, read_only);
    if (!o.is_ok()) return o.status();
    if (!o.value()->uses_direct_io()) {
      log::info("origin '{}' does not support O_DIRECT; using buffered I/O", path);
    }
    return std::unique_ptr<Origin>(std::move(o).value());
  }
  if (uri.rfind("rbd:", 0) == 0) {
    auto parsed = parse_rbd_uri(uri);
    if (!parsed.is_ok()) return parsed.status();
    RbdOptions opts = rbd;
    opts.read_only = read_only;
    auto o = RbdOrigin::open(parsed.value(), opts);
    if (!o.is_ok()) return o.status();
    const RbdOrigin& img = *o.value();
    log::info("opened RBD image {} as {}: id {}, {} bytes, {}-byte objects, queue depth {}",
              img.describe(), img.client_name(), img.image_id(), img.size(), img.object_size(),
              img.queue_depth());
    return std::unique_ptr<Origin>(std::move(o).value());
  }
  return Status::invalid_argument(
      fmt::format("unsupported origin '{}': expected file:PATH or rbd:POOL/IMAGE", uri));
}

// open_origin() with the shutdown signals blocked; SIGTERM or SIGINT while
// it waits (an RBD open can take up to --ceph-timeout) ends the process at
// once with status 128+signal, as the default action would have.
Result<std::unique_ptr<Origin>> open_origin_interruptibly(const ServeArgs& args) {
  std::atomic<bool> opening{true};
  std::thread watcher([&opening] {
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    const timespec tick{0, 100'000'000};
    while (opening.load()) {
      int sig = sigtimedwait(&set, nullptr, &tick);
      if (sig > 0) {
        log::error("interrupted by signal {} while opening the origin", sig);
        _exit(128 + sig);
      }
    }
  });
  auto origin = open_origin(args.origin, args.read_only, args.rbd);
  opening.store(false);
  watcher.join();
  return origin;
}

// CLI11 2.1 reads set_config() files only for the top-level app, so serve
// reads its own: each `key = value` gives --key its value unless the command
// line set it. Runs as --config's callback: before the other options'
// callbacks (--config is added first) and before the required/needs checks.
// Throws CLI::FileError or CLI::ConfigError (exit status 2).
void apply_config_file(CLI::App& cmd, const std::string& path) {
  CLI::ConfigTOML toml;
  for (const CLI::ConfigItem& item : toml.from_file(path)) {
    CLI::Option* opt = item.parents.empty() && item.name != "config" && item.name != "help"
                           ? cmd.get_option_no_throw("--" + item.name)
                           : nullptr;
    if (opt == nullptr) {
      throw CLI::ConfigError(fmt::format("{}: unknown setting '{}'", path, item.fullname()),
                             CLI::ExitCodes::ConfigError);
    }
    if (opt->count() > 0) continue;  // the command line wins
    if (opt->get_expected_min() == 0) {
      opt->add_result(opt->get_flag_value(item.name, toml.to_flag(item)));
    } else {
      opt->add_result(item.inputs);
    }
  }
}

// The control socket's path: --control, else the NBD socket's path with
// ".sock" replaced by ".ctl" (or ".ctl" appended); empty for none.
std::string control_path(const ServeArgs& args) {
  if (args.no_control) return {};
  if (!args.control.empty()) return args.control;
  if (args.socket.empty()) return {};
  std::string p = args.socket;
  if (p.size() > 5 && p.compare(p.size() - 5, 5, ".sock") == 0) p.resize(p.size() - 5);
  return p + ".ctl";
}

// A reactor on a thread of its own for the control plane (control socket,
// metrics), so that operators are answered however busy the data path is.
class ControlThread {
 public:
  Status start() {
    auto r = io::Reactor::create(64, 900);
    if (!r.is_ok()) return r.status().with_context("cannot start the control reactor");
    reactor_ = std::move(r).value();
    thread_ = std::thread([this] { reactor_->run(); });
    return Status::ok();
  }
  io::Reactor& reactor() { return *reactor_; }
  ~ControlThread() {
    if (reactor_) {
      reactor_->stop();
      thread_.join();
    }
  }

 private:
  std::unique_ptr<io::Reactor> reactor_;
  std::thread thread_;
};

int serve(const ServeArgs& args) {
  if (args.verbose) log::set_level(log::Level::kDebug);
  // Before the origin starts threads of its own (librados), so that they
  // inherit the mask and SIGTERM reaches only the main thread's sigwait().
  nbd::Server::block_shutdown_signals();
  auto origin = open_origin_interruptibly(args);
  if (!origin.is_ok()) {
    log::error("{}", origin.status().to_string());
    return 1;
  }
  // With a cache, the engine is what the server serves.
  std::unique_ptr<cache::AttachedCache> attached;
  Origin* served = origin.value().get();
  if (!args.cache_dev.empty()) {
    cache::AttachOptions ao;
    ao.cache_dev = args.cache_dev;
    ao.meta_dev = args.meta_dev;
    ao.force = args.force;
    char host[256] = {};
    if (gethostname(host, sizeof host - 1) == 0) ao.host = host;
    auto mode = cache::parse_mode(args.mode);
    if (!mode.is_ok()) {
      log::error("{}", mode.status().to_string());
      return 2;
    }
    ao.engine.mode = mode.value();
    ao.engine.sequential_cutoff = args.sequential_cutoff;
    ao.engine.dirty_high_watermark = args.dirty_high / 100.0;
    ao.engine.dirty_low_watermark = args.dirty_low / 100.0;
    ao.engine.max_dirty_age =
        std::chrono::milliseconds(static_cast<int64_t>(args.max_dirty_age * 1000));
    ao.engine.commit_interval =
        std::chrono::milliseconds(std::max<int64_t>(1, static_cast<int64_t>(args.commit_interval * 1000)));
    auto c = cache::AttachedCache::open(*origin.value(), ao);
    if (!c.is_ok()) {
      log::error("cannot attach the cache: {}", c.status().to_string());
      return 1;
    }
    attached = std::move(c).value();
    served = &attached->engine();
  }
  Origin& o = *served;
  OriginCaps caps = o.caps();

  nbd::ExportInfo exp;
  exp.name = args.export_name;
  exp.description = "rbdcache export of " + o.describe();
  exp.size = o.size();
  exp.read_only = args.read_only || caps.read_only;
  exp.can_flush = caps.can_flush;
  exp.can_trim = caps.can_trim;
  exp.can_zero = caps.can_zero;
  exp.can_fast_zero = caps.can_fast_zero;
  exp.can_cache = caps.can_cache;
  exp.can_multi_conn = true;  // one origin, shared by every connection

  nbd::ServerOptions opts;
  opts.socket_path = args.socket;
  // Both were validated while the command line was parsed.
  if (mode_t m = 0; !args.socket_mode.empty() && nbd::parse_socket_mode(args.socket_mode, m).is_ok()) {
    opts.socket_mode = m;
  }
  if (gid_t g = 0; !args.socket_group.empty() && nbd::parse_socket_group(args.socket_group, g).is_ok()) {
    opts.socket_gid = g;
  }
  if (!args.listen.empty()) opts.listen = args.listen;
  opts.threads = args.threads != 0 ? args.threads : std::max(1u, std::thread::hardware_concurrency());
  opts.handshake_timeout =
      std::chrono::milliseconds(static_cast<int64_t>(args.handshake_timeout * 1000));

  if (attached) {
    cache::CacheEngine* engine = &attached->engine();
    opts.on_usr1 = [engine] { log::info("stats {}", control::stats_json(engine->stats())); };
  }
  opts.on_shutdown = [] { control::notify_stopping("finishing in-flight requests"); };
  nbd::Server server(o, exp, opts);
  Status st = server.bind();
  if (!st.is_ok()) {
    log::error("{}", st.to_string());
    return 1;
  }

  // The control plane.
  ControlThread control_thread;
  st = control_thread.start();
  if (!st.is_ok()) {
    log::error("{}", st.to_string());
    return 1;
  }
  control::ControlContext control_ctx{*origin.value(), attached.get(), {}};
  std::unique_ptr<control::ControlServer> control_server;
  if (std::string path = control_path(args); !path.empty()) {
    auto cs = control::ControlServer::start(control_thread.reactor(), path,
                                            control::make_control_handler(control_ctx));
    if (!cs.is_ok()) {
      log::error("{}", cs.status().to_string());
      return 1;
    }
    control_server = std::move(cs).value();
    log::info("control socket at {}", path);
  } else {
    log::info("no control socket (serving on TCP only; give --control PATH for one)");
  }
  std::unique_ptr<control::MetricsServer> metrics;
  if (!args.metrics.empty()) {
    Origin* raw_origin = origin.value().get();
    cache::AttachedCache* cache = attached.get();
    auto ms = control::MetricsServer::start(
        control_thread.reactor(), args.metrics,
        [raw_origin, cache] { return control::status_document(*raw_origin, cache); });
    if (!ms.is_ok()) {
      log::error("--metrics {}: {}", args.metrics, ms.status().to_string());
      return 1;
    }
    metrics = std::move(ms).value();
    log::info("metrics at {}", metrics->url());
  }
  log::info("serving {} ({} bytes{}) at {} with {} thread(s)", o.describe(), exp.size,
            exp.read_only ? ", read-only" : "", server.uri(), opts.threads);
  if (server.tcp_port() != 0) log::info("also listening on TCP port {}", server.tcp_port());
  // Every socket is bound: systemd (Type=notify) may start the VM now.
  control::notify_ready(fmt::format("serving {} at {}", o.describe(), server.uri()));
  st = server.run();
  // No new operator commands; running ones (a flush) give up.
  if (metrics) metrics->stop();
  if (control_server) control_server->stop();
  if (!st.is_ok()) {
    log::error("{}", st.to_string());
    return 1;
  }
  if (attached) {
    // Every connection has drained: commit the metadata and close cleanly.
    // Dirty blocks stay dirty in the cache, to be written back next time.
    cache::EngineStats es = attached->engine().stats();
    st = attached->close();
    if (!st.is_ok()) {
      log::error("closing the cache: {}", st.to_string());
      return 1;
    }
    log::info("cache closed: {} blocks cached, {} bytes dirty", es.mapped_blocks, es.dirty_bytes);
  }
  return 0;
}

}  // namespace

void add_serve_command(CLI::App& app, int& exit_code) {
  auto args = std::make_shared<ServeArgs>();
  auto* cmd = app.add_subcommand("serve", "Serve an origin image over NBD");
  // --config must be the first option added: its callback fills the others.
  cmd->add_option("--config", args->config,
                  "Read options from this file: one 'option = value' per line, with the long\n"
                  "option names without dashes (see docs/examples/rbdcache-vm.conf); options on\n"
                  "the command line win")
      ->each([cmd](const std::string& path) { apply_config_file(*cmd, path); })
      ->type_name("FILE");
  cmd->footer(
      "\nThe export is reachable as nbd+unix:///NAME?socket=PATH (or nbd://HOST:PORT/NAME with\n"
      "--listen). The empty export name also selects it. SIGTERM or SIGINT stops the server\n"
      "after every in-flight request has been answered.\n\n"
      "Ceph: --origin rbd:POOL/IMAGE (or rbd:POOL/NAMESPACE/IMAGE) opens an RBD image with\n"
      "librbd. Without --ceph-conf, --ceph-id and --keyring the usual Ceph defaults apply, as\n"
      "for the rbd command: $CEPH_CONF or /etc/ceph/ceph.conf, CEPH_ARGS (--id, --keyring...),\n"
      "then /etc/ceph/ceph.client.ID.keyring. If `rbd ls POOL` works, so does rbd:POOL/IMAGE.\n\n"
      "Examples:\n"
      "  rbdcache serve --origin file:/var/lib/images/vm1.raw --socket /run/rbdcache/vm1.sock\n"
      "  rbdcache serve --origin rbd:rbd/vm1 --ceph-id rbdcache --socket /run/rbdcache/vm1.sock\n"
      "  rbdcache serve --origin rbd:rbd/vm1 --socket /run/rbdcache/vm1.sock \\\n"
      "      --socket-group libvirt-qemu --socket-mode 0660   (QEMU run by libvirt on Debian)\n");
  cmd->add_option("--origin", args->origin,
                  "The image to export: file:PATH (a regular file or a block device), or\n"
                  "rbd:POOL/IMAGE or rbd:POOL/NAMESPACE/IMAGE (a Ceph RBD image; no @snapshot)")
      ->required()
      ->check(CLI::Validator([](std::string& v) -> std::string { return check_origin_uri(v); }, "",
                             "origin URI"))
      ->type_name("URI");
  auto* socket = cmd->add_option("--socket", args->socket,
                                 "Listen on this unix socket path (a stale socket is replaced)")
                     ->type_name("PATH");
  cmd->add_option("--socket-mode", args->socket_mode,
                  "The NBD socket's mode, in octal: 0660 lets the owner and --socket-group\n"
                  "connect. Never world-writable (o+w is refused). Default: 0660 with\n"
                  "--socket-group, else 0777 less the umask, without o+w")
      ->check(CLI::Validator(
          [](std::string& v) -> std::string {
            mode_t m = 0;
            Status st = nbd::parse_socket_mode(v, m);
            return st.is_ok() ? std::string() : st.message();
          },
          "", "socket mode"))
      ->needs(socket)
      ->type_name("MODE");
  cmd->add_option("--socket-group", args->socket_group,
                  "Give the NBD socket this group (a name or a numeric gid), so that a client\n"
                  "running as a member can connect, e.g. QEMU run by libvirt: --socket-group\n"
                  "libvirt-qemu --socket-mode 0660 on Debian. The control socket stays\n"
                  "owner-only")
      ->check(CLI::Validator(
          [](std::string& v) -> std::string {
            gid_t g = 0;
            Status st = nbd::parse_socket_group(v, g);
            return st.is_ok() ? std::string() : st.message();
          },
          "", "socket group"))
      ->needs(socket)
      ->type_name("GROUP");
  cmd->add_option("--control", args->control,
                  "The control socket for 'rbdcache status', 'flush', 'mode', 'invalidate' and\n"
                  "'release' (mode 0600 and the server's group, whatever --socket-mode and\n"
                  "--socket-group say; default: the --socket path with .sock replaced by .ctl)")
      ->type_name("PATH");
  cmd->add_flag("--no-control", args->no_control, "Open no control socket");
  cmd->add_option("--metrics", args->metrics,
                  "Serve Prometheus metrics at http://ADDR:PORT/metrics (PORT alone binds to\n"
                  "loopback only; see docs/metrics.md)")
      ->check(CLI::Validator(
          [](std::string& v) -> std::string {
            std::string host, port;
            Status st = nbd::parse_listen_address(v, host, port);
            return st.is_ok() ? std::string()
                              : "expected PORT, ADDR:PORT or [IPV6ADDR]:PORT, got '" + v + "'";
          },
          "", "metrics address"))
      ->type_name("ADDR:PORT");
  cmd->add_option("--listen", args->listen,
                  "Also listen on TCP: PORT or ADDR:PORT; without ADDR only loopback (127.0.0.1)")
      ->check(CLI::Validator(
          [](std::string& v) -> std::string {
            std::string host, port;
            Status st = nbd::parse_listen_address(v, host, port);
            return st.is_ok() ? std::string() : st.message();
          },
          "", "listen address"))
      ->type_name("ADDR:PORT");
  cmd->add_option("--export", args->export_name, "The export's name (default: empty)")
      ->type_name("NAME");
  cmd->add_flag("--read-only", args->read_only, "Refuse every write, trim and write-zeroes");
  cmd->add_option("--threads", args->threads,
                  "Number of I/O reactor threads (default: one per CPU core)")
      ->check(CLI::Range(1u, 1024u))
      ->type_name("N");
  cmd->add_option("--handshake-timeout", args->handshake_timeout,
                  "Drop a client that has not finished the NBD handshake within this many\n"
                  "seconds (default 30; 0: never)")
      ->check(CLI::Range(0.0, 86400.0))
      ->type_name("SECONDS");
  cmd->add_flag("-v,--verbose", args->verbose, "Log every connection and rejected request");

  auto* ceph = "Ceph (rbd: origins)";
  cmd->add_option("--ceph-conf", args->rbd.conf_path,
                  "Ceph configuration file (default: $CEPH_CONF, else /etc/ceph/ceph.conf)")
      ->type_name("PATH")
      ->group(ceph);
  cmd->add_option("--ceph-id", args->rbd.id,
                  "Ceph user to connect as, without the 'client.' prefix, as rbd --id\n"
                  "(default: the one CEPH_ARGS names, else admin)")
      ->check(CLI::Validator(
          [](std::string& v) -> std::string {
            if (v.empty()) return "the Ceph user is empty";
            if (v.rfind("client.", 0) == 0) {
              return "give the user without 'client.': --ceph-id " + v.substr(7);
            }
            return {};
          },
          "", "ceph id"))
      ->type_name("NAME")
      ->group(ceph);
  cmd->add_option("--keyring", args->rbd.keyring,
                  "Keyring holding the user's key (default: the configuration's,\n"
                  "else /etc/ceph/ceph.client.NAME.keyring)")
      ->type_name("PATH")
      ->group(ceph);
  cmd->add_option("--ceph-timeout", args->rbd.timeout_seconds,
                  "Give up connecting to the cluster, finding the pool or opening the image after\n"
                  "this many seconds each, with an error (default: 30). Data I/O never times out:\n"
                  "it waits for a paused OSD")
      ->check(CLI::Range(1u, 3600u))
      ->type_name("SECONDS")
      ->group(ceph);
  cmd->add_option("--rbd-queue-depth", args->rbd.queue_depth,
                  "Most requests in flight to librbd at once, across all threads; more wait\n"
                  "in a FIFO (default: 128)")
      ->check(CLI::Range(1u, 65536u))
      ->type_name("N")
      ->group(ceph);

  // The SSD cache.
  auto* cache_dev = cmd->add_option("--cache-dev", args->cache_dev,
                                    "Cache through this cache device (formatted with 'rbdcache "
                                    "format'); without it the origin is served uncached")
                        ->type_name("PATH")
                        ->group("Cache");
  auto* meta_dev = cmd->add_option("--meta-dev", args->meta_dev,
                                   "The cache's metadata device (formatted with the cache device)")
                       ->type_name("PATH")
                       ->group("Cache");
  cache_dev->needs(meta_dev);
  meta_dev->needs(cache_dev);
  cmd->add_option("--mode", args->mode,
                  "writeback: writes land on the cache and are written back later; "
                  "writethrough: writes go to both; passthrough: nothing new is cached "
                  "(default: writeback)")
      ->check(CLI::IsMember({"writeback", "writethrough", "passthrough"}))
      ->type_name("MODE")
      ->group("Cache");
  cmd->add_option("--sequential-cutoff", args->sequential_cutoff,
                  "Sequential streams longer than this many bytes bypass the cache "
                  "(default 4 MiB; 0 caches them too)")
      ->transform(CLI::AsSizeValue(false))
      ->type_name("SIZE")
      ->group("Cache");
  cmd->add_option("--dirty-high", args->dirty_high,
                  "Start writeback when this percentage of the cache is dirty (default 10)")
      ->check(CLI::Range(0.0, 100.0))
      ->type_name("PERCENT")
      ->group("Cache");
  cmd->add_option("--dirty-low", args->dirty_low,
                  "Stop writeback below this percentage (default 5)")
      ->check(CLI::Range(0.0, 100.0))
      ->type_name("PERCENT")
      ->group("Cache");
  cmd->add_option("--max-dirty-age", args->max_dirty_age,
                  "Write back a block dirty for longer than this many seconds (default 30)")
      ->check(CLI::PositiveNumber)
      ->type_name("SECONDS")
      ->group("Cache");
  cmd->add_flag("--force", args->force,
                "DANGEROUS: attach to an RBD image although its metadata says another cache may\n"
                "hold writes the image lacks (that cache's host is lost), or although another\n"
                "cache used the image after this one's dirty data was written. The other\n"
                "cache's unflushed writes are lost, or this cache's overwrite newer data")
      ->group("Cache");
  cmd->add_option("--commit-interval", args->commit_interval,
                  "Commit the metadata log at least this often, in seconds (default 1)")
      ->check(CLI::PositiveNumber)
      ->type_name("SECONDS")
      ->group("Cache");
  cmd->callback([args, &exit_code] {
    if (args->dirty_low > args->dirty_high) {
      log::error("--dirty-low ({}) must not exceed --dirty-high ({})", args->dirty_low,
                 args->dirty_high);
      exit_code = 2;
      return;
    }
    exit_code = serve(*args);
  });
}

}  // namespace rbdcache::cli
