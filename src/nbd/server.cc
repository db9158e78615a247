#include "nbd/server.h"

#include <grp.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <vector>

#include "util/log.h"

namespace rbdcache::nbd {

Result<AddrInfoList> resolve_listen_address(const std::string& spec, const std::string& what) {
  std::string host, port;
  Status st = parse_listen_address(spec, host, port);
  if (!st.is_ok()) {
    return Status::invalid_argument(fmt::format("bad {} address '{}': {}", what, spec, st.message()));
  }
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
  addrinfo* res = nullptr;
  int gai = ::getaddrinfo(host.c_str(), port.c_str(), &hints, &res);
  if (gai != 0) {
    return Status::invalid_argument(
        fmt::format("cannot resolve {} address '{}': {}", what, host, gai_strerror(gai)));
  }
  return AddrInfoList(res, freeaddrinfo);
}

Status parse_listen_address(const std::string& spec, std::string& host, std::string& port) {
  host = "127.0.0.1";
  if (spec.empty()) return Status::invalid_argument("--listen needs a PORT or ADDR:PORT");
  if (spec.front() == '[') {
    auto close = spec.find(']');
    if (close == std::string::npos || close + 1 >= spec.size() || spec[close + 1] != ':') {
      return Status::invalid_argument(fmt::format("bad --listen address '{}'", spec));
    }
    host = spec.substr(1, close - 1);
    port = spec.substr(close + 2);
  } else {
    auto colon = spec.rfind(':');
    if (colon == std::string::npos) {
      port = spec;
    } else {
      if (colon > 0) host = spec.substr(0, colon);
      port = spec.substr(colon + 1);
    }
  }
  if (port.empty() || port.find_first_not_of("0123456789") != std::string::npos ||
      port.size() > 5 || std::stoul(port) > 65535) {
    return Status::invalid_argument(fmt::format("bad --listen port in '{}'", spec));
  }
  return Status::ok();
}

Status parse_socket_mode(const std::string& v, mode_t& mode) {
  if (v.empty() || v.size() > 4 || v.find_first_not_of("01234567") != std::string::npos ||
      std::stoul(v, nullptr, 8) > 0777) {
    return Status::invalid_argument(
        fmt::format("expected an octal mode of at most 0777 such as 0660, got '{}'", v));
  }
  auto m = static_cast<mode_t>(std::stoul(v, nullptr, 8));
  if (m & S_IWOTH) {
    return Status::invalid_argument(fmt::format(
        "socket mode {:04o} is world-writable: every user on the host could read and write the "
        "disk; give the clients' group --socket-group GROUP and --socket-mode 0660 instead",
        m));
  }
  mode = m;
  return Status::ok();
}

Status parse_socket_group(const std::string& v, gid_t& gid) {
  if (v.empty()) return Status::ok();  // no group change, as without the option
  std::vector<char> buf(16384);
  group grp{};
  group* found = nullptr;
  int err;
  // A group with many members needs a larger buffer.
  while ((err = ::getgrnam_r(v.c_str(), &grp, buf.data(), buf.size(), &found)) == ERANGE &&
         buf.size() < (16u << 20)) {
    buf.resize(buf.size() * 2);
  }
  if (err == 0 && found != nullptr) {
    gid = found->gr_gid;
    return Status::ok();
  }
  if (v.find_first_not_of("0123456789") == std::string::npos && v.size() <= 10 &&
      std::stoul(v) < static_cast<gid_t>(-1)) {
    gid = static_cast<gid_t>(std::stoul(v));
    return Status::ok();
  }
  return Status::invalid_argument(fmt::format(
      "no group '{}' on this host (see getent group; libvirt's QEMU group is libvirt-qemu on "
      "Debian, qemu on Fedora)",
      v));
}

Server::Server(Origin& origin, ExportInfo exp, ServerOptions options)
    : origin_(origin), exp_(std::move(exp)), options_(std::move(options)) {}

Server::~Server() {
  for (int fd : listen_fds_) ::close(fd);
  if (unlink_socket_) ::unlink(options_.socket_path.c_str());
}

void Server::block_shutdown_signals() {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGPIPE);
  sigaddset(&set, SIGUSR1);
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
}

Status Server::bind() {
  if (options_.threads == 0) return Status::invalid_argument("--threads must be at least 1");
  if (options_.socket_path.empty() && !options_.listen) {
    return Status::invalid_argument("give --socket PATH, --listen ADDR:PORT, or both");
  }
  if (!options_.socket_path.empty()) RBDCACHE_RETURN_IF_ERROR(bind_unix());
  if (options_.listen) RBDCACHE_RETURN_IF_ERROR(bind_tcp());
  for (unsigned i = 0; i < options_.threads; ++i) {
    auto r = io::Reactor::create(256, i);
    if (!r.is_ok()) return r.status().with_context("cannot start an I/O reactor");
    auto slot = std::make_unique<ReactorSlot>();
    slot->reactor = std::move(r).value();
    slots_.push_back(std::move(slot));
  }
  return Status::ok();
}

