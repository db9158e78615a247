// RbdOrigin: a Ceph RBD image as the origin, through librbd's C aio API.
//
// Glossary:
//   cluster handle  one librados connection (rados_t), with its own threads
//   image handle    one open image (rbd_image_t) on that connection
//   slot            permission to have one request in librbd; at most
//                   RbdOptions::queue_depth slots are taken at once
//
// Threads and lifetimes:
//   - open() and the destructor run on one thread that is not a reactor
//     (the main thread). open() blocks for at most about
//     RbdOptions::timeout_seconds per step (connect, pool, image).
//   - Every I/O call is made on a reactor thread and is issued to librbd from
//     a reactor thread. librbd completes it on one of its own threads; that
//     thread only releases the slot and posts the user's callback to the
//     request's reactor with Reactor::post(). The callback therefore runs on
//     the calling reactor's thread, exactly once, never inside the I/O call.
//   - A request that finds every slot taken waits in a FIFO shared by all
//     reactors. When a request completes, its slot passes to the oldest
//     waiter, which is posted back to its own reactor to be issued. The lock
//     guarding the slot count and the FIFO is never held across a librbd call.
//   - The origin must outlive every request: destroy it only after every
//     callback has run (the server drains its connections first), and after
//     every reactor that was passed to it still exists until then.
//
// Durability: librbd's own cache is turned off (rbd_cache=false, and
// rbd_cache_policy=writethrough should an image's own configuration turn it
// back on): with it, librbd acknowledges a write before the OSDs have it, and
// a crash of this process would lose it. So every write completes only once
// the OSDs have it; flush() still asks librbd to flush, for the OSDs' sake.
// A FUA write is sent with LIBRADOS_OP_FLAG_FADVISE_FUA, and FUA discard or
// write-zeroes are followed by a flush.
//
// Data I/O has no timeout (rados_osd_op_timeout stays 0): a paused or
// recovering OSD delays requests rather than failing them.
#pragma once

#include <cstdint>
#include <condition_variable>
#include <deque>
#include <memory>
#include <mutex>
#include <string>

#include "origin/origin.h"
#include "origin/rbd_uri.h"
#include "origin/shared_image.h"

namespace rbdcache {

struct RbdOptions {
  // A ceph.conf to read. Empty: librados' search ($CEPH_CONF,
  // /etc/ceph/ceph.conf, ~/.ceph/config, ./ceph.conf).
  std::string conf_path;
  // The cephx user without "client.", as the rbd CLI's --id. Empty: the one
  // CEPH_ARGS names (--id, --user, --name client.X), else "admin".
  std::string id;
  // A keyring file. Empty: the conf's and CEPH_ARGS' setting, else the
  // default search (/etc/ceph/ceph.client.ID.keyring, ...).
  std::string keyring;
  // Bound on each step of open(): reaching the monitors and
  // authenticating, finding the pool, opening the image.
  unsigned timeout_seconds = 30;
  // Most requests in librbd at once, across every reactor.
  unsigned queue_depth = 128;
  bool read_only = false;
};

class RbdOrigin final : public Origin, public SharedImage {
 public:
  // Connects to the cluster and opens the image. A failed Status names the
  // step that failed and what to check (user and keyring, pool, image,
  // reachability of the monitors).
  static Result<std::unique_ptr<RbdOrigin>> open(const RbdUri& uri, const RbdOptions& opts);

  // Closes the image and the cluster connection. No request may be in flight.
  ~RbdOrigin() override;
  RbdOrigin(const RbdOrigin&) = delete;
  RbdOrigin& operator=(const RbdOrigin&) = delete;

  uint64_t size() const override { return size_; }
  OriginCaps caps() const override;
  std::string describe() const override { return uri_.to_string(); }

  // The image's identity, fixed while it is open.
  const std::string& image_id() const { return image_id_; }   // rbd_get_id
  uint64_t object_size() const { return object_size_; }      // bytes
  int object_order() const { return object_order_; }         // log2(object_size)
  const std::string& client_name() const { return client_name_; }  // "client.ID"
  unsigned queue_depth() const { return queue_depth_; }

