#include "cache/cache_device.h"

#include <fcntl.h>
#include <linux/fs.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cassert>

#include "io/reactor.h"

namespace rbdcache::cache {

Result<std::unique_ptr<FileCacheDevice>> FileCacheDevice::open(const std::string& path,
                                                               uint64_t data_offset,
                                                               uint32_t block_size, uint32_t blocks) {
  std::unique_ptr<FileCacheDevice> d(new FileCacheDevice(block_size, blocks));
  d->path_ = path;
  d->data_offset_ = data_offset;
  d->fd_ = ::open(path.c_str(), O_RDWR | O_CLOEXEC | O_DIRECT);
  if (d->fd_ < 0 && errno == EINVAL) {
    // No O_DIRECT here (tmpfs): buffered I/O, still synced on flush.
    d->fd_ = ::open(path.c_str(), O_RDWR | O_CLOEXEC);
  }
  if (d->fd_ < 0) {
    return Status::system_error(errno, fmt::format("cannot open cache device '{}'", path));
  }
  struct stat st {};
  if (fstat(d->fd_, &st) != 0) return Status::system_error(errno, "fstat cache device");
  uint64_t size = static_cast<uint64_t>(st.st_size);
  if (S_ISBLK(st.st_mode) && ioctl(d->fd_, BLKGETSIZE64, &size) != 0) {
    return Status::system_error(errno, "cannot read the cache device's size");
  }
  uint64_t need = data_offset + uint64_t{blocks} * block_size;
  if (size < need) {
    return Status::invalid_argument(fmt::format(
        "cache device '{}' is {} bytes, smaller than the {} bytes its metadata describes", path,
        size, need));
  }
  return d;
}

FileCacheDevice::~FileCacheDevice() {
  if (fd_ >= 0) ::close(fd_);
}

namespace {
Status to_status(int res, const char* what) {
  return res < 0 ? Status::system_error(-res, what) : Status::ok();
}
}  // namespace

void FileCacheDevice::read(io::Reactor& r, CacheBlock cb, uint32_t offset, std::span<std::byte> buf,
                       IoCallback done) {
  assert(cb.value() < blocks() && offset + buf.size() <= block_size());
  assert(offset % kSubBlockSize == 0 && buf.size() % kSubBlockSize == 0);
  r.read_full(fd_, buf.data(), buf.size(), position(cb, offset),
              [done = std::move(done)](int res) { done(to_status(res, "cache device read")); });
}

void FileCacheDevice::write(io::Reactor& r, CacheBlock cb, uint32_t offset,
                        std::span<const std::byte> buf, bool fua, IoCallback done) {
  assert(cb.value() < blocks() && offset + buf.size() <= block_size());
  assert(offset % kSubBlockSize == 0 && buf.size() % kSubBlockSize == 0);
  r.write_full(fd_, buf.data(), buf.size(), position(cb, offset), fua ? RWF_DSYNC : 0,
               [done = std::move(done)](int res) { done(to_status(res, "cache device write")); });
}

void FileCacheDevice::flush(io::Reactor& r, IoCallback done) {
  r.fsync(fd_, /*datasync=*/true,
          [done = std::move(done)](int res) { done(to_status(res, "cache device flush")); });
}

Status FileCacheDevice::sync() {
  if (::fdatasync(fd_) != 0) return Status::system_error(errno, "cache device sync");
  return Status::ok();
}

}  // namespace rbdcache::cache
