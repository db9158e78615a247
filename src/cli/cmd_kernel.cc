// `map`, `unmap`, `list-mapped`, `attach`: the kernel NBD client.
//
// map connects to a running `rbdcache serve` over its unix socket, does the
// NBD handshake itself (nbd/client_handshake.h) and hands the connected
// sockets to the kernel over netlink (nbd/netlink.h); the kernel then serves
// /dev/nbdN from them and map exits. Nothing of rbdcache stays in the I/O
// path but the server.
//
// The device carries a dead-connection timeout: when the server dies, the
// kernel holds the device's I/O for that long instead of failing it, so that
// a restarted server can take the device back with `attach`.
#include <sys/stat.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "cli/commands.h"
#include "nbd/client_handshake.h"
#include "nbd/netlink.h"
#include "nbd/protocol.h"

namespace rbdcache::cli {

namespace {

using nbd::ClientExport;
using nbd::NbdNetlink;
using nbd::UniqueFd;

// Defaults and limits of the options.
constexpr unsigned kMaxConnections = 16;
// One connection by default: with several, the kernel drops any connection
// whose request waits 30 s (its block layer timer, even with --timeout 0),
// which a paused Ceph cluster easily causes.
constexpr unsigned kDefaultConnections = 1;
constexpr uint64_t kDefaultDeadConnTimeout = 120;
constexpr uint64_t kMaxTimeout = 7 * 24 * 3600;

// Options shared by map and attach.
struct ServerArgs {
  std::string socket;
  std::string export_name;
  unsigned connections = 0;  // 0: the command's default
  uint64_t timeout = 0;
  uint64_t dead_conn_timeout = kDefaultDeadConnTimeout;
  bool timeout_given = false;
  bool dead_conn_timeout_given = false;
};

struct MapArgs {
  ServerArgs server;
  std::string device;
  uint32_t block_size = 512;
  bool read_only = false;
};

struct AttachArgs {
  ServerArgs server;
  std::string device;
};

void print_error(std::string_view cmd, const Status& st) {
  fmt::print(stderr, "rbdcache {}: {}\n", cmd, st.to_string());
}

// The socket's canonical path, or why there is no server socket there. The
// backend identifier uses it, so that map and attach name the same backend
// however the path was spelled; connecting uses the path as given, which may
// be shorter than a unix socket path's limit when the canonical one is not.
Result<std::string> canonical_socket(const std::string& path) {
  std::error_code ec;
  std::filesystem::path p = std::filesystem::canonical(path, ec);
  if (ec) {
    if (ec.value() == ENOENT) {
      return Status::from_errno(ENOENT, fmt::format("no server socket at {} (start one with "
                                                    "'rbdcache serve --socket {}')",
                                                    path, path));
    }
    return Status::system_error(ec.value(), path);
  }
  struct stat sb {};
  if (::stat(p.c_str(), &sb) != 0) return Status::system_error(errno, path);
  if (!S_ISSOCK(sb.st_mode)) {
    return Status::from_errno(ENOTSOCK, fmt::format("{} is not a socket (expected the --socket of 'rbdcache serve')",
                                                    path));
  }
  return p.string();
}

// Connected sockets in the transmission phase, and what the server said.
struct ServerConnections {
  std::vector<UniqueFd> fds;
  ClientExport exp;

