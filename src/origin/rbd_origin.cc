#include "origin/rbd_origin.h"

#include <rados/librados.h>
#include <rbd/librbd.h>
#include <unistd.h>

#include <algorithm>
#include <cassert>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <fstream>

#include "io/reactor.h"

namespace rbdcache {

namespace {

rados_t as_cluster(void* p) { return static_cast<rados_t>(p); }
rados_ioctx_t as_ioctx(void* p) { return static_cast<rados_ioctx_t>(p); }
rbd_image_t as_image(void* p) { return static_cast<rbd_image_t>(p); }

std::string conf_get(rados_t cluster, const char* key) {
  char buf[1024];
  if (rados_conf_get(cluster, key, buf, sizeof(buf)) != 0) return {};
  return buf;
}

Status conf_set(rados_t cluster, const char* key, const std::string& value) {
  int rc = rados_conf_set(cluster, key, value.c_str());
  if (rc < 0) {
    return Status::system_error(-rc, fmt::format("cannot set Ceph option {}={}", key, value));
  }
  return Status::ok();
}

// True when the keyring file at `path` has a "[NAME]" section (or cannot
// be read, in which case librados' own error stands).
bool keyring_has_section(const std::string& path, const std::string& name) {
  std::ifstream in(path);
  if (!in) return true;
  std::string line;
  while (std::getline(in, line)) {
    auto first = line.find_first_not_of(" \t");
    auto last = line.find_last_not_of(" \t\r");
    if (first == std::string::npos) continue;
    if (line.compare(first, last - first + 1, "[" + name + "]") == 0) return true;
  }
  return false;
}

const char* op_name(int op) {
  static constexpr const char* kNames[] = {"read", "write", "flush", "discard", "write-zeroes"};
  return kNames[op];
}

}  // namespace

struct RbdOrigin::Request {
  RbdOrigin* origin = nullptr;
  io::Reactor* reactor = nullptr;
  Op op = Op::kRead;
  uint64_t offset = 0;
  uint64_t length = 0;
  std::byte* read_buf = nullptr;
  const std::byte* write_buf = nullptr;
  WriteFlags flags;
  bool flush_after = false;  // FUA that librbd cannot honour on the request itself
  IoCallback done;
};

// --- Opening ---------------------------------------------------------------

Result<std::unique_ptr<RbdOrigin>> RbdOrigin::open(const RbdUri& uri, const RbdOptions& opts) {
  std::unique_ptr<RbdOrigin> o(new RbdOrigin());
  o->uri_ = uri;
  o->read_only_ = opts.read_only;
  o->queue_depth_ = std::max(1u, opts.queue_depth);
  o->timeout_seconds_ = opts.timeout_seconds;
  RBDCACHE_RETURN_IF_ERROR(o->connect(opts));
  RBDCACHE_RETURN_IF_ERROR(o->open_image(opts));
  return o;
}

Status RbdOrigin::connect(const RbdOptions& opts) {
  std::string id = opts.id;
  if (id.empty()) {
    const char* env = std::getenv("CEPH_ARGS");
    if (env != nullptr) id = client_id_from_ceph_args(env);
  }
  client_name_ = "client." + (id.empty() ? std::string("admin") : id);

  rados_t cluster = nullptr;
  int rc = rados_create(&cluster, id.empty() ? nullptr : id.c_str());
  if (rc < 0) return Status::system_error(-rc, "cannot create a Ceph cluster handle");
  cluster_ = cluster;

  // librados' own messages would repeat ours less clearly; a ceph.conf or
  // CEPH_ARGS read below can turn them back on.
  conf_set(cluster, "log_to_stderr", "false").ignore_error();
  conf_set(cluster, "err_to_stderr", "false").ignore_error();

  bool conf_found = true;
  if (!opts.conf_path.empty()) {
    if (access(opts.conf_path.c_str(), R_OK) != 0) {
      return Status::system_error(errno,
                                  fmt::format("cannot read Ceph configuration '{}' (--ceph-conf)", opts.conf_path));
    }
    rc = rados_conf_read_file(cluster, opts.conf_path.c_str());
    if (rc < 0) {
      return Status::system_error(-rc, fmt::format("cannot parse Ceph configuration '{}' (--ceph-conf)",
                                                   opts.conf_path));
    }
  } else {
    // -ENOENT: no ceph.conf in the usual places; CEPH_ARGS may still name
    // the monitors (--mon_host).
    rc = rados_conf_read_file(cluster, nullptr);
    if (rc == -ENOENT) {
      conf_found = false;
    } else if (rc < 0) {
      return Status::system_error(-rc, "cannot parse the default Ceph configuration ($CEPH_CONF or /etc/ceph/ceph.conf)");
    }
  }
  rc = rados_conf_parse_env(cluster, nullptr);
  if (rc < 0) return Status::system_error(-rc, "cannot parse CEPH_ARGS");

  if (!opts.keyring.empty()) {
    if (access(opts.keyring.c_str(), R_OK) != 0) {
      return Status::system_error(errno, fmt::format("cannot read keyring '{}' (--keyring)", opts.keyring));
    }
    RBDCACHE_RETURN_IF_ERROR(conf_set(cluster, "keyring", opts.keyring));
  }
  // librbd's own cache acknowledges a write before the OSDs have it (its
  // default policy, writearound, and writeback), so a crash of this process
  // would lose writes the client was told are done. rbdcache caches on its
  // own device and needs none of it: it is off, whatever ceph.conf or
  // CEPH_ARGS say, and a write completes when the OSDs have it.
  RBDCACHE_RETURN_IF_ERROR(conf_set(cluster, "rbd_cache", "false"));
  RBDCACHE_RETURN_IF_ERROR(conf_set(cluster, "rbd_cache_policy", "writethrough"));
  // Bounded connect and pool lookup. rados_osd_op_timeout stays 0: data I/O
  // must wait out a paused OSD, not fail.
  const std::string timeout = std::to_string(std::max(1u, opts.timeout_seconds));
  RBDCACHE_RETURN_IF_ERROR(conf_set(cluster, "client_mount_timeout", timeout));
  RBDCACHE_RETURN_IF_ERROR(conf_set(cluster, "rados_mon_op_timeout", timeout));

  std::string mon_host = conf_get(cluster, "mon_host");
  if (mon_host.empty()) {
    return Status::invalid_argument(fmt::format(
        "no Ceph monitor address: {}; give --ceph-conf PATH (or set CEPH_CONF or CEPH_ARGS='--mon_host ...')",
        conf_found ? "the Ceph configuration sets no mon_host"
                   : "no ceph.conf found ($CEPH_CONF, /etc/ceph/ceph.conf, ~/.ceph/config, ./ceph.conf)"));
  }

  rc = rados_connect(cluster);
  if (rc == 0) return Status::ok();
  const std::string keyring = conf_get(cluster, "keyring");
  switch (-rc) {
    case EACCES:
    case EPERM:
      if (!opts.keyring.empty() && !keyring_has_section(opts.keyring, client_name_)) {
        return Status::from_errno(-rc, fmt::format(
            "permission denied connecting to the Ceph cluster at {} as {}: keyring '{}' has no key "
            "for {}; check --ceph-id and --keyring",
            mon_host, client_name_, opts.keyring, client_name_));
      }
      return Status::from_errno(-rc, fmt::format(
          "permission denied connecting to the Ceph cluster at {} as {}: the user does not exist or "
          "its key is wrong; check --ceph-id and --keyring (keyring: {})",
          mon_host, client_name_, keyring));
    case ENOENT:
      return Status::from_errno(-rc, fmt::format(
          "no key for {} to connect to the Ceph cluster at {}: no keyring found, or it has no key for "
          "this user; check --ceph-id and --keyring (searched: {})",
          client_name_, mon_host, keyring));
    case ETIMEDOUT:
      return Status::from_errno(-rc, fmt::format(
          "timed out after {}s connecting to the Ceph monitors at {} as {}: is the cluster reachable? "
          "check --ceph-conf (or raise --ceph-timeout)",
          timeout, mon_host, client_name_));
    default:
      return Status::system_error(-rc, fmt::format("cannot connect to the Ceph cluster at {} as {}",
                                                   mon_host, client_name_));
  }
}

namespace {

// Waits for an rbd_aio_open, which can take as long as an OSD takes to
// answer. Heap-allocated and shared by the waiter and librbd's callback;
// after a timeout the waiter leaves it to the callback.
struct OpenWait {
  std::mutex mu;
  std::condition_variable cv;
  bool done = false;
  bool abandoned = false;
  int result = 0;
  rbd_completion_t completion = nullptr;

