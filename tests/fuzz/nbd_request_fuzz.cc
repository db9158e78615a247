// libFuzzer target: arbitrary request headers against arbitrary negotiated
// limits. validate_request() must never crash, and every verdict must keep
// the promises listed in request_invariants.h (a served request is in range
// and carries only flags that were negotiated).
//
// Input layout (missing bytes read as zero):
//   [0, 28)   the request header, as on the wire
//   [28, 36)  export size, big-endian
//   [36, 38)  transmission flags, big-endian
//   [38]      bit 0: structured replies, bit 1: base:allocation selected,
//             bit 7: take the size from a table of edge cases indexed by [28]
#include <array>
#include <cstddef>
#include <cstdint>
#include <cstring>

#include "nbd/protocol.h"
#include "nbd/request.h"
#include "request_invariants.h"

namespace {

using namespace rbdcache::nbd;

constexpr size_t kInputSize = kRequestHeaderSize + 8 + 2 + 1;

constexpr std::array<uint64_t, 8> kEdgeSizes = {
    0, 1, 4096, 1ull << 30, kMaxPayload, kMaxPayload + 1ull, UINT64_MAX - 4095, UINT64_MAX,
};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::array<std::byte, kInputSize> in{};
  std::memcpy(in.data(), data, size < kInputSize ? size : kInputSize);
  const std::byte* p = in.data();

  const RequestHeader h = decode_request_header(p);
  ExportLimits l;
  const uint8_t bits = std::to_integer<uint8_t>(p[38]);
  l.size = (bits & 0x80) ? kEdgeSizes[std::to_integer<uint8_t>(p[28]) % kEdgeSizes.size()]
                         : load_be64(p + 28);
  l.transmission_flags = load_be16(p + 36);
  l.structured_replies = (bits & 1) != 0;
  l.base_allocation = (bits & 2) != 0;

  const Verdict v = validate_request(h, l);
  fuzz::check_verdict(h, l, v);

  // Deterministic: the same request gets the same verdict.
  const Verdict again = validate_request(h, l);
  RBDCACHE_FUZZ_CHECK(again.action == v.action && again.error == v.error &&
                          again.payload_length == v.payload_length,
                      h, l, v);
  return 0;
}
