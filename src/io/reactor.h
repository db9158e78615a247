// Reactor: one io_uring ring driven by one thread.
//
// Every socket and file operation in rbdcache is an SQE submitted to the ring of
// the reactor that owns the calling thread; its completion callback runs on the
// same thread. Work from other threads (librbd callbacks, signal handling, the
// acceptor handing a connection to another reactor) enters through post(),
// which queues a closure and wakes the ring through an eventfd.
//
// Threading contract:
//   - post() and stop() may be called from any thread.
//   - Everything else must be called on the reactor's own thread (the one
//     inside run()), or before run() starts.
//   - No lock is held while I/O is in flight; the only lock guards the posted
//     closure queue.
#pragma once

#include <liburing.h>

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <vector>

#include "rbdcache/status.h"

namespace rbdcache::io {

// The result of one SQE: >= 0 is the syscall's return value, < 0 is -errno.
using IoResultFn = std::function<void(int res)>;

class Reactor {
 public:
  // Creates a ring with `queue_depth` SQEs (rounded up to a power of two).
  static Result<std::unique_ptr<Reactor>> create(unsigned queue_depth, unsigned index);

  ~Reactor();
  Reactor(const Reactor&) = delete;
  Reactor& operator=(const Reactor&) = delete;

  // Position of this reactor among the process's reactors; 0 is the first.
  unsigned index() const { return index_; }

  // Runs the loop on the calling thread until stop() has been called and
  // every operation has completed. Owners must end their long-lived
  // operations (shutdown() their sockets) before or after calling stop().
  void run();

  // Asks run() to return. Thread-safe.
  void stop();

  // Queues `fn` to run on the reactor thread. Thread-safe; never blocks on I/O.
  void post(std::function<void()> fn);

  // Queues `fn` to run on the reactor thread after the current batch of
  // completions, before the loop next waits. Reactor thread only. Lets
  // callers coalesce work, such as one sendmsg for many replies.
  void defer(std::function<void()> fn);

  // True when the caller is this reactor's thread.
  bool on_reactor_thread() const;

  // --- Single operations. `done` runs on the reactor thread, exactly once,
  // with the raw CQE result. Buffers must stay valid until then. ---
  void read(int fd, void* buf, uint32_t len, uint64_t offset, IoResultFn done);
  void write(int fd, const void* buf, uint32_t len, uint64_t offset, int rw_flags, IoResultFn done);
  void fsync(int fd, bool datasync, IoResultFn done);
  void fallocate(int fd, int mode, uint64_t offset, uint64_t len, IoResultFn done);
  void recv(int fd, void* buf, uint32_t len, IoResultFn done);
  void sendmsg(int fd, const struct msghdr* msg, IoResultFn done);
  void accept(int fd, IoResultFn done);
  void timeout(uint64_t nanoseconds, IoResultFn done);
  void close(int fd);

  // --- Whole transfers: short transfers and -EAGAIN are resubmitted until
  // the whole range is done. `done` gets 0 or -errno (-EIO for an early EOF). ---
  void read_full(int fd, void* buf, uint64_t len, uint64_t offset, std::function<void(int)> done);
  void write_full(int fd, const void* buf, uint64_t len, uint64_t offset, int rw_flags,
                  std::function<void(int)> done);

  // Number of operations submitted and not yet completed.
  uint64_t in_flight() const { return in_flight_; }

 private:
  struct Op;
  Reactor(unsigned index);

  io_uring_sqe* get_sqe();
  void submit_op(io_uring_sqe* sqe, IoResultFn done);
  void arm_eventfd();
  void drain_posted();
  void run_deferred();

  io_uring ring_{};
  unsigned index_;
  int event_fd_ = -1;
  uint64_t event_buf_ = 0;
  Op* eventfd_op_ = nullptr;
  bool disabled_ = false;  // created with IORING_SETUP_R_DISABLED, not yet enabled
  std::vector<std::function<void()>> deferred_;  // reactor thread only
  std::atomic<bool> stopping_{false};
  std::atomic<uint64_t> thread_id_{0};
  uint64_t in_flight_ = 0;

  std::mutex posted_mu_;
  std::vector<std::function<void()>> posted_;  // guarded by posted_mu_
};

}  // namespace rbdcache::io
