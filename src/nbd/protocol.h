// NBD wire constants and big-endian codec helpers.
//
// Everything on the NBD wire is big-endian (network byte order). The names
// follow the protocol document (NetworkBlockDevice/nbd doc/proto.md) with the
// NBD_ prefix dropped. Only this header and the codecs in nbd/ know the wire
// layout; the rest of rbdcache sees decoded structs.
#pragma once

#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>
#include <string>
#include <vector>

namespace rbdcache::nbd {

// --- Handshake ---
inline constexpr uint64_t kNbdMagic = 0x4e42444d41474943ull;     // "NBDMAGIC"
inline constexpr uint64_t kIHaveOpt = 0x49484156454F5054ull;     // "IHAVEOPT"
inline constexpr uint64_t kOptReplyMagic = 0x0003e889045565a9ull;

// Server handshake flags (16 bits).
inline constexpr uint16_t kFlagFixedNewstyle = 1 << 0;
inline constexpr uint16_t kFlagNoZeroes = 1 << 1;
// Client flags (32 bits).
inline constexpr uint32_t kClientFixedNewstyle = 1 << 0;
inline constexpr uint32_t kClientNoZeroes = 1 << 1;
inline constexpr uint32_t kClientKnownFlags = kClientFixedNewstyle | kClientNoZeroes;

enum Option : uint32_t {
  kOptExportName = 1,
  kOptAbort = 2,
  kOptList = 3,
  kOptStartTls = 5,
  kOptInfo = 6,
  kOptGo = 7,
  kOptStructuredReply = 8,
  kOptListMetaContext = 9,
  kOptSetMetaContext = 10,
};

inline constexpr uint32_t kRepErrBit = 1u << 31;
enum OptReply : uint32_t {
  kRepAck = 1,
  kRepServer = 2,
  kRepInfo = 3,
  kRepMetaContext = 4,
  kRepErrUnsup = kRepErrBit | 1,
  kRepErrPolicy = kRepErrBit | 2,
  kRepErrInvalid = kRepErrBit | 3,
  kRepErrPlatform = kRepErrBit | 4,
  kRepErrTlsReqd = kRepErrBit | 5,
  kRepErrUnknown = kRepErrBit | 6,
  kRepErrShutdown = kRepErrBit | 7,
  kRepErrBlockSizeReqd = kRepErrBit | 8,
  kRepErrTooBig = kRepErrBit | 9,
};

enum InfoType : uint16_t {
  kInfoExport = 0,
  kInfoName = 1,
  kInfoDescription = 2,
  kInfoBlockSize = 3,
};

// Transmission flags (16 bits).
inline constexpr uint16_t kTxHasFlags = 1 << 0;
inline constexpr uint16_t kTxReadOnly = 1 << 1;
inline constexpr uint16_t kTxSendFlush = 1 << 2;
inline constexpr uint16_t kTxSendFua = 1 << 3;
inline constexpr uint16_t kTxRotational = 1 << 4;
inline constexpr uint16_t kTxSendTrim = 1 << 5;
inline constexpr uint16_t kTxSendWriteZeroes = 1 << 6;
inline constexpr uint16_t kTxSendDf = 1 << 7;
inline constexpr uint16_t kTxCanMultiConn = 1 << 8;
inline constexpr uint16_t kTxSendCache = 1 << 10;
inline constexpr uint16_t kTxSendFastZero = 1 << 11;

// --- Transmission ---
inline constexpr uint32_t kRequestMagic = 0x25609513;
inline constexpr uint32_t kSimpleReplyMagic = 0x67446698;
inline constexpr uint32_t kStructuredReplyMagic = 0x668e33ef;

inline constexpr size_t kRequestHeaderSize = 28;      // magic 4, flags 2, type 2, handle 8, offset 8, length 4
inline constexpr size_t kSimpleReplySize = 16;        // magic 4, error 4, handle 8
inline constexpr size_t kStructuredChunkHeaderSize = 20;  // magic 4, flags 2, type 2, handle 8, length 4
inline constexpr size_t kOptionHeaderSize = 16;       // IHAVEOPT 8, option 4, length 4
inline constexpr size_t kOptReplyHeaderSize = 20;     // magic 8, option 4, type 4, length 4

enum Command : uint16_t {
  kCmdRead = 0,
  kCmdWrite = 1,
  kCmdDisc = 2,
  kCmdFlush = 3,
  kCmdTrim = 4,
  kCmdCache = 5,
  kCmdWriteZeroes = 6,
  kCmdBlockStatus = 7,
};

// Command flags (16 bits).
inline constexpr uint16_t kCmdFlagFua = 1 << 0;
inline constexpr uint16_t kCmdFlagNoHole = 1 << 1;
inline constexpr uint16_t kCmdFlagDf = 1 << 2;
inline constexpr uint16_t kCmdFlagReqOne = 1 << 3;
inline constexpr uint16_t kCmdFlagFastZero = 1 << 4;

// Structured reply chunk flags and types.
inline constexpr uint16_t kReplyFlagDone = 1 << 0;
enum ReplyType : uint16_t {
  kReplyNone = 0,
  kReplyOffsetData = 1,
  kReplyOffsetHole = 2,
  kReplyBlockStatus = 5,
  kReplyError = (1 << 15) | 1,
  kReplyErrorOffset = (1 << 15) | 2,
};

// NBD error values (these happen to equal Linux errno values, but the
// protocol defines them independently).
enum Error : uint32_t {
  kErrNone = 0,
  kErrPerm = 1,
  kErrIo = 5,
  kErrNoMem = 12,
  kErrInval = 22,
  kErrNoSpc = 28,
  kErrOverflow = 75,
  kErrNotSup = 95,
  kErrShutdown = 108,
};

// The one place where errno becomes an NBD error value.
inline Error error_from_errno(int err) {
  switch (err) {
    case 0: return kErrNone;
    case EPERM: case EROFS: return kErrPerm;
    case ENOMEM: return kErrNoMem;
    case EINVAL: return kErrInval;
    case ENOSPC: case EFBIG: case EDQUOT: return kErrNoSpc;
    case EOVERFLOW: return kErrOverflow;
    case ENOTSUP: return kErrNotSup;
    case ESHUTDOWN: return kErrShutdown;
    default: return kErrIo;
  }
}

// Block sizes advertised with NBD_INFO_BLOCK_SIZE.
inline constexpr uint32_t kMinBlockSize = 1;
inline constexpr uint32_t kPreferredBlockSize = 4096;
inline constexpr uint32_t kMaxPayload = 32u << 20;

// The one metadata context rbdcache offers, and its id on the wire.
inline constexpr const char* kBaseAllocation = "base:allocation";
inline constexpr uint32_t kBaseAllocationId = 1;

// --- Big-endian helpers ---
inline uint16_t load_be16(const std::byte* p) {
  return static_cast<uint16_t>((std::to_integer<uint16_t>(p[0]) << 8) | std::to_integer<uint16_t>(p[1]));
}
inline uint32_t load_be32(const std::byte* p) {
  return (static_cast<uint32_t>(load_be16(p)) << 16) | load_be16(p + 2);
}
inline uint64_t load_be64(const std::byte* p) {
  return (static_cast<uint64_t>(load_be32(p)) << 32) | load_be32(p + 4);
}

// Appends big-endian values to a byte vector.
class Writer {
 public:
  explicit Writer(std::vector<std::byte>& out) : out_(out) {}
  Writer& u8(uint8_t v) {
    out_.push_back(static_cast<std::byte>(v));
    return *this;
  }
  Writer& u16(uint16_t v) { return u8(static_cast<uint8_t>(v >> 8)).u8(static_cast<uint8_t>(v)); }
  Writer& u32(uint32_t v) { return u16(static_cast<uint16_t>(v >> 16)).u16(static_cast<uint16_t>(v)); }
  Writer& u64(uint64_t v) { return u32(static_cast<uint32_t>(v >> 32)).u32(static_cast<uint32_t>(v)); }
  Writer& bytes(std::span<const std::byte> b) {
    out_.insert(out_.end(), b.begin(), b.end());
    return *this;
  }
  Writer& str(std::string_view s) {
    return bytes(std::as_bytes(std::span<const char>(s.data(), s.size())));
  }
  Writer& zeroes(size_t n) {
    out_.insert(out_.end(), n, std::byte{0});
    return *this;
  }

 private:
  std::vector<std::byte>& out_;
};

}  // namespace rbdcache::nbd
