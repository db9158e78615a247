#include "control/control_client.h"

#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstring>

#include <fmt/format.h>

namespace rbdcache::control {

Result<nlohmann::json> call(const std::string& path, const nlohmann::json& request,
                            const std::function<bool(const nlohmann::json&)>& on_progress) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (path.size() >= sizeof(addr.sun_path)) {
    return Status::invalid_argument(fmt::format("control socket path '{}' is too long", path));
  }
  std::memcpy(addr.sun_path, path.c_str(), path.size() + 1);
  int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return Status::system_error(errno, "socket");
  struct Closer {
    int fd;
    ~Closer() { ::close(fd); }
  } closer{fd};
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    int err = errno;
    std::string hint = err == ENOENT || err == ECONNREFUSED
                           ? " (is 'rbdcache serve' running with this --control socket?)"
                           : err == EACCES ? " (the control socket is mode 0600: run as its owner)"
                                           : "";
    return Status::from_errno(err, fmt::format("cannot connect to control socket '{}': {}{}", path,
                                               std::strerror(err), hint));
  }
  std::string line = request.dump() + "\n";
  for (size_t off = 0; off < line.size();) {
    ssize_t n = ::send(fd, line.data() + off, line.size() - off, MSG_NOSIGNAL);
    if (n < 0) {
      if (errno == EINTR) continue;
      return Status::system_error(errno, "sending to the control socket");
    }
    off += static_cast<size_t>(n);
  }
  std::string buf;
  char chunk[4096];
  for (;;) {
    size_t nl;
    while ((nl = buf.find('\n')) != std::string::npos) {
      auto msg = nlohmann::json::parse(buf.substr(0, nl), nullptr, false);
      buf.erase(0, nl + 1);
      if (msg.is_discarded() || !msg.is_object()) {
        return Status::io_error("the control socket sent a line that is not a JSON object");
      }
      if (msg.contains("ok")) return msg;
      if (!on_progress(msg)) return msg;
    }
    ssize_t n = ::recv(fd, chunk, sizeof chunk, 0);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      return Status::io_error(fmt::format(
          "the server at '{}' closed the control connection without an answer (did it stop?)", path));
    }
    buf.append(chunk, static_cast<size_t>(n));
  }
}

}  // namespace rbdcache::control
