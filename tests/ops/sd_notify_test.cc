// The sd_notify wrapper: what reaches a notification socket, and that
// nothing fails without one.
#include "control/sd_notify.h"

#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstddef>
#include <cstdlib>
#include <string>

#include <gtest/gtest.h>

namespace rbdcache::control {
namespace {

// A unix datagram socket standing in for systemd's NOTIFY_SOCKET, at a
// path in a fresh temporary directory (or in the abstract namespace).
class NotifySocketTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/rbdcache-sdnotify.XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
    ::unsetenv("NOTIFY_SOCKET");
    ::unsetenv("WATCHDOG_USEC");
    ::unsetenv("WATCHDOG_PID");
  }

  void TearDown() override {
    if (fd_ >= 0) ::close(fd_);
    if (!path_.empty()) ::unlink(path_.c_str());
    ::rmdir(dir_.c_str());
    ::unsetenv("NOTIFY_SOCKET");
    ::unsetenv("WATCHDOG_USEC");
    ::unsetenv("WATCHDOG_PID");
  }

  // Binds the listening socket and points NOTIFY_SOCKET at it.
  void Listen(bool abstract = false) {
    fd_ = ::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    ASSERT_GE(fd_, 0);
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    socklen_t len;
    std::string env;
    if (abstract) {
      std::string name = "rbdcache-sdnotify-test-" + std::to_string(getpid());
      addr.sun_path[0] = '\0';
      name.copy(addr.sun_path + 1, name.size());
      len = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + 1 + name.size());
      env = "@" + name;
    } else {
      path_ = dir_ + "/notify";
      path_.copy(addr.sun_path, path_.size());
      len = sizeof(addr);
      env = path_;
    }
    ASSERT_EQ(::bind(fd_, reinterpret_cast<sockaddr*>(&addr), len), 0);
    timeval tv{5, 0};
    ASSERT_EQ(::setsockopt(fd_, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv)), 0);
    ASSERT_EQ(::setenv("NOTIFY_SOCKET", env.c_str(), 1), 0);
  }

  // The next datagram, or "" after a 5 s timeout.
  std::string Receive() {
    char buf[4096];
    ssize_t n = ::recv(fd_, buf, sizeof(buf), 0);
    return n > 0 ? std::string(buf, static_cast<size_t>(n)) : std::string();
  }

  // True when no datagram is waiting.
  bool Empty() {
    char buf[16];
    return ::recv(fd_, buf, sizeof(buf), MSG_DONTWAIT) < 0;
  }

  std::string dir_;
  std::string path_;
  int fd_ = -1;
};

TEST_F(NotifySocketTest, WithoutNotifySocketEveryCallIsANoOp) {
  EXPECT_FALSE(notify_socket_set());
  notify_ready("serving");
  notify_status("status");
  notify_stopping("stopping");
  notify_extend_timeout(std::chrono::seconds(1));
  notify_watchdog();
  EXPECT_EQ(watchdog_interval(), std::chrono::microseconds(0));
}

TEST_F(NotifySocketTest, AnEmptyNotifySocketCountsAsUnset) {
  ASSERT_EQ(::setenv("NOTIFY_SOCKET", "", 1), 0);
  EXPECT_FALSE(notify_socket_set());
  notify_ready("serving");
}

TEST_F(NotifySocketTest, ReadySendsReadyStatusAndMainPid) {
  Listen();
  EXPECT_TRUE(notify_socket_set());
  notify_ready("serving rbd:rbd/vm1 at nbd+unix:///?socket=/run/rbdcache/vm1.sock");
  EXPECT_EQ(Receive(), "READY=1\nSTATUS=serving rbd:rbd/vm1 at nbd+unix:///?socket=/run/rbdcache/vm1.sock\n"
                       "MAINPID=" + std::to_string(getpid()));
  EXPECT_TRUE(Empty());
}

TEST_F(NotifySocketTest, NotificationsCanBeSentRepeatedly) {
  Listen();
  notify_ready("serving");
  notify_status("flushing: 10% written back");
  notify_stopping("draining in-flight requests");
  notify_stopping();
  EXPECT_EQ(Receive().rfind("READY=1\n", 0), 0u);
  EXPECT_EQ(Receive(), "STATUS=flushing: 10% written back");
  EXPECT_EQ(Receive(), "STOPPING=1\nSTATUS=draining in-flight requests");
  EXPECT_EQ(Receive(), "STOPPING=1");
}

TEST_F(NotifySocketTest, NewlinesInStatusCannotAddAssignments) {
  Listen();
  notify_status("line one\nREADY=1\r\nSTOPPING=1");
  EXPECT_EQ(Receive(), "STATUS=line one READY=1  STOPPING=1");
}

TEST_F(NotifySocketTest, ExtendTimeoutAndWatchdog) {
  Listen();
  notify_extend_timeout(std::chrono::seconds(90));
  notify_extend_timeout(std::chrono::microseconds(-5));
  notify_watchdog();
  EXPECT_EQ(Receive(), "EXTEND_TIMEOUT_USEC=90000000");
  EXPECT_EQ(Receive(), "EXTEND_TIMEOUT_USEC=0");
  EXPECT_EQ(Receive(), "WATCHDOG=1");
}

TEST_F(NotifySocketTest, AbstractNotifySocketWorks) {
  Listen(/*abstract=*/true);
  notify_status("abstract");
  EXPECT_EQ(Receive(), "STATUS=abstract");
}

TEST_F(NotifySocketTest, AnUnreachableSocketIsIgnored) {
  std::string missing = dir_ + "/nobody-listens";
  ASSERT_EQ(::setenv("NOTIFY_SOCKET", missing.c_str(), 1), 0);
  notify_ready("serving");
  notify_stopping("stopping");
  ASSERT_EQ(::setenv("NOTIFY_SOCKET", "not-a-socket-address", 1), 0);
  notify_status("status");
  SUCCEED();
}

TEST_F(NotifySocketTest, WatchdogIntervalComesFromTheEnvironment) {
  ASSERT_EQ(::setenv("WATCHDOG_USEC", "2000000", 1), 0);
  ASSERT_EQ(::setenv("WATCHDOG_PID", std::to_string(getpid()).c_str(), 1), 0);
  EXPECT_EQ(watchdog_interval(), std::chrono::seconds(2));
  // Meant for another process: not ours to honour.
  ASSERT_EQ(::setenv("WATCHDOG_PID", std::to_string(getpid() + 1).c_str(), 1), 0);
  EXPECT_EQ(watchdog_interval(), std::chrono::microseconds(0));
  ASSERT_EQ(::setenv("WATCHDOG_USEC", "not-a-number", 1), 0);
  ASSERT_EQ(::setenv("WATCHDOG_PID", std::to_string(getpid()).c_str(), 1), 0);
  EXPECT_EQ(watchdog_interval(), std::chrono::microseconds(0));
}

}  // namespace
}  // namespace rbdcache::control
