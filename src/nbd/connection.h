// One NBD client connection, driven by one reactor.
//
// The connection reads the socket, runs the handshake, then decodes and
// validates requests and dispatches each to the origin at once: many requests
// are in flight together, and each reply is queued the moment its request
// completes, so replies go out in completion order, not request order.
//
// Threading: every method runs on the owning reactor's thread. The object is
// kept alive by shared_ptr; every pending callback holds a reference.
//
// Lifecycle:
//   start() -> handshake -> transmission -> (DISC | peer closed | begin_drain())
//   -> no more requests are read; in-flight requests finish and are replied
//   to -> the socket is closed and on_closed runs.
#pragma once

#include <chrono>

#include <sys/socket.h>

#include <deque>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "nbd/handshake.h"
#include "nbd/request.h"
#include "origin/origin.h"
#include "util/aligned_buffer.h"

namespace rbdcache::io {
class Reactor;
}

namespace rbdcache::nbd {

class Connection : public std::enable_shared_from_this<Connection> {
 public:
  // Requests read but not yet replied to, beyond which reading pauses.
  static constexpr size_t kMaxInFlight = 128;
  // Reply bytes queued but not yet sent, beyond which reading pauses.
  static constexpr size_t kMaxQueuedReplyBytes = 64u << 20;

  // `origin` and `exp` must outlive the connection. `on_closed` runs once,
  // on the reactor thread, after the socket is closed.
  Connection(io::Reactor& reactor, int fd, Origin& origin, const ExportInfo& exp, uint64_t id,
             std::function<void(uint64_t id)> on_closed);
  ~Connection();

  void start();
  // Closes the connection when the client has not finished the handshake
  // within `timeout` (0: never). Call before start().
  void set_handshake_timeout(std::chrono::milliseconds timeout) { handshake_timeout_ = timeout; }

  // Stops reading new requests; finishes and replies to those in flight,
  // then closes. Used for SIGTERM.
  void begin_drain();

  uint64_t id() const { return id_; }

 private:
  // The handshake deadline: a timerfd read through the reactor, so that it
  // can be made to fire at once (the reactor cannot cancel a timeout) when
  // the handshake ends or the connection closes.
  void arm_handshake_timer();
  void fire_handshake_timer();
  int timer_fd_ = -1;
  uint64_t timer_buf_ = 0;
  std::chrono::milliseconds handshake_timeout_{0};

  struct Request {
    RequestHeader header;
    AlignedBuffer payload;  // WRITE data, or the READ destination
  };
  struct OutMessage {
    std::vector<std::byte> head;
    AlignedBuffer data;  // READ data; may be empty
    size_t sent = 0;     // bytes of head+data already sent
    size_t size() const { return head.size() + data.size(); }
  };

  void post_recv();
  void on_recv(int res);
  void process_input();
  bool process_handshake();
  bool process_requests();
  void dispatch(std::unique_ptr<Request> req);
  void complete(std::shared_ptr<Request> req, Status status);
  void reply_error(uint64_t handle, uint16_t type, Error error, std::string_view message);
  void queue_send(OutMessage msg);
  void flush_sends();
  void on_sent(int res);
  bool reading_paused() const;
  void stop_reading(std::string why);
  void maybe_close();

  io::Reactor& reactor_;
  int fd_;
  Origin& origin_;
  const ExportInfo& exp_;
  const uint64_t id_;
  std::function<void(uint64_t)> on_closed_;

  Handshake handshake_;
  ExportLimits limits_;

  // Receive buffer: bytes [rstart_, rend_) are received and unparsed.
  std::vector<std::byte> rbuf_;
  size_t rstart_ = 0;
  size_t rend_ = 0;
  bool recv_pending_ = false;
  bool reading_done_ = false;  // no more requests will be read

  // A WRITE whose payload is still arriving, or a payload being skipped.
  std::unique_ptr<Request> partial_;
  size_t partial_have_ = 0;
  uint64_t skip_remaining_ = 0;
  // A rejected WRITE waiting for its payload to be skipped before its reply.
  uint64_t skip_handle_ = 0;
  Error skip_error_ = kErrNone;

  size_t in_flight_ = 0;
  bool processing_ = false;  // inside process_input()
  bool reprocess_ = false;   // input or capacity changed during it

  std::deque<OutMessage> sendq_;
  size_t queued_bytes_ = 0;
  bool send_pending_ = false;
  bool flush_scheduled_ = false;  // a deferred flush_sends() is queued
  bool send_failed_ = false;
  std::vector<iovec> iov_;
  msghdr msg_{};

  bool closed_ = false;
};

}  // namespace rbdcache::nbd