  void read(io::Reactor& r, uint64_t offset, std::span<std::byte> buf, IoCallback done) override;
  void write(io::Reactor& r, uint64_t offset, std::span<const std::byte> buf, WriteFlags flags,
             IoCallback done) override;
  void flush(io::Reactor& r, IoCallback done) override;
  void discard(io::Reactor& r, uint64_t offset, uint64_t length, WriteFlags flags,
               IoCallback done) override;
  void write_zeroes(io::Reactor& r, uint64_t offset, uint64_t length, WriteFlags flags,
                    IoCallback done) override;
  // Reports the whole range as allocated data: librbd's diff iteration is
  // synchronous and per object, too slow for the reactor thread.
  void block_status(io::Reactor& r, uint64_t offset, uint64_t length,
                    ExtentsCallback done) override;
  // Does nothing (caps().can_cache is false); completes with success.
  void prefetch(io::Reactor& r, uint64_t offset, uint64_t length, IoCallback done) override;

  // --- SharedImage (origin/rbd_shared_image.cc) ---
  SharedImage* shared_image() override { return read_only_ ? nullptr : this; }
  Status acquire_exclusive_lock() override;
  Status release_exclusive_lock() override;
  bool holds_exclusive_lock() override;
  Result<std::string> lock_holder() override;
  Result<std::map<std::string, std::string>> metadata(const std::string& prefix) override;
  Status set_metadata(const std::map<std::string, std::string>& kv) override;
  Result<bool> snapshot_exists(const std::string& name) override;
  Status create_snapshot(const std::string& name) override;
  Status remove_snapshot(const std::string& name) override;
  Result<std::vector<ByteExtent>> changed_since(const std::string& name) override;

 private:
  enum class Op { kRead, kWrite, kFlush, kDiscard, kWriteZeroes };
  struct Request;

  RbdOrigin() = default;
  Status connect(const RbdOptions& opts);
  // Opens an image handle with rbd_aio_open, so that an unresponsive OSD
  // cannot hold the caller forever: -ETIMEDOUT after `timeout_seconds` (the
  // open is then abandoned and its handle leaked, never closed under
  // librbd). Returns 0 or -errno.
  static int open_handle(void* ioctx, const std::string& name, bool read_only,
                         unsigned timeout_seconds, void** image);
  Status open_image(const RbdOptions& opts);

  void submit(std::unique_ptr<Request> req);        // reactor thread
  void issue(Request* req);                         // reactor thread, slot held
  static void on_librbd_complete(void* completion, void* arg);  // librbd thread
  void finish(Request* req, int64_t res);           // any thread, slot held
  void release_slot();                              // any thread
  // Pauses issuing, waits for every request in librbd, closes the current
  // image handle and resumes on `fresh`. Returns rbd_close's result.
  // Not on a reactor thread.
  int swap_image_handle(void* fresh);
  void complete_on_reactor(Request* req, int64_t res);  // reactor thread

  RbdUri uri_;
  std::string client_name_;
  std::string image_id_;
  uint64_t size_ = 0;
  uint64_t object_size_ = 0;
  int object_order_ = 0;
  bool read_only_ = false;
  unsigned queue_depth_ = 128;
  unsigned timeout_seconds_ = 30;

  // librados / librbd handles (rados_t, rados_ioctx_t, rbd_image_t).
  void* cluster_ = nullptr;
  void* ioctx_ = nullptr;
  void* image_ = nullptr;
  // Set when open timed out with librbd still working on the handles:
  // they are then left alone (leaked) rather than closed under it.
  bool abandoned_ = false;

  std::mutex mu_;
  unsigned in_flight_ = 0;            // guarded by mu_: slots taken
  std::deque<Request*> waiting_;      // guarded by mu_: FIFO of requests without a slot
  // While true no request is issued (release_exclusive_lock() swaps the
  // image handle); drained_ wakes it when in_flight_ reaches 0.
  bool paused_ = false;               // guarded by mu_
  std::condition_variable drained_;
};

}  // namespace rbdcache
