// The client side of the NBD fixed-newstyle handshake, blocking.
//
// The kernel's NBD client (/dev/nbdX) does no handshake of its own:
// userspace connects, negotiates the export, and hands the socket, by then in
// the transmission phase, to the kernel (see nbd/netlink.h). This is that
// userspace half: connect_unix() opens the socket and client_handshake()
// sends NBD_OPT_GO and reads the export's size and transmission flags.
//
// It negotiates nothing the kernel cannot speak: no structured replies, no
// metadata contexts. The transmission flags it returns are therefore exactly
// the ones to give the kernel as NBD_ATTR_SERVER_FLAGS.
//
// Every length the server sends is checked before it is used; a server that
// breaks the protocol fails the handshake with EPROTO and a message.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>

#include "rbdcache/status.h"

namespace rbdcache::nbd {

// Owns one file descriptor and closes it when destroyed. -1 is "none".
class UniqueFd {
 public:
  UniqueFd() = default;
  explicit UniqueFd(int fd) : fd_(fd) {}
  UniqueFd(UniqueFd&& other) noexcept : fd_(other.release()) {}
  UniqueFd& operator=(UniqueFd&& other) noexcept;
  UniqueFd(const UniqueFd&) = delete;
  UniqueFd& operator=(const UniqueFd&) = delete;
  ~UniqueFd() { reset(); }

  int get() const { return fd_; }
  bool valid() const { return fd_ >= 0; }
  // Gives up ownership without closing.
  int release() {
    int fd = fd_;
    fd_ = -1;
    return fd;
  }
  void reset(int fd = -1);

 private:
  int fd_ = -1;
};

// What the server said about the export in answer to NBD_OPT_GO.
struct ClientExport {
  uint64_t size = 0;
  uint16_t transmission_flags = 0;  // NBD_FLAG_* as the server sent them
  // From NBD_INFO_BLOCK_SIZE; all 0 when the server did not send it.
  uint32_t min_block_size = 0;
  uint32_t preferred_block_size = 0;
  uint32_t max_payload = 0;
};

struct ClientHandshakeOptions {
  std::string export_name;  // empty selects the server's default export
  // Longest wait for each read or write of the handshake; 0 waits forever.
  std::chrono::milliseconds timeout{30'000};
};

// Connects a blocking, close-on-exec stream socket to the unix socket at
// `path`. The errno tells what is wrong: ENOENT (no such file), ECONNREFUSED
// (a socket file nobody listens on: the server is not running), EACCES,
// ENOTSOCK, ENAMETOOLONG (longer than a unix socket path may be).
[[nodiscard]] Result<UniqueFd> connect_unix(const std::string& path);

// Runs the handshake on the connected stream socket `fd`.
//
// On success the socket is in the transmission phase, blocking, and carries
// no send or receive timeout: the kernel reads from it for as long as the
// device lives, and a receive timeout left behind would make an idle device
// look like a dead connection. On failure the socket is in an unspecified
// state and must be closed.
//
// Errors: ENOENT (no such export), ENOTSUP (the server lacks NBD_OPT_GO or
// fixed newstyle), EACCES (refused by policy or TLS required), ESHUTDOWN
// (the server is shutting down), ETIMEDOUT, ECONNRESET (the server closed the
// connection), EPROTO (not an NBD server, or a malformed reply).
[[nodiscard]] Result<ClientExport> client_handshake(int fd, const ClientHandshakeOptions& options);

}  // namespace rbdcache::nbd
