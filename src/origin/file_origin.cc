#include "origin/file_origin.h"

#include <fcntl.h>
#include <linux/falloc.h>
#include <linux/fs.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>

#include "io/reactor.h"

namespace rbdcache {

namespace {

Status status_from_res(int res, std::string_view what) {
  if (res >= 0) return Status::ok();
  return Status::system_error(-res, what);
}

// A shared, page-aligned buffer of zeroes for write-zeroes fallbacks.
constexpr size_t kZeroBufSize = 1 << 20;
const std::byte* zero_buffer() {
  static std::byte* buf = [] {
    void* p = nullptr;
    if (posix_memalign(&p, FileOrigin::kDirectAlign, kZeroBufSize) != 0) std::abort();
    std::memset(p, 0, kZeroBufSize);
    return static_cast<std::byte*>(p);
  }();
  return buf;
}

}  // namespace

Result<std::unique_ptr<FileOrigin>> FileOrigin::open(const std::string& path, bool read_only) {
  std::unique_ptr<FileOrigin> o(new FileOrigin());
  o->path_ = path;
  o->read_only_ = read_only;
  int flags = (read_only ? O_RDONLY : O_RDWR) | O_CLOEXEC;
  o->fd_ = ::open(path.c_str(), flags);
  if (o->fd_ < 0) {
    return Status::system_error(errno, fmt::format("cannot open origin '{}'", path));
  }
  struct stat st {};
  if (fstat(o->fd_, &st) != 0) {
    return Status::system_error(errno, fmt::format("cannot stat origin '{}'", path));
  }
  if (S_ISBLK(st.st_mode)) {
    o->is_block_device_ = true;
    uint64_t bytes = 0;
    if (ioctl(o->fd_, BLKGETSIZE64, &bytes) != 0) {
      return Status::system_error(errno, fmt::format("cannot read the size of '{}'", path));
    }
    o->size_ = bytes;
  } else if (S_ISREG(st.st_mode)) {
    o->size_ = static_cast<uint64_t>(st.st_size);
  } else {
    return Status::invalid_argument(
        fmt::format("origin '{}' is neither a regular file nor a block device", path));
  }
  if (o->size_ == 0) {
    return Status::invalid_argument(fmt::format("origin '{}' is empty (size 0)", path));
  }
  // O_DIRECT where the filesystem allows it; tmpfs, for one, does not.
  o->direct_fd_ = ::open(path.c_str(), flags | O_DIRECT);
  return o;
}

FileOrigin::~FileOrigin() {
  if (fd_ >= 0) ::close(fd_);
  if (direct_fd_ >= 0) ::close(direct_fd_);
}

std::string FileOrigin::identity() const {
  char* real = ::realpath(path_.c_str(), nullptr);
  if (real == nullptr) return describe();
  std::string id = std::string("file:") + real;
  std::free(real);
  return id;
}

OriginCaps FileOrigin::caps() const {
  OriginCaps c;
  c.read_only = read_only_;
  return c;
}

int FileOrigin::fd_for(uint64_t offset, uint64_t length, const void* buf) const {
  if (direct_fd_ < 0) return fd_;
  bool aligned = offset % kDirectAlign == 0 && length % kDirectAlign == 0 &&
                 reinterpret_cast<uintptr_t>(buf) % kDirectAlign == 0;
  return aligned ? direct_fd_ : fd_;
}

void FileOrigin::read(io::Reactor& r, uint64_t offset, std::span<std::byte> buf, IoCallback done) {
  r.read_full(fd_for(offset, buf.size(), buf.data()), buf.data(), buf.size(), offset,
              [done = std::move(done)](int res) { done(status_from_res(res, "origin read")); });
}

void FileOrigin::write(io::Reactor& r, uint64_t offset, std::span<const std::byte> buf,
                       WriteFlags flags, IoCallback done) {
  r.write_full(fd_for(offset, buf.size(), buf.data()), buf.data(), buf.size(), offset,
               flags.fua ? RWF_DSYNC : 0,
               [done = std::move(done)](int res) { done(status_from_res(res, "origin write")); });
}

void FileOrigin::flush(io::Reactor& r, IoCallback done) {
  r.fsync(fd_, /*datasync=*/true,
          [done = std::move(done)](int res) { done(status_from_res(res, "origin flush")); });
}

void FileOrigin::finish_write(io::Reactor& r, WriteFlags flags, IoCallback done) {
  if (flags.fua) {
    flush(r, std::move(done));
  } else {
    done(Status::ok());
  }
}

void FileOrigin::discard(io::Reactor& r, uint64_t offset, uint64_t length, WriteFlags flags,
                         IoCallback done) {
  r.fallocate(fd_, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, length,
              [this, &r, flags, done = std::move(done)](int res) mutable {
                // Discard is advisory: a file system that cannot punch holes
                // simply keeps the data.
                if (res < 0 && res != -EOPNOTSUPP && res != -ENOTSUP && res != -EINVAL) {
                  done(status_from_res(res, "origin discard"));
                  return;
                }
                finish_write(r, flags, std::move(done));
              });
}

void FileOrigin::write_zeroes(io::Reactor& r, uint64_t offset, uint64_t length, WriteFlags flags,
                              IoCallback done) {
  int mode = flags.may_trim ? (FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE)
                            : (FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE);
  r.fallocate(fd_, mode, offset, length,
              [this, &r, offset, length, flags, done = std::move(done)](int res) mutable {
                if (res >= 0) {
                  finish_write(r, flags, std::move(done));
                  return;
                }
                if (res != -EOPNOTSUPP && res != -ENOTSUP && res != -EINVAL && res != -ENODEV) {
                  done(status_from_res(res, "origin write-zeroes"));
                  return;
                }
                if (flags.fast_only) {
                  done(Status::not_supported("fast zeroing is not supported by the origin"));
                  return;
                }
                write_zero_buffers(r, offset, length, flags, std::move(done));
              });
}

void FileOrigin::write_zero_buffers(io::Reactor& r, uint64_t offset, uint64_t length,
                                    WriteFlags flags, IoCallback done) {
  if (length == 0) {
    finish_write(r, flags, std::move(done));
    return;
  }
  uint64_t chunk = std::min<uint64_t>(length, kZeroBufSize);
  const std::byte* zeros = zero_buffer();
  r.write_full(fd_for(offset, chunk, zeros), zeros, chunk, offset, 0,
               [this, &r, offset, length, chunk, flags, done = std::move(done)](int res) mutable {
                 if (res < 0) {
                   done(status_from_res(res, "origin write-zeroes"));
                   return;
                 }
                 write_zero_buffers(r, offset + chunk, length - chunk, flags, std::move(done));
               });
}

void FileOrigin::block_status(io::Reactor& /*r*/, uint64_t offset, uint64_t length,
                              ExtentsCallback done) {
  std::vector<Extent> extents;
  const uint64_t end = std::min(size_, offset + length);
  if (is_block_device_) {
    extents.push_back({end - offset, 0});
    done(std::move(extents));
    return;
  }
  // lseek(SEEK_DATA/SEEK_HOLE) is a metadata lookup, cheap enough to run
  // inline on the reactor thread.
  uint64_t pos = offset;
  constexpr size_t kMaxExtents = 64;
  while (pos < end && extents.size() < kMaxExtents) {
    off_t data = lseek(fd_, static_cast<off_t>(pos), SEEK_DATA);
    if (data < 0) {
      if (errno == ENXIO) {  // no data after pos: a hole up to the end
        extents.push_back({end - pos, Extent::kHole | Extent::kZero});
        break;
      }
      // The file system cannot tell: report the rest as data.
      extents.push_back({end - pos, 0});
      break;
    }
    uint64_t data_start = std::min<uint64_t>(static_cast<uint64_t>(data), end);
    if (data_start > pos) {
      extents.push_back({data_start - pos, Extent::kHole | Extent::kZero});
      pos = data_start;
      continue;
    }
    off_t hole = lseek(fd_, static_cast<off_t>(pos), SEEK_HOLE);
    uint64_t data_end =
        hole < 0 ? end : std::min<uint64_t>(std::max<uint64_t>(static_cast<uint64_t>(hole), pos + 1), end);
    extents.push_back({data_end - pos, 0});
    pos = data_end;
  }
  done(std::move(extents));
}

void FileOrigin::prefetch(io::Reactor& /*r*/, uint64_t offset, uint64_t length, IoCallback done) {
  // Only meaningful for the buffered descriptor's page cache.
  int rc = posix_fadvise(fd_, static_cast<off_t>(offset), static_cast<off_t>(length),
                         POSIX_FADV_WILLNEED);
  done(rc == 0 ? Status::ok() : Status::system_error(rc, "origin prefetch"));
}

}  // namespace rbdcache
