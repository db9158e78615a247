// RbdOrigin's SharedImage side: the exclusive lock, image metadata and
// snapshots, through librbd's synchronous calls (never on a reactor thread).
#include <rbd/librbd.h>

#include <fmt/format.h>

#include "origin/rbd_origin.h"

namespace rbdcache {

namespace {

rbd_image_t as_image(void* p) { return static_cast<rbd_image_t>(p); }

}  // namespace

Result<std::string> RbdOrigin::lock_holder() {
  rbd_lock_mode_t mode;
  size_t n = 4;
  std::vector<char*> owners(n, nullptr);
  int rc = rbd_lock_get_owners(as_image(image_), &mode, owners.data(), &n);
  if (rc == -ERANGE) {
    owners.assign(n, nullptr);
    rc = rbd_lock_get_owners(as_image(image_), &mode, owners.data(), &n);
  }
  if (rc == -ENOENT) return std::string();
  if (rc < 0) return Status::system_error(-rc, "cannot list the image's lock owners");
  std::string out;
  for (size_t i = 0; i < n; ++i) {
    if (!out.empty()) out += ", ";
    out += owners[i];
  }
  rbd_lock_get_owners_cleanup(owners.data(), n);
  return out;
}

Status RbdOrigin::acquire_exclusive_lock() {
  int rc = rbd_lock_acquire(as_image(image_), RBD_LOCK_MODE_EXCLUSIVE);
  if (rc == 0) return Status::ok();
  if (rc == -EINVAL) {
    return Status::from_errno(EINVAL, fmt::format(
        "RBD image '{}' has no exclusive-lock feature, which writeback mode needs to keep other "
        "writers out; enable it with 'rbd feature enable {} exclusive-lock'",
        uri_.spec(), uri_.spec()));
  }
  if (rc == -EROFS || rc == -EBUSY || rc == -EAGAIN) {
    auto holder = lock_holder();
    std::string who = holder.is_ok() && !holder->empty() ? holder.value() : "another client";
    return Status::from_errno(EBUSY, fmt::format(
        "RBD image '{}' is locked by {}: another writer (another rbdcache, or a VM using the "
        "image directly) owns it", uri_.spec(), who));
  }
  return Status::system_error(-rc, fmt::format("cannot take the exclusive lock of RBD image '{}'",
                                               uri_.spec()));
}

Status RbdOrigin::release_exclusive_lock() {
  // rbd_lock_release() alone would leave this handle unable to write: a
  // handle that took the lock with rbd_lock_acquire() never asks for it
  // again. A fresh handle cooperates as librbd's clients normally do. It is
  // opened first (opening needs no lock); then new requests wait, the old
  // handle drains and closes (which releases the lock), and they resume on
  // the new one.
  void* fresh = nullptr;
  int rc = open_handle(ioctx_, uri_.image, read_only_, timeout_seconds_, &fresh);
  if (rc < 0) {
    return Status::system_error(-rc, fmt::format("cannot reopen RBD image '{}' to release its lock",
                                                 uri_.spec()));
  }
  rc = swap_image_handle(fresh);
  if (rc < 0) {
    return Status::system_error(-rc, fmt::format("closing the locked handle of '{}'", uri_.spec()));
  }
  return Status::ok();
}

bool RbdOrigin::holds_exclusive_lock() {
  int owner = 0;
  return rbd_is_exclusive_lock_owner(as_image(image_), &owner) == 0 && owner != 0;
}

Result<std::map<std::string, std::string>> RbdOrigin::metadata(const std::string& prefix) {
  std::map<std::string, std::string> out;
  std::string start = prefix;
  for (;;) {
    size_t keys_len = 4096, vals_len = 16384;
    std::vector<char> keys, vals;
    int rc;
    for (;;) {
      keys.resize(keys_len);
      vals.resize(vals_len);
      rc = rbd_metadata_list(as_image(image_), start.c_str(), 64, keys.data(), &keys_len,
                             vals.data(), &vals_len);
      if (rc != -ERANGE) break;
    }
    if (rc < 0) return Status::system_error(-rc, "cannot list the image's metadata");
    // Keys and values come as runs of NUL-terminated strings.
    size_t ki = 0, vi = 0, n = 0;
    std::string last;
    while (ki < keys_len && keys[ki] != '\0') {
      std::string k(&keys[ki]);
      std::string v(&vals[vi]);
      ki += k.size() + 1;
      vi += v.size() + 1;
      ++n;
      last = k;
      if (k.rfind(prefix, 0) == 0) out[k] = v;
    }
    // The listing starts after `start`; stop once past the prefix.
    if (n < 64 || last.rfind(prefix, 0) != 0) break;
    start = last;
  }
  return out;
}

Status RbdOrigin::set_metadata(const std::map<std::string, std::string>& kv) {
  for (const auto& [k, v] : kv) {
    int rc = rbd_metadata_set(as_image(image_), k.c_str(), v.c_str());
    if (rc < 0) {
      return Status::system_error(-rc, fmt::format("cannot set image metadata '{}' on '{}'", k,
                                                   uri_.spec()));
    }
  }
  return Status::ok();
}

Result<bool> RbdOrigin::snapshot_exists(const std::string& name) {
  bool exists = false;
  int rc = rbd_snap_exists(as_image(image_), name.c_str(), &exists);
  if (rc < 0) return Status::system_error(-rc, fmt::format("cannot look up snapshot '{}'", name));
  return exists;
}

Status RbdOrigin::create_snapshot(const std::string& name) {
  int rc = rbd_snap_create(as_image(image_), name.c_str());
  if (rc < 0) {
    return Status::system_error(-rc, fmt::format("cannot create snapshot '{}@{}'", uri_.spec(), name));
  }
  return Status::ok();
}

Status RbdOrigin::remove_snapshot(const std::string& name) {
  int rc = rbd_snap_remove(as_image(image_), name.c_str());
  if (rc < 0 && rc != -ENOENT) {
    return Status::system_error(-rc, fmt::format("cannot remove snapshot '{}@{}'", uri_.spec(), name));
  }
  return Status::ok();
}

Result<std::vector<ByteExtent>> RbdOrigin::changed_since(const std::string& name) {
  auto collect = [](uint64_t off, size_t len, int /*exists*/, void* arg) -> int {
    auto* v = static_cast<std::vector<ByteExtent>*>(arg);
    if (!v->empty() && v->back().offset + v->back().length == off) {
      v->back().length += len;
    } else {
      v->push_back(ByteExtent{off, len});
    }
    return 0;
  };
  // First the changed objects (cheap with the fast-diff feature: object
  // maps only), then the exact extents inside each of them.
  std::vector<ByteExtent> objects;
  int rc = rbd_diff_iterate2(as_image(image_), name.c_str(), 0, size_, 1, 1, collect, &objects);
  std::vector<ByteExtent> out;
  for (const ByteExtent& o : objects) {
    if (rc < 0) break;
    rc = rbd_diff_iterate2(as_image(image_), name.c_str(), o.offset, o.length, 1, 0, collect, &out);
  }
  if (rc < 0) {
    return Status::system_error(-rc, fmt::format("cannot compare '{}' with snapshot '{}'",
                                                 uri_.spec(), name));
  }
  return out;
}

}  // namespace rbdcache
