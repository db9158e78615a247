// CacheDevice: asynchronous I/O on the cache device's data area. The
// interface lets tests wrap the real device (FileCacheDevice) with one that
// injects faults or drops unsynced writes.
//
// Cache block b occupies bytes [data_offset + b * block_size, + block_size)
// of the device (docs/metadata-format.md, "Cache device header"). All I/O is
// O_DIRECT through the calling thread's reactor, so buffers, offsets and
// lengths must be multiples of 4 KiB (one sub-block); callers only ever move
// whole sub-blocks.
//
// Threads: any reactor thread may call; callbacks run on the caller's
// reactor. The object holds no mutable state after open().
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>

#include "origin/origin.h"
#include "rbdcache/status.h"
#include "rbdcache/sub_block.h"
#include "rbdcache/types.h"

namespace rbdcache::cache {

class CacheDevice {
 public:
  CacheDevice(uint32_t block_size, uint32_t blocks) : block_size_(block_size), blocks_(blocks) {}
  virtual ~CacheDevice() = default;

  uint32_t block_size() const { return block_size_; }
  uint32_t blocks() const { return blocks_; }

  // Reads buf.size() bytes at byte `offset` inside cache block `cb`.
  // Preconditions: offset + buf.size() <= block_size, both 4 KiB multiples,
  // buf 4 KiB-aligned.
  virtual void read(io::Reactor& r, CacheBlock cb, uint32_t offset, std::span<std::byte> buf,
                    IoCallback done) = 0;
  // Writes likewise; with `fua` the data is durable when `done` reports ok.
  virtual void write(io::Reactor& r, CacheBlock cb, uint32_t offset,
                     std::span<const std::byte> buf, bool fua, IoCallback done) = 0;
  // Makes every completed write durable (fdatasync).
  virtual void flush(io::Reactor& r, IoCallback done) = 0;
  // The same, blocking; for the commit thread only.
  virtual Status sync() = 0;

 private:
  const uint32_t block_size_;
  const uint32_t blocks_;
};

// The cache device as a file or block device, through io_uring.
class FileCacheDevice final : public CacheDevice {
 public:
  // Opens `path` for O_DIRECT I/O. `data_offset` and `block_size` come from
  // the superblock; fails if `blocks` blocks do not fit on the device.
  static Result<std::unique_ptr<FileCacheDevice>> open(const std::string& path,
                                                       uint64_t data_offset, uint32_t block_size,
                                                       uint32_t blocks);
  ~FileCacheDevice() override;

  void read(io::Reactor& r, CacheBlock cb, uint32_t offset, std::span<std::byte> buf,
            IoCallback done) override;
  void write(io::Reactor& r, CacheBlock cb, uint32_t offset, std::span<const std::byte> buf,
             bool fua, IoCallback done) override;
  void flush(io::Reactor& r, IoCallback done) override;
  Status sync() override;

 private:
  FileCacheDevice(uint32_t block_size, uint32_t blocks) : CacheDevice(block_size, blocks) {}
  uint64_t position(CacheBlock cb, uint32_t offset) const {
    return data_offset_ + uint64_t{cb.value()} * block_size() + offset;
  }

  std::string path_;
  int fd_ = -1;
  uint64_t data_offset_ = 0;
};

}  // namespace rbdcache::cache
