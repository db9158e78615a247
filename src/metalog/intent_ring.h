// IntentRing: the entries the metadata log has accepted but not yet
// committed, kept where a crash of the process cannot lose them.
//
// The ring is a file on tmpfs, mapped MAP_SHARED: a store into it is in the
// kernel's page cache the moment it is made, so it survives the process
// (kill -9, abort, a crash) but never a reboot or a power cut. It can
// therefore never make the log point at cache data that did not survive:
// after a process crash every cache-device write that completed is still in
// the kernel too. The byte layout is in docs/metadata-format.md, "Intent
// ring".
//
//   - MetadataLog::append() puts every entry it accepts into the ring before
//     it returns, with a ring sequence and a CRC32C;
//   - a commit that made entries durable moves the ring's committed mark;
//   - at open, entries newer than the mark are recovered (when the file was
//     written by this log during this boot) and the ring is rewritten to
//     hold exactly them, so that they are kept until they are committed.
//
// An uncommitted entry is never overwritten: a put() that finds no free slot
// fails, and the owner grows the ring first (grow()).
//
// Threads: not thread-safe; MetadataLog calls it under its batch lock.
#pragma once

#include <array>
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "metalog/entry.h"
#include "metalog/superblock.h"
#include "rbdcache/status.h"

namespace rbdcache::metalog {

inline constexpr uint32_t kRingSlotSize = 128;
inline constexpr uint32_t kRingHeaderSize = 4096;
inline constexpr uint32_t kDefaultRingSlots = 32768;  // 4 MiB

struct RingOptions {
  // Directory holding the ring files; must be on tmpfs. Empty: /run/rbdcache
  // when /run is tmpfs, else /dev/shm.
  std::string dir;
  uint32_t slots = kDefaultRingSlots;
};

// What open() found in an existing ring file.
struct RingRecovery {
  std::vector<Entry> entries;  // newer than the committed mark, in order
  std::string note;            // why an existing file was ignored, or ""
  bool found = false;          // a file of this log and this boot was taken back
};

class IntentRing {
 public:
  // The default directory (see RingOptions::dir).
  static std::string default_dir();
  // The ring file of log `uuid` under `dir`.
  static std::string path_for(const std::string& dir, const Uuid& uuid);
  // This boot's /proc/sys/kernel/random/boot_id, as 16 bytes.
  [[nodiscard]] static Result<std::array<uint8_t, 16>> boot_id();

  // Opens the ring of log `uuid`, whose entries carry `sub_blocks`-bit
  // masks, creating it when absent. Recovery stops at the first entry that
  // `accept` refuses. Fails when the directory is not on tmpfs (ENOTSUP) or
  // cannot be written.
  [[nodiscard]] static Result<std::unique_ptr<IntentRing>> open(
      const RingOptions& opts, const Uuid& uuid, uint32_t sub_blocks,
      const std::function<bool(const Entry&)>& accept, RingRecovery& found);
  ~IntentRing();
  IntentRing(const IntentRing&) = delete;
  IntentRing& operator=(const IntentRing&) = delete;

  // Slots, and the entries put but not yet marked committed.
  uint32_t capacity() const { return slots_; }
  uint64_t pending() const { return next_ - 1 - committed(); }
  // The ring sequence the next put() gets; sequences start at 1.
  uint64_t next_sequence() const { return next_; }
  uint64_t committed() const;

  // Writes `e` into the next slot. Fails (ENOSPC) when every slot holds an
  // uncommitted entry; then nothing is written.
  [[nodiscard]] Status put(const Entry& e);
  // Every entry up to ring sequence `seq` is durable in the log.
  void mark_committed(uint64_t seq);
  // Rewrites the ring to hold exactly `entries`, as sequences 1..n, none
  // committed. A crash during the rewrite leaves the old file.
  [[nodiscard]] Status reset(std::span<const Entry> entries);
  // Rewrites the ring with room for at least `slots` slots, keeping every
  // uncommitted entry. A crash during the rewrite leaves the old file.
  [[nodiscard]] Status grow(uint32_t slots);
  // Deletes the file: call only when nothing is pending.
  void remove();

  const std::string& path() const { return path_; }

 private:
  IntentRing() = default;
  // Writes a new file under a temporary name holding `slots` slots, the
  // given raw slots placed by their sequences, then renames it over path_
  // and maps it.
  Status rewrite(uint32_t slots, uint64_t committed, std::span<const std::byte> raw_slots,
                 uint64_t first_seq);
  std::byte* slot_at(uint64_t seq) const;
  void encode_slot(const Entry& e, uint64_t seq, std::byte* out);

  std::string path_;
  Uuid uuid_;
  std::array<uint8_t, 16> boot_{};
  uint32_t sub_blocks_ = 0;
  uint32_t slots_ = 0;
  std::byte* map_ = nullptr;
  size_t map_len_ = 0;
  uint64_t next_ = 1;
  std::vector<std::byte> enc_;  // scratch for one encoded entry
};

}  // namespace rbdcache::metalog
