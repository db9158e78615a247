#include "cache/block_locks.h"

#include <cassert>

#include "io/reactor.h"

namespace rbdcache::cache {

bool BlockLocks::acquire_locked(Waiter& w) {
  while (true) {
    auto [it, inserted] = held_.try_emplace(w.next);
    if (!inserted) {
      it->second.waiters.push_back(std::move(w));
      return false;
    }
    if (w.next == w.last) return true;
    ++w.next;
  }
}

void BlockLocks::lock_range(io::Reactor& reactor, OriginBlock first, OriginBlock last,
                            std::function<void()> granted) {
  assert(first <= last);
  Waiter w{&reactor, first, last, std::move(granted)};
  bool done;
  {
    std::lock_guard<std::mutex> lock(mu_);
    done = acquire_locked(w);
  }
  if (done) w.granted();
}

bool BlockLocks::try_lock(OriginBlock b) {
  std::lock_guard<std::mutex> lock(mu_);
  return held_.try_emplace(b).second;
}

void BlockLocks::unlock_range(OriginBlock first, OriginBlock last) {
  std::vector<Waiter> ready;
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (OriginBlock b = first;; ++b) {
      auto it = held_.find(b);
      assert(it != held_.end());
      if (it->second.waiters.empty()) {
        held_.erase(it);
      } else {
        // Hand the lock over: the block stays held, now by the waiter.
        Waiter w = std::move(it->second.waiters.front());
        it->second.waiters.pop_front();
        if (w.next == w.last) {
          ready.push_back(std::move(w));
        } else {
          ++w.next;
          if (acquire_locked(w)) ready.push_back(std::move(w));
        }
      }
      if (b == last) break;
    }
  }
  for (Waiter& w : ready) {
    w.reactor->post(std::move(w.granted));
  }
}

size_t BlockLocks::locked_count() const {
  std::lock_guard<std::mutex> lock(mu_);
  return held_.size();
}

}  // namespace rbdcache::cache
