#include "nbd/client_handshake.h"

#include <sys/socket.h>
#include <sys/time.h>
#include <sys/un.h>
#include <unistd.h>

#include <array>
#include <cctype>
#include <cerrno>
#include <cstring>
#include <vector>

#include "nbd/protocol.h"

namespace rbdcache::nbd {

namespace {

// The magic an old-style server sends instead of IHAVEOPT.
constexpr uint64_t kOldstyleMagic = 0x00420281861253ull;
// The longest option reply payload accepted. NBD strings are at most 4096
// bytes, so real replies are far shorter.
constexpr uint32_t kMaxReplyPayload = 64 * 1024;
// A server answers NBD_OPT_GO with a few NBD_REP_INFO and one final reply;
// more than this many replies to one option is a broken server.
constexpr int kMaxReplies = 64;
// NBD strings, export names among them, are at most 4096 bytes.
constexpr size_t kMaxNameLength = 4096;

// Reads exactly `n` bytes. ECONNRESET when the peer closes first, ETIMEDOUT
// when SO_RCVTIMEO expires.
Status read_exact(int fd, std::byte* buf, size_t n) {
  size_t done = 0;
  while (done < n) {
    ssize_t r = ::recv(fd, buf + done, n - done, 0);
    if (r > 0) {
      done += static_cast<size_t>(r);
      continue;
    }
    if (r == 0) return Status::from_errno(ECONNRESET, "the server closed the connection during the handshake");
    if (errno == EINTR) continue;
    if (errno == EAGAIN || errno == EWOULDBLOCK) {
      return Status::from_errno(ETIMEDOUT, "the server did not answer the handshake in time");
    }
    return Status::system_error(errno, "reading the handshake");
  }
  return Status::ok();
}

Status write_all(int fd, const std::vector<std::byte>& data) {
  size_t done = 0;
  while (done < data.size()) {
    ssize_t r = ::send(fd, data.data() + done, data.size() - done, MSG_NOSIGNAL);
    if (r >= 0) {
      done += static_cast<size_t>(r);
      continue;
    }
    if (errno == EINTR) continue;
    if (errno == EAGAIN || errno == EWOULDBLOCK) {
      return Status::from_errno(ETIMEDOUT, "the server did not take the handshake in time");
    }
    if (errno == EPIPE) return Status::from_errno(ECONNRESET, "the server closed the connection during the handshake");
    return Status::system_error(errno, "writing the handshake");
  }
  return Status::ok();
}

// Sets SO_RCVTIMEO and SO_SNDTIMEO; zero clears them.
Status set_timeouts(int fd, std::chrono::milliseconds timeout) {
  timeval tv{};
  tv.tv_sec = static_cast<time_t>(timeout.count() / 1000);
  tv.tv_usec = static_cast<suseconds_t>((timeout.count() % 1000) * 1000);
  if (::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv)) != 0 ||
      ::setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv)) != 0) {
    return Status::system_error(errno, "setting the handshake timeout");
  }
  return Status::ok();
}

// The server's error text, made safe to print: control bytes become '?'
// and the text is cut at 200 characters.
std::string printable(const std::vector<std::byte>& payload) {
  std::string s;
  for (std::byte b : payload) {
    if (s.size() >= 200) {
      s += "...";
      break;
    }
    auto c = static_cast<unsigned char>(b);
    s += std::isprint(c) ? static_cast<char>(c) : '?';
  }
  return s;
}

Status refusal(uint32_t type, const std::string& export_name, const std::vector<std::byte>& payload) {
  std::string said = payload.empty() ? std::string() : fmt::format(" (server: {})", printable(payload));
  switch (type) {
    case kRepErrUnknown:
      return Status::from_errno(ENOENT, fmt::format("the server has no export named '{}'{}", export_name, said));
    case kRepErrUnsup:
      return Status::from_errno(ENOTSUP, "the server does not support NBD_OPT_GO" + said);
    case kRepErrPolicy:
      return Status::from_errno(EACCES, "the server refused the export by policy" + said);
    case kRepErrTlsReqd:
      return Status::from_errno(EACCES, "the server requires TLS, which rbdcache map does not speak" + said);
    case kRepErrShutdown:
      return Status::from_errno(ESHUTDOWN, "the server is shutting down" + said);
    default:
      return Status::from_errno(EPROTO, fmt::format("the server refused NBD_OPT_GO with error {:#x}{}", type, said));
  }
}

// Decodes one NBD_REP_INFO payload into `exp`; unknown info types are
// ignored, as the protocol requires.
Status decode_info(const std::vector<std::byte>& p, ClientExport& exp, bool& have_export) {
  if (p.size() < 2) return Status::from_errno(EPROTO, "NBD_REP_INFO shorter than its type");
  const uint16_t info = load_be16(p.data());
  if (info == kInfoExport) {
    if (p.size() != 12) {
      return Status::from_errno(EPROTO, fmt::format("NBD_INFO_EXPORT of {} bytes, expected 12", p.size()));
    }
    exp.size = load_be64(p.data() + 2);
    exp.transmission_flags = load_be16(p.data() + 10);
    have_export = true;
  } else if (info == kInfoBlockSize) {
    if (p.size() != 14) {
      return Status::from_errno(EPROTO, fmt::format("NBD_INFO_BLOCK_SIZE of {} bytes, expected 14", p.size()));
    }
    exp.min_block_size = load_be32(p.data() + 2);
    exp.preferred_block_size = load_be32(p.data() + 6);
    exp.max_payload = load_be32(p.data() + 10);
  }
  return Status::ok();
}

