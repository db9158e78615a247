// libFuzzer target: the fixed-newstyle handshake, then the request stream.
//
// The client's bytes are fed to Handshake::consume() in split sizes derived
// from the input, and separately all at once; both must consume the same
// bytes, produce the same replies and end in the same state. Replies must be
// well formed. Once transmission begins, the remaining bytes are decoded as
// request headers and validated against the negotiated limits, as the
// connection does, and every verdict is checked.
//
// Input layout:
//   [0]   export configuration bits (read-only, can_flush, can_trim, ...)
//   [1]   seed for the split sizes
//   [2..] the client's byte stream, starting with its handshake flags
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <span>
#include <vector>

#include "nbd/handshake.h"
#include "nbd/protocol.h"
#include "nbd/request.h"
#include "request_invariants.h"

namespace {

using namespace rbdcache::nbd;
using Bytes = std::vector<std::byte>;

[[noreturn]] void fail(const char* what) {
  std::fprintf(stderr, "handshake invariant violated: %s\n", what);
  std::abort();
}

#define CHECK(cond) \
  do {              \
    if (!(cond)) fail(#cond); \
  } while (0)

// Split sizes: mostly small, sometimes large, reproducible from the seed.
class Splitter {
 public:
  explicit Splitter(uint8_t seed) : x_(0x9e3779b9u ^ (seed * 0x01000193u)) {}
  size_t next() {
    x_ ^= x_ << 13;
    x_ ^= x_ >> 17;
    x_ ^= x_ << 5;
    switch (x_ % 4) {
      case 0: return 1;
      case 1: return 1 + (x_ >> 8) % 16;
      case 2: return 1 + (x_ >> 8) % 300;
      default: return 1 + (x_ >> 8) % 70000;
    }
  }

 private:
  uint32_t x_;
};

// Checks that `out` is a sequence of option replies, optionally followed by
// the NBD_OPT_EXPORT_NAME reply (size, flags, and 0 or 124 zero bytes).
bool well_formed(const Bytes& out, size_t end, bool allow_export_name_tail) {
  size_t pos = 0;
  while (pos < end) {
    size_t left = end - pos;
    if (left < kOptReplyHeaderSize || load_be64(out.data() + pos) != kOptReplyMagic) break;
    uint32_t len = load_be32(out.data() + pos + 16);
    if (left - kOptReplyHeaderSize < len) return false;
    pos += kOptReplyHeaderSize + len;
  }
  if (pos == end) return true;
  return allow_export_name_tail && (end - pos == 10 || end - pos == 134);
}

ExportInfo make_export(uint8_t bits) {
  ExportInfo e;
  e.name = "fuzz-export";
  e.description = (bits & 0x80) ? "" : "an export to fuzz";
  e.size = (bits & 0x40) ? 1ull << 20 : 1ull << 40;
  e.read_only = bits & 0x01;
  e.can_flush = bits & 0x02;
  e.can_trim = bits & 0x04;
  e.can_zero = bits & 0x08;
  e.can_fast_zero = bits & 0x10;
  e.can_cache = bits & 0x20;
  e.can_multi_conn = true;
  return e;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 2) return 0;
  const ExportInfo exp = make_export(data[0]);
  Splitter split(data[1]);
  std::span<const std::byte> stream(reinterpret_cast<const std::byte*>(data + 2), size - 2);

  // Fed in pieces, as reads from a socket would deliver it.
  Handshake pieces(exp);
  Bytes out_pieces;
  Bytes pending;
  size_t appended = 0;
  size_t consumed = 0;
  while (appended < stream.size() && !pieces.in_transmission() && !pieces.closed()) {
    size_t n = std::min(split.next(), stream.size() - appended);
    pending.insert(pending.end(), stream.begin() + static_cast<ptrdiff_t>(appended),
                   stream.begin() + static_cast<ptrdiff_t>(appended + n));
    appended += n;
    size_t used = pieces.consume(pending, out_pieces);
    CHECK(used <= pending.size());
    pending.erase(pending.begin(), pending.begin() + static_cast<ptrdiff_t>(used));
    consumed += used;
  }
  // Nothing more is taken once the handshake is over.
  if (pieces.in_transmission() || pieces.closed()) {
    Bytes extra;
    CHECK(pieces.consume(stream.subspan(consumed), extra) == 0);
    CHECK(extra.empty());
  }

  // Fed all at once.
  Handshake whole(exp);
  Bytes out_whole;
  const size_t used_whole = whole.consume(stream, out_whole);
  CHECK(used_whole <= stream.size());
  CHECK(used_whole == consumed);
  CHECK(out_whole == out_pieces);
  CHECK(whole.state() == pieces.state());
  CHECK(whole.close_reason() == pieces.close_reason());
  CHECK(whole.closed() == !whole.close_reason().empty());

  const Session& s = whole.session();
  CHECK(s.structured_replies == pieces.session().structured_replies);
  CHECK(s.base_allocation == pieces.session().base_allocation);
  CHECK(s.transmission_flags == pieces.session().transmission_flags);
  CHECK(!s.base_allocation || s.structured_replies);
  CHECK(well_formed(out_whole, out_whole.size(), whole.in_transmission()));

  if (!whole.in_transmission()) return 0;
  CHECK(s.transmission_flags == transmission_flags(exp, s.structured_replies));
  CHECK(((s.transmission_flags & kTxSendDf) != 0) == s.structured_replies);
  CHECK(s.export_name.empty() || s.export_name == exp.name);

  // Transmission: the rest of the stream is requests, some with payloads.
  const ExportLimits limits = limits_for(exp, s);
  std::span<const std::byte> rest = stream.subspan(used_whole);
  while (rest.size() >= kRequestHeaderSize) {
    const RequestHeader h = decode_request_header(rest.data());
    const Verdict v = validate_request(h, limits);
    fuzz::check_verdict(h, limits, v);
    if (v.action == Verdict::Action::kDisconnect) break;
    rest = rest.subspan(kRequestHeaderSize);
    if (v.payload_length > rest.size()) break;
    rest = rest.subspan(v.payload_length);
    if (v.action == Verdict::Action::kServe && h.type == kCmdDisc) break;
  }
  return 0;
}
