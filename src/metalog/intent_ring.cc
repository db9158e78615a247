#include "metalog/intent_ring.h"

#include <fcntl.h>
#include <linux/magic.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/vfs.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <fstream>

#include "metalog/format.h"
#include "rbdcache/crc32c.h"

namespace rbdcache::metalog {

namespace {

bool on_tmpfs(const std::string& dir) {
  struct statfs fs {};
  if (::statfs(dir.c_str(), &fs) != 0) return false;
  return static_cast<unsigned long>(fs.f_type) == TMPFS_MAGIC ||
         static_cast<unsigned long>(fs.f_type) == RAMFS_MAGIC;
}

uint32_t header_crc(const RingHeaderDisk& h) {
  RingHeaderDisk c = h;
  c.crc = 0;
  return crc32c(std::span(reinterpret_cast<const std::byte*>(&c), offsetof(RingHeaderDisk, committed)));
}

// crc32c of the slot's first 16 + length bytes, the crc field as 0: the
// bytes after the entry are not covered. `length` must be at most 112.
uint32_t slot_crc(const std::byte* slot) {
  uint16_t len;
  std::memcpy(&len, slot + offsetof(RingSlotDisk, length), sizeof(len));
  const size_t n = offsetof(RingSlotDisk, entry) + len;
  std::byte tmp[kRingSlotSize];
  std::memcpy(tmp, slot, n);
  std::memset(tmp + offsetof(RingSlotDisk, crc), 0, sizeof(uint32_t));
  return crc32c(std::span<const std::byte>(tmp, n));
}

size_t file_size(uint32_t slots) { return kRingHeaderSize + size_t{slots} * kRingSlotSize; }

// The committed mark is written with one aligned 8-byte store, which a crash
// cannot tear.
std::atomic_ref<uint64_t> committed_ref(std::byte* map) {
  return std::atomic_ref<uint64_t>(reinterpret_cast<RingHeaderDisk*>(map)->committed);
}

}  // namespace

std::string IntentRing::default_dir() {
  if (on_tmpfs("/run")) {
    const std::string d = "/run/rbdcache";
    if (::mkdir(d.c_str(), 0700) == 0 || errno == EEXIST) {
      if (::access(d.c_str(), W_OK) == 0 && on_tmpfs(d)) return d;
    }
  }
  return "/dev/shm";
}

std::string IntentRing::path_for(const std::string& dir, const Uuid& uuid) {
  return dir + "/rbdcache-" + uuid.to_string() + ".ring";
}

Result<std::array<uint8_t, 16>> IntentRing::boot_id() {
  std::ifstream in("/proc/sys/kernel/random/boot_id");
  std::string s;
  if (!(in >> s)) return Status::from_errno(ENOENT, "cannot read /proc/sys/kernel/random/boot_id");
  std::array<uint8_t, 16> out{};
  size_t n = 0;
  for (char ch : s) {
    if (ch == '-') continue;
    int v = (ch >= '0' && ch <= '9') ? ch - '0' : (ch >= 'a' && ch <= 'f') ? ch - 'a' + 10 : -1;
    if (v < 0 || n >= 32) return Status::corruption(fmt::format("unexpected boot_id '{}'", s));
    out[n / 2] = static_cast<uint8_t>(out[n / 2] | (n % 2 ? v : v << 4));
    ++n;
  }
  if (n != 32) return Status::corruption(fmt::format("unexpected boot_id '{}'", s));
  return out;
}

Result<std::unique_ptr<IntentRing>> IntentRing::open(const RingOptions& opts, const Uuid& uuid,
                                                     uint32_t sub_blocks,
                                                     const std::function<bool(const Entry&)>& accept,
                                                     RingRecovery& found) {
  const std::string dir = opts.dir.empty() ? default_dir() : opts.dir;
  if (!on_tmpfs(dir)) {
    return Status::not_supported(fmt::format(
        "intent ring directory '{}' is not on tmpfs: the ring must not survive a reboot", dir));
  }
  auto boot = boot_id();
  if (!boot.is_ok()) return boot.status();
  std::unique_ptr<IntentRing> r(new IntentRing());
  r->path_ = path_for(dir, uuid);
  r->uuid_ = uuid;
  r->boot_ = *boot;
  r->sub_blocks_ = sub_blocks;

  // Recover from an existing file: one written by this log during this boot.
  std::vector<std::byte> kept;  // raw slots, ring sequences 1..n
  int fd = ::open(r->path_.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd >= 0) {
    struct stat fst {};
    std::vector<std::byte> img;
    if (::fstat(fd, &fst) == 0 && fst.st_size >= static_cast<off_t>(kRingHeaderSize)) {
      img.resize(static_cast<size_t>(fst.st_size));
      if (::pread(fd, img.data(), img.size(), 0) != static_cast<ssize_t>(img.size())) img.clear();
    }
    ::close(fd);
    RingHeaderDisk h{};
    if (img.size() >= kRingHeaderSize) std::memcpy(&h, img.data(), sizeof(h));
    if (img.empty() || h.magic != kRingMagic || h.crc != header_crc(h)) {
      found.note = "intent ring file has no valid header; ignored";
    } else if (h.version != kRingVersion || h.slot_size != kRingSlotSize || h.slot_count == 0 ||
               img.size() < file_size(h.slot_count)) {
      found.note = fmt::format("intent ring file has an unknown layout (version {}); ignored", h.version);
    } else if (std::memcmp(h.log_uuid, uuid.bytes.data(), 16) != 0) {
      found.note = "intent ring file belongs to another metadata log; ignored";
    } else if (std::memcmp(h.boot_id, boot->data(), 16) != 0) {
      found.note = "intent ring file was written before a reboot; ignored";
    } else if (h.sub_blocks != sub_blocks) {
      found.note = "intent ring file has another mask width; ignored";
    } else {
      found.found = true;
      // The entries after the mark, in sequence order, up to the first slot
      // that does not hold the next sequence (a torn or never written slot:
      // puts are serialised, so nothing after it was written).
      for (uint64_t seq = h.committed + 1;; ++seq) {
        const std::byte* s = img.data() + kRingHeaderSize + (seq % h.slot_count) * kRingSlotSize;
        RingSlotDisk slot;
        std::memcpy(&slot, s, sizeof(slot));
        if (slot.sequence != seq || slot.length > sizeof(slot.entry) || slot.crc != slot_crc(s)) break;
        std::vector<Entry> one;
        Status st = decode_entries(std::span(reinterpret_cast<const std::byte*>(slot.entry), slot.length),
                                   1, sub_blocks, one);
        if (!st.is_ok()) break;
        if (accept && !accept(one[0])) {
          found.note = fmt::format("entry {} of the intent ring is not valid for this log; "
                                   "replaying the {} before it", seq, found.entries.size());
          break;
        }
        found.entries.push_back(one[0]);
        const size_t at = kept.size();
        kept.resize(at + kRingSlotSize);
        std::memcpy(kept.data() + at, s, kRingSlotSize);
        if (found.entries.size() >= h.slot_count) break;
      }
    }
  }
  // Renumber the kept slots 1..n for the fresh file.
  for (size_t i = 0; i < found.entries.size(); ++i) {
    std::byte* s = kept.data() + i * kRingSlotSize;
    const uint64_t seq = i + 1;
    std::memcpy(s, &seq, sizeof(seq));
    const uint32_t c = slot_crc(s);
    std::memcpy(s + offsetof(RingSlotDisk, crc), &c, sizeof(c));
  }
  uint32_t slots = std::max<uint32_t>(opts.slots, 2);
  while (slots <= found.entries.size()) slots *= 2;
  RBDCACHE_RETURN_IF_ERROR(r->rewrite(slots, 0, kept, 1));
  r->next_ = found.entries.size() + 1;
  return r;
}

IntentRing::~IntentRing() {
  if (map_) ::munmap(map_, map_len_);
}

Status IntentRing::rewrite(uint32_t slots, uint64_t committed, std::span<const std::byte> raw,
                           uint64_t first_seq) {
  const std::string tmp = path_ + ".new";
  ::unlink(tmp.c_str());
  int fd = ::open(tmp.c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  if (fd < 0) return Status::system_error(errno, fmt::format("cannot create intent ring '{}'", tmp));
  const size_t len = file_size(slots);
  if (::ftruncate(fd, static_cast<off_t>(len)) != 0) {
    int err = errno;
    ::close(fd);
    ::unlink(tmp.c_str());
    return Status::system_error(err, fmt::format("cannot size intent ring '{}'", tmp));
  }
  void* m = ::mmap(nullptr, len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd, 0);
  ::close(fd);
  if (m == MAP_FAILED) {
    int err = errno;
    ::unlink(tmp.c_str());
    return Status::system_error(err, fmt::format("cannot map intent ring '{}'", tmp));
  }
  auto* base = static_cast<std::byte*>(m);
  RingHeaderDisk h{};
  h.magic = kRingMagic;
  h.version = kRingVersion;
  std::memcpy(h.log_uuid, uuid_.bytes.data(), 16);
  std::memcpy(h.boot_id, boot_.data(), 16);
  h.slot_size = kRingSlotSize;
  h.slot_count = slots;
  h.sub_blocks = sub_blocks_;
  h.committed = committed;
  h.crc = header_crc(h);
  std::memcpy(base, &h, sizeof(h));
  for (size_t i = 0; i * kRingSlotSize < raw.size(); ++i) {
    std::memcpy(base + kRingHeaderSize + ((first_seq + i) % slots) * kRingSlotSize,
                raw.data() + i * kRingSlotSize, kRingSlotSize);
  }
  if (::rename(tmp.c_str(), path_.c_str()) != 0) {
    int err = errno;
    ::munmap(m, len);
    ::unlink(tmp.c_str());
    return Status::system_error(err, fmt::format("cannot install intent ring '{}'", path_));
  }
  if (map_) ::munmap(map_, map_len_);
  map_ = base;
  map_len_ = len;
  slots_ = slots;
  return Status::ok();
}

std::byte* IntentRing::slot_at(uint64_t seq) const {
  return map_ + kRingHeaderSize + (seq % slots_) * kRingSlotSize;
}

uint64_t IntentRing::committed() const { return committed_ref(map_).load(std::memory_order_relaxed); }

void IntentRing::encode_slot(const Entry& e, uint64_t seq, std::byte* out) {
  enc_.clear();
  encode_entry(e, sub_blocks_, enc_);
  RingSlotDisk s{};
  s.sequence = seq;
  s.length = static_cast<uint16_t>(enc_.size());
  std::memcpy(s.entry, enc_.data(), enc_.size());
  std::memcpy(out, &s, kRingSlotSize);
  const uint32_t c = slot_crc(out);
  std::memcpy(out + offsetof(RingSlotDisk, crc), &c, sizeof(c));
}

// The slot is built aside and copied in one memcpy: a crash in the middle
// leaves a slot whose crc or sequence does not hold.
Status IntentRing::put(const Entry& e) {
  if (pending() >= slots_) return Status::from_errno(ENOSPC, "intent ring full");
  alignas(8) std::byte buf[kRingSlotSize];
  encode_slot(e, next_, buf);
  std::memcpy(slot_at(next_), buf, kRingSlotSize);
  ++next_;
  return Status::ok();
}

Status IntentRing::reset(std::span<const Entry> entries) {
  std::vector<std::byte> raw(entries.size() * kRingSlotSize);
  for (size_t i = 0; i < entries.size(); ++i) encode_slot(entries[i], i + 1, raw.data() + i * kRingSlotSize);
  uint32_t slots = slots_;
  while (slots <= entries.size()) slots *= 2;
  RBDCACHE_RETURN_IF_ERROR(rewrite(slots, 0, raw, 1));
  next_ = entries.size() + 1;
  return Status::ok();
}

void IntentRing::mark_committed(uint64_t seq) {
  if (seq > committed() && seq < next_) committed_ref(map_).store(seq, std::memory_order_relaxed);
}

Status IntentRing::grow(uint32_t slots) {
  if (slots <= slots_) return Status::ok();
  const uint64_t first = committed() + 1;
  std::vector<std::byte> raw;
  raw.reserve(pending() * kRingSlotSize);
  for (uint64_t seq = first; seq < next_; ++seq) {
    const std::byte* s = slot_at(seq);
    raw.insert(raw.end(), s, s + kRingSlotSize);
  }
  return rewrite(slots, first - 1, raw, first);
}

void IntentRing::remove() { ::unlink(path_.c_str()); }

}  // namespace rbdcache::metalog