Status Server::bind_unix() {
  const std::string& path = options_.socket_path;
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (path.size() >= sizeof(addr.sun_path)) {
    return Status::invalid_argument(fmt::format("socket path '{}' is too long ({} bytes, at most {})",
                                                path, path.size(), sizeof(addr.sun_path) - 1));
  }
  std::memcpy(addr.sun_path, path.c_str(), path.size() + 1);

  struct stat st {};
  if (::lstat(path.c_str(), &st) == 0) {
    if (!S_ISSOCK(st.st_mode)) {
      return Status::from_errno(EEXIST, fmt::format("'{}' exists and is not a socket; refusing to "
                                                    "replace it",
                                                    path));
    }
    // A socket file: is a live server behind it? A live NBD server greets
    // at once; a socket of a server that has just been killed may still
    // accept connections for a moment (its listener is torn down
    // asynchronously) but never greets.
    int probe = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (probe < 0) return Status::system_error(errno, "socket");
    bool live = false;
    if (::connect(probe, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0) {
      pollfd pfd{probe, POLLIN, 0};
      if (::poll(&pfd, 1, 2000) > 0 && (pfd.revents & POLLIN)) {
        char byte;
        live = ::recv(probe, &byte, 1, MSG_PEEK) == 1;
      }
    }
    ::close(probe);
    if (live) {
      return Status::from_errno(EADDRINUSE,
                                fmt::format("socket '{}' is in use by a running server", path));
    }
    // Nobody listens: a stale socket from a server that died.
    log::info("removing stale socket '{}'", path);
    ::unlink(path.c_str());
  }

  int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return Status::system_error(errno, "socket");
  if (::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    int err = errno;
    ::close(fd);
    return Status::system_error(err, fmt::format("cannot bind unix socket '{}'", path));
  }
  unlink_socket_ = true;
  // Owner, group and mode are set before listen(): until then every
  // connect() is refused, so no client ever reaches the socket under the
  // looser mode bind() gave it.
  if (Status perm = set_socket_permissions(); !perm.is_ok()) {
    ::close(fd);
    return perm;
  }
  if (::listen(fd, 128) != 0) {
    int err = errno;
    ::close(fd);
    return Status::system_error(err, fmt::format("cannot listen on '{}'", path));
  }
  listen_fds_.push_back(fd);
  return Status::ok();
}

Status Server::set_socket_permissions() {
  const std::string& path = options_.socket_path;
  mode_t mode;
  if (options_.socket_mode) {
    mode = *options_.socket_mode;
  } else if (options_.socket_gid) {
    mode = 0660;
  } else {
    // bind() made it 0777 less the umask; only o+w is taken away.
    struct stat st {};
    if (::lstat(path.c_str(), &st) != 0) {
      return Status::system_error(errno, fmt::format("cannot stat unix socket '{}'", path));
    }
    mode = st.st_mode & 0777 & ~mode_t{S_IWOTH};
  }
  if ((mode & ~mode_t{0777}) != 0 || (mode & S_IWOTH) != 0) {
    return Status::invalid_argument(
        fmt::format("socket mode {:04o} for '{}' is not allowed (at most 0777, never o+w)", mode, path));
  }
  // chown first: a chown by a non-root owner may clear mode bits.
  if (options_.socket_gid && ::lchown(path.c_str(), static_cast<uid_t>(-1), *options_.socket_gid) != 0) {
    return Status::system_error(
        errno, fmt::format("cannot give unix socket '{}' group {}", path, *options_.socket_gid));
  }
  if (::chmod(path.c_str(), mode) != 0) {
    return Status::system_error(errno, fmt::format("cannot make unix socket '{}' mode {:04o}", path, mode));
  }
  return Status::ok();
}

Status Server::bind_tcp() {
  auto addrs = resolve_listen_address(*options_.listen, "--listen");
  if (!addrs.is_ok()) return addrs.status();
  const addrinfo* res = addrs.value().get();
  std::string host, port;
  RBDCACHE_RETURN_IF_ERROR(parse_listen_address(*options_.listen, host, port));
  int fd = ::socket(res->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return Status::system_error(errno, "socket");
  int one = 1;
  ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  if (::bind(fd, res->ai_addr, res->ai_addrlen) != 0 || ::listen(fd, 128) != 0) {
    int err = errno;
    ::close(fd);
    return Status::system_error(err, fmt::format("cannot listen on {}:{}", host, port));
  }
  sockaddr_storage bound{};
  socklen_t len = sizeof(bound);
  if (::getsockname(fd, reinterpret_cast<sockaddr*>(&bound), &len) == 0) {
    tcp_port_ = bound.ss_family == AF_INET6
                    ? ntohs(reinterpret_cast<sockaddr_in6*>(&bound)->sin6_port)
                    : ntohs(reinterpret_cast<sockaddr_in*>(&bound)->sin_port);
  }
  listen_fds_.push_back(fd);
  return Status::ok();
}

std::string Server::uri() const {
  std::string name = exp_.name;
  if (!options_.socket_path.empty()) {
    return fmt::format("nbd+unix:///{}?socket={}", name, options_.socket_path);
  }
  return fmt::format("nbd://localhost:{}/{}", tcp_port_, name);
}

void Server::accept_loop(int listen_fd, bool is_tcp) {
  ++accepts_pending_;
  slots_[0]->reactor->accept(listen_fd, [this, listen_fd, is_tcp](int res) {
    --accepts_pending_;
    if (!accepting_ || slots_[0]->draining) {
      if (res >= 0) ::close(res);
      return;
    }
    if (res >= 0) {
      adopt(res, is_tcp);
    } else if (res != -EINTR && res != -ECONNABORTED && res != -EAGAIN) {
      log::warn("accept failed: {}", std::strerror(-res));
      if (res == -EMFILE || res == -ENFILE) {
        // Out of descriptors: back off instead of spinning.
        ++accepts_pending_;
        slots_[0]->reactor->timeout(100'000'000, [this, listen_fd, is_tcp](int) {
          --accepts_pending_;
          if (!slots_[0]->draining) accept_loop(listen_fd, is_tcp);
        });
        return;
      }
    }
    accept_loop(listen_fd, is_tcp);
  });
}

void Server::adopt(int fd, bool is_tcp) {
  if (is_tcp) {
    int one = 1;
    ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  }
  uint64_t id = next_id_.fetch_add(1);
  ReactorSlot& slot = *slots_[next_slot_];
  next_slot_ = (next_slot_ + 1) % slots_.size();
  slot.reactor->post([this, &slot, fd, id] {
    if (slot.draining) {
      ::close(fd);
      return;
    }
    auto conn = std::make_shared<Connection>(*slot.reactor, fd, origin_, exp_, id,
                                             [&slot](uint64_t closed_id) {
                                               slot.connections.erase(closed_id);
                                               if (slot.draining && slot.connections.empty()) {
                                                 slot.reactor->stop();
                                               }
                                             });
    slot.connections.emplace(id, conn);
    log::debug("connection {}: accepted on reactor {}", id, slot.reactor->index());
    conn->set_handshake_timeout(options_.handshake_timeout);
    conn->start();
  });
}

void Server::drain_slot(ReactorSlot& slot) {
  slot.draining = true;
  if (slot.connections.empty()) {
    slot.reactor->stop();
    return;
  }
  // begin_drain() may close a connection, which erases it from the map.
  std::vector<std::shared_ptr<Connection>> conns;
  for (auto& [id, c] : slot.connections) conns.push_back(c);
  for (auto& c : conns) c->begin_drain();
}

Status Server::run() {
  for (size_t i = 0; i < listen_fds_.size(); ++i) {
    bool is_tcp = options_.listen.has_value() && i + 1 == listen_fds_.size();
    accept_loop(listen_fds_[i], is_tcp);
  }
  std::vector<std::thread> threads;
  for (auto& slot : slots_) {
    io::Reactor* r = slot->reactor.get();
    threads.emplace_back([r] { r->run(); });
  }

  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGUSR1);
  int sig = 0;
  while (true) {
    if (sigwait(&set, &sig) != 0) continue;
    if (sig != SIGUSR1) break;
    if (options_.on_usr1) options_.on_usr1();
  }
  log::info("received {}; finishing in-flight requests", sig == SIGTERM ? "SIGTERM" : "SIGINT");
  if (options_.on_shutdown) options_.on_shutdown();

  // Listeners first, so that no new connection arrives while draining.
  slots_[0]->reactor->post([this] {
    accepting_ = false;  // the accepts now fail with EINVAL: expected
    for (int fd : listen_fds_) ::shutdown(fd, SHUT_RDWR);
  });
  for (auto& slot : slots_) {
    ReactorSlot* s = slot.get();
    s->reactor->post([this, s] { drain_slot(*s); });
  }
  for (auto& t : threads) t.join();
  log::info("all connections drained; exiting");
  return Status::ok();
}

}  // namespace rbdcache::nbd
