// ControlServer: the control socket of `rbdcache serve`.
//
// Protocol (docs/operations.md): a unix stream socket, mode 0600. A client
// sends one request, a JSON object on one line ({"cmd": "status"}), and
// reads JSON lines back: zero or more progress lines ({"progress": {...}})
// and then exactly one final line ({"ok": true, ...} or {"ok": false,
// "error": "...", "code": "..."}), after which the server closes the
// connection.
//
// Threads: the socket I/O runs on the Reactor given to start(). Each request
// runs on a thread of its own (a command may block on the cluster or wait
// for a flush), which hands lines back to the reactor to be sent. stop()
// waits for those threads; handlers must return soon once
// Responder::stopping() is true.
#pragma once

#include <atomic>
#include <condition_variable>
#include <functional>
#include <memory>
#include <mutex>
#include <string>

#include <nlohmann/json.hpp>

#include "io/reactor.h"
#include "rbdcache/status.h"

namespace rbdcache::control {

// How a handler answers. Thread-safe.
class Responder {
 public:
  virtual ~Responder() = default;
  // Sends one progress line; false once the client has gone away.
  virtual bool progress(const nlohmann::json& line) = 0;
  // True once the server is stopping.
  virtual bool stopping() const = 0;
};

// Handles one request and returns the final line. Runs on its own thread.
using ControlHandler = std::function<nlohmann::json(const nlohmann::json& request, Responder& out)>;

class ControlServer {
 public:
  // Binds `path` (replacing a stale socket, refusing one a live server
  // holds), sets mode 0600 and starts accepting on `r`.
  [[nodiscard]] static Result<std::unique_ptr<ControlServer>> start(io::Reactor& r,
                                                                    const std::string& path,
                                                                    ControlHandler handler);
  ~ControlServer();

  // Stops accepting, tells running handlers to finish, waits for them and
  // removes the socket file. Call from a thread that is not the reactor's,
  // while the reactor still runs.
  void stop();

  const std::string& path() const { return path_; }

  struct Conn;  // internal

 private:
  ControlServer(io::Reactor& r, std::string path, int fd, ControlHandler handler)
      : r_(r), path_(std::move(path)), fd_(fd), handler_(std::move(handler)) {}
  void accept_next();
  void read_request(const std::shared_ptr<Conn>& c);
  void run_handler(const std::shared_ptr<Conn>& c, std::string line);

  io::Reactor& r_;
  std::string path_;
  int fd_;
  ControlHandler handler_;
  std::atomic<bool> stopping_{false};
  std::mutex mu_;
  std::condition_variable cv_;
  int running_ = 0;           // guarded by mu_: handler threads and pending accepts
};

}  // namespace rbdcache::control
