#include "control/control_server.h"

#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstring>
#include <deque>
#include <vector>
#include <thread>

#include <fmt/format.h>

#include "util/log.h"

namespace rbdcache::control {

namespace {
constexpr size_t kMaxRequest = 64 * 1024;
}  // namespace

// One client connection. Reactor thread only, except `gone`.
struct ControlServer::Conn {
  io::Reactor* r = nullptr;
  int fd = -1;
  char buf[4096];
  std::string in;
  std::deque<std::string> out;
  size_t out_pos = 0;  // bytes of out.front() already sent
  bool sending = false;
  bool close_after = false;  // the final line is queued
  bool closed = false;
  std::atomic<bool> gone{false};  // the client went away
  msghdr msg{};
  iovec iov{};

  // Queues a line; `final` closes the connection once it is sent.
  static void send(const std::shared_ptr<Conn>& c, std::string line, bool final) {
    if (c->closed) return;
    c->out.push_back(std::move(line) + "\n");
    if (final) c->close_after = true;
    pump(c);
  }

  static void pump(const std::shared_ptr<Conn>& c) {
    if (c->sending || c->closed) return;
    if (c->out.empty()) {
      if (c->close_after) shut(c);
      return;
    }
    c->sending = true;
    const std::string& s = c->out.front();
    c->iov.iov_base = const_cast<char*>(s.data() + c->out_pos);
    c->iov.iov_len = s.size() - c->out_pos;
    c->msg = msghdr{};
    c->msg.msg_iov = &c->iov;
    c->msg.msg_iovlen = 1;
    c->r->sendmsg(c->fd, &c->msg, [c](int res) {
      c->sending = false;
      if (res <= 0) {
        if (res == -EAGAIN || res == -EINTR) {
          pump(c);
          return;
        }
        c->gone.store(true);
        c->out.clear();
        shut(c);
        return;
      }
      c->out_pos += static_cast<size_t>(res);
      if (c->out_pos == c->out.front().size()) {
        c->out.pop_front();
        c->out_pos = 0;
      }
      pump(c);
    });
  }

  static void shut(const std::shared_ptr<Conn>& c) {
    if (c->closed) return;
    c->closed = true;
    c->r->close(c->fd);
  }
};

namespace {

class ConnResponder final : public Responder {
 public:
  ConnResponder(std::shared_ptr<ControlServer::Conn> c, const std::atomic<bool>& stopping)
      : c_(std::move(c)), stopping_(stopping) {}
  bool progress(const nlohmann::json& line) override {
    if (c_->gone.load()) return false;
    c_->r->post([c = c_, s = line.dump()]() mutable { ControlServer::Conn::send(c, std::move(s), false); });
    return true;
  }
  bool stopping() const override { return stopping_.load(); }

 private:
  std::shared_ptr<ControlServer::Conn> c_;
  const std::atomic<bool>& stopping_;
};

}  // namespace

Result<std::unique_ptr<ControlServer>> ControlServer::start(io::Reactor& r, const std::string& path,
                                                            ControlHandler handler) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (path.size() >= sizeof(addr.sun_path)) {
    return Status::invalid_argument(fmt::format(
        "control socket path '{}' is too long ({} bytes, at most {})", path, path.size(),
        sizeof(addr.sun_path) - 1));
  }
  std::memcpy(addr.sun_path, path.c_str(), path.size() + 1);
  struct stat st {};
  if (::lstat(path.c_str(), &st) == 0) {
    if (!S_ISSOCK(st.st_mode)) {
      return Status::from_errno(EEXIST, fmt::format(
          "'{}' exists and is not a socket; refusing to replace it with the control socket", path));
    }
    int probe = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (probe < 0) return Status::system_error(errno, "socket");
    bool live = ::connect(probe, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0;
    ::close(probe);
    if (live) {
      return Status::from_errno(EADDRINUSE, fmt::format(
          "control socket '{}' is in use by a running server", path));
    }
    ::unlink(path.c_str());
  }
  // Bound in a private (0700) directory beside `path`, made 0600 there and
  // then renamed into place: nobody else can connect, not even for a
  // moment, and the process umask stays untouched.
  std::string tmpl = path + ".XXXXXX";
  std::vector<char> dir(tmpl.begin(), tmpl.end());
  dir.push_back('\0');
  if (::mkdtemp(dir.data()) == nullptr) {
    return Status::system_error(errno, fmt::format("cannot create a directory beside '{}'", path));
  }
  const std::string tmp_dir = dir.data();
  const std::string tmp_path = tmp_dir + "/s";
  sockaddr_un tmp_addr{};
  tmp_addr.sun_family = AF_UNIX;
  if (tmp_path.size() >= sizeof(tmp_addr.sun_path)) {
    ::rmdir(tmp_dir.c_str());
    return Status::invalid_argument(fmt::format(
        "control socket path '{}' is too long (at most {} bytes)", path, sizeof(tmp_addr.sun_path) - 11));
  }
  std::memcpy(tmp_addr.sun_path, tmp_path.c_str(), tmp_path.size() + 1);
  int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    int err = errno;
    ::rmdir(tmp_dir.c_str());
    return Status::system_error(err, "socket");
  }
  if (::bind(fd, reinterpret_cast<sockaddr*>(&tmp_addr), sizeof(tmp_addr)) != 0 ||
      ::chmod(tmp_path.c_str(), 0600) != 0 || ::listen(fd, 16) != 0 ||
      ::rename(tmp_path.c_str(), path.c_str()) != 0) {
    int err = errno;
    ::close(fd);
    ::unlink(tmp_path.c_str());
    ::rmdir(tmp_dir.c_str());
    return Status::system_error(err, fmt::format("cannot create control socket '{}'", path));
  }
  ::rmdir(tmp_dir.c_str());
  std::unique_ptr<ControlServer> s(new ControlServer(r, path, fd, std::move(handler)));
  ControlServer* self = s.get();
  {
    std::lock_guard lk(self->mu_);
    ++self->running_;  // the accept posted below
  }
  r.post([self] { self->accept_next(); });
  return s;
}

