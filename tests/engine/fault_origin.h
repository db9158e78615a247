// FaultOrigin: an Origin for engine tests that wraps a real one (a
// FileOrigin over a scratch file) and adds what a crash test needs:
//
//   - Durability. It keeps the durable image (what survives a power cut)
//     apart from the writes not yet covered by a flush. A write is
//     "completed" when its completion is delivered to the caller; a flush
//     covers the writes completed before the flush was issued, and makes
//     them durable when its own completion is delivered. A FUA write is
//     durable when its completion is delivered. Write-zeroes and discards
//     count as writes of zeroes (the file origin punches holes).
//   - Crash images. crash_image() is what the origin could hold after a
//     power cut: the durable image plus a random subset of the other writes
//     (completed or in flight). synced_image() keeps none of them;
//     current_image() keeps every one (a process crash: the writes had
//     reached the kernel).
//   - Held completions. hold(op) makes the completions of that kind of
//     operation wait until the test releases them, in any order; a write's
//     data is in the inner origin already, but it is not completed (and no
//     flush covers it) until it is released.
//   - Failures. fail_next() and set_fault() make chosen operations fail
//     with EIO without reaching the inner origin.
//
// Power: it shares a PowerSwitch with the fault cache devices, so one cut()
// stops every device at once. After the cut every operation fails with EIO
// and changes nothing, and completions delivered afterwards report EIO
// (their writes stay "in flight" for crash_image()).
//
// Threads: any thread may call any member. Completions run on the reactor
// the operation was issued on, never inline in the issuing call.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "fault_cache_device.h"
#include "origin/origin.h"

namespace rbdcache::cache::testing {

class FaultOrigin final : public Origin {
 public:
  enum class Op { kRead, kWrite, kFlush, kDiscard, kWriteZeroes, kCount };
  struct OpInfo {
    uint64_t id = 0;
    Op op = Op::kRead;
    uint64_t offset = 0;
    uint64_t length = 0;
    bool fua = false;
  };

  // `inner` must hold `durable_image` (its size is the origin's size) and
  // outlive this object. `power` is shared with the other devices.
  FaultOrigin(Origin& inner, std::vector<std::byte> durable_image,
              std::shared_ptr<PowerSwitch> power);
  // Waits (up to 2 s) for completions still running on their reactors.
  ~FaultOrigin() override;

  uint64_t size() const override { return inner_.size(); }
  OriginCaps caps() const override { return inner_.caps(); }
  std::string describe() const override { return "fault " + inner_.describe(); }
  std::string identity() const override { return inner_.identity(); }
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

  // --- Failures: the next `n` operations of kind `op` fail with EIO.
  void fail_next(Op op, uint64_t n = 1);
  // Every operation for which `pred` returns true fails with EIO (nullptr:
  // none). `pred` runs under the power switch's lock.
  void set_fault(std::function<bool(const OpInfo&)> pred);

  // --- Held completions.
  // From now on (or no longer), completions of kind `op` are held.
  // Turning holding off does not release what is held already.
  void hold(Op op, bool on = true);
  std::vector<OpInfo> held() const;
  // Delivers one held completion (posted to its reactor); false if `id` is
  // not held.
  bool release(uint64_t id);
  void release_all();
  // Waits until at least `n` completions are held; false on timeout.
  bool wait_for_held(size_t n, std::chrono::milliseconds timeout) const;
  // Forgets the held completions without ever running them (they no longer
  // count as in flight): for a test whose caller (and its reactor) is gone,
  // which a correct caller never allows.
  void abandon_held();

  // --- Images (stable once the power is cut or the origin is idle).
  std::vector<std::byte> crash_image(std::mt19937_64& rng) const;
  std::vector<std::byte> synced_image() const;
  std::vector<std::byte> current_image() const;

  // --- Counters.
  // Operations issued whose completion has not yet run to its end.
  uint64_t in_flight() const { return in_flight_.load(); }
  // Flushes whose success was delivered.
  uint64_t flushes() const;
  // Operations of kind `op` issued (including failed ones).
  uint64_t issued(Op op) const;
  // Writes (all kinds) not yet made durable.
  size_t unsynced_writes() const;

 private:
  static constexpr uint64_t kInFlight = UINT64_MAX;
  struct Pending {
    uint64_t id;
    uint64_t offset;
    uint64_t length;
    std::vector<std::byte> data;  // empty: zeroes
    bool fua = false;
    uint64_t seq = kInFlight;     // completion order; kInFlight until delivered
    // A completed FUA write: in every image, in its place in the order.
    bool durable() const { return fua && seq != kInFlight; }
  };
  struct Held {
    OpInfo info;
    std::function<void()> deliver;
    io::Reactor* reactor;
  };

  // Under the power lock: whether the operation must fail now (and counts
  // it as issued).
  bool check_locked(const OpInfo& info, Status& st);
  // Starts an operation: fills in its id; returns false (with `st` set)
  // when it fails at once. Records a pending write when `data_or_zero`.
  bool start(OpInfo& info, Status& st, const std::byte* data, bool is_write);
  // On the issuing reactor, once the inner origin answered.
  void completed(io::Reactor& r, const OpInfo& info, Status st, uint64_t flush_upto,
                 IoCallback done);
  void deliver(const OpInfo& info, Status st, uint64_t flush_upto, const IoCallback& done);
  void apply_locked(std::vector<std::byte>& img, const Pending& p) const;
  // pending_ in completion order, the writes in flight last.
  std::vector<const Pending*> in_order_locked() const;

  Origin& inner_;
  std::shared_ptr<PowerSwitch> power_;
  // Guarded by power_->mutex().
  std::vector<std::byte> durable_;
  std::vector<Pending> pending_;  // in issue order
  uint64_t next_id_ = 1;
  uint64_t next_seq_ = 0;
  uint64_t flushes_ = 0;
  uint64_t issued_[static_cast<int>(Op::kCount)] = {};
  uint64_t fail_next_[static_cast<int>(Op::kCount)] = {};
  bool hold_[static_cast<int>(Op::kCount)] = {};
  std::function<bool(const OpInfo&)> fault_;
  std::vector<Held> held_;
  mutable std::condition_variable held_cv_;  // with power_->mutex()

  std::atomic<uint64_t> in_flight_{0};
};

const char* op_name(FaultOrigin::Op op);

}  // namespace rbdcache::cache::testing
