#include "cache/commit_worker.h"

#include "io/reactor.h"
#include "util/log.h"

namespace rbdcache::cache {

CommitWorker::CommitWorker(metalog::MetadataLog& log, std::chrono::milliseconds interval,
                           Hooks hooks)
    : log_(log), interval_(interval), hooks_(std::move(hooks)) {
  log_.set_commit_wanted([this] {
    {
      std::lock_guard<std::mutex> lock(mu_);
      wanted_ = true;
    }
    cv_.notify_one();
  });
  thread_ = std::thread([this] { run(); });
}

CommitWorker::~CommitWorker() {
  log_.set_commit_wanted(nullptr);
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  cv_.notify_one();
  thread_.join();
}

void CommitWorker::request(io::Reactor& reactor, std::function<void(Status)> done) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    waiters_.push_back(Waiter{&reactor, std::move(done)});
  }
  cv_.notify_one();
}

uint64_t CommitWorker::commits() const {
  std::lock_guard<std::mutex> lock(mu_);
  return commits_;
}

void CommitWorker::run() {
  // A failed log stays failed (every commit returns its first error): say
  // so once, then once a minute, rather than at every interval.
  auto last_report = std::chrono::steady_clock::time_point{};
  uint64_t unreported = 0;
  std::unique_lock<std::mutex> lock(mu_);
  while (true) {
    cv_.wait_for(lock, interval_, [this] { return stop_ || wanted_ || !waiters_.empty(); });
    wanted_ = false;
    // Requests taken now are covered by the commit that starts below: their
    // entries were appended before they were queued.
    std::vector<Waiter> batch;
    batch.swap(waiters_);
    bool stopping = stop_;
    lock.unlock();
    if (hooks_.mark) hooks_.mark();
    Status st = log_.commit(hooks_.before);
    if (hooks_.after) hooks_.after(st);
    if (!st.is_ok()) {
      const auto now = std::chrono::steady_clock::now();
      if (now - last_report >= std::chrono::minutes(1)) {
        log::error("metadata commit failed{}: {}",
                   unreported ? fmt::format(" ({} more times since the last report)", unreported)
                              : std::string(),
                   st.to_string());
        last_report = now;
        unreported = 0;
      } else {
        ++unreported;
      }
    }
    for (Waiter& w : batch) {
      w.reactor->post([done = std::move(w.done), st] { done(st); });
    }
    lock.lock();
    ++commits_;
    if (stopping && waiters_.empty()) return;
  }
}

}  // namespace rbdcache::cache