  static void on_complete(rbd_completion_t c, void* arg) {
    auto* w = static_cast<OpenWait*>(arg);
    int res = static_cast<int>(rbd_aio_get_return_value(c));
    rbd_aio_release(c);
    std::unique_lock lock(w->mu);
    if (w->abandoned) {
      lock.unlock();
      delete w;
      return;
    }
    w->result = res;
    w->done = true;
    w->cv.notify_all();
  }
};

}  // namespace

// Opens an image with rbd_aio_open, so that an unresponsive OSD cannot hold
// the caller forever: -ETIMEDOUT after `timeout_seconds` (the open is then
// abandoned, and its handle leaked rather than closed under librbd).
int RbdOrigin::open_handle(void* ioctx_handle, const std::string& name, bool read_only,
                          unsigned timeout_seconds, void** image_handle) {
  auto ioctx = static_cast<rados_ioctx_t>(ioctx_handle);
  auto* image = reinterpret_cast<rbd_image_t*>(image_handle);
  auto* wait = new OpenWait();
  int rc = rbd_aio_create_completion(wait, &OpenWait::on_complete, &wait->completion);
  if (rc < 0) {
    delete wait;
    return rc;
  }
  rc = read_only ? rbd_aio_open_read_only(ioctx, name.c_str(), image, nullptr, wait->completion)
                 : rbd_aio_open(ioctx, name.c_str(), image, nullptr, wait->completion);
  if (rc < 0) {
    rbd_aio_release(wait->completion);
    delete wait;
    return rc;
  }
  std::unique_lock lock(wait->mu);
  bool finished = wait->cv.wait_for(lock, std::chrono::seconds(std::max(1u, timeout_seconds)),
                                    [wait] { return wait->done; });
  if (!finished) {
    wait->abandoned = true;  // the callback frees it
    return -ETIMEDOUT;
  }
  rc = wait->result;
  lock.unlock();
  delete wait;
  return rc;
}


Status RbdOrigin::open_image(const RbdOptions& opts) {
  rados_t cluster = as_cluster(cluster_);
  const std::string& pool = uri_.pool;
  rados_ioctx_t ioctx = nullptr;
  int rc = rados_ioctx_create(cluster, pool.c_str(), &ioctx);
  if (rc < 0) {
    switch (-rc) {
      case ENOENT:
        return Status::from_errno(ENOENT, fmt::format("Ceph pool '{}' does not exist (origin {})", pool,
                                                      uri_.to_string()));
      case ETIMEDOUT:
        return Status::from_errno(ETIMEDOUT, fmt::format("timed out after {}s looking up Ceph pool '{}'",
                                                         opts.timeout_seconds, pool));
      case EACCES:
      case EPERM:
        return Status::from_errno(-rc, fmt::format(
            "permission denied opening Ceph pool '{}' as {}: check the user's caps "
            "(mon 'profile rbd' osd 'profile rbd pool={}')", pool, client_name_, pool));
      default:
        return Status::system_error(-rc, fmt::format("cannot open Ceph pool '{}'", pool));
    }
  }
  ioctx_ = ioctx;
  rados_ioctx_set_namespace(ioctx, uri_.name_space.c_str());

  void* handle = nullptr;
  rc = open_handle(ioctx, uri_.image, read_only_, opts.timeout_seconds, &handle);
  rbd_image_t image = as_image(handle);
  if (rc == -ETIMEDOUT) {
    abandoned_ = true;
    return Status::from_errno(ETIMEDOUT, fmt::format(
        "timed out after {}s opening RBD image '{}': are the cluster's OSDs up?",
        opts.timeout_seconds, uri_.spec()));
  }
  if (rc < 0) {
    const std::string where =
        uri_.name_space.empty() ? fmt::format("pool '{}'", pool)
                                : fmt::format("pool '{}', namespace '{}'", pool, uri_.name_space);
    switch (-rc) {
      case ENOENT:
        return Status::from_errno(ENOENT, fmt::format("RBD image '{}' does not exist in {}{}",
                                                      uri_.image, where,
                                                      uri_.name_space.empty() ? "" : " (or the namespace does not exist)"));
      case EACCES:
      case EPERM:
        return Status::from_errno(-rc, fmt::format(
            "permission denied opening RBD image '{}' as {}: check the user's caps "
            "(mon 'profile rbd' osd 'profile rbd pool={}')", uri_.spec(), client_name_, pool));
      default:
        return Status::system_error(-rc, fmt::format("cannot open RBD image '{}'", uri_.spec()));
    }
  }
  image_ = image;

  rbd_image_info_t info{};
  rc = rbd_stat(image, &info, sizeof(info));
  if (rc < 0) return Status::system_error(-rc, fmt::format("cannot stat RBD image '{}'", uri_.spec()));
  size_ = info.size;
  object_size_ = info.obj_size;
  object_order_ = info.order;
  if (size_ == 0) {
    return Status::invalid_argument(fmt::format("RBD image '{}' is empty (size 0)", uri_.spec()));
  }
  char id[128] = {};
  rc = rbd_get_id(image, id, sizeof(id));
  if (rc < 0) {
    // Format 1 images have no id; they were deprecated long ago.
    return Status::system_error(-rc, fmt::format(
        "cannot read the id of RBD image '{}' (format 1 images are not supported)", uri_.spec()));
  }
  image_id_ = id;

  // The connect-phase bound must not apply to later monitor commands that
  // librbd makes on its own.
  RBDCACHE_RETURN_IF_ERROR(conf_set(cluster, "rados_mon_op_timeout", "0"));
  return Status::ok();
}

RbdOrigin::~RbdOrigin() {
  {
    std::lock_guard lock(mu_);
    assert(in_flight_ == 0 && waiting_.empty());
  }
  if (abandoned_) return;  // librbd may still use the handles: leave them
  if (image_ != nullptr) {
    int rc = rbd_close(as_image(image_));
    (void)rc;  // nothing left to report it to
  }
  if (ioctx_ != nullptr) rados_ioctx_destroy(as_ioctx(ioctx_));
  if (cluster_ != nullptr) rados_shutdown(as_cluster(cluster_));
}

OriginCaps RbdOrigin::caps() const {
  OriginCaps c;
  c.read_only = read_only_;
  c.can_fast_zero = false;  // librbd may fall back to writing zeroes
  c.can_cache = false;
  return c;
}

// --- Requests --------------------------------------------------------------

void RbdOrigin::read(io::Reactor& r, uint64_t offset, std::span<std::byte> buf, IoCallback done) {
  auto req = std::make_unique<Request>();
  req->reactor = &r;
  req->op = Op::kRead;
  req->offset = offset;
  req->length = buf.size();
  req->read_buf = buf.data();
  req->done = std::move(done);
  submit(std::move(req));
}

void RbdOrigin::write(io::Reactor& r, uint64_t offset, std::span<const std::byte> buf, WriteFlags flags,
                      IoCallback done) {
  auto req = std::make_unique<Request>();
  req->reactor = &r;
  req->op = Op::kWrite;
  req->offset = offset;
  req->length = buf.size();
  req->write_buf = buf.data();
  req->flags = flags;
  req->done = std::move(done);
  submit(std::move(req));
}

void RbdOrigin::flush(io::Reactor& r, IoCallback done) {
  auto req = std::make_unique<Request>();
  req->reactor = &r;
  req->op = Op::kFlush;
  req->done = std::move(done);
  submit(std::move(req));
}

void RbdOrigin::discard(io::Reactor& r, uint64_t offset, uint64_t length, WriteFlags flags,
                        IoCallback done) {
  auto req = std::make_unique<Request>();
  req->reactor = &r;
  req->op = Op::kDiscard;
  req->offset = offset;
  req->length = length;
  req->flags = flags;
  req->flush_after = flags.fua;
  req->done = std::move(done);
  submit(std::move(req));
}

void RbdOrigin::write_zeroes(io::Reactor& r, uint64_t offset, uint64_t length, WriteFlags flags,
                             IoCallback done) {
  if (flags.fast_only) {
    r.post([done = std::move(done)] {
      done(Status::not_supported("fast zeroing is not supported by the RBD origin"));
    });
    return;
  }
  auto req = std::make_unique<Request>();
  req->reactor = &r;
  req->op = Op::kWriteZeroes;
  req->offset = offset;
  req->length = length;
  req->flags = flags;
  req->flush_after = flags.fua;
  req->done = std::move(done);
  submit(std::move(req));
}

void RbdOrigin::block_status(io::Reactor& r, uint64_t offset, uint64_t length, ExtentsCallback done) {
  const uint64_t end = std::min(size_, offset + length);
  std::vector<Extent> extents{{end - offset, 0}};
  r.post([done = std::move(done), extents = std::move(extents)]() mutable { done(std::move(extents)); });
}

void RbdOrigin::prefetch(io::Reactor& r, uint64_t /*offset*/, uint64_t /*length*/, IoCallback done) {
  r.post([done = std::move(done)] { done(Status::ok()); });
}

void RbdOrigin::submit(std::unique_ptr<Request> req) {
  req->origin = this;
  Request* raw = req.release();  // owned by the FIFO or by librbd until completion
  {
    std::lock_guard lock(mu_);
    if (paused_ || in_flight_ >= queue_depth_) {
      waiting_.push_back(raw);
      return;
    }
    ++in_flight_;
  }
  issue(raw);
}

void RbdOrigin::issue(Request* req) {
  rbd_image_t image = as_image(image_);
  rbd_completion_t c = nullptr;
  int rc = rbd_aio_create_completion(req, &RbdOrigin::on_librbd_complete, &c);
  if (rc < 0) {
    finish(req, rc);
    return;
  }
  switch (req->op) {
    case Op::kRead:
      rc = rbd_aio_read(image, req->offset, req->length, reinterpret_cast<char*>(req->read_buf), c);
      break;
    case Op::kWrite:
      rc = rbd_aio_write2(image, req->offset, req->length, reinterpret_cast<const char*>(req->write_buf), c,
                          req->flags.fua ? LIBRADOS_OP_FLAG_FADVISE_FUA : 0);
      break;
    case Op::kFlush:
      rc = rbd_aio_flush(image, c);
      break;
    case Op::kDiscard:
      rc = rbd_aio_discard(image, req->offset, req->length, c);
      break;
    case Op::kWriteZeroes:
      rc = rbd_aio_write_zeroes(image, req->offset, req->length, c,
                                req->flags.may_trim ? 0 : RBD_WRITE_ZEROES_FLAG_THICK_PROVISION, 0);
      break;
  }
  if (rc < 0) {
    // Not queued: librbd will not call back.
    rbd_aio_release(c);
    finish(req, rc);
  }
}

void RbdOrigin::on_librbd_complete(void* completion, void* arg) {
  auto c = static_cast<rbd_completion_t>(completion);
  int64_t res = rbd_aio_get_return_value(c);
  rbd_aio_release(c);
  auto* req = static_cast<Request*>(arg);
  req->origin->finish(req, res);
}

void RbdOrigin::finish(Request* req, int64_t res) {
  release_slot();
  // After this post the request belongs to its reactor; touch nothing here.
  io::Reactor* reactor = req->reactor;
  reactor->post([req, res] { req->origin->complete_on_reactor(req, res); });
}

void RbdOrigin::release_slot() {
  Request* next = nullptr;
  {
    std::lock_guard lock(mu_);
    if (waiting_.empty() || paused_) {
      --in_flight_;
      if (in_flight_ == 0) drained_.notify_all();
      return;
    }
    next = waiting_.front();  // the slot passes to it
    waiting_.pop_front();
  }
  next->reactor->post([next] { next->origin->issue(next); });
}

int RbdOrigin::swap_image_handle(void* fresh) {
  void* old;
  {
    std::unique_lock lock(mu_);
    paused_ = true;
    drained_.wait(lock, [this] { return in_flight_ == 0; });
    old = image_;
    image_ = fresh;
  }
  int rc = rbd_close(as_image(old));
  std::vector<Request*> resume;
  {
    std::lock_guard lock(mu_);
    paused_ = false;
    while (!waiting_.empty() && in_flight_ < queue_depth_) {
      resume.push_back(waiting_.front());
      waiting_.pop_front();
      ++in_flight_;
    }
  }
  for (Request* req : resume) req->reactor->post([req] { req->origin->issue(req); });
  return rc;
}

void RbdOrigin::complete_on_reactor(Request* raw, int64_t res) {
  std::unique_ptr<Request> req(raw);
  IoCallback done = std::move(req->done);
  if (res < 0) {
    int err = static_cast<int>(-res);
    if (req->op == Op::kFlush) {
      done(Status::system_error(err, fmt::format("rbd flush of {}", uri_.spec())));
    } else {
      done(Status::system_error(err, fmt::format("rbd {} of {} bytes at offset {} of {}",
                                                 op_name(static_cast<int>(req->op)), req->length,
                                                 req->offset, uri_.spec())));
    }
    return;
  }
  if (req->op == Op::kRead && static_cast<uint64_t>(res) != req->length) {
    done(Status::io_error(fmt::format("rbd read of {} bytes at offset {} of {} returned {} bytes",
                                      req->length, req->offset, uri_.spec(), res)));
    return;
  }
  if (req->flush_after) {
    flush(*req->reactor, std::move(done));
    return;
  }
  done(Status::ok());
}

}  // namespace rbdcache
