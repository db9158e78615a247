// Origin: the backing image that rbdcache exports (a file, a block device, or
// later an RBD image). The NBD server, and later the cache engine, talk to the
// origin only through this interface.
//
// Contract for every asynchronous call:
//   - It is made on a reactor thread and passes that reactor; the callback
//     runs later on the same reactor thread, exactly once.
//   - Buffers passed in must stay valid until the callback has run.
//   - Ranges have already been validated against size() by the caller (the
//     NBD edge validates every request once); implementations may assert.
#pragma once

#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <vector>

#include "rbdcache/status.h"

namespace rbdcache {

namespace io {
class Reactor;
}
class SharedImage;

using IoCallback = std::function<void(Status)>;

// One extent of a block-status answer, in the NBD base:allocation terms.
struct Extent {
  static constexpr uint32_t kHole = 1;  // not allocated
  static constexpr uint32_t kZero = 2;  // reads as zeroes
  uint64_t length = 0;
  uint32_t flags = 0;
};
using ExtentsCallback = std::function<void(Result<std::vector<Extent>>)>;

struct WriteFlags {
  bool fua = false;        // durable before the callback reports success
  bool may_trim = true;    // write-zeroes may deallocate the range
  bool fast_only = false;  // write-zeroes must fail with ENOTSUP unless it is fast
};

// What an origin can do; the NBD server advertises only these.
struct OriginCaps {
  bool read_only = false;
  bool can_flush = true;
  bool can_trim = true;
  bool can_zero = true;
  bool can_fast_zero = true;
  bool can_cache = true;
};

class Origin {
 public:
  virtual ~Origin() = default;

  // Size in bytes; fixed for the life of the object.
  virtual uint64_t size() const = 0;
  virtual OriginCaps caps() const = 0;
  // A short description for logs and status, such as "file:/var/img".
  virtual std::string describe() const = 0;
  // A stable name of the image itself, recorded in a cache's superblock on
  // first attach so that the cache is never served over another image.
  // Defaults to describe().
  virtual std::string identity() const { return describe(); }
  // The image's coordination interface when other hosts may use it too (see
  // origin/shared_image.h); nullptr when there is none (files).
  virtual SharedImage* shared_image() { return nullptr; }

  virtual void read(io::Reactor& r, uint64_t offset, std::span<std::byte> buf, IoCallback done) = 0;
  virtual void write(io::Reactor& r, uint64_t offset, std::span<const std::byte> buf, WriteFlags flags,
                     IoCallback done) = 0;
  // Makes every write that has completed durable.
  virtual void flush(io::Reactor& r, IoCallback done) = 0;
  // Advisory: the range's content becomes unspecified; ENOTSUP is not an error.
  virtual void discard(io::Reactor& r, uint64_t offset, uint64_t length, WriteFlags flags,
                       IoCallback done) = 0;
  virtual void write_zeroes(io::Reactor& r, uint64_t offset, uint64_t length, WriteFlags flags,
                            IoCallback done) = 0;
  // Describes [offset, offset+length) as extents; the answer may stop short
  // of `length` but always covers at least one byte.
  virtual void block_status(io::Reactor& r, uint64_t offset, uint64_t length,
                            ExtentsCallback done) = 0;
  // Advisory prefetch of a range.
  virtual void prefetch(io::Reactor& r, uint64_t offset, uint64_t length, IoCallback done) = 0;
};

}  // namespace rbdcache
