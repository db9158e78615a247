// Helpers shared by the I/O unit tests: a reactor on its own thread, scratch
// files in a directory that accepts O_DIRECT, and deterministic data.
#pragma once

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <future>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "io/reactor.h"

namespace rbdcache::testing {

// A reactor running on its own thread for the life of the object.
class ReactorThread {
 public:
  ReactorThread() {
    auto r = io::Reactor::create(64, 0);
    if (!r.is_ok()) {
      ADD_FAILURE() << "Reactor::create: " << r.status().to_string();
      return;
    }
    reactor_ = std::move(r.value());
    std::promise<std::thread::id> started;
    auto started_future = started.get_future();
    thread_ = std::thread([this, &started] {
      started.set_value(std::this_thread::get_id());
      reactor_->run();
    });
    thread_id_ = started_future.get();
  }

  ~ReactorThread() {
    if (thread_.joinable()) {
      reactor_->stop();
      thread_.join();
    }
  }

  ReactorThread(const ReactorThread&) = delete;
  ReactorThread& operator=(const ReactorThread&) = delete;

  bool ok() const { return reactor_ != nullptr; }
  io::Reactor& reactor() { return *reactor_; }
  std::thread::id thread_id() const { return thread_id_; }

  // Runs `start` on the reactor thread and waits for the completion it is
  // handed to be called (exactly once) with a T, which call() returns.
  template <typename T>
  T call(std::function<void(std::function<void(T)>)> start) {
    auto p = std::make_shared<std::promise<T>>();
    auto f = p->get_future();
    reactor_->post([start = std::move(start), p] { start([p](T v) { p->set_value(std::move(v)); }); });
    if (f.wait_for(std::chrono::seconds(60)) != std::future_status::ready) {
      // Waiting forever would hang the suite; the test cannot continue.
      ADD_FAILURE() << "operation did not complete";
      std::abort();
    }
    return f.get();
  }

 private:
  std::unique_ptr<io::Reactor> reactor_;
  std::thread thread_;
  std::thread::id thread_id_;
};

// True when files in `dir` can be opened with O_DIRECT.
inline bool supports_o_direct(const std::string& dir) {
  std::string tmpl = dir + "/odirect_probe_XXXXXX";
  std::vector<char> path(tmpl.begin(), tmpl.end());
  path.push_back('\0');
  int fd = ::mkstemp(path.data());
  if (fd < 0) return false;
  ::close(fd);
  int dfd = ::open(path.data(), O_RDWR | O_DIRECT);
  ::unlink(path.data());
  if (dfd < 0) return false;
  ::close(dfd);
  return true;
}

// A scratch directory for test files: $RBDCACHE_TEST_DIR, /var/tmp, the
// working directory or the gtest temp dir, whichever first accepts O_DIRECT
// (tmpfs on older kernels does not). Falls back to the gtest temp dir.
inline const std::string& scratch_dir() {
  static const std::string dir = [] {
    std::vector<std::string> candidates;
    if (const char* env = std::getenv("RBDCACHE_TEST_DIR")) candidates.emplace_back(env);
    candidates.emplace_back("/var/tmp");
    candidates.emplace_back(".");
    candidates.emplace_back(::testing::TempDir());
    for (const auto& d : candidates) {
      if (supports_o_direct(d)) return d;
    }
    return ::testing::TempDir();
  }();
  return dir;
}

// A scratch file that is removed when the object goes away.
class ScratchFile {
 public:
  explicit ScratchFile(const std::string& dir = scratch_dir()) {
    std::string tmpl = dir + "/rbdcache_test_XXXXXX";
    std::vector<char> path(tmpl.begin(), tmpl.end());
    path.push_back('\0');
    fd_ = ::mkstemp(path.data());
    EXPECT_GE(fd_, 0) << "mkstemp in " << dir << ": " << std::strerror(errno);
    path_ = path.data();
  }
  ~ScratchFile() {
    if (fd_ >= 0) ::close(fd_);
    ::unlink(path_.c_str());
  }
  ScratchFile(const ScratchFile&) = delete;
  ScratchFile& operator=(const ScratchFile&) = delete;

  int fd() const { return fd_; }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  int fd_ = -1;
};

// `n` bytes of a reproducible pseudo-random pattern.
inline std::vector<std::byte> pattern(size_t n, uint32_t seed) {
  std::vector<std::byte> v(n);
  uint32_t x = seed * 2654435761u + 1;
  for (auto& b : v) {
    x = x * 1664525u + 1013904223u;
    b = static_cast<std::byte>(x >> 24);
  }
  return v;
}

}  // namespace rbdcache::testing
