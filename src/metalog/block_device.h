// A small synchronous block-device interface for the metadata device.
//
// The metadata log talks to its device only through BlockDevice, so tests can
// put a fault-injecting wrapper in between (one that drops unsynced writes
// and tears the last one). Offsets and lengths are in bytes; the log only
// issues whole 4096-byte blocks at 4096-byte aligned offsets.
//
// Thread-safety: a BlockDevice is used by one thread at a time.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "rbdcache/status.h"

namespace rbdcache::metalog {

class BlockDevice {
 public:
  virtual ~BlockDevice() = default;

  // Size of the device in bytes.
  virtual uint64_t size() const = 0;

  // Reads exactly data.size() bytes at `offset`. Reading past the end fails.
  [[nodiscard]] virtual Status read(uint64_t offset, std::span<std::byte> data) = 0;

  // Writes data at `offset`. Not durable until sync() returns ok.
  [[nodiscard]] virtual Status write(uint64_t offset, std::span<const std::byte> data) = 0;

  // Makes every completed write durable (fdatasync).
  [[nodiscard]] virtual Status sync() = 0;

  // Tells the device that [offset, offset+length) holds nothing of value.
  // Afterwards the range reads as zeros or as its old contents; the log
  // accepts either. Devices that cannot discard return ok and do nothing.
  [[nodiscard]] virtual Status discard(uint64_t offset, uint64_t length) = 0;

  // True when what was written (synced or not) outlives this process, as
  // with a file or a block device: then the metadata log keeps an intent
  // ring (metalog/intent_ring.h) by default.
  virtual bool outlives_process() const { return false; }
};

// A regular file or a block device, through pread/pwrite/fdatasync and
// fallocate(PUNCH_HOLE) or BLKDISCARD.
class FileBlockDevice final : public BlockDevice {
 public:
  // Opens an existing file or block device. Never creates one.
  [[nodiscard]] static Result<std::unique_ptr<FileBlockDevice>> open(const std::string& path,
                                                                     bool read_only);
  ~FileBlockDevice() override;
  FileBlockDevice(const FileBlockDevice&) = delete;
  FileBlockDevice& operator=(const FileBlockDevice&) = delete;

  uint64_t size() const override { return size_; }
  const std::string& path() const { return path_; }
  bool is_block_device() const { return is_blockdev_; }
  Status read(uint64_t offset, std::span<std::byte> data) override;
  Status write(uint64_t offset, std::span<const std::byte> data) override;
  Status sync() override;
  Status discard(uint64_t offset, uint64_t length) override;
  bool outlives_process() const override { return true; }

 private:
  FileBlockDevice(int fd, std::string path, uint64_t size, bool is_blockdev)
      : fd_(fd), path_(std::move(path)), size_(size), is_blockdev_(is_blockdev) {}
  int fd_;
  std::string path_;
  uint64_t size_;
  bool is_blockdev_;
};

// An in-memory device: for tests, benchmarks and the fuzz target. Discarded
// ranges read as zeros. sync() only counts.
class MemBlockDevice final : public BlockDevice {
 public:
  explicit MemBlockDevice(uint64_t size) : data_(size) {}
  explicit MemBlockDevice(std::vector<std::byte> image) : data_(std::move(image)) {}

  uint64_t size() const override { return data_.size(); }
  Status read(uint64_t offset, std::span<std::byte> data) override;
  Status write(uint64_t offset, std::span<const std::byte> data) override;
  Status sync() override;
  Status discard(uint64_t offset, uint64_t length) override;

  std::vector<std::byte>& image() { return data_; }
  uint64_t bytes_written() const { return bytes_written_; }
  uint64_t syncs() const { return syncs_; }

 private:
  std::vector<std::byte> data_;
  uint64_t bytes_written_ = 0;
  uint64_t syncs_ = 0;
};

}  // namespace rbdcache::metalog
