// What validate_request() promises, restated independently from the NBD
// protocol document, for the fuzz targets to check on every verdict.
#pragma once

#include <cstdint>
#include <cstdio>
#include <cstdlib>

#include "nbd/protocol.h"
#include "nbd/request.h"

namespace rbdcache::nbd::fuzz {

[[noreturn]] inline void invariant_failed(const char* what, const RequestHeader& h, const ExportLimits& l,
                                          const Verdict& v) {
  std::fprintf(stderr,
               "invariant violated: %s\n  request: magic=%#x flags=%#x type=%u offset=%llu length=%u\n"
               "  limits: size=%llu tx=%#x structured=%d base_allocation=%d\n"
               "  verdict: action=%d error=%u payload=%u reason=%s\n",
               what, h.magic, h.flags, h.type, static_cast<unsigned long long>(h.offset), h.length,
               static_cast<unsigned long long>(l.size), l.transmission_flags, l.structured_replies,
               l.base_allocation, static_cast<int>(v.action), v.error, v.payload_length, v.reason.c_str());
  std::abort();
}

#define RBDCACHE_FUZZ_CHECK(cond, h, l, v) \
  do {                                     \
    if (!(cond)) ::rbdcache::nbd::fuzz::invariant_failed(#cond, h, l, v); \
  } while (0)

// The command flags a client may set on `type`, given what was negotiated.
inline uint16_t allowed_flags(uint16_t type, const ExportLimits& l) {
  const uint16_t fua = (l.transmission_flags & kTxSendFua) ? kCmdFlagFua : 0;
  switch (type) {
    case kCmdRead:
      return static_cast<uint16_t>(fua | (l.structured_replies ? kCmdFlagDf : 0));
    case kCmdWriteZeroes:
      return static_cast<uint16_t>(fua | kCmdFlagNoHole |
                                   ((l.transmission_flags & kTxSendFastZero) ? kCmdFlagFastZero : 0));
    case kCmdBlockStatus:
      return static_cast<uint16_t>(fua | kCmdFlagReqOne);
    default:
      return fua;
  }
}

inline bool is_known_command(uint16_t type) { return type <= kCmdBlockStatus; }

inline bool modifies_data(uint16_t type) {
  return type == kCmdWrite || type == kCmdTrim || type == kCmdWriteZeroes;
}

// Checks `v`, the verdict for `h` under `l`; aborts with a description if a
// promise is broken.
inline void check_verdict(const RequestHeader& h, const ExportLimits& l, const Verdict& v) {
  const bool is_write = h.type == kCmdWrite;
  switch (v.action) {
    case Verdict::Action::kServe: {
      RBDCACHE_FUZZ_CHECK(h.magic == kRequestMagic, h, l, v);
      RBDCACHE_FUZZ_CHECK(is_known_command(h.type), h, l, v);
      RBDCACHE_FUZZ_CHECK(v.error == kErrNone, h, l, v);
      RBDCACHE_FUZZ_CHECK((h.flags & ~allowed_flags(h.type, l)) == 0, h, l, v);
      RBDCACHE_FUZZ_CHECK(v.payload_length == (is_write ? h.length : 0u), h, l, v);
      if (h.type == kCmdFlush || h.type == kCmdDisc) {
        RBDCACHE_FUZZ_CHECK(h.offset == 0 && h.length == 0, h, l, v);
      } else {
        RBDCACHE_FUZZ_CHECK(h.length > 0, h, l, v);
        // In range, computed without any chance of wrapping around.
        RBDCACHE_FUZZ_CHECK(h.offset < l.size, h, l, v);
        RBDCACHE_FUZZ_CHECK(static_cast<unsigned __int128>(h.offset) + h.length <= l.size, h, l, v);
      }
      if (h.type == kCmdRead || is_write) RBDCACHE_FUZZ_CHECK(h.length <= kMaxPayload, h, l, v);
      if (modifies_data(h.type)) RBDCACHE_FUZZ_CHECK(!(l.transmission_flags & kTxReadOnly), h, l, v);
      if (h.type == kCmdFlush) RBDCACHE_FUZZ_CHECK(l.transmission_flags & kTxSendFlush, h, l, v);
      if (h.type == kCmdTrim) RBDCACHE_FUZZ_CHECK(l.transmission_flags & kTxSendTrim, h, l, v);
      if (h.type == kCmdWriteZeroes) {
        RBDCACHE_FUZZ_CHECK(l.transmission_flags & kTxSendWriteZeroes, h, l, v);
      }
      if (h.type == kCmdCache) RBDCACHE_FUZZ_CHECK(l.transmission_flags & kTxSendCache, h, l, v);
      if (h.type == kCmdBlockStatus) RBDCACHE_FUZZ_CHECK(l.base_allocation, h, l, v);
      if (h.flags & kCmdFlagDf) RBDCACHE_FUZZ_CHECK(l.structured_replies, h, l, v);
      break;
    }
    case Verdict::Action::kReject:
      RBDCACHE_FUZZ_CHECK(h.magic == kRequestMagic, h, l, v);
      RBDCACHE_FUZZ_CHECK(v.error != kErrNone, h, l, v);
      RBDCACHE_FUZZ_CHECK(!v.reason.empty(), h, l, v);
      // A rejected WRITE's payload is still on the wire and must be skipped.
      RBDCACHE_FUZZ_CHECK(v.payload_length == (is_write ? h.length : 0u), h, l, v);
      RBDCACHE_FUZZ_CHECK(v.payload_length <= kMaxPayload, h, l, v);
      break;
    case Verdict::Action::kDisconnect:
      RBDCACHE_FUZZ_CHECK(h.magic != kRequestMagic || (is_write && h.length > kMaxPayload), h, l, v);
      RBDCACHE_FUZZ_CHECK(!v.reason.empty(), h, l, v);
      break;
  }
}

}  // namespace rbdcache::nbd::fuzz
