// BlockLocks: exclusive, asynchronous locks on origin blocks.
//
// Every cache operation that touches an origin block (a client read or
// write, a promotion, a write-back, an eviction) holds that block's lock for
// its whole duration, I/O included. This is what orders concurrent reads and
// writes to one block, and what keeps a write that lands during a write-back
// from being lost: it waits until the write-back of that block is done.
// Requests on different blocks never wait for each other.
//
// Ranges are always taken in ascending block order, so two requests cannot
// deadlock. A waiter is resumed by posting its continuation to the reactor it
// named; nothing ever blocks a thread.
//
// Threads: every method may be called from any thread. The internal mutex is
// held only to update the table, never across I/O or a continuation.
#pragma once

#include <deque>
#include <functional>
#include <mutex>
#include <unordered_map>

#include "rbdcache/types.h"

namespace rbdcache::io {
class Reactor;
}

namespace rbdcache::cache {

class BlockLocks {
 public:
  // Locks origin blocks first..last (inclusive). `granted` runs once every
  // block is held: synchronously when none was contended, otherwise later,
  // posted to `reactor`. Precondition: first <= last.
  void lock_range(io::Reactor& reactor, OriginBlock first, OriginBlock last,
                  std::function<void()> granted);

  // Takes the lock on `b` only if it is free. Never waits.
  bool try_lock(OriginBlock b);

  // Releases first..last, handing each lock straight to its oldest waiter.
  // Precondition: the caller holds all of them.
  void unlock_range(OriginBlock first, OriginBlock last);
  void unlock(OriginBlock b) { unlock_range(b, b); }

  // Number of blocks locked now; for tests and status.
  size_t locked_count() const;

 private:
  struct Waiter {
    io::Reactor* reactor;
    OriginBlock next;  // the block it is waiting for
    OriginBlock last;
    std::function<void()> granted;
  };
  struct Entry {
    std::deque<Waiter> waiters;
  };

  // Acquires from w.next on; returns true when the whole range is held,
  // false when w was queued behind a holder. Requires mu_.
  bool acquire_locked(Waiter& w);

  mutable std::mutex mu_;
  std::unordered_map<OriginBlock, Entry> held_;  // present = locked
};

}  // namespace rbdcache::cache
