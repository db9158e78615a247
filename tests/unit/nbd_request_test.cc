// Tests for request decoding and validation (nbd/request.h) and the errno to
// NBD error mapping (nbd/protocol.h).
#include "nbd/request.h"

#include <gtest/gtest.h>

#include <cerrno>
#include <cstdint>
#include <vector>

#include "nbd/handshake.h"
#include "nbd/protocol.h"

namespace rbdcache::nbd {
namespace {

using Action = Verdict::Action;

constexpr uint64_t kSize = 1ull << 30;  // 1 GiB export

// Limits as negotiated with a writable export (all commands offered).
ExportLimits writable_limits(bool structured = true, bool base_allocation = true) {
  ExportInfo exp;
  exp.size = kSize;
  Session s;
  s.structured_replies = structured;
  s.base_allocation = base_allocation;
  s.transmission_flags = transmission_flags(exp, structured);
  return limits_for(exp, s);
}

ExportLimits read_only_limits() {
  ExportInfo exp;
  exp.size = kSize;
  exp.read_only = true;
  Session s;
  s.structured_replies = true;
  s.base_allocation = true;
  s.transmission_flags = transmission_flags(exp, true);
  return limits_for(exp, s);
}

RequestHeader req(uint16_t type, uint64_t offset, uint32_t length, uint16_t flags = 0) {
  RequestHeader h;
  h.magic = kRequestMagic;
  h.flags = flags;
  h.type = type;
  h.handle = 0x1122334455667788ull;
  h.offset = offset;
  h.length = length;
  return h;
}

void expect_reject(const Verdict& v, Error e) {
  EXPECT_EQ(v.action, Action::kReject) << v.reason;
  EXPECT_EQ(v.error, e) << v.reason;
  EXPECT_FALSE(v.reason.empty());
}

void expect_serve(const Verdict& v) {
  EXPECT_EQ(v.action, Action::kServe) << v.reason;
  EXPECT_EQ(v.error, kErrNone);
}

// --- Decoding ---

TEST(RequestHeader, DecodeReadsEveryFieldBigEndian) {
  std::vector<std::byte> wire;
  Writer(wire)
      .u32(kRequestMagic)
      .u16(kCmdFlagFua | kCmdFlagNoHole)
      .u16(kCmdWriteZeroes)
      .u64(0x0102030405060708ull)
      .u64(0xfedcba9876543210ull)
      .u32(0xa1b2c3d4u);
  ASSERT_EQ(wire.size(), kRequestHeaderSize);
  RequestHeader h = decode_request_header(wire.data());
  EXPECT_EQ(h.magic, kRequestMagic);
  EXPECT_EQ(h.flags, kCmdFlagFua | kCmdFlagNoHole);
  EXPECT_EQ(h.type, kCmdWriteZeroes);
  EXPECT_EQ(h.handle, 0x0102030405060708ull);
  EXPECT_EQ(h.offset, 0xfedcba9876543210ull);
  EXPECT_EQ(h.length, 0xa1b2c3d4u);
}

TEST(RequestHeader, DecodeOfKnownBytes) {
  const unsigned char raw[28] = {
      0x25, 0x60, 0x95, 0x13,                          // magic
      0x00, 0x01,                                      // flags: FUA
      0x00, 0x01,                                      // type: WRITE
      0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x2a,  // handle
      0x00, 0x00, 0x00, 0x00, 0x00, 0x10, 0x00, 0x00,  // offset
      0x00, 0x00, 0x02, 0x00,                          // length
  };
  std::vector<std::byte> wire(28);
  for (size_t i = 0; i < 28; ++i) wire[i] = std::byte{raw[i]};
  RequestHeader h = decode_request_header(wire.data());
  EXPECT_EQ(h.magic, 0x25609513u);
  EXPECT_EQ(h.flags, kCmdFlagFua);
  EXPECT_EQ(h.type, kCmdWrite);
  EXPECT_EQ(h.handle, 42u);
  EXPECT_EQ(h.offset, 0x100000u);
  EXPECT_EQ(h.length, 512u);
}

TEST(ExportLimits, LimitsForCopiesSizeFlagsAndSession) {
  ExportInfo exp;
  exp.size = 12345;
  Session s;
  s.structured_replies = true;
  s.base_allocation = true;
  s.transmission_flags = 0x1234;
  ExportLimits l = limits_for(exp, s);
  EXPECT_EQ(l.size, 12345u);
  EXPECT_EQ(l.transmission_flags, 0x1234);
  EXPECT_TRUE(l.structured_replies);
  EXPECT_TRUE(l.base_allocation);
}

// --- Framing errors ---

TEST(ValidateRequest, BadMagicDisconnects) {
  RequestHeader h = req(kCmdRead, 0, 4096);
  h.magic = kSimpleReplyMagic;
  Verdict v = validate_request(h, writable_limits());
  EXPECT_EQ(v.action, Action::kDisconnect);
  EXPECT_FALSE(v.reason.empty());
}

TEST(ValidateRequest, UnknownTypeIsRejectedWithEinval) {
  expect_reject(validate_request(req(8, 0, 4096), writable_limits()), kErrInval);
  expect_reject(validate_request(req(0xffff, 0, 4096), writable_limits()), kErrInval);
}

TEST(ValidateRequest, UnknownFlagBitsAreRejectedWithEinval) {
  expect_reject(validate_request(req(kCmdRead, 0, 4096, 1 << 5), writable_limits()), kErrInval);
  expect_reject(validate_request(req(kCmdWrite, 0, 4096, 0x8000), writable_limits()), kErrInval);
  expect_reject(validate_request(req(kCmdFlush, 0, 0, kCmdFlagNoHole), writable_limits()), kErrInval);
}

TEST(ValidateRequest, RejectedWriteStillSkipsItsPayload) {
  Verdict v = validate_request(req(kCmdWrite, 0, 4096, 0x8000), writable_limits());
  expect_reject(v, kErrInval);
  EXPECT_EQ(v.payload_length, 4096u);
}

TEST(ValidateRequest, DfWithoutStructuredRepliesIsRejected) {
  expect_reject(validate_request(req(kCmdRead, 0, 4096, kCmdFlagDf), writable_limits(false, false)),
                kErrInval);
  expect_serve(validate_request(req(kCmdRead, 0, 4096, kCmdFlagDf), writable_limits(true)));
}

TEST(ValidateRequest, DfOnlyOnRead) {
  expect_reject(validate_request(req(kCmdWrite, 0, 4096, kCmdFlagDf), writable_limits()), kErrInval);
}

TEST(ValidateRequest, FastZeroOnlyOnWriteZeroes) {
  expect_serve(validate_request(req(kCmdWriteZeroes, 0, 4096, kCmdFlagFastZero), writable_limits()));
  expect_reject(validate_request(req(kCmdWrite, 0, 4096, kCmdFlagFastZero), writable_limits()),
                kErrInval);
  expect_reject(validate_request(req(kCmdTrim, 0, 4096, kCmdFlagFastZero), writable_limits()),
                kErrInval);
  expect_reject(validate_request(req(kCmdRead, 0, 4096, kCmdFlagFastZero), writable_limits()),
                kErrInval);
}

TEST(ValidateRequest, FastZeroRejectedWhenNotOffered) {
  ExportLimits l = writable_limits();
  l.transmission_flags &= static_cast<uint16_t>(~kTxSendFastZero);
  expect_reject(validate_request(req(kCmdWriteZeroes, 0, 4096, kCmdFlagFastZero), l), kErrInval);
}

TEST(ValidateRequest, ReqOneOnlyOnBlockStatus) {
  expect_serve(validate_request(req(kCmdBlockStatus, 0, 4096, kCmdFlagReqOne), writable_limits()));
  expect_reject(validate_request(req(kCmdRead, 0, 4096, kCmdFlagReqOne), writable_limits()),
                kErrInval);
  expect_reject(validate_request(req(kCmdWriteZeroes, 0, 4096, kCmdFlagReqOne), writable_limits()),
                kErrInval);
}

TEST(ValidateRequest, NoHoleOnlyOnWriteZeroes) {
  expect_serve(validate_request(req(kCmdWriteZeroes, 0, 4096, kCmdFlagNoHole), writable_limits()));
  expect_reject(validate_request(req(kCmdWrite, 0, 4096, kCmdFlagNoHole), writable_limits()),
                kErrInval);
}

TEST(ValidateRequest, FuaRejectedWhenNotOffered) {
  ExportLimits l = writable_limits();
  l.transmission_flags &= static_cast<uint16_t>(~kTxSendFua);
  expect_reject(validate_request(req(kCmdWrite, 0, 4096, kCmdFlagFua), l), kErrInval);
  expect_serve(validate_request(req(kCmdWrite, 0, 4096, kCmdFlagFua), writable_limits()));
}

// --- Ranges ---

TEST(ValidateRequest, ZeroLengthReadIsRejected) {
  expect_reject(validate_request(req(kCmdRead, 0, 0), writable_limits()), kErrInval);
}

TEST(ValidateRequest, ZeroLengthWriteIsRejectedWithNoPayload) {
  Verdict v = validate_request(req(kCmdWrite, 0, 0), writable_limits());
  expect_reject(v, kErrInval);
  EXPECT_EQ(v.payload_length, 0u);
}

TEST(ValidateRequest, ReadPastEndIsRejectedWithEinval) {
  expect_reject(validate_request(req(kCmdRead, kSize - 4096, 8192), writable_limits()), kErrInval);
  expect_reject(validate_request(req(kCmdRead, kSize, 1), writable_limits()), kErrInval);
  expect_reject(validate_request(req(kCmdRead, kSize + 4096, 4096), writable_limits()), kErrInval);
}

TEST(ValidateRequest, ReadEndingExactlyAtEndIsServed) {
  expect_serve(validate_request(req(kCmdRead, kSize - 4096, 4096), writable_limits()));
  expect_serve(validate_request(req(kCmdRead, kSize - 1, 1), writable_limits()));
}

TEST(ValidateRequest, WritePastEndIsRejectedWithEnospcAndPayloadSkipped) {
  Verdict v = validate_request(req(kCmdWrite, kSize - 512, 4096), writable_limits());
  expect_reject(v, kErrNoSpc);
  EXPECT_EQ(v.payload_length, 4096u);
}

TEST(ValidateRequest, TrimAndWriteZeroesPastEndAreRejectedWithEnospc) {
  Verdict t = validate_request(req(kCmdTrim, kSize, 4096), writable_limits());
  expect_reject(t, kErrNoSpc);
  EXPECT_EQ(t.payload_length, 0u);
  expect_reject(validate_request(req(kCmdWriteZeroes, kSize - 1, 2), writable_limits()), kErrNoSpc);
}

TEST(ValidateRequest, OffsetPlusLengthOverflowIsRejectedWithoutWrapAround) {
  const uint64_t near_max = UINT64_MAX - 100;
  // near_max + 4096 wraps to a small number; a naive check would accept it.
  expect_reject(validate_request(req(kCmdRead, near_max, 4096), writable_limits()), kErrInval);
  Verdict w = validate_request(req(kCmdWrite, near_max, 4096), writable_limits());
  EXPECT_EQ(w.action, Action::kReject);
  EXPECT_EQ(w.payload_length, 4096u);
  EXPECT_EQ(validate_request(req(kCmdTrim, UINT64_MAX, 1), writable_limits()).action, Action::kReject);
  EXPECT_EQ(validate_request(req(kCmdBlockStatus, UINT64_MAX - 1, 0xffffffffu), writable_limits()).action,
            Action::kReject);
  EXPECT_EQ(validate_request(req(kCmdCache, UINT64_MAX, 0xffffffffu), writable_limits()).action,
            Action::kReject);
  // Also when the export is as large as it can be.
  ExportLimits huge = writable_limits();
  huge.size = UINT64_MAX;
  EXPECT_EQ(validate_request(req(kCmdRead, UINT64_MAX - 1, 2), huge).action, Action::kReject);
  expect_serve(validate_request(req(kCmdRead, UINT64_MAX - 2, 2), huge));
}

TEST(ValidateRequest, ReadOverMaxPayloadIsRejectedWithEinval) {
  Verdict v = validate_request(req(kCmdRead, 0, kMaxPayload + 1), writable_limits());
  expect_reject(v, kErrInval);
  EXPECT_EQ(v.payload_length, 0u);
  expect_serve(validate_request(req(kCmdRead, 0, kMaxPayload), writable_limits()));
}

TEST(ValidateRequest, WriteOverMaxPayloadDisconnects) {
  Verdict v = validate_request(req(kCmdWrite, 0, kMaxPayload + 1), writable_limits());
  EXPECT_EQ(v.action, Action::kDisconnect);
  EXPECT_FALSE(v.reason.empty());
  Verdict ok = validate_request(req(kCmdWrite, 0, kMaxPayload), writable_limits());
  expect_serve(ok);
  EXPECT_EQ(ok.payload_length, kMaxPayload);
}

TEST(ValidateRequest, TrimWriteZeroesAndCacheMayExceedMaxPayload) {
  static_assert(kSize > 2 * uint64_t{kMaxPayload});
  const uint32_t whole = static_cast<uint32_t>(kSize);
  expect_serve(validate_request(req(kCmdTrim, 0, whole), writable_limits()));
  expect_serve(validate_request(req(kCmdWriteZeroes, 0, whole), writable_limits()));
  expect_serve(validate_request(req(kCmdCache, 0, whole), writable_limits()));
  expect_serve(validate_request(req(kCmdBlockStatus, 0, whole), writable_limits()));
}

TEST(ValidateRequest, FlushWithNonZeroOffsetOrLengthIsRejected) {
  expect_reject(validate_request(req(kCmdFlush, 4096, 0), writable_limits()), kErrInval);
  expect_reject(validate_request(req(kCmdFlush, 0, 4096), writable_limits()), kErrInval);
  expect_serve(validate_request(req(kCmdFlush, 0, 0), writable_limits()));
}

TEST(ValidateRequest, BlockStatusWithoutBaseAllocationIsRejected) {
  expect_reject(validate_request(req(kCmdBlockStatus, 0, 4096), writable_limits(true, false)),
                kErrInval);
  expect_reject(validate_request(req(kCmdBlockStatus, 0, 4096), writable_limits(false, false)),
                kErrInval);
}

TEST(ValidateRequest, CommandsNotOfferedAreRejected) {
  ExportLimits l = writable_limits();
  l.transmission_flags = kTxHasFlags;
  expect_reject(validate_request(req(kCmdFlush, 0, 0), l), kErrInval);
  expect_reject(validate_request(req(kCmdTrim, 0, 4096), l), kErrInval);
  expect_reject(validate_request(req(kCmdWriteZeroes, 0, 4096), l), kErrInval);
  expect_reject(validate_request(req(kCmdCache, 0, 4096), l), kErrInval);
  expect_serve(validate_request(req(kCmdRead, 0, 4096), l));
  expect_serve(validate_request(req(kCmdWrite, 0, 4096), l));
}

// --- Read-only exports ---

TEST(ValidateRequest, WritesOnReadOnlyExportAreRejectedWithEperm) {
  const ExportLimits ro = read_only_limits();
  Verdict w = validate_request(req(kCmdWrite, 0, 4096), ro);
  expect_reject(w, kErrPerm);
  EXPECT_EQ(w.payload_length, 4096u);
  expect_reject(validate_request(req(kCmdTrim, 0, 4096), ro), kErrPerm);
  expect_reject(validate_request(req(kCmdWriteZeroes, 0, 4096), ro), kErrPerm);
}

TEST(ValidateRequest, ReadsOnReadOnlyExportAreServed) {
  const ExportLimits ro = read_only_limits();
  expect_serve(validate_request(req(kCmdRead, 0, 4096), ro));
  expect_serve(validate_request(req(kCmdFlush, 0, 0), ro));
  expect_serve(validate_request(req(kCmdCache, 0, 4096), ro));
  expect_serve(validate_request(req(kCmdBlockStatus, 0, 4096), ro));
}

// --- Valid requests ---

TEST(ValidateRequest, ValidRequestOfEachTypeIsServed) {
  const ExportLimits l = writable_limits();
  expect_serve(validate_request(req(kCmdRead, 4096, 65536, kCmdFlagFua | kCmdFlagDf), l));
  Verdict w = validate_request(req(kCmdWrite, 4096, 65536, kCmdFlagFua), l);
  expect_serve(w);
  EXPECT_EQ(w.payload_length, 65536u);
  expect_serve(validate_request(req(kCmdDisc, 0, 0), l));
  expect_serve(validate_request(req(kCmdFlush, 0, 0), l));
  expect_serve(validate_request(req(kCmdTrim, 0, 1 << 20, kCmdFlagFua), l));
  expect_serve(validate_request(req(kCmdCache, 0, 1 << 20), l));
  expect_serve(
      validate_request(req(kCmdWriteZeroes, 0, 1 << 20, kCmdFlagFua | kCmdFlagNoHole | kCmdFlagFastZero), l));
  expect_serve(validate_request(req(kCmdBlockStatus, 0, static_cast<uint32_t>(kSize), kCmdFlagReqOne), l));
}

TEST(ValidateRequest, ServedNonWriteHasNoPayload) {
  const ExportLimits l = writable_limits();
  for (uint16_t type : {kCmdRead, kCmdTrim, kCmdCache, kCmdWriteZeroes, kCmdBlockStatus}) {
    Verdict v = validate_request(req(type, 0, 4096), l);
    expect_serve(v);
    EXPECT_EQ(v.payload_length, 0u) << "type " << type;
  }
}

// --- errno mapping ---

TEST(ErrorFromErrno, MapsErrnoToNbdErrors) {
  EXPECT_EQ(error_from_errno(0), kErrNone);
  EXPECT_EQ(error_from_errno(EPERM), kErrPerm);
  EXPECT_EQ(error_from_errno(EROFS), kErrPerm);
  EXPECT_EQ(error_from_errno(EIO), kErrIo);
  EXPECT_EQ(error_from_errno(ENOMEM), kErrNoMem);
  EXPECT_EQ(error_from_errno(EINVAL), kErrInval);
  EXPECT_EQ(error_from_errno(ENOSPC), kErrNoSpc);
  EXPECT_EQ(error_from_errno(EFBIG), kErrNoSpc);
  EXPECT_EQ(error_from_errno(EDQUOT), kErrNoSpc);
  EXPECT_EQ(error_from_errno(EOVERFLOW), kErrOverflow);
  EXPECT_EQ(error_from_errno(ENOTSUP), kErrNotSup);
  EXPECT_EQ(error_from_errno(EOPNOTSUPP), kErrNotSup);
  EXPECT_EQ(error_from_errno(ESHUTDOWN), kErrShutdown);
}

TEST(ErrorFromErrno, UnknownErrnoBecomesEio) {
  EXPECT_EQ(error_from_errno(EUCLEAN), kErrIo);
  EXPECT_EQ(error_from_errno(ENOENT), kErrIo);
  EXPECT_EQ(error_from_errno(ETIMEDOUT), kErrIo);
  EXPECT_EQ(error_from_errno(-1), kErrIo);
}

TEST(ErrorFromErrno, NbdErrorValuesMatchTheProtocol) {
  EXPECT_EQ(kErrPerm, 1u);
  EXPECT_EQ(kErrIo, 5u);
  EXPECT_EQ(kErrNoMem, 12u);
  EXPECT_EQ(kErrInval, 22u);
  EXPECT_EQ(kErrNoSpc, 28u);
  EXPECT_EQ(kErrOverflow, 75u);
  EXPECT_EQ(kErrNotSup, 95u);
  EXPECT_EQ(kErrShutdown, 108u);
}

}  // namespace
}  // namespace rbdcache::nbd