ControlServer::~ControlServer() { stop(); }

void ControlServer::accept_next() {
  // running_ already counts this accept.
  r_.accept(fd_, [this](int res) {
    if (stopping_.load()) {
      if (res >= 0) ::close(res);
      std::lock_guard lk(mu_);
      --running_;
      cv_.notify_all();
      return;
    }
    if (res >= 0) {
      auto c = std::make_shared<Conn>();
      c->r = &r_;
      c->fd = res;
      read_request(c);
    } else if (res != -EINTR && res != -ECONNABORTED && res != -EAGAIN) {
      log::warn("control socket accept failed: {}", std::strerror(-res));
    }
    accept_next();
  });
}

void ControlServer::read_request(const std::shared_ptr<Conn>& c) {
  r_.recv(c->fd, c->buf, sizeof c->buf, [this, c](int res) {
    if (res <= 0) {
      Conn::shut(c);
      return;
    }
    c->in.append(c->buf, static_cast<size_t>(res));
    auto nl = c->in.find('\n');
    if (nl != std::string::npos) {
      run_handler(c, c->in.substr(0, nl));
      return;
    }
    if (c->in.size() > kMaxRequest) {
      nlohmann::json e = {{"ok", false}, {"code", "bad-request"},
                          {"error", "request line longer than 64 KiB"}};
      Conn::send(c, e.dump(), true);
      return;
    }
    read_request(c);
  });
}

void ControlServer::run_handler(const std::shared_ptr<Conn>& c, std::string line) {
  {
    std::lock_guard lk(mu_);
    if (stopping_.load()) {
      Conn::shut(c);
      return;
    }
    ++running_;
  }
  std::thread([this, c, line = std::move(line)] {
    nlohmann::json reply;
    auto req = nlohmann::json::parse(line, nullptr, false);
    if (req.is_discarded() || !req.is_object() || !req.contains("cmd") || !req["cmd"].is_string()) {
      reply = {{"ok", false}, {"code", "bad-request"},
               {"error", "expected one JSON object with a \"cmd\" string on one line"}};
    } else {
      ConnResponder out(c, stopping_);
      try {
        reply = handler_(req, out);
      } catch (const std::exception& e) {
        reply = {{"ok", false}, {"code", "internal"}, {"error", e.what()}};
      }
    }
    c->r->post([c, s = reply.dump()]() mutable { Conn::send(c, std::move(s), true); });
    std::lock_guard lk(mu_);
    --running_;
    cv_.notify_all();
  }).detach();
}

void ControlServer::stop() {
  if (stopping_.exchange(true)) return;
  ::shutdown(fd_, SHUT_RDWR);  // the pending accept fails now
  std::unique_lock lk(mu_);
  cv_.wait(lk, [this] { return running_ == 0; });
  ::close(fd_);
  ::unlink(path_.c_str());
}

}  // namespace rbdcache::control
