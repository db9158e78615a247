#include "io/reactor.h"

#include <sys/eventfd.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cassert>
#include <pthread.h>
#include <thread>
#include <utility>

#if defined(__SANITIZE_THREAD__)
#define RBDCACHE_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define RBDCACHE_TSAN 1
#endif
#endif
#ifdef RBDCACHE_TSAN
#include <sanitizer/tsan_interface.h>
#endif

namespace rbdcache::io {

// Per-SQE state; its address travels in the SQE's user_data.
struct Reactor::Op {
  IoResultFn done;
  __kernel_timespec ts{};  // only for timeouts
};

namespace {
uint64_t this_thread_key() {
  return static_cast<uint64_t>(std::hash<std::thread::id>()(std::this_thread::get_id())) | 1;
}

#ifdef RBDCACHE_TSAN
// ThreadSanitizer builds only. liburing maps a ring's memory (SQ ring, CQ
// ring, SQE array) and unmaps it with raw system calls, which the sanitizer
// does not intercept, so it never learns that a torn-down ring's memory is
// gone. When a later ring is mapped at the same address (often, by another
// thread), it still remembers the old ring's accesses there and reports the
// new ring's as races with them. (The kernel refuses to map a ring at a
// fixed address, so the regions cannot be mapped again through libc's
// mmap, which the sanitizer would see.) So the unmap and the later map are
// told to it as what they are, a happens-before edge: every page of a ring
// is released just before the ring is torn down and acquired once a new
// ring has been mapped over it. Each page is its own sync object, so only a
// ring reusing the very pages of an old one is ordered after it.
template <typename Fn>
void for_each_ring_page(const io_uring& ring, Fn fn) {
  const uintptr_t page = static_cast<uintptr_t>(::sysconf(_SC_PAGESIZE));
  const std::pair<const void*, size_t> regions[] = {
      {ring.sq.ring_ptr, ring.sq.ring_sz},
      {ring.cq.ring_ptr, ring.cq.ring_sz},  // the SQ ring's mapping with IORING_FEAT_SINGLE_MMAP
      {ring.sq.sqes, ring.sq.ring_entries * sizeof(io_uring_sqe)},
  };
  for (const auto& [addr, len] : regions) {
    if (addr == nullptr) continue;
    const uintptr_t start = reinterpret_cast<uintptr_t>(addr);
    for (uintptr_t p = start & ~(page - 1); p < start + len; p += page) {
      fn(reinterpret_cast<void*>(p));
    }
  }
}
#endif
}  // namespace

Reactor::Reactor(unsigned index) : index_(index) {}

Result<std::unique_ptr<Reactor>> Reactor::create(unsigned queue_depth, unsigned index) {
  std::unique_ptr<Reactor> r(new Reactor(index));
  // Preferred: task work runs only when this reactor's thread waits for
  // completions, which saves interrupts and context switches. The ring starts
  // disabled so that the thread that enables it in run() becomes its single
  // issuer. Older kernels refuse these flags; fall back step by step.
  const unsigned flag_sets[] = {
      IORING_SETUP_CLAMP | IORING_SETUP_SINGLE_ISSUER |
          IORING_SETUP_R_DISABLED,
      IORING_SETUP_CLAMP | IORING_SETUP_COOP_TASKRUN,
      IORING_SETUP_CLAMP,
  };
  int rc = -EINVAL;
  for (unsigned flags : flag_sets) {
    io_uring_params params{};
    params.flags = flags;
    rc = io_uring_queue_init_params(queue_depth, &r->ring_, &params);
    if (rc == 0) {
      r->disabled_ = (flags & IORING_SETUP_R_DISABLED) != 0;
      break;
    }
    if (rc != -EINVAL) break;
  }
  if (rc < 0) {
    return Status::system_error(-rc, "io_uring_queue_init");
  }
#ifdef RBDCACHE_TSAN
  for_each_ring_page(r->ring_, __tsan_acquire);
#endif
  r->event_fd_ = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (r->event_fd_ < 0) {
    int err = errno;
#ifdef RBDCACHE_TSAN
    for_each_ring_page(r->ring_, __tsan_release);
#endif
    io_uring_queue_exit(&r->ring_);
    r->ring_ = {};
    return Status::system_error(err, "eventfd");
  }
  r->arm_eventfd();
  return r;
}

Reactor::~Reactor() {
  if (ring_.ring_fd > 0) {
#ifdef RBDCACHE_TSAN
    for_each_ring_page(ring_, __tsan_release);
#endif
    io_uring_queue_exit(&ring_);
  }
  delete eventfd_op_;
  // A post() from another thread may still be writing the eventfd after its
  // closure ran: wait for it to let go.
  std::lock_guard<std::mutex> lock(posted_mu_);
  if (event_fd_ >= 0) ::close(event_fd_);
}

bool Reactor::on_reactor_thread() const { return thread_id_.load() == this_thread_key(); }

io_uring_sqe* Reactor::get_sqe() {
  io_uring_sqe* sqe = io_uring_get_sqe(&ring_);
  while (sqe == nullptr) {
    // The submission queue is full: hand what we have to the kernel.
    io_uring_submit(&ring_);
    sqe = io_uring_get_sqe(&ring_);
  }
  return sqe;
}

void Reactor::submit_op(io_uring_sqe* sqe, IoResultFn done) {
  auto* op = new Op{std::move(done)};
  io_uring_sqe_set_data(sqe, op);
  ++in_flight_;
}

void Reactor::arm_eventfd() {
  io_uring_sqe* sqe = get_sqe();
  io_uring_prep_read(sqe, event_fd_, &event_buf_, sizeof(event_buf_), 0);
  // The eventfd read is always armed; its Op is freed by the destructor if
  // the loop ends while it is pending.
  eventfd_op_ = new Op{[this](int /*res*/) {
    eventfd_op_ = nullptr;
    drain_posted();
    arm_eventfd();
  }};
  io_uring_sqe_set_data(sqe, eventfd_op_);
  ++in_flight_;
}

void Reactor::post(std::function<void()> fn) {
  // The eventfd is written under the lock: the posted closure may run (and
  // its owner destroy this reactor) as soon as it is queued, and the
  // destructor takes the lock before it closes the eventfd. Only the post
  // that finds the queue empty writes; the others ride on its wake-up, which
  // the loop has not yet drained.
  std::lock_guard<std::mutex> lock(posted_mu_);
  const bool wake = posted_.empty();
  posted_.push_back(std::move(fn));
  if (!wake) return;
  uint64_t one = 1;
  // A full eventfd counter still wakes the reader, so a failed write is harmless.
  ssize_t n = ::write(event_fd_, &one, sizeof(one));
  (void)n;
}

void Reactor::drain_posted() {
  std::vector<std::function<void()>> batch;
  {
    std::lock_guard<std::mutex> lock(posted_mu_);
    batch.swap(posted_);
  }
  for (auto& fn : batch) fn();
}

void Reactor::stop() {
  stopping_.store(true);
  post([] {});
}

void Reactor::defer(std::function<void()> fn) { deferred_.push_back(std::move(fn)); }

void Reactor::run_deferred() {
  while (!deferred_.empty()) {
    std::vector<std::function<void()>> batch;
    batch.swap(deferred_);
    for (auto& fn : batch) fn();
  }
}

void Reactor::run() {
  thread_id_.store(this_thread_key());
  if (disabled_) {
    // Debian's liburing 2.3 declares io_uring_enable_rings() but does not
    // export it, so register directly.
    long rc = ::syscall(__NR_io_uring_register, ring_.ring_fd, IORING_REGISTER_ENABLE_RINGS,
                        nullptr, 0);
    if (rc < 0) {
      fmt::print(stderr, "rbdcache: enabling the io_uring ring: {}\n", std::strerror(errno));
      std::abort();
    }
    disabled_ = false;
  }
  std::vector<std::pair<Op*, int>> ready;
  while (true) {
    run_deferred();
    int rc = io_uring_submit_and_wait(&ring_, 1);
    if (rc < 0 && rc != -EINTR && rc != -EAGAIN && rc != -EBUSY) {
      // The ring itself failed; nothing sensible can continue.
      fmt::print(stderr, "rbdcache: io_uring_submit_and_wait: {}\n", std::strerror(-rc));
      std::abort();
    }
    io_uring_cqe* cqe;
    unsigned head;
    unsigned seen = 0;
    // Collect first, then run callbacks: a callback may submit and reap.
    ready.clear();
    io_uring_for_each_cqe(&ring_, head, cqe) {
      ready.emplace_back(static_cast<Op*>(io_uring_cqe_get_data(cqe)), cqe->res);
      ++seen;
    }
    io_uring_cq_advance(&ring_, seen);
    for (auto& [op, res] : ready) {
      --in_flight_;
      std::unique_ptr<Op> owned(op);
      owned->done(res);
    }
    run_deferred();
    // After stop(), the loop ends once every operation but the eventfd read
    // has completed and no posted closure is waiting.
    if (stopping_.load() && in_flight_ == 1) {
      std::lock_guard<std::mutex> lock(posted_mu_);
      if (posted_.empty()) break;
    }
  }
  thread_id_.store(0);
}

void Reactor::read(int fd, void* buf, uint32_t len, uint64_t offset, IoResultFn done) {
  io_uring_sqe* sqe = get_sqe();
  io_uring_prep_read(sqe, fd, buf, len, offset);
  submit_op(sqe, std::move(done));
}

void Reactor::write(int fd, const void* buf, uint32_t len, uint64_t offset, int rw_flags,
                    IoResultFn done) {
  io_uring_sqe* sqe = get_sqe();
  io_uring_prep_write(sqe, fd, buf, len, offset);
  sqe->rw_flags = rw_flags;
  submit_op(sqe, std::move(done));
}

void Reactor::fsync(int fd, bool datasync, IoResultFn done) {
  io_uring_sqe* sqe = get_sqe();
  io_uring_prep_fsync(sqe, fd, datasync ? IORING_FSYNC_DATASYNC : 0);
  submit_op(sqe, std::move(done));
}

void Reactor::fallocate(int fd, int mode, uint64_t offset, uint64_t len, IoResultFn done) {
  io_uring_sqe* sqe = get_sqe();
  io_uring_prep_fallocate(sqe, fd, mode, static_cast<off_t>(offset), static_cast<off_t>(len));
  submit_op(sqe, std::move(done));
}

void Reactor::recv(int fd, void* buf, uint32_t len, IoResultFn done) {
  io_uring_sqe* sqe = get_sqe();
  io_uring_prep_recv(sqe, fd, buf, len, 0);
  submit_op(sqe, std::move(done));
}

void Reactor::sendmsg(int fd, const struct msghdr* msg, IoResultFn done) {
  io_uring_sqe* sqe = get_sqe();
  io_uring_prep_sendmsg(sqe, fd, msg, MSG_NOSIGNAL);
  submit_op(sqe, std::move(done));
}

void Reactor::accept(int fd, IoResultFn done) {
  io_uring_sqe* sqe = get_sqe();
  io_uring_prep_accept(sqe, fd, nullptr, nullptr, SOCK_CLOEXEC);
  submit_op(sqe, std::move(done));
}

void Reactor::timeout(uint64_t nanoseconds, IoResultFn done) {
  io_uring_sqe* sqe = get_sqe();
  auto* op = new Op{std::move(done)};
  op->ts.tv_sec = static_cast<long long>(nanoseconds / 1000000000ull);
  op->ts.tv_nsec = static_cast<long long>(nanoseconds % 1000000000ull);
  io_uring_prep_timeout(sqe, &op->ts, 0, 0);
  io_uring_sqe_set_data(sqe, op);
  ++in_flight_;
}

void Reactor::close(int fd) {
  io_uring_sqe* sqe = get_sqe();
  io_uring_prep_close(sqe, fd);
  submit_op(sqe, [](int) {});
}

namespace {
// State of one whole-range transfer, resubmitted after short transfers.
struct FullTransfer {
  int fd;
  std::byte* buf;
  uint64_t len;
  uint64_t offset;
  int rw_flags;
  bool is_write;
  uint64_t done_bytes = 0;
  std::function<void(int)> done;
};

constexpr uint64_t kMaxChunk = 1u << 30;

void step(Reactor& r, std::shared_ptr<FullTransfer> t) {
  uint64_t remaining = t->len - t->done_bytes;
  uint32_t chunk = static_cast<uint32_t>(std::min(remaining, kMaxChunk));
  auto on_done = [&r, t](int res) {
    if (res == -EAGAIN || res == -EINTR) {
      step(r, t);
      return;
    }
    if (res < 0) {
      t->done(res);
      return;
    }
    if (res == 0) {
      t->done(-EIO);  // unexpected end of file
      return;
    }
    t->done_bytes += static_cast<uint64_t>(res);
    if (t->done_bytes == t->len) {
      t->done(0);
    } else {
      step(r, t);
    }
  };
  if (t->is_write) {
    r.write(t->fd, t->buf + t->done_bytes, chunk, t->offset + t->done_bytes, t->rw_flags,
            std::move(on_done));
  } else {
    r.read(t->fd, t->buf + t->done_bytes, chunk, t->offset + t->done_bytes, std::move(on_done));
  }
}
}  // namespace

void Reactor::read_full(int fd, void* buf, uint64_t len, uint64_t offset,
                        std::function<void(int)> done) {
  auto t = std::make_shared<FullTransfer>(
      FullTransfer{fd, static_cast<std::byte*>(buf), len, offset, 0, false, 0, std::move(done)});
  if (len == 0) {
    t->done(0);
    return;
  }
  step(*this, std::move(t));
}

void Reactor::write_full(int fd, const void* buf, uint64_t len, uint64_t offset, int rw_flags,
                         std::function<void(int)> done) {
  auto t = std::make_shared<FullTransfer>(FullTransfer{
      fd, static_cast<std::byte*>(const_cast<void*>(buf)), len, offset, rw_flags, true, 0,
      std::move(done)});
  if (len == 0) {
    t->done(0);
    return;
  }
  step(*this, std::move(t));
}

}  // namespace rbdcache::io
