#include "metalog/block_device.h"

#include <fcntl.h>
#include <linux/falloc.h>
#include <linux/fs.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>

namespace rbdcache::metalog {

Result<std::unique_ptr<FileBlockDevice>> FileBlockDevice::open(const std::string& path,
                                                               bool read_only) {
  int fd = ::open(path.c_str(), (read_only ? O_RDONLY : O_RDWR) | O_CLOEXEC);
  if (fd < 0) return Status::system_error(errno, fmt::format("open {}", path));
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    int err = errno;
    ::close(fd);
    return Status::system_error(err, fmt::format("stat {}", path));
  }
  uint64_t size = 0;
  bool blockdev = S_ISBLK(st.st_mode);
  if (blockdev) {
    if (::ioctl(fd, BLKGETSIZE64, &size) != 0) {
      int err = errno;
      ::close(fd);
      return Status::system_error(err, fmt::format("BLKGETSIZE64 {}", path));
    }
  } else if (S_ISREG(st.st_mode)) {
    size = static_cast<uint64_t>(st.st_size);
  } else {
    ::close(fd);
    return Status::invalid_argument(
        fmt::format("{}: not a regular file or block device", path));
  }
  return std::unique_ptr<FileBlockDevice>(new FileBlockDevice(fd, path, size, blockdev));
}

FileBlockDevice::~FileBlockDevice() { ::close(fd_); }

Status FileBlockDevice::read(uint64_t offset, std::span<std::byte> data) {
  if (offset > size_ || data.size() > size_ - offset) {
    return Status::from_errno(EINVAL, fmt::format("{}: read of {} bytes at {} is past the end",
                                                  path_, data.size(), offset));
  }
  size_t done = 0;
  while (done < data.size()) {
    ssize_t n = ::pread(fd_, data.data() + done, data.size() - done,
                        static_cast<off_t>(offset + done));
    if (n < 0) {
      if (errno == EINTR) continue;
      return Status::system_error(errno, fmt::format("{}: read at {}", path_, offset + done));
    }
    if (n == 0) {
      return Status::io_error(fmt::format("{}: unexpected end of file at {}", path_, offset + done));
    }
    done += static_cast<size_t>(n);
  }
  return Status::ok();
}

Status FileBlockDevice::write(uint64_t offset, std::span<const std::byte> data) {
  if (offset > size_ || data.size() > size_ - offset) {
    return Status::from_errno(EINVAL, fmt::format("{}: write of {} bytes at {} is past the end",
                                                  path_, data.size(), offset));
  }
  size_t done = 0;
  while (done < data.size()) {
    ssize_t n = ::pwrite(fd_, data.data() + done, data.size() - done,
                         static_cast<off_t>(offset + done));
    if (n < 0) {
      if (errno == EINTR) continue;
      return Status::system_error(errno, fmt::format("{}: write at {}", path_, offset + done));
    }
    done += static_cast<size_t>(n);
  }
  return Status::ok();
}

Status FileBlockDevice::sync() {
  if (::fdatasync(fd_) != 0) return Status::system_error(errno, fmt::format("{}: fdatasync", path_));
  return Status::ok();
}

Status FileBlockDevice::discard(uint64_t offset, uint64_t length) {
  int rc;
  if (is_blockdev_) {
    uint64_t range[2] = {offset, length};
    rc = ::ioctl(fd_, BLKDISCARD, range);
  } else {
    rc = ::fallocate(fd_, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, static_cast<off_t>(offset),
                     static_cast<off_t>(length));
  }
  if (rc != 0) {
    // Discard is advisory: a device or file system without it loses nothing.
    if (errno == EOPNOTSUPP || errno == ENOTTY || errno == EINVAL) return Status::ok();
    return Status::system_error(errno, fmt::format("{}: discard at {}", path_, offset));
  }
  return Status::ok();
}

Status MemBlockDevice::read(uint64_t offset, std::span<std::byte> data) {
  if (offset > data_.size() || data.size() > data_.size() - offset) {
    return Status::from_errno(EINVAL, "memory device: read past the end");
  }
  std::memcpy(data.data(), data_.data() + offset, data.size());
  return Status::ok();
}

Status MemBlockDevice::write(uint64_t offset, std::span<const std::byte> data) {
  if (offset > data_.size() || data.size() > data_.size() - offset) {
    return Status::from_errno(EINVAL, "memory device: write past the end");
  }
  std::memcpy(data_.data() + offset, data.data(), data.size());
  bytes_written_ += data.size();
  return Status::ok();
}

Status MemBlockDevice::sync() {
  ++syncs_;
  return Status::ok();
}

Status MemBlockDevice::discard(uint64_t offset, uint64_t length) {
  if (offset > data_.size() || length > data_.size() - offset) {
    return Status::from_errno(EINVAL, "memory device: discard past the end");
  }
  std::fill_n(data_.begin() + static_cast<ptrdiff_t>(offset), length, std::byte{0});
  return Status::ok();
}

}  // namespace rbdcache::metalog
