// `rbdcache serve`: export an origin over NBD.
#include <unistd.h>

#include <thread>

#include "cli/commands.h"
#include "nbd/server.h"
#include "origin/file_origin.h"
#include "util/log.h"

namespace rbdcache::cli {

namespace {

struct ServeArgs {
  std::string origin;
  std::string socket;
  std::string listen;
  std::string export_name;
  bool read_only = false;
  unsigned threads = 0;
  bool verbose = false;
};

// Opens the origin named by a URI such as file:/var/lib/img.raw.
Result<std::unique_ptr<Origin>> open_origin(const std::string& uri, bool read_only) {
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
  return Status::invalid_argument(
      fmt::format("unsupported origin '{}': expected file:PATH", uri));
}

int serve(const ServeArgs& args) {
  if (args.verbose) log::set_level(log::Level::kDebug);
  auto origin = open_origin(args.origin, args.read_only);
  if (!origin.is_ok()) {
    log::error("{}", origin.status().to_string());
    return 1;
  }
  Origin& o = *origin.value();
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
  if (!args.listen.empty()) opts.listen = args.listen;
  opts.threads = args.threads != 0 ? args.threads : std::max(1u, std::thread::hardware_concurrency());

  nbd::Server::block_shutdown_signals();
  nbd::Server server(o, exp, opts);
  Status st = server.bind();
  if (!st.is_ok()) {
    log::error("{}", st.to_string());
    return 1;
  }
  log::info("serving {} ({} bytes{}) at {} with {} thread(s)", o.describe(), exp.size,
            exp.read_only ? ", read-only" : "", server.uri(), opts.threads);
  if (server.tcp_port() != 0) log::info("also listening on TCP port {}", server.tcp_port());
  st = server.run();
  if (!st.is_ok()) {
    log::error("{}", st.to_string());
    return 1;
  }
  return 0;
}

}  // namespace

void add_serve_command(CLI::App& app, int& exit_code) {
  auto args = std::make_shared<ServeArgs>();
  auto* cmd = app.add_subcommand("serve", "Serve an origin image over NBD");
  cmd->footer(
      "\nThe export is reachable as nbd+unix:///NAME?socket=PATH (or nbd://HOST:PORT/NAME with\n"
      "--listen). The empty export name also selects it. SIGTERM or SIGINT stops the server\n"
      "after every in-flight request has been answered.\n\n"
      "Example:\n  rbdcache serve --origin file:/var/lib/images/vm1.raw --socket /run/rbdcache/vm1.sock\n");
  cmd->add_option("--origin", args->origin,
                  "The image to export: file:PATH (a regular file or a block device)")
      ->required()
      ->check(CLI::Validator(
          [](std::string& v) -> std::string {
            if (v.rfind("file:", 0) == 0 && v.size() > 5) return {};
            return "expected file:PATH, got '" + v + "'";
          },
          "", "origin URI"))
      ->type_name("URI");
  cmd->add_option("--socket", args->socket, "Listen on this unix socket path (a stale socket is replaced)")
      ->type_name("PATH");
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
  cmd->add_flag("-v,--verbose", args->verbose, "Log every connection and rejected request");
  cmd->callback([args, &exit_code] { exit_code = serve(*args); });
}

}  // namespace rbdcache::cli