Result<ClientExport> negotiate(int fd, const ClientHandshakeOptions& options) {
  // Greeting: NBDMAGIC, IHAVEOPT, 16-bit handshake flags.
  std::array<std::byte, 18> greeting{};
  RBDCACHE_RETURN_IF_ERROR(read_exact(fd, greeting.data(), greeting.size()).with_context(
      "reading the server's greeting"));
  if (load_be64(greeting.data()) != kNbdMagic) {
    return Status::from_errno(EPROTO, "not an NBD server (no NBDMAGIC in its greeting)");
  }
  const uint64_t second = load_be64(greeting.data() + 8);
  if (second == kOldstyleMagic) {
    return Status::from_errno(ENOTSUP, "the server speaks the old-style handshake, which is not supported");
  }
  if (second != kIHaveOpt) return Status::from_errno(EPROTO, "not an NBD server (bad magic after NBDMAGIC)");
  const uint16_t server_flags = load_be16(greeting.data() + 16);
  if (!(server_flags & kFlagFixedNewstyle)) {
    return Status::from_errno(ENOTSUP, "the server does not offer the fixed-newstyle handshake");
  }

  if (options.export_name.size() > kMaxNameLength) {
    return Status::invalid_argument("export name longer than 4096 bytes");
  }
  std::vector<std::byte> out;
  Writer w(out);
  w.u32(kClientFixedNewstyle | (server_flags & kFlagNoZeroes ? kClientNoZeroes : 0));
  // NBD_OPT_GO: name length, name, one info request (NBD_INFO_BLOCK_SIZE).
  const auto name_len = static_cast<uint32_t>(options.export_name.size());
  w.u64(kIHaveOpt).u32(kOptGo).u32(4 + name_len + 2 + 2);
  w.u32(name_len).str(options.export_name).u16(1).u16(kInfoBlockSize);
  RBDCACHE_RETURN_IF_ERROR(write_all(fd, out).with_context("sending NBD_OPT_GO"));

  ClientExport exp;
  bool have_export = false;
  for (int n = 0; n < kMaxReplies; ++n) {
    std::array<std::byte, kOptReplyHeaderSize> h{};
    RBDCACHE_RETURN_IF_ERROR(read_exact(fd, h.data(), h.size()).with_context("reading the answer to NBD_OPT_GO"));
    if (load_be64(h.data()) != kOptReplyMagic) return Status::from_errno(EPROTO, "bad option reply magic");
    const uint32_t option = load_be32(h.data() + 8);
    const uint32_t type = load_be32(h.data() + 12);
    const uint32_t len = load_be32(h.data() + 16);
    if (option != kOptGo) {
      return Status::from_errno(EPROTO, fmt::format("reply for option {} while waiting for NBD_OPT_GO", option));
    }
    if (len > kMaxReplyPayload) {
      return Status::from_errno(EPROTO, fmt::format("option reply of {} bytes is too long", len));
    }
    std::vector<std::byte> payload(len);
    RBDCACHE_RETURN_IF_ERROR(read_exact(fd, payload.data(), len).with_context("reading the answer to NBD_OPT_GO"));
    if (type & kRepErrBit) return refusal(type, options.export_name, payload);
    switch (type) {
      case kRepInfo:
        RBDCACHE_RETURN_IF_ERROR(decode_info(payload, exp, have_export));
        break;
      case kRepAck:
        if (len != 0) return Status::from_errno(EPROTO, "NBD_REP_ACK with a payload");
        if (!have_export) return Status::from_errno(EPROTO, "NBD_OPT_GO acknowledged without NBD_INFO_EXPORT");
        return exp;
      default:
        return Status::from_errno(EPROTO, fmt::format("unexpected reply type {} to NBD_OPT_GO", type));
    }
  }
  return Status::from_errno(EPROTO, fmt::format("more than {} replies to NBD_OPT_GO", kMaxReplies));
}

}  // namespace

UniqueFd& UniqueFd::operator=(UniqueFd&& other) noexcept {
  if (this != &other) reset(other.release());
  return *this;
}

void UniqueFd::reset(int fd) {
  if (fd_ >= 0) ::close(fd_);
  fd_ = fd;
}

Result<UniqueFd> connect_unix(const std::string& path) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (path.empty()) return Status::invalid_argument("empty socket path");
  if (path.size() >= sizeof(addr.sun_path)) {
    return Status::from_errno(ENAMETOOLONG, fmt::format("socket path '{}' is longer than {} bytes", path,
                                                        sizeof(addr.sun_path) - 1));
  }
  std::memcpy(addr.sun_path, path.data(), path.size());
  UniqueFd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!fd.valid()) return Status::system_error(errno, "socket(AF_UNIX)");
  int rc;
  do {
    rc = ::connect(fd.get(), reinterpret_cast<const sockaddr*>(&addr), sizeof(addr));
  } while (rc != 0 && errno == EINTR);
  if (rc != 0) return Status::system_error(errno, fmt::format("connecting to {}", path));
  return fd;
}

Result<ClientExport> client_handshake(int fd, const ClientHandshakeOptions& options) {
  RBDCACHE_RETURN_IF_ERROR(set_timeouts(fd, options.timeout));
  Result<ClientExport> exp = negotiate(fd, options);
  if (!exp.is_ok()) return exp;
  // The kernel takes the socket as it is: leave no timeout behind.
  RBDCACHE_RETURN_IF_ERROR(set_timeouts(fd, std::chrono::milliseconds(0)));
  return exp;
}

}  // namespace rbdcache::nbd
