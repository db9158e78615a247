#include "nbd/request.h"

#include <fmt/format.h>

namespace rbdcache::nbd {

RequestHeader decode_request_header(const std::byte* p) {
  RequestHeader h;
  h.magic = load_be32(p);
  h.flags = load_be16(p + 4);
  h.type = load_be16(p + 6);
  h.handle = load_be64(p + 8);
  h.offset = load_be64(p + 16);
  h.length = load_be32(p + 24);
  return h;
}

ExportLimits limits_for(const ExportInfo& exp, const Session& session) {
  ExportLimits l;
  l.size = exp.size;
  l.transmission_flags = session.transmission_flags;
  l.structured_replies = session.structured_replies;
  l.base_allocation = session.base_allocation;
  return l;
}

namespace {

Verdict reject(Error e, uint32_t payload, std::string reason) {
  return Verdict{Verdict::Action::kReject, e, payload, std::move(reason)};
}

const char* command_name(uint16_t type) {
  switch (type) {
    case kCmdRead: return "READ";
    case kCmdWrite: return "WRITE";
    case kCmdDisc: return "DISC";
    case kCmdFlush: return "FLUSH";
    case kCmdTrim: return "TRIM";
    case kCmdCache: return "CACHE";
    case kCmdWriteZeroes: return "WRITE_ZEROES";
    case kCmdBlockStatus: return "BLOCK_STATUS";
    default: return "UNKNOWN";
  }
}

}  // namespace

Verdict validate_request(const RequestHeader& req, const ExportLimits& limits) {
  if (req.magic != kRequestMagic) {
    return Verdict{Verdict::Action::kDisconnect, kErrInval, 0,
                   fmt::format("bad request magic {:#x}", req.magic)};
  }
  const uint16_t tx = limits.transmission_flags;
  const bool is_write = req.type == kCmdWrite;
  // A WRITE's payload is on the wire whatever we think of the request. One
  // too large to buffer cannot be skipped safely, so the stream is dropped.
  uint32_t payload = is_write ? req.length : 0;
  if (is_write && req.length > kMaxPayload) {
    return Verdict{Verdict::Action::kDisconnect, kErrInval, 0,
                   fmt::format("WRITE payload of {} bytes exceeds the {} byte maximum", req.length,
                               kMaxPayload)};
  }

  const char* name = command_name(req.type);
  uint16_t allowed_flags = 0;
  switch (req.type) {
    case kCmdRead:
      allowed_flags = kCmdFlagFua | (limits.structured_replies ? kCmdFlagDf : 0);
      break;
    case kCmdWrite:
    case kCmdTrim:
      allowed_flags = kCmdFlagFua;
      break;
    case kCmdWriteZeroes:
      allowed_flags = kCmdFlagFua | kCmdFlagNoHole | ((tx & kTxSendFastZero) ? kCmdFlagFastZero : 0);
      break;
    case kCmdBlockStatus:
      allowed_flags = kCmdFlagFua | kCmdFlagReqOne;
      break;
    case kCmdFlush:
    case kCmdCache:
    case kCmdDisc:
      allowed_flags = kCmdFlagFua;
      break;
    default:
      return reject(kErrInval, payload, fmt::format("unknown command type {}", req.type));
  }
  if (!(tx & kTxSendFua)) allowed_flags &= static_cast<uint16_t>(~kCmdFlagFua);
  if (req.flags & ~allowed_flags) {
    return reject(kErrInval, payload,
                  fmt::format("{} with unsupported flags {:#x}", name, req.flags & ~allowed_flags));
  }

  // Commands the export did not offer.
  if ((req.type == kCmdTrim && !(tx & kTxSendTrim)) ||
      (req.type == kCmdWriteZeroes && !(tx & kTxSendWriteZeroes)) ||
      (req.type == kCmdFlush && !(tx & kTxSendFlush)) ||
      (req.type == kCmdCache && !(tx & kTxSendCache))) {
    bool read_only_write = (tx & kTxReadOnly) && (req.type == kCmdTrim || req.type == kCmdWriteZeroes);
    return reject(read_only_write ? kErrPerm : kErrInval, payload,
                  fmt::format("{} is not offered on this export", name));
  }
  if (req.type == kCmdBlockStatus && !limits.base_allocation) {
    return reject(kErrInval, payload, "BLOCK_STATUS without a negotiated metadata context");
  }

  // Range checks.
  if (req.type == kCmdFlush || req.type == kCmdDisc) {
    if (req.offset != 0 || req.length != 0) {
      return reject(kErrInval, payload, fmt::format("{} with a non-zero offset or length", name));
    }
  } else {
    if (req.length == 0) {
      return reject(kErrInval, payload, fmt::format("{} of zero length", name));
    }
    if (req.offset > limits.size || req.length > limits.size - req.offset) {
      bool is_any_write = is_write || req.type == kCmdWriteZeroes || req.type == kCmdTrim;
      return reject(is_any_write ? kErrNoSpc : kErrInval, payload,
                    fmt::format("{} of {} bytes at offset {} is beyond the end of the export ({} bytes)",
                                name, req.length, req.offset, limits.size));
    }
    if (req.type == kCmdRead && req.length > kMaxPayload) {
      return reject(kErrInval, 0,
                    fmt::format("READ of {} bytes exceeds the {} byte maximum", req.length, kMaxPayload));
    }
  }

  if ((tx & kTxReadOnly) && (is_write || req.type == kCmdTrim || req.type == kCmdWriteZeroes)) {
    return reject(kErrPerm, payload, fmt::format("{} on a read-only export", name));
  }
  return Verdict{Verdict::Action::kServe, kErrNone, payload, {}};
}

}  // namespace rbdcache::nbd
