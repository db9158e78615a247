// The NBD server: listening sockets, reactor threads and connections.
//
// Threads: `threads` reactor threads. Reactor 0 also accepts; each accepted
// connection is handed, round robin, to one reactor, which owns it for life.
// The thread that calls run() waits for SIGTERM/SIGINT and then drains:
// listeners close, every connection stops reading, finishes its in-flight
// requests and replies, and the reactors stop.
#pragma once

#include <netdb.h>
#include <sys/types.h>

#include <atomic>
#include <chrono>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "io/reactor.h"
#include "nbd/connection.h"
#include "nbd/handshake.h"
#include "origin/origin.h"

namespace rbdcache::nbd {

struct ServerOptions {
  std::string socket_path;                // unix socket; empty for none
  // The unix socket's permission bits (at most 0777, never o+w). Without
  // it: 0660 when socket_gid is set, else what bind() gives under the
  // process umask, with o+w cleared.
  std::optional<mode_t> socket_mode;
  // The unix socket's group; without it the process's group.
  std::optional<gid_t> socket_gid;
  std::optional<std::string> listen;      // TCP "ADDR:PORT" or "PORT"; loopback if no ADDR
  unsigned threads = 1;
  // A client that has not finished the handshake within this is dropped.
  std::chrono::milliseconds handshake_timeout{30'000};
  // Runs on the main thread for each SIGUSR1 (e.g. to log statistics).
  std::function<void()> on_usr1;
  // Runs on the main thread when SIGTERM or SIGINT starts the drain.
  std::function<void()> on_shutdown;
};

// Splits a --listen value: "ADDR:PORT", "[V6ADDR]:PORT", ":PORT" or "PORT".
// A missing address means loopback (127.0.0.1).
Status parse_listen_address(const std::string& spec, std::string& host, std::string& port);

// Parses a --socket-mode value: octal, as 0660 or 660, at most 0777 and
// never world-writable (o+w). Sets `mode` when it is acceptable.
[[nodiscard]] Status parse_socket_mode(const std::string& v, mode_t& mode);

// Parses a --socket-group value: a group name, else a numeric gid. Sets
// `gid` when the group exists; empty `v` means no group and is accepted
// with `gid` untouched.
[[nodiscard]] Status parse_socket_group(const std::string& v, gid_t& gid);

// Resolves a listen address (as parse_listen_address) for bind(): the
// addresses getaddrinfo() gives, first to last. `what` names the option in
// errors, e.g. "--listen".
using AddrInfoList = std::unique_ptr<addrinfo, void (*)(addrinfo*)>;
[[nodiscard]] Result<AddrInfoList> resolve_listen_address(const std::string& spec,
                                                          const std::string& what);

class Server {
 public:
  // `origin` must outlive the server.
  Server(Origin& origin, ExportInfo exp, ServerOptions options);
  ~Server();

  // Binds the sockets and creates the reactors. A clear Status if a socket
  // path is held by a live server, an address is in use, and so on.
  Status bind();

  // Serves until SIGTERM or SIGINT (which the caller must have blocked in
  // every thread, see block_shutdown_signals()), then drains and returns.
  Status run();

  // Blocks SIGTERM, SIGINT, SIGPIPE and SIGUSR1 in the calling thread; call before any
  // thread is created so that every thread inherits the mask.
  static void block_shutdown_signals();

  // The URI a local client can use, e.g. nbd+unix:///?socket=/run/x.sock
  std::string uri() const;
  // The TCP port actually bound (useful with port 0), or 0.
  uint16_t tcp_port() const { return tcp_port_; }

 private:
  struct ReactorSlot {
    std::unique_ptr<io::Reactor> reactor;
    // Owned by the reactor's thread only.
    std::unordered_map<uint64_t, std::shared_ptr<Connection>> connections;
    bool draining = false;
  };

  Status bind_unix();
  // Applies socket_mode and socket_gid (or the default) to the bound path.
  [[nodiscard]] Status set_socket_permissions();
  Status bind_tcp();
  void accept_loop(int listen_fd, bool is_tcp);
  void adopt(int fd, bool is_tcp);
  void drain_slot(ReactorSlot& slot);

  Origin& origin_;
  ExportInfo exp_;
  ServerOptions options_;
  std::vector<std::unique_ptr<ReactorSlot>> slots_;
  std::vector<int> listen_fds_;
  bool unlink_socket_ = false;
  uint16_t tcp_port_ = 0;
  std::atomic<uint64_t> next_id_{1};
  unsigned next_slot_ = 0;  // reactor 0 only
  unsigned accepts_pending_ = 0;  // reactor 0 only
  bool accepting_ = true;         // reactor 0 only
};

}  // namespace rbdcache::nbd
