// SectorModel: for every 512-byte sector of an export, the values the NBD
// rules allow it to hold, for the model-based engine tests. (512 bytes, not
// 4 KiB: a device torn by a power cut tears at 512-byte boundaries.)
//
// Every write (WRITE, WRITE_ZEROES, TRIM) gets an issue and a completion
// time on one logical clock. For each sector the model keeps the writes
// that may still show:
//   - a read issued at time i and completed at c may return the value of
//     write W if W was issued before c and no write W2 to the sector was
//     issued after W completed and itself completed before i;
//   - after a power cut, a sector may hold the value of W unless some
//     durable W2 was issued after W completed. A write is durable once a
//     FUA write completed, or once a FLUSH issued after it completed has
//     completed;
//   - after a process crash, every completed write survived: the read rule
//     applies, as for a read issued at the crash.
// TRIM allows any content until the sector is written again (NBD: the
// client must make no assumption about trimmed data); WRITE_ZEROES writes
// zeroes. A write that failed, or was in flight at a cut, completes at that
// moment without becoming durable: it may or may not have happened, so it
// hides no older write from a read or a process crash.
//
// Sector contents encode the write that produced them (value()), so a read
// is checked by decoding it.
//
// Threads: every member may be called from any thread; one mutex.
#pragma once

#include <atomic>
#include <cstdint>
#include <mutex>
#include <span>
#include <string>
#include <vector>

namespace rbdcache::cache::testing {

class SectorModel {
 public:
  static constexpr uint32_t kSector = 512;
  static constexpr uint64_t kZero = 0;         // a sector of zeroes
  static constexpr uint64_t kInitial = 1;      // the origin's starting content
  static constexpr uint64_t kGarbage = UINT64_MAX;  // decodes to no write

  explicit SectorModel(uint64_t sectors);

  // The contents write `id` gives sector `s`, and back.
  static void fill(uint64_t id, uint64_t s, std::span<std::byte> out);
  static uint64_t value(uint64_t s, std::span<const std::byte> in);
  std::vector<std::byte> initial_image() const;

  uint64_t now() { return ++clock_; }
  uint64_t new_id() { return next_id_++; }

  // A write (`id` from new_id()) to sectors [first, first+n): issued(), then
  // completed() with its outcome. `content` is `id` for a WRITE, kZero for
  // WRITE_ZEROES; `trim` for a TRIM (any content).
  void issued(uint64_t id, uint64_t content, bool trim, uint64_t first, uint64_t n, uint64_t t);
  void completed(uint64_t id, bool ok, bool fua, uint64_t t);
  // A FLUSH issued at `issue` completed successfully.
  void flushed(uint64_t issue);

  // Checks a read of [first, first+n) issued at `issue`, completed at
  // `done`; returns "" or what is wrong.
  std::string check_read(uint64_t first, std::span<const std::byte> data, uint64_t issue,
                         uint64_t done);

  enum class After { kPowerCut, kProcessCrash, kCleanShutdown };
  // At a cut: every write still in flight completes now, undurably.
  void cut(uint64_t t);
  // After the restart: checks the whole export read back and makes what was
  // read each sector's only, durable value; returns "" or what is wrong.
  std::string restarted(After how, std::span<const std::byte> image, uint64_t t);
  // Forgets writes no read or crash can show any more (call when idle).
  void prune();

 private:
  static constexpr uint64_t kNever = UINT64_MAX;
  struct W {
    uint64_t id;
    uint64_t content;  // what it reads as, unless `any`
    bool any;          // trimmed
    uint64_t issue;
    uint64_t complete = kNever;
    bool ok = false;  // completed successfully: it did happen
    bool durable = false;
  };
  bool readable(const std::vector<W>& h, const W& w, uint64_t issue, uint64_t done) const;
  bool survives_power_cut(const std::vector<W>& h, const W& w) const;
  std::string describe(uint64_t s, uint64_t got) const;

  std::atomic<uint64_t> clock_{0};
  std::atomic<uint64_t> next_id_{2};
  std::mutex mu_;
  std::vector<std::vector<W>> hist_;  // per sector; guarded by mu_
};

}  // namespace rbdcache::cache::testing
