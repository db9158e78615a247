#include "cache/cache_device.h"

#include <fcntl.h>
#include <linux/fs.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cassert>

#include "io/reactor.h"

namespace rbdcache::cache {

Result<std::unique_ptr<CacheDevice>> CacheDevice::open(const std::string& path, uint64_t data_offset,
                                                       uint32_t block_size, uint32_t blocks) {
  std::unique_ptr<CacheDevice> d(new CacheDevice());
  d->path_ = path;
  d->data_offset_ = data_offset;
  d->block_size_ = block_size;
  d->blocks_ = blocks;
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

CacheDevice::~CacheDevice() {
  if (fd_ >= 0) ::close(fd_);
}

namespace {
Status to_status(int res, const char* what) {
  return res < 0 ? Status::system_error(-res, what) : Status::ok();
}
}  // namespace

void CacheDevice::read(io::Reactor& r, CacheBlock cb, uint32_t offset, std::span<std::byte> buf,
                       IoCallback done) {
  assert(cb.value() < blocks_ && offset + buf.size() <= block_size_);
  assert(offset % kSubBlockSize == 0 && buf.size() % kSubBlockSize == 0);
  r.read_full(fd_, buf.data(), buf.size(), position(cb, offset),
              [done = std::move(done)](int res) { done(to_status(res, "cache device read")); });
}

void CacheDevice::write(io::Reactor& r, CacheBlock cb, uint32_t offset,
                        std::span<const std::byte> buf, bool fua, IoCallback done) {
  assert(cb.value() < blocks_ && offset + buf.size() <= block_size_);
  assert(offset % kSubBlockSize == 0 && buf.size() % kSubBlockSize == 0);
  r.write_full(fd_, buf.data(), buf.size(), position(cb, offset), fua ? RWF_DSYNC : 0,
               [done = std::move(done)](int res) { done(to_status(res, "cache device write")); });
}

void CacheDevice::flush(io::Reactor& r, IoCallback done) {
  r.fsync(fd_, /*datasync=*/true,
          [done = std::move(done)](int res) { done(to_status(res, "cache device flush")); });
}

Status CacheDevice::sync() {
  if (::fdatasync(fd_) != 0) return Status::system_error(errno, "cache device sync");
  return Status::ok();
}

}  // namespace rbdcache::cache
