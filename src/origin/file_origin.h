// FileOrigin: a regular file or a block device as the origin.
//
// Aligned requests (offset, length and buffer address multiples of
// kDirectAlign) go through an O_DIRECT descriptor, bypassing the page cache
// as qemu-nbd --cache=none does. Unaligned requests go through a second,
// buffered descriptor on the same file; the kernel keeps the two coherent
// (direct reads write back overlapping dirty pages first, direct writes
// invalidate them). Filesystems that refuse O_DIRECT (tmpfs) use the
// buffered descriptor for everything.
#pragma once

#include <memory>
#include <string>

#include "origin/origin.h"

namespace rbdcache {

class FileOrigin final : public Origin {
 public:
  static constexpr uint64_t kDirectAlign = 4096;

  // Opens `path`, which must exist. Clear Status for a missing file, a
  // directory, or a file whose size is zero.
  static Result<std::unique_ptr<FileOrigin>> open(const std::string& path, bool read_only);

  ~FileOrigin() override;

  uint64_t size() const override { return size_; }
  OriginCaps caps() const override;
  std::string describe() const override { return "file:" + path_; }
  // "file:" and the canonical path (symlinks resolved).
  std::string identity() const override;
  bool uses_direct_io() const { return direct_fd_ >= 0; }

  void read(io::Reactor& r, uint64_t offset, std::span<std::byte> buf, IoCallback done) override;
  void write(io::Reactor& r, uint64_t offset, std::span<const std::byte> buf, WriteFlags flags,
             IoCallback done) override;
  void flush(io::Reactor& r, IoCallback done) override;
  void discard(io::Reactor& r, uint64_t offset, uint64_t length, WriteFlags flags,
               IoCallback done) override;
  void write_zeroes(io::Reactor& r, uint64_t offset, uint64_t length, WriteFlags flags,
                    IoCallback done) override;
  void block_status(io::Reactor& r, uint64_t offset, uint64_t length,
                    ExtentsCallback done) override;
  void prefetch(io::Reactor& r, uint64_t offset, uint64_t length, IoCallback done) override;

 private:
  FileOrigin() = default;
  int fd_for(uint64_t offset, uint64_t length, const void* buf) const;
  void write_zero_buffers(io::Reactor& r, uint64_t offset, uint64_t length, WriteFlags flags,
                          IoCallback done);
  void finish_write(io::Reactor& r, WriteFlags flags, IoCallback done);

  std::string path_;
  int fd_ = -1;         // buffered
  int direct_fd_ = -1;  // O_DIRECT, or -1
  uint64_t size_ = 0;
  bool read_only_ = false;
  bool is_block_device_ = false;
};

}  // namespace rbdcache
