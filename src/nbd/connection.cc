#include "nbd/connection.h"

#include <sys/socket.h>
#include <sys/timerfd.h>
#include <sys/uio.h>
#include <unistd.h>

#include <cassert>
#include <cstring>

#include "io/reactor.h"
#include "nbd/reply.h"
#include "util/log.h"

namespace rbdcache::nbd {

namespace {
constexpr size_t kRecvBufferSize = 256 * 1024;
constexpr size_t kMaxIovecs = 64;
}  // namespace

Connection::Connection(io::Reactor& reactor, int fd, Origin& origin, const ExportInfo& exp,
                       uint64_t id, std::function<void(uint64_t)> on_closed)
    : reactor_(reactor),
      fd_(fd),
      origin_(origin),
      exp_(exp),
      id_(id),
      on_closed_(std::move(on_closed)),
      handshake_(exp),
      rbuf_(kRecvBufferSize) {}

Connection::~Connection() {
  if (!closed_ && fd_ >= 0) ::close(fd_);
}

void Connection::start() {
  OutMessage m;
  m.head = handshake_.greeting();
  queue_send(std::move(m));
  arm_handshake_timer();
  post_recv();
}

void Connection::arm_handshake_timer() {
  if (handshake_timeout_.count() <= 0) return;
  timer_fd_ = ::timerfd_create(CLOCK_MONOTONIC, TFD_CLOEXEC);
  if (timer_fd_ < 0) {
    log::warn("connection {}: no handshake deadline: timerfd_create: {}", id_, std::strerror(errno));
    return;
  }
  itimerspec its{};
  its.it_value.tv_sec = handshake_timeout_.count() / 1000;
  its.it_value.tv_nsec = (handshake_timeout_.count() % 1000) * 1'000'000;
  ::timerfd_settime(timer_fd_, 0, &its, nullptr);
  auto self = shared_from_this();
  reactor_.read(timer_fd_, &timer_buf_, sizeof timer_buf_, 0, [self](int) {
    ::close(self->timer_fd_);
    self->timer_fd_ = -1;
    if (!self->closed_ && !self->reading_done_ && !self->handshake_.in_transmission()) {
      log::info("connection {}: no handshake within {} ms; closing it", self->id_,
                self->handshake_timeout_.count());
      self->stop_reading("handshake timed out");
    }
  });
}

void Connection::fire_handshake_timer() {
  if (timer_fd_ < 0) return;
  itimerspec its{};
  its.it_value.tv_nsec = 1;  // now: its read completes and closes it
  ::timerfd_settime(timer_fd_, 0, &its, nullptr);
}

void Connection::begin_drain() { stop_reading("server is shutting down"); }

// ---------------------------------------------------------------- receiving

void Connection::post_recv() {
  if (recv_pending_ || reading_done_ || closed_) return;
  auto self = shared_from_this();
  // A large WRITE payload is received straight into its buffer once the
  // bytes already buffered have been copied over.
  if (partial_ && rstart_ == rend_) {
    std::byte* dst = partial_->payload.data() + partial_have_;
    size_t want = partial_->payload.size() - partial_have_;
    recv_pending_ = true;
    reactor_.recv(fd_, dst, static_cast<uint32_t>(want), [self](int res) {
      self->recv_pending_ = false;
      if (self->reading_done_) {
        // stop_reading() left the buffer alive for this receive; drop it now.
        self->partial_.reset();
        self->maybe_close();
        return;
      }
      if (res > 0) {
        self->partial_have_ += static_cast<size_t>(res);
        self->process_input();
      } else {
        self->on_recv(res <= 0 ? res : 0);
      }
    });
    return;
  }
  if (rstart_ == rend_) {
    rstart_ = rend_ = 0;
  } else if (rend_ == rbuf_.size() || rstart_ > rbuf_.size() / 2) {
    std::memmove(rbuf_.data(), rbuf_.data() + rstart_, rend_ - rstart_);
    rend_ -= rstart_;
    rstart_ = 0;
  }
  recv_pending_ = true;
  reactor_.recv(fd_, rbuf_.data() + rend_, static_cast<uint32_t>(rbuf_.size() - rend_),
                [self](int res) {
                  self->recv_pending_ = false;
                  self->on_recv(res);
                });
}

void Connection::on_recv(int res) {
  if (res == -EINTR || res == -EAGAIN) {
    post_recv();
    return;
  }
  if (res <= 0) {
    if (!reading_done_) {
      if (res < 0) log::debug("connection {}: receive failed: {}", id_, std::strerror(-res));
      if (partial_ || skip_remaining_ > 0) {
        log::info("connection {}: client disconnected in the middle of a request", id_);
      }
      stop_reading("client closed the connection");
    }
    maybe_close();
    return;
  }
  rend_ += static_cast<size_t>(res);
  process_input();
}

void Connection::process_input() {
  if (closed_) return;
  // Completions that run synchronously inside dispatch() call back in here;
  // they only ask the outer call to go round once more.
  if (processing_) {
    reprocess_ = true;
    return;
  }
  processing_ = true;
  bool keep_going;
  do {
    reprocess_ = false;
    keep_going = handshake_.in_transmission() ? process_requests() : process_handshake();
  } while (reprocess_ && !closed_);
  processing_ = false;
  if (keep_going && !reading_done_ && !reading_paused()) post_recv();
  maybe_close();
}

bool Connection::process_handshake() {
  std::vector<std::byte> out;
  size_t used = handshake_.consume(std::span<const std::byte>(rbuf_.data() + rstart_, rend_ - rstart_), out);
  rstart_ += used;
  if (!out.empty()) {
    OutMessage m;
    m.head = std::move(out);
    queue_send(std::move(m));
  }
  if (handshake_.closed()) {
    log::info("connection {}: handshake ended: {}", id_, handshake_.close_reason());
    stop_reading(handshake_.close_reason());
    return false;
  }
  if (handshake_.in_transmission()) {
    fire_handshake_timer();
    limits_ = limits_for(exp_, handshake_.session());
    log::debug("connection {}: transmission phase (structured replies: {})", id_,
               limits_.structured_replies);
    return process_requests();
  }
  return true;
}

bool Connection::process_requests() {
  while (!reading_done_) {
    size_t avail = rend_ - rstart_;
    if (partial_) {
      size_t need = partial_->payload.size() - partial_have_;
      size_t n = std::min(need, avail);
      std::memcpy(partial_->payload.data() + partial_have_, rbuf_.data() + rstart_, n);
      rstart_ += n;
      partial_have_ += n;
      if (partial_have_ < partial_->payload.size()) return true;
      partial_have_ = 0;
      dispatch(std::move(partial_));
      continue;
    }
    if (skip_remaining_ > 0) {
      size_t n = static_cast<size_t>(std::min<uint64_t>(skip_remaining_, avail));
      rstart_ += n;
      skip_remaining_ -= n;
      if (skip_remaining_ > 0) return true;
      reply_error(skip_handle_, kCmdWrite, skip_error_, "");
      continue;
    }
    if (reading_paused()) return false;
    if (avail < kRequestHeaderSize) return true;

    RequestHeader h = decode_request_header(rbuf_.data() + rstart_);
    rstart_ += kRequestHeaderSize;
    Verdict v = validate_request(h, limits_);
    switch (v.action) {
      case Verdict::Action::kDisconnect:
        log::warn("connection {}: {}; closing the connection", id_, v.reason);
        stop_reading(v.reason);
        return false;
      case Verdict::Action::kReject:
        log::info("connection {}: rejected request: {}", id_, v.reason);
        if (v.payload_length > 0) {
          skip_remaining_ = v.payload_length;
          skip_handle_ = h.handle;
          skip_error_ = v.error;
        } else {
          reply_error(h.handle, h.type, v.error, v.reason);
        }
        continue;
      case Verdict::Action::kServe:
        break;
    }
    if (h.type == kCmdDisc) {
      stop_reading("client sent NBD_CMD_DISC");
      return false;
    }
    auto req = std::make_unique<Request>();
    req->header = h;
    if (h.type == kCmdWrite) {
      req->payload = AlignedBuffer(h.length);
      partial_ = std::move(req);
      partial_have_ = 0;
      continue;
    }
    dispatch(std::move(req));
  }
  return false;
}

bool Connection::reading_paused() const {
  return in_flight_ >= kMaxInFlight || queued_bytes_ >= kMaxQueuedReplyBytes;
}

void Connection::stop_reading(std::string why) {
  if (reading_done_) return;
  reading_done_ = true;
  log::debug("connection {}: no more requests: {}", id_, why);
  // A receive may be writing into the partial payload; it frees it on completion.
  if (!recv_pending_) partial_.reset();
  skip_remaining_ = 0;
  // Wakes a pending receive, which then completes with 0.
  if (recv_pending_) ::shutdown(fd_, SHUT_RD);
  maybe_close();
}

// ---------------------------------------------------------------- dispatching

void Connection::dispatch(std::unique_ptr<Request> owned) {
  ++in_flight_;
  std::shared_ptr<Request> req(std::move(owned));
  auto self = shared_from_this();
  const RequestHeader& h = req->header;
  WriteFlags wf;
  wf.fua = (h.flags & kCmdFlagFua) != 0;
  wf.may_trim = (h.flags & kCmdFlagNoHole) == 0;
  wf.fast_only = (h.flags & kCmdFlagFastZero) != 0;
  auto done = [self, req](Status st) { self->complete(req, std::move(st)); };

  switch (h.type) {
    case kCmdRead:
      req->payload = AlignedBuffer(h.length);
      origin_.read(reactor_, h.offset, req->payload.span(), std::move(done));
      return;
    case kCmdWrite:
      origin_.write(reactor_, h.offset, std::as_const(req->payload).span(), wf, std::move(done));
      return;
    case kCmdFlush:
      origin_.flush(reactor_, std::move(done));
      return;
    case kCmdTrim:
      origin_.discard(reactor_, h.offset, h.length, wf, std::move(done));
      return;
    case kCmdWriteZeroes:
      origin_.write_zeroes(reactor_, h.offset, h.length, wf, std::move(done));
      return;
    case kCmdCache:
      origin_.prefetch(reactor_, h.offset, h.length, std::move(done));
      return;
    case kCmdBlockStatus:
      origin_.block_status(reactor_, h.offset, h.length,
                           [self, req](Result<std::vector<Extent>> extents) {
                             if (!extents.is_ok()) {
                               self->complete(req, extents.status());
                               return;
                             }
                             --self->in_flight_;
                             std::vector<Extent>& ex = extents.value();
                             if ((req->header.flags & kCmdFlagReqOne) && ex.size() > 1) ex.resize(1);
                             OutMessage m;
                             encode_block_status_chunk(m.head, req->header.handle, ex);
                             self->queue_send(std::move(m));
                             self->process_input();
                           });
      return;
    default:
      // validate_request() admits no other command.
      assert(false);
      complete(req, Status::invalid_argument("unknown command"));
  }
}

void Connection::complete(std::shared_ptr<Request> req, Status status) {
  --in_flight_;
  const RequestHeader& h = req->header;
  if (!status.is_ok()) {
    if (status.err() != ENOTSUP) {
      log::warn("connection {}: request type {} at offset {} length {} failed: {}", id_, h.type,
                h.offset, h.length, status.to_string());
    }
    reply_error(h.handle, h.type, error_from_errno(status.err()), status.to_string());
  } else {
    OutMessage m;
    if (h.type == kCmdRead) {
      if (limits_.structured_replies) {
        encode_read_chunk_header(m.head, h.handle, h.offset, h.length);
      } else {
        encode_simple_reply(m.head, h.handle, kErrNone);
      }
      m.data = std::move(req->payload);
    } else {
      encode_simple_reply(m.head, h.handle, kErrNone);
    }
    queue_send(std::move(m));
  }
  process_input();
}

void Connection::reply_error(uint64_t handle, uint16_t type, Error error, std::string_view message) {
  OutMessage m;
  if (limits_.structured_replies && (type == kCmdRead || type == kCmdBlockStatus)) {
    encode_error_chunk(m.head, handle, error, message);
  } else {
    encode_simple_reply(m.head, handle, error);
  }
  queue_send(std::move(m));
}

// ---------------------------------------------------------------- sending

void Connection::queue_send(OutMessage msg) {
  if (send_failed_ || closed_) return;
  queued_bytes_ += msg.size();
  sendq_.push_back(std::move(msg));
  // Replies produced by one batch of completions leave in one sendmsg.
  if (!flush_scheduled_) {
    flush_scheduled_ = true;
    auto self = shared_from_this();
    reactor_.defer([self] {
      self->flush_scheduled_ = false;
      self->flush_sends();
      self->maybe_close();
    });
  }
}

void Connection::flush_sends() {
  if (send_pending_ || sendq_.empty() || send_failed_) return;
  iov_.clear();
  for (auto& m : sendq_) {
    if (iov_.size() + 2 > kMaxIovecs) break;
    size_t skip = m.sent;
    if (skip < m.head.size()) {
      iov_.push_back({m.head.data() + skip, m.head.size() - skip});
      skip = 0;
    } else {
      skip -= m.head.size();
    }
    if (m.data.size() > skip) {
      iov_.push_back({m.data.data() + skip, m.data.size() - skip});
    }
  }
  msg_ = {};
  msg_.msg_iov = iov_.data();
  msg_.msg_iovlen = iov_.size();
  send_pending_ = true;
  auto self = shared_from_this();
  reactor_.sendmsg(fd_, &msg_, [self](int res) { self->on_sent(res); });
}

void Connection::on_sent(int res) {
  send_pending_ = false;
  if (res == -EINTR || res == -EAGAIN) {
    flush_sends();
    return;
  }
  if (res <= 0) {
    log::debug("connection {}: send failed: {}", id_, res < 0 ? std::strerror(-res) : "closed");
    send_failed_ = true;
    sendq_.clear();
    queued_bytes_ = 0;
    stop_reading("cannot send to the client");
    maybe_close();
    return;
  }
  size_t n = static_cast<size_t>(res);
  queued_bytes_ -= n;
  while (n > 0) {
    OutMessage& m = sendq_.front();
    size_t left = m.size() - m.sent;
    if (n >= left) {
      n -= left;
      sendq_.pop_front();
    } else {
      m.sent += n;
      n = 0;
    }
  }
  flush_sends();
  // Replies drained: reading may resume.
  process_input();
}

void Connection::maybe_close() {
  if (closed_ || !reading_done_ || recv_pending_ || in_flight_ > 0 || send_pending_ ||
      flush_scheduled_) {
    return;
  }
  if (!sendq_.empty() && !send_failed_) return;
  closed_ = true;
  fire_handshake_timer();
  ::close(fd_);
  fd_ = -1;
  if (on_closed_) on_closed_(id_);
}

}  // namespace rbdcache::nbd
