// CommitWorker: runs metadata-log commits on a thread of its own.
//
// MetadataLog::commit() writes and syncs, so it must not run on a reactor.
// The worker commits once per interval (group commit, default 1 s) and at
// once when asked; a request's callback is posted back to the reactor that
// made it, with the Status of the first commit that started after the
// request, which therefore covers every entry appended before it.
//
// The log's intent ring asks for an early commit when it is half full
// (MetadataLog::set_commit_wanted): the worker then commits at once rather
// than at the end of the interval, so the ring rarely has to grow.
//
// Threads: request() may be called from any thread; callbacks run on the
// named reactor. The MetadataLog must outlive the worker, and no append()
// may run while the worker is destroyed. Locks: mu_ is the innermost lock
// (the commit-wanted callback takes it under the caller's slot-table mutex);
// it is never held while a commit or a hook runs.
#pragma once

#include <chrono>
#include <condition_variable>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

#include "metalog/writer.h"
#include "rbdcache/status.h"

namespace rbdcache::io {
class Reactor;
}

namespace rbdcache::cache {

class CommitWorker {
 public:
  // Runs on the worker thread around every commit.
  struct Hooks {
    // At the start of every commit, before the log takes its batch: every
    // entry appended before this call will be in the commit.
    std::function<void()> mark;
    // After the log has taken its batch and before it writes it; a failure
    // aborts the commit and fails the log. The engine syncs the cache device
    // here, so that no committed entry can describe data that is not yet
    // durable (an entry is appended only after its data write completed).
    std::function<Status()> before;
    // After the commit, with its Status.
    std::function<void(const Status&)> after;
  };

  CommitWorker(metalog::MetadataLog& log, std::chrono::milliseconds interval, Hooks hooks = {});
  // Stops the thread after a final commit; pending requests get its Status.
  ~CommitWorker();
  CommitWorker(const CommitWorker&) = delete;
  CommitWorker& operator=(const CommitWorker&) = delete;

  // Asks for a commit now; `done` is posted to `reactor` once every entry
  // appended before this call is durable (or the commit failed).
  void request(io::Reactor& reactor, std::function<void(Status)> done);

  // Number of commits run; for status and tests.
  uint64_t commits() const;

 private:
  struct Waiter {
    io::Reactor* reactor;
    std::function<void(Status)> done;
  };
  void run();

  metalog::MetadataLog& log_;
  const std::chrono::milliseconds interval_;
  Hooks hooks_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::vector<Waiter> waiters_;  // guarded by mu_
  bool stop_ = false;            // guarded by mu_
  bool wanted_ = false;          // the log asked for a commit; guarded by mu_
  uint64_t commits_ = 0;         // guarded by mu_
  std::thread thread_;
};

}  // namespace rbdcache::cache