  std::vector<int> raw_fds() const {
    std::vector<int> v;
    for (const UniqueFd& fd : fds) v.push_back(fd.get());
    return v;
  }
};

Status explain_connect(const Status& st, const std::string& socket) {
  switch (st.err()) {
    case ENOENT:
      return Status::from_errno(ENOENT, fmt::format("no server socket at {}", socket));
    case ECONNREFUSED:
      return Status::from_errno(ECONNREFUSED, fmt::format("nothing listens on {}: the server is not running "
                                                          "(a stale socket)",
                                                          socket));
    default:
      return st;
  }
}

// Opens `wanted` connections to the server and does the handshake on each.
// Without CAN_MULTI_CONN from the server, falls back to one connection, or
// fails if the operator asked for more with --connections.
Result<ServerConnections> connect_server(const std::string& socket, const std::string& export_name,
                                         unsigned wanted, bool explicit_count) {
  ServerConnections c;
  nbd::ClientHandshakeOptions opts;
  opts.export_name = export_name;
  for (unsigned i = 0; i < wanted; ++i) {
    auto fd = nbd::connect_unix(socket);
    if (!fd.is_ok()) return explain_connect(fd.status(), socket);
    auto exp = nbd::client_handshake(fd->get(), opts);
    if (!exp.is_ok()) return exp.status().with_context(fmt::format("handshake with {}", socket));
    if (i == 0) {
      c.exp = exp.value();
      if (wanted > 1 && !(c.exp.transmission_flags & nbd::kTxCanMultiConn)) {
        if (explicit_count) {
          return Status::not_supported(
              "the server does not allow several connections to one export (no NBD_FLAG_CAN_MULTI_CONN); "
              "use --connections 1");
        }
        wanted = 1;
      }
    } else if (exp->size != c.exp.size || exp->transmission_flags != c.exp.transmission_flags) {
      return Status::io_error("the server described the export differently on two connections");
    }
    c.fds.push_back(std::move(fd).value());
  }
  return c;
}

// --- map ---

int run_map(const MapArgs& a) {
  auto nl = NbdNetlink::open();
  if (!nl.is_ok()) {
    print_error("map", nl.status());
    return 1;
  }
  std::optional<uint32_t> index;
  if (!a.device.empty()) {
    index = nbd::parse_device(a.device).value();  // checked by the option's validator
    auto devices = (*nl)->status(index);
    if (devices.is_ok() && !devices->empty() && devices->front().connected) {
      print_error("map", Status::from_errno(EBUSY, fmt::format("{} is already in use (see rbdcache list-mapped)",
                                                                nbd::device_path(*index))));
      return 1;
    }
  }
  auto socket = canonical_socket(a.server.socket);
  if (!socket.is_ok()) {
    print_error("map", socket.status());
    return 1;
  }
  const bool explicit_count = a.server.connections != 0;
  auto conns = connect_server(a.server.socket, a.server.export_name,
                              explicit_count ? a.server.connections : kDefaultConnections, explicit_count);
  if (!conns.is_ok()) {
    print_error("map", conns.status());
    return 1;
  }
  const ClientExport& exp = conns->exp;
  if (exp.min_block_size > a.block_size) {
    print_error("map", Status::invalid_argument(fmt::format(
                           "the export needs requests aligned to {} bytes; map it with --block-size {} or more",
                           exp.min_block_size, exp.min_block_size)));
    return 1;
  }
  if (exp.size < a.block_size) {
    print_error("map", Status::invalid_argument(fmt::format("the export is only {} bytes", exp.size)));
    return 1;
  }
  if (exp.size % a.block_size != 0) {
    fmt::print(stderr, "rbdcache map: warning: the export's last {} bytes are not a whole {}-byte block and are "
                       "not visible through the device\n",
               exp.size % a.block_size, a.block_size);
  }

  nbd::ConnectRequest req;
  req.index = index;
  req.size_bytes = exp.size - exp.size % a.block_size;
  req.block_size = a.block_size;
  if (a.server.timeout != 0) req.timeout = a.server.timeout;
  req.dead_conn_timeout = a.server.dead_conn_timeout;
  req.server_flags = exp.transmission_flags | (a.read_only ? nbd::kTxReadOnly : 0);
  req.fds = conns->raw_fds();
  // The identifier records the real count: the kernel's queues stop at the CPU count.
  req.backend = nbd::backend_identifier(*socket, a.server.export_name, static_cast<unsigned>(req.fds.size()));
  auto mapped = (*nl)->connect(req);
  if (!mapped.is_ok()) {
    print_error("map", mapped.status());
    return 1;
  }
  // The kernel holds its own references to the sockets; ours close here.
  fmt::print("{}\n", nbd::device_path(*mapped));
  return 0;
}

// --- unmap ---

// Whether the kernel still has device `index` configured.
Result<bool> is_connected(NbdNetlink& nl, uint32_t index) {
  auto devices = nl.status(index);
  if (!devices.is_ok()) return devices.status();
  return !devices->empty() && devices->front().connected;
}

int run_unmap(const std::string& device) {
  const uint32_t index = nbd::parse_device(device).value();  // checked by the option's validator
  const std::string path = nbd::device_path(index);
  auto nl = NbdNetlink::open();
  if (!nl.is_ok()) {
    print_error("unmap", nl.status().err() == ENODEV
                             ? Status::from_errno(ENODEV, fmt::format("{} is not mapped: {}", path,
                                                                      nl.status().message()))
                             : nl.status());
    return 1;
  }
  auto connected = is_connected(**nl, index);
  if (!connected.is_ok()) {
    print_error("unmap", connected.status());
    return 1;
  }
  if (!*connected) {
    print_error("unmap", Status::from_errno(ENXIO, fmt::format("{} is not mapped", path)));
    return 1;
  }
  Status st = (*nl)->disconnect(index);
  if (!st.is_ok()) {
    print_error("unmap", st);
    return 1;
  }
  // The kernel frees the device once its last user closes it.
  for (int i = 0; i < 50; ++i) {
    connected = is_connected(**nl, index);
    if (!connected.is_ok() || !*connected) return 0;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  fmt::print(stderr, "rbdcache unmap: {} is disconnected but still open (mounted?); the kernel releases it when "
                     "the last user closes it\n",
             path);
  return 0;
}

// --- list-mapped ---

int run_list(bool as_json) {
  auto nl = NbdNetlink::open();
  std::vector<nbd::DeviceStatus> devices;
  if (nl.is_ok()) {
    auto d = (*nl)->status();
    if (!d.is_ok()) {
      print_error("list-mapped", d.status());
      return 1;
    }
    devices = std::move(d).value();
  } else if (nl.status().err() != ENODEV) {  // no nbd module: nothing is mapped
    print_error("list-mapped", nl.status());
    return 1;
  }
  std::sort(devices.begin(), devices.end(),
            [](const nbd::DeviceStatus& x, const nbd::DeviceStatus& y) { return x.index < y.index; });
  nlohmann::json list = nlohmann::json::array();
  for (const nbd::DeviceStatus& d : devices) {
    if (!d.connected) continue;
    auto sys = nbd::read_sysfs_device(d.index);
    nbd::SysfsDevice dev = sys.is_ok() ? sys.value() : nbd::SysfsDevice{};
    auto socket = nbd::socket_of_backend(dev.backend);
    list.push_back({{"device", nbd::device_path(d.index)},
                    {"index", d.index},
                    {"size", dev.size_bytes},
                    {"block_size", dev.logical_block_size},
                    {"read_only", dev.read_only},
                    {"connections", dev.connections},
                    {"backend", dev.backend},
                    {"rbdcache", socket.has_value()},
                    {"socket", socket.value_or("")},
                    {"pid", dev.pid.value_or(0)}});
  }
  if (as_json) {
    fmt::print("{}\n", list.dump(2));
    return 0;
  }
  if (list.empty()) return 0;
  fmt::print("{:<12} {:>15} {:>5} {:<3} {}\n", "DEVICE", "SIZE", "CONNS", "RO", "BACKEND");
  for (const auto& row : list) {
    const std::string backend = row["backend"].get<std::string>();
    fmt::print("{:<12} {:>15} {:>5} {:<3} {}\n", row["device"].get<std::string>(), row["size"].get<uint64_t>(),
               row["connections"].get<unsigned>(), row["read_only"].get<bool>() ? "yes" : "no",
               backend.empty() ? "-" : backend);
  }
  return 0;
}

// --- attach ---

int run_attach(const AttachArgs& a) {
  const uint32_t index = nbd::parse_device(a.device).value();  // checked by the option's validator
  const std::string path = nbd::device_path(index);
  auto nl = NbdNetlink::open();
  if (!nl.is_ok()) {
    print_error("attach", nl.status());
    return 1;
  }
  auto connected = is_connected(**nl, index);
  if (!connected.is_ok()) {
    print_error("attach", connected.status());
    return 1;
  }
  if (!*connected) {
    print_error("attach", Status::from_errno(ENXIO, fmt::format("{} is not mapped; map it with 'rbdcache map'", path)));
    return 1;
  }
  auto dev = nbd::read_sysfs_device(index);
  if (!dev.is_ok()) {
    print_error("attach", dev.status());
    return 1;
  }
  auto socket = canonical_socket(a.server.socket);
  if (!socket.is_ok()) {
    print_error("attach", socket.status());
    return 1;
  }
  // The kernel wants the CONNECT's identifier back verbatim (since 5.14);
  // kernels before that keep none and cannot tell a wrong server.
  std::string backend = nbd::backend_identifier(*socket, a.server.export_name, 0);
  std::optional<unsigned> recorded;
  if (!dev->backend.empty()) {
    auto mapped = nbd::parse_backend(dev->backend);
    if (!mapped || mapped->socket != *socket || mapped->export_name != a.server.export_name) {
      print_error("attach", Status::invalid_argument(fmt::format(
                                "{} was mapped from '{}', not '{}'{}", path, dev->backend, backend,
                                mapped ? fmt::format(" (attach it with --socket {}{})", mapped->socket,
                                                     mapped->export_name.empty() ? ""
                                                                                 : " --export " + mapped->export_name)
                                       : "")));
      return 1;
    }
    backend = dev->backend;
    recorded = mapped->connections;
  }
  const bool explicit_count = a.server.connections != 0;
  // Devices mapped by earlier versions record no count: their queues are the best guess.
  const unsigned wanted = explicit_count ? a.server.connections : recorded.value_or(std::max(1u, dev->hw_queues));
  auto conns = connect_server(a.server.socket, a.server.export_name, wanted, explicit_count);
  if (!conns.is_ok()) {
    print_error("attach", conns.status());
    return 1;
  }
  const uint64_t size = conns->exp.size - conns->exp.size % std::max(1u, dev->logical_block_size);
  if (size != dev->size_bytes) {
    print_error("attach", Status::invalid_argument(fmt::format(
                              "the export is {} bytes but {} is {} bytes: not the image it was mapped from",
                              conns->exp.size, path, dev->size_bytes)));
    return 1;
  }
  nbd::ReconfigureRequest req;
  req.index = index;
  if (a.server.timeout_given) req.timeout = a.server.timeout;
  if (a.server.dead_conn_timeout_given) req.dead_conn_timeout = a.server.dead_conn_timeout;
  req.fds = conns->raw_fds();
  req.backend = backend;
  Status st = (*nl)->reconfigure(req);
  if (!st.is_ok()) {
    print_error("attach", st);
    return 1;
  }
  fmt::print("{}\n", path);
  return 0;
}

// --- Options ---

CLI::Validator device_validator() {
  return CLI::Validator(
      [](std::string& v) -> std::string {
        auto i = nbd::parse_device(v);
        return i.is_ok() ? std::string() : i.status().message();
      },
      "", "nbd device");
}

// --socket, --export, --connections, --timeout, --dead-conn-timeout. `map`
// sets the timeouts of a new device; `attach` changes them only if given.
void add_server_options(CLI::App* cmd, ServerArgs& s, bool for_attach) {
  cmd->add_option("--socket", s.socket,
                  for_attach ? "The unix socket of the restarted 'rbdcache serve' (the same path the device "
                               "was mapped from)"
                             : "The unix socket of the 'rbdcache serve' to map (its --socket)")
      ->required()
      ->type_name("PATH");
  cmd->add_option("--export", s.export_name,
                  "The export's name, as given to map (default: the server's only export)")
      ->type_name("NAME");
  cmd->add_option("--connections", s.connections,
                  for_attach ? "Connections to open (default: as many as the device has)"
                             : "Connections to the server, one kernel queue each (default 1). With more than "
                               "one, the kernel drops a connection whose request goes unanswered for "
                               "30 s (or --timeout) and waits for 'rbdcache attach'")
      ->check(CLI::Range(1u, kMaxConnections))
      ->type_name("N");
  cmd->add_option_function<uint64_t>(
         "--timeout",
         [&s](const uint64_t& v) {
           s.timeout = v;
           s.timeout_given = true;
         },
         std::string("I/O timeout in seconds: when a request goes unanswered this long, the kernel drops its "
                     "connection and holds I/O for --dead-conn-timeout seconds waiting for 'rbdcache attach', "
                     "then fails it. ") +
             (for_attach ? "Default: unchanged" : "0 (the default): never; the kernel only logs slow requests"))
      ->check(CLI::Range(uint64_t{0}, kMaxTimeout))
      ->type_name("SECONDS");
  cmd->add_option_function<uint64_t>(
         "--dead-conn-timeout",
         [&s](const uint64_t& v) {
           s.dead_conn_timeout = v;
           s.dead_conn_timeout_given = true;
         },
         for_attach ? std::string("Change the device's dead-connection timeout (default: unchanged)")
                    : fmt::format("When the server dies, hold the device's I/O this many seconds for "
                                  "'rbdcache attach' to bring a restarted server in, before failing it "
                                  "(default {}; 0 fails I/O at once)",
                                  kDefaultDeadConnTimeout))
      ->check(CLI::Range(uint64_t{0}, kMaxTimeout))
      ->type_name("SECONDS");
}

}  // namespace

void add_kernel_commands(CLI::App& app, int& exit_code) {
  auto map_args = std::make_shared<MapArgs>();
  auto* map = app.add_subcommand("map", "Map a running server's export as /dev/nbdN (needs root and the nbd module)");
  map->footer(
      "\nmap connects to the server's unix socket, negotiates the export and hands the connections\n"
      "to the kernel, then prints the device path and exits; the server keeps serving the device.\n"
      "If the server dies, the device waits --dead-conn-timeout seconds for a restarted server:\n"
      "  rbdcache serve ... --socket PATH &       # restart it on the same socket\n"
      "  rbdcache attach --socket PATH --device /dev/nbdN\n\n"
      "Examples:\n"
      "  rbdcache map --socket /run/rbdcache/vm1.sock\n"
      "  rbdcache map --socket /run/rbdcache/vm1.sock --device /dev/nbd3 --connections 2\n");
  add_server_options(map, map_args->server, false);
  map->add_option("--device", map_args->device, "Map to this device (default: the first free one)")
      ->check(device_validator())
      ->type_name("/dev/nbdN");
  map->add_option("--block-size", map_args->block_size,
                  "The device's logical block size (default 512, as a virtual disk's sectors)")
      ->check(CLI::IsMember({"512", "1024", "2048", "4096"}))
      ->type_name("BYTES");
  map->add_flag("--read-only", map_args->read_only, "Make the device read-only");
  map->callback([map_args, &exit_code] { exit_code = run_map(*map_args); });

  auto unmap_device = std::make_shared<std::string>();
  auto* unmap = app.add_subcommand(
      "unmap",
      "Unmap /dev/nbdN: the kernel disconnects from the server, fails queued I/O and frees the device once "
      "nobody holds it open");
  unmap->add_option("DEVICE", *unmap_device, "The device to unmap")
      ->required()
      ->check(device_validator())
      ->type_name("/dev/nbdN");
  unmap->callback([unmap_device, &exit_code] { exit_code = run_unmap(*unmap_device); });

  auto list_json = std::make_shared<bool>(false);
  auto* list = app.add_subcommand(
      "list-mapped",
      "List the mapped nbd devices with their size, connections and backend (rbdcache:SOCKET for devices "
      "that rbdcache map set up). Prints nothing when none is mapped");
  list->add_flag("--json", *list_json, "Print a JSON array instead of a table");
  list->callback([list_json, &exit_code] { exit_code = run_list(*list_json); });

  auto attach_args = std::make_shared<AttachArgs>();
  auto* attach = app.add_subcommand(
      "attach",
      "Give a mapped device whose server died fresh connections to the restarted server (same socket, same "
      "export), so that its held I/O carries on");
  attach->footer(
      "\nThe kernel replaces only connections it has seen fail; on a healthy device attach changes\n"
      "nothing. The server must export the same image: attach checks the socket (against the device's\n"
      "backend) and the size. Run it within the device's --dead-conn-timeout of the server's death.\n");
  add_server_options(attach, attach_args->server, true);
  attach->add_option("--device", attach_args->device, "The mapped device")
      ->required()
      ->check(device_validator())
      ->type_name("/dev/nbdN");
  attach->callback([attach_args, &exit_code] { exit_code = run_attach(*attach_args); });
}

}  // namespace rbdcache::cli
