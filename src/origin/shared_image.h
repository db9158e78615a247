// SharedImage: what a cache needs to share an origin image safely with other
// hosts: an exclusive lock, a small key/value store kept with the image, and
// snapshots that show what changed while the cache was away.
//
// RBD images provide it (RbdOrigin); a file origin has no other users to
// coordinate with and returns nullptr from Origin::shared_image().
//
// Threads: every call blocks (it talks to the cluster) and must be made from
// a thread that is not a reactor: the main thread at attach and detach, or
// the control thread. None may run while the origin is being destroyed.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "rbdcache/status.h"

namespace rbdcache {

struct ByteExtent {
  uint64_t offset = 0;
  uint64_t length = 0;
};

class SharedImage {
 public:
  virtual ~SharedImage() = default;

  // Takes the image's exclusive lock and keeps it until
  // release_exclusive_lock() or close, refusing other clients' requests for
  // it. Fails with EBUSY, naming the holder, when another client holds it.
  [[nodiscard]] virtual Status acquire_exclusive_lock() = 0;
  // Gives the lock up and goes back to cooperating as a plain librbd client
  // does: another client may take the lock when it writes, and this handle
  // asks for it back on its next write.
  [[nodiscard]] virtual Status release_exclusive_lock() = 0;
  // True while this handle holds the exclusive lock.
  virtual bool holds_exclusive_lock() = 0;
  // Who holds the exclusive lock now ("client.4123"), or "" when nobody does.
  [[nodiscard]] virtual Result<std::string> lock_holder() = 0;

  // Image metadata whose keys start with `prefix` (keys returned in full).
  [[nodiscard]] virtual Result<std::map<std::string, std::string>> metadata(
      const std::string& prefix) = 0;
  // Sets every key in `kv`, one at a time (not atomically as a set).
  [[nodiscard]] virtual Status set_metadata(const std::map<std::string, std::string>& kv) = 0;

  [[nodiscard]] virtual Result<bool> snapshot_exists(const std::string& name) = 0;
  [[nodiscard]] virtual Status create_snapshot(const std::string& name) = 0;
  [[nodiscard]] virtual Status remove_snapshot(const std::string& name) = 0;
  // The extents written since snapshot `name` was taken (possibly rounded
  // out to whole objects), in ascending order.
  [[nodiscard]] virtual Result<std::vector<ByteExtent>> changed_since(const std::string& name) = 0;
};

}  // namespace rbdcache
