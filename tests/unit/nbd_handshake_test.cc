// Tests for the fixed-newstyle handshake state machine (nbd/handshake.h).
//
// Each test plays the client: it builds option requests byte by byte, feeds
// them to Handshake::consume() and decodes the option replies the server
// appends, checking them against the NBD protocol document.
#include "nbd/handshake.h"

#include <gtest/gtest.h>

#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "nbd/protocol.h"

namespace rbdcache::nbd {
namespace {

using Bytes = std::vector<std::byte>;
using State = Handshake::State;

constexpr uint64_t kExportSize = 1ull << 30;

// One decoded option reply: magic, option, reply type, length, payload.
struct OptReply {
  uint32_t option = 0;
  uint32_t type = 0;
  Bytes payload;
};

// Splits `out` into option replies; fails the test on a bad magic or a
// truncated reply.
std::vector<OptReply> parse_replies(const Bytes& out) {
  std::vector<OptReply> replies;
  size_t pos = 0;
  while (pos < out.size()) {
    EXPECT_GE(out.size() - pos, kOptReplyHeaderSize) << "truncated reply header";
    if (out.size() - pos < kOptReplyHeaderSize) break;
    const std::byte* p = out.data() + pos;
    EXPECT_EQ(load_be64(p), kOptReplyMagic);
    OptReply r;
    r.option = load_be32(p + 8);
    r.type = load_be32(p + 12);
    uint32_t len = load_be32(p + 16);
    pos += kOptReplyHeaderSize;
    EXPECT_GE(out.size() - pos, len) << "truncated reply payload";
    if (out.size() - pos < len) break;
    r.payload.assign(out.begin() + static_cast<ptrdiff_t>(pos),
                     out.begin() + static_cast<ptrdiff_t>(pos + len));
    pos += len;
    replies.push_back(std::move(r));
  }
  return replies;
}

Bytes client_flags(uint32_t flags) {
  Bytes b;
  Writer(b).u32(flags);
  return b;
}

Bytes option(uint32_t opt, const Bytes& data) {
  Bytes b;
  Writer(b).u64(kIHaveOpt).u32(opt).u32(static_cast<uint32_t>(data.size())).bytes(data);
  return b;
}

Bytes option(uint32_t opt) { return option(opt, Bytes{}); }

// The payload of NBD_OPT_INFO / NBD_OPT_GO.
Bytes info_request(std::string_view name, const std::vector<uint16_t>& infos = {}) {
  Bytes b;
  Writer w(b);
  w.u32(static_cast<uint32_t>(name.size())).str(name).u16(static_cast<uint16_t>(infos.size()));
  for (uint16_t i : infos) w.u16(i);
  return b;
}

// The payload of NBD_OPT_{LIST,SET}_META_CONTEXT.
Bytes meta_request(std::string_view name, const std::vector<std::string>& queries) {
  Bytes b;
  Writer w(b);
  w.u32(static_cast<uint32_t>(name.size())).str(name).u32(static_cast<uint32_t>(queries.size()));
  for (const auto& q : queries) w.u32(static_cast<uint32_t>(q.size())).str(q);
  return b;
}

Bytes concat(std::initializer_list<Bytes> parts) {
  Bytes all;
  for (const auto& p : parts) all.insert(all.end(), p.begin(), p.end());
  return all;
}

std::string as_string(std::span<const std::byte> b) {
  return std::string(reinterpret_cast<const char*>(b.data()), b.size());
}

ExportInfo default_export() {
  ExportInfo e;
  e.name = "disk0";
  e.description = "a test disk";
  e.size = kExportSize;
  return e;
}

constexpr uint16_t kAllWritableFlags = kTxHasFlags | kTxSendFlush | kTxSendFua | kTxSendTrim |
                                       kTxSendWriteZeroes | kTxSendFastZero | kTxCanMultiConn |
                                       kTxSendCache;

class HandshakeTest : public ::testing::Test {
 protected:
  HandshakeTest() : hs_(exp_) {}

  // Feeds `in` at once; returns the reply bytes and checks that all of `in`
  // was consumed.
  Bytes feed_all(const Bytes& in) {
    Bytes out;
    size_t used = hs_.consume(in, out);
    EXPECT_EQ(used, in.size());
    return out;
  }

  // Sends the standard client flags (fixed newstyle + no zeroes).
  void start(uint32_t flags = kClientFixedNewstyle | kClientNoZeroes) {
    Bytes out = feed_all(client_flags(flags));
    ASSERT_TRUE(out.empty());
    ASSERT_EQ(hs_.state(), State::kOptionHeader);
  }

  std::vector<OptReply> send_option(uint32_t opt, const Bytes& data = {}) {
    return parse_replies(feed_all(option(opt, data)));
  }

  void negotiate_structured_replies() {
    auto r = send_option(kOptStructuredReply);
    ASSERT_EQ(r.size(), 1u);
    ASSERT_EQ(r[0].type, kRepAck);
  }

  ExportInfo exp_ = default_export();
  Handshake hs_;
};

// Asserts that `r` is an NBD_INFO_EXPORT reply with `size` and `flags`.
void expect_info_export(const OptReply& r, uint32_t opt, uint64_t size, uint16_t flags) {
  EXPECT_EQ(r.option, opt);
  EXPECT_EQ(r.type, kRepInfo);
  ASSERT_EQ(r.payload.size(), 12u);
  EXPECT_EQ(load_be16(r.payload.data()), kInfoExport);
  EXPECT_EQ(load_be64(r.payload.data() + 2), size);
  EXPECT_EQ(load_be16(r.payload.data() + 10), flags);
}

void expect_info_block_size(const OptReply& r) {
  EXPECT_EQ(r.type, kRepInfo);
  ASSERT_EQ(r.payload.size(), 14u);
  EXPECT_EQ(load_be16(r.payload.data()), kInfoBlockSize);
  EXPECT_EQ(load_be32(r.payload.data() + 2), 1u);
  EXPECT_EQ(load_be32(r.payload.data() + 6), 4096u);
  EXPECT_EQ(load_be32(r.payload.data() + 10), 32u << 20);
}

// --- Greeting and client flags ---

TEST(Handshake, GreetingIsMagicIHaveOptAndFixedNewstyleNoZeroesFlags) {
  ExportInfo exp = default_export();
  Handshake hs(exp);
  const Bytes g = hs.greeting();
  const Bytes expected = {
      std::byte{'N'}, std::byte{'B'}, std::byte{'D'}, std::byte{'M'},
      std::byte{'A'}, std::byte{'G'}, std::byte{'I'}, std::byte{'C'},
      std::byte{'I'}, std::byte{'H'}, std::byte{'A'}, std::byte{'V'},
      std::byte{'E'}, std::byte{'O'}, std::byte{'P'}, std::byte{'T'},
      std::byte{0x00}, std::byte{0x03},
  };
  EXPECT_EQ(g, expected);
  EXPECT_EQ(hs.state(), State::kClientFlags);
}

TEST_F(HandshakeTest, WaitsForAllFourClientFlagBytes) {
  Bytes flags = client_flags(kClientFixedNewstyle);
  Bytes out;
  EXPECT_EQ(hs_.consume(std::span(flags).first(3), out), 0u);
  EXPECT_EQ(hs_.state(), State::kClientFlags);
  EXPECT_EQ(hs_.consume(flags, out), 4u);
  EXPECT_EQ(hs_.state(), State::kOptionHeader);
  EXPECT_TRUE(out.empty());
}

TEST_F(HandshakeTest, UnknownClientFlagBitsClose) {
  Bytes out = feed_all(client_flags(kClientFixedNewstyle | 0x4));
  EXPECT_TRUE(out.empty());
  EXPECT_TRUE(hs_.closed());
  EXPECT_NE(hs_.close_reason().find("flags"), std::string::npos) << hs_.close_reason();
}

TEST_F(HandshakeTest, HighClientFlagBitCloses) {
  feed_all(client_flags(0x80000000u | kClientFixedNewstyle));
  EXPECT_TRUE(hs_.closed());
}

TEST_F(HandshakeTest, ExportNameWithoutNoZeroesSends124ZeroBytes) {
  start(kClientFixedNewstyle);
  Bytes out = feed_all(option(kOptExportName, Bytes{std::byte{'d'}, std::byte{'i'}, std::byte{'s'},
                                                    std::byte{'k'}, std::byte{'0'}}));
  ASSERT_EQ(out.size(), 8u + 2u + 124u);
  EXPECT_EQ(load_be64(out.data()), kExportSize);
  EXPECT_EQ(load_be16(out.data() + 8), kAllWritableFlags);
  for (size_t i = 10; i < out.size(); ++i) EXPECT_EQ(out[i], std::byte{0}) << "at " << i;
  EXPECT_TRUE(hs_.in_transmission());
  EXPECT_EQ(hs_.session().export_name, "disk0");
  EXPECT_EQ(hs_.session().transmission_flags, kAllWritableFlags);
}

TEST_F(HandshakeTest, ExportNameWithNoZeroesSendsOnlySizeAndFlags) {
  start(kClientFixedNewstyle | kClientNoZeroes);
  Bytes out = feed_all(option(kOptExportName));  // the empty name selects the export
  ASSERT_EQ(out.size(), 10u);
  EXPECT_EQ(load_be64(out.data()), kExportSize);
  EXPECT_EQ(load_be16(out.data() + 8), kAllWritableFlags);
  EXPECT_TRUE(hs_.in_transmission());
}

TEST_F(HandshakeTest, ExportNameForUnknownExportClosesWithoutReply) {
  start();
  Bytes name;
  Writer(name).str("nope");
  Bytes out = feed_all(option(kOptExportName, name));
  EXPECT_TRUE(out.empty());
  EXPECT_TRUE(hs_.closed());
  EXPECT_NE(hs_.close_reason().find("nope"), std::string::npos) << hs_.close_reason();
}

TEST_F(HandshakeTest, BadOptionMagicCloses) {
  start();
  Bytes b;
  Writer(b).u64(kIHaveOpt ^ 1).u32(kOptList).u32(0);
  Bytes out = feed_all(b);
  EXPECT_TRUE(out.empty());
  EXPECT_TRUE(hs_.closed());
  EXPECT_NE(hs_.close_reason().find("magic"), std::string::npos) << hs_.close_reason();
}

// --- NBD_OPT_LIST ---

TEST_F(HandshakeTest, OptListReturnsTheExportThenAck) {
  start();
  auto r = send_option(kOptList);
  ASSERT_EQ(r.size(), 2u);
  EXPECT_EQ(r[0].option, kOptList);
  EXPECT_EQ(r[0].type, kRepServer);
  ASSERT_EQ(r[0].payload.size(), 4u + exp_.name.size());
  EXPECT_EQ(load_be32(r[0].payload.data()), exp_.name.size());
  EXPECT_EQ(as_string(std::span(r[0].payload).subspan(4)), exp_.name);
  EXPECT_EQ(r[1].option, kOptList);
  EXPECT_EQ(r[1].type, kRepAck);
  EXPECT_TRUE(r[1].payload.empty());
  EXPECT_EQ(hs_.state(), State::kOptionHeader);
}

TEST_F(HandshakeTest, OptListWithDataGetsErrInvalid) {
  start();
  auto r = send_option(kOptList, Bytes{std::byte{1}});
  ASSERT_EQ(r.size(), 1u);
  EXPECT_EQ(r[0].option, kOptList);
  EXPECT_EQ(r[0].type, kRepErrInvalid);
  EXPECT_EQ(hs_.state(), State::kOptionHeader);
}

// --- Unknown options ---

TEST_F(HandshakeTest, UnknownOptionGetsErrUnsupAndContinues) {
  start();
  auto r = send_option(0x1234, Bytes{std::byte{1}, std::byte{2}, std::byte{3}});
  ASSERT_EQ(r.size(), 1u);
  EXPECT_EQ(r[0].option, 0x1234u);
  EXPECT_EQ(r[0].type, kRepErrUnsup);
  EXPECT_EQ(hs_.state(), State::kOptionHeader);
  // The handshake carries on: a following OPT_LIST is answered normally.
  auto r2 = send_option(kOptList);
  ASSERT_EQ(r2.size(), 2u);
  EXPECT_EQ(r2[1].type, kRepAck);
}

TEST_F(HandshakeTest, StartTlsIsUnsupported) {
  start();
  auto r = send_option(kOptStartTls);
  ASSERT_EQ(r.size(), 1u);
  EXPECT_EQ(r[0].type, kRepErrUnsup);
  EXPECT_FALSE(hs_.closed());
}

// --- NBD_OPT_STRUCTURED_REPLY ---

TEST_F(HandshakeTest, StructuredReplyWithDataGetsErrInvalid) {
  start();
  auto r = send_option(kOptStructuredReply, Bytes{std::byte{0}});
  ASSERT_EQ(r.size(), 1u);
  EXPECT_EQ(r[0].option, kOptStructuredReply);
  EXPECT_EQ(r[0].type, kRepErrInvalid);
  EXPECT_FALSE(hs_.session().structured_replies);
}

TEST_F(HandshakeTest, StructuredReplyWithoutDataIsAcked) {
  start();
  auto r = send_option(kOptStructuredReply);
  ASSERT_EQ(r.size(), 1u);
  EXPECT_EQ(r[0].option, kOptStructuredReply);
  EXPECT_EQ(r[0].type, kRepAck);
  EXPECT_TRUE(r[0].payload.empty());
  EXPECT_TRUE(hs_.session().structured_replies);
}

// --- NBD_OPT_INFO ---

TEST_F(HandshakeTest, OptInfoReturnsExportAndBlockSizeThenAckAndStaysInOptions) {
  start();
  auto r = send_option(kOptInfo, info_request("disk0"));
  ASSERT_EQ(r.size(), 3u);
  expect_info_export(r[0], kOptInfo, kExportSize, kAllWritableFlags);
  expect_info_block_size(r[1]);
  EXPECT_EQ(r[2].option, kOptInfo);
  EXPECT_EQ(r[2].type, kRepAck);
  EXPECT_EQ(hs_.state(), State::kOptionHeader);
  EXPECT_FALSE(hs_.in_transmission());
}

TEST_F(HandshakeTest, OptInfoAnswersRequestedNameAndDescription) {
  start();
  auto r = send_option(kOptInfo, info_request("", {kInfoName, kInfoDescription, 0x77}));
  ASSERT_EQ(r.size(), 5u);
  expect_info_export(r[0], kOptInfo, kExportSize, kAllWritableFlags);
  ASSERT_GE(r[1].payload.size(), 2u);
  EXPECT_EQ(load_be16(r[1].payload.data()), kInfoName);
  EXPECT_EQ(as_string(std::span(r[1].payload).subspan(2)), "disk0");
  ASSERT_GE(r[2].payload.size(), 2u);
  EXPECT_EQ(load_be16(r[2].payload.data()), kInfoDescription);
  EXPECT_EQ(as_string(std::span(r[2].payload).subspan(2)), "a test disk");
  expect_info_block_size(r[3]);
  EXPECT_EQ(r[4].type, kRepAck);
}

// --- NBD_OPT_GO ---

TEST_F(HandshakeTest, OptGoForTheExportNameEntersTransmission) {
  start();
  auto r = send_option(kOptGo, info_request("disk0"));
  ASSERT_EQ(r.size(), 3u);
  expect_info_export(r[0], kOptGo, kExportSize, kAllWritableFlags);
  expect_info_block_size(r[1]);
  EXPECT_EQ(r[2].option, kOptGo);
  EXPECT_EQ(r[2].type, kRepAck);
  EXPECT_TRUE(hs_.in_transmission());
  EXPECT_EQ(hs_.session().export_name, "disk0");
  EXPECT_EQ(hs_.session().transmission_flags, kAllWritableFlags);
  EXPECT_FALSE(hs_.session().transmission_flags & kTxSendDf);
  EXPECT_FALSE(hs_.session().transmission_flags & kTxReadOnly);
}

TEST_F(HandshakeTest, OptGoForTheEmptyNameEntersTransmission) {
  start();
  auto r = send_option(kOptGo, info_request(""));
  ASSERT_EQ(r.size(), 3u);
  EXPECT_EQ(r.back().type, kRepAck);
  EXPECT_TRUE(hs_.in_transmission());
  EXPECT_EQ(hs_.session().export_name, "");
}

TEST_F(HandshakeTest, OptGoAfterStructuredRepliesOffersDf) {
  start();
  negotiate_structured_replies();
  auto r = send_option(kOptGo, info_request("disk0"));
  ASSERT_EQ(r.size(), 3u);
  expect_info_export(r[0], kOptGo, kExportSize, kAllWritableFlags | kTxSendDf);
  EXPECT_TRUE(hs_.in_transmission());
  EXPECT_EQ(hs_.session().transmission_flags, kAllWritableFlags | kTxSendDf);
  EXPECT_TRUE(hs_.session().structured_replies);
}

TEST(Handshake, OptGoOnReadOnlyExportSetsReadOnlyAndNoWriteCommands) {
  ExportInfo exp = default_export();
  exp.read_only = true;
  Handshake hs(exp);
  Bytes out;
  Bytes in = concat({client_flags(kClientFixedNewstyle | kClientNoZeroes),
                     option(kOptGo, info_request("disk0"))});
  EXPECT_EQ(hs.consume(in, out), in.size());
  auto r = parse_replies(out);
  ASSERT_EQ(r.size(), 3u);
  const uint16_t flags = load_be16(r[0].payload.data() + 10);
  EXPECT_TRUE(flags & kTxReadOnly);
  EXPECT_TRUE(flags & kTxHasFlags);
  EXPECT_FALSE(flags & kTxSendTrim);
  EXPECT_FALSE(flags & kTxSendWriteZeroes);
  // FAST_ZERO is meaningless without WRITE_ZEROES and must not be offered.
  EXPECT_FALSE(flags & kTxSendFastZero);
  EXPECT_TRUE(hs.in_transmission());
  EXPECT_EQ(hs.session().transmission_flags, flags);
}

TEST(Handshake, TransmissionFlagsFollowExportCapabilities) {
  ExportInfo exp = default_export();
  exp.can_flush = false;
  exp.can_trim = false;
  exp.can_zero = false;
  exp.can_multi_conn = false;
  exp.can_cache = false;
  EXPECT_EQ(transmission_flags(exp, false), kTxHasFlags);
  EXPECT_EQ(transmission_flags(exp, true), kTxHasFlags | kTxSendDf);
  exp.can_zero = true;
  exp.can_fast_zero = false;
  EXPECT_EQ(transmission_flags(exp, false), kTxHasFlags | kTxSendWriteZeroes);
}

TEST_F(HandshakeTest, OptGoForUnknownNameGetsErrUnknown) {
  start();
  auto r = send_option(kOptGo, info_request("other"));
  ASSERT_EQ(r.size(), 1u);
  EXPECT_EQ(r[0].option, kOptGo);
  EXPECT_EQ(r[0].type, kRepErrUnknown);
  EXPECT_EQ(hs_.state(), State::kOptionHeader);
  // The client may try again with the right name.
  auto r2 = send_option(kOptGo, info_request("disk0"));
  ASSERT_FALSE(r2.empty());
  EXPECT_EQ(r2.back().type, kRepAck);
  EXPECT_TRUE(hs_.in_transmission());
}

TEST_F(HandshakeTest, OptGoWithNameLengthBeyondPayloadGetsErrInvalid) {
  start();
  Bytes data;
  Writer(data).u32(100).str("disk0").u16(0);
  auto r = send_option(kOptGo, data);
  ASSERT_EQ(r.size(), 1u);
  EXPECT_EQ(r[0].type, kRepErrInvalid);
  EXPECT_EQ(hs_.state(), State::kOptionHeader);
}

TEST_F(HandshakeTest, OptGoWithInfoCountMismatchGetsErrInvalid) {
  start();
  Bytes too_few;  // claims two info requests, carries one
  Writer(too_few).u32(5).str("disk0").u16(2).u16(kInfoName);
  auto r = send_option(kOptGo, too_few);
  ASSERT_EQ(r.size(), 1u);
  EXPECT_EQ(r[0].type, kRepErrInvalid);

  Bytes too_many;  // claims none, carries one
  Writer(too_many).u32(5).str("disk0").u16(0).u16(kInfoName);
  r = send_option(kOptGo, too_many);
  ASSERT_EQ(r.size(), 1u);
  EXPECT_EQ(r[0].type, kRepErrInvalid);

  Bytes truncated;  // no info count at all
  Writer(truncated).u32(5).str("disk0");
  r = send_option(kOptGo, truncated);
  ASSERT_EQ(r.size(), 1u);
  EXPECT_EQ(r[0].type, kRepErrInvalid);
  EXPECT_FALSE(hs_.in_transmission());
}

TEST_F(HandshakeTest, OptGoWithEmptyPayloadGetsErrInvalid) {
  start();
  auto r = send_option(kOptGo);
  ASSERT_EQ(r.size(), 1u);
  EXPECT_EQ(r[0].type, kRepErrInvalid);
}

// --- Meta contexts ---

TEST_F(HandshakeTest, SetMetaContextBeforeStructuredRepliesGetsErrInvalid) {
  start();
  auto r = send_option(kOptSetMetaContext, meta_request("disk0", {"base:allocation"}));
  ASSERT_EQ(r.size(), 1u);
  EXPECT_EQ(r[0].option, kOptSetMetaContext);
  EXPECT_EQ(r[0].type, kRepErrInvalid);
  EXPECT_FALSE(hs_.session().base_allocation);
}

TEST_F(HandshakeTest, SetMetaContextBaseAllocationReturnsIdOneAndSelectsIt) {
  start();
  negotiate_structured_replies();
  auto r = send_option(kOptSetMetaContext, meta_request("disk0", {"base:allocation"}));
  ASSERT_EQ(r.size(), 2u);
  EXPECT_EQ(r[0].option, kOptSetMetaContext);
  EXPECT_EQ(r[0].type, kRepMetaContext);
  ASSERT_EQ(r[0].payload.size(), 4u + 15u);
  EXPECT_EQ(load_be32(r[0].payload.data()), 1u);
  EXPECT_EQ(as_string(std::span(r[0].payload).subspan(4)), "base:allocation");
  EXPECT_EQ(r[1].type, kRepAck);
  EXPECT_TRUE(hs_.session().base_allocation);

  // The selection survives into the transmission phase.
  auto go = send_option(kOptGo, info_request("disk0"));
  ASSERT_FALSE(go.empty());
  EXPECT_EQ(go.back().type, kRepAck);
  EXPECT_TRUE(hs_.session().base_allocation);
  EXPECT_TRUE(hs_.session().structured_replies);
}

TEST_F(HandshakeTest, SetMetaContextWithUnknownContextSelectsNothing) {
  start();
  negotiate_structured_replies();
  auto r = send_option(kOptSetMetaContext, meta_request("disk0", {"qemu:dirty-bitmap:x"}));
  ASSERT_EQ(r.size(), 1u);
  EXPECT_EQ(r[0].type, kRepAck);
  EXPECT_FALSE(hs_.session().base_allocation);
}

TEST_F(HandshakeTest, SetMetaContextAgainWithoutQueriesDeselects) {
  start();
  negotiate_structured_replies();
  send_option(kOptSetMetaContext, meta_request("disk0", {"base:allocation"}));
  ASSERT_TRUE(hs_.session().base_allocation);
  auto r = send_option(kOptSetMetaContext, meta_request("disk0", {}));
  ASSERT_EQ(r.size(), 1u);
  EXPECT_EQ(r[0].type, kRepAck);
  EXPECT_FALSE(hs_.session().base_allocation);
}

TEST_F(HandshakeTest, ListMetaContextWithNoQueriesListsBaseAllocation) {
  start();
  auto r = send_option(kOptListMetaContext, meta_request("disk0", {}));
  ASSERT_EQ(r.size(), 2u);
  EXPECT_EQ(r[0].option, kOptListMetaContext);
  EXPECT_EQ(r[0].type, kRepMetaContext);
  ASSERT_GE(r[0].payload.size(), 4u);
  EXPECT_EQ(as_string(std::span(r[0].payload).subspan(4)), "base:allocation");
  EXPECT_EQ(r[1].type, kRepAck);
  // Listing does not select anything.
  EXPECT_FALSE(hs_.session().base_allocation);
}

TEST_F(HandshakeTest, ListMetaContextDoesNotReturnUnknownContext) {
  start();
  auto r = send_option(kOptListMetaContext, meta_request("disk0", {"qemu:allocation-depth"}));
  ASSERT_EQ(r.size(), 1u);
  EXPECT_EQ(r[0].type, kRepAck);
}

TEST_F(HandshakeTest, MetaContextWithTrailingBytesGetsErrInvalid) {
  start();
  Bytes data = meta_request("disk0", {"base:allocation"});
  data.push_back(std::byte{0});
  auto r = send_option(kOptListMetaContext, data);
  ASSERT_EQ(r.size(), 1u);
  EXPECT_EQ(r[0].type, kRepErrInvalid);
}

TEST_F(HandshakeTest, MetaContextWithQueryCountBeyondPayloadGetsErrInvalid) {
  start();
  Bytes data;
  Writer(data).u32(0).u32(0xffffffffu);
  auto r = send_option(kOptListMetaContext, data);
  ASSERT_EQ(r.size(), 1u);
  EXPECT_EQ(r[0].type, kRepErrInvalid);
}

// --- Oversize options ---

TEST_F(HandshakeTest, OversizeOptionIsSkippedAndAnsweredErrTooBigThenNextOptionWorks) {
  start();
  const uint32_t len = Handshake::kMaxOptionLength + 1;
  Bytes big;
  Writer(big).u64(kIHaveOpt).u32(kOptInfo).u32(len).zeroes(len);
  Bytes out = feed_all(big);
  auto r = parse_replies(out);
  ASSERT_EQ(r.size(), 1u);
  EXPECT_EQ(r[0].option, kOptInfo);
  EXPECT_EQ(r[0].type, kRepErrTooBig);
  EXPECT_EQ(hs_.state(), State::kOptionHeader);

  auto r2 = send_option(kOptGo, info_request("disk0"));
  ASSERT_EQ(r2.size(), 3u);
  EXPECT_EQ(r2[2].type, kRepAck);
  EXPECT_TRUE(hs_.in_transmission());
}

TEST_F(HandshakeTest, OversizeOptionIsSkippedAcrossManySmallReads) {
  start();
  const uint32_t len = 3 * Handshake::kMaxOptionLength;
  Bytes in;
  Writer(in).u64(kIHaveOpt).u32(0x99).u32(len).zeroes(len);
  in = concat({in, option(kOptList)});
  Bytes out;
  size_t used = 0;
  constexpr size_t kStep = 4000;
  while (used < in.size()) {
    size_t end = std::min(in.size(), used + kStep);
    used += hs_.consume(std::span(in).subspan(used, end - used), out);
  }
  auto r = parse_replies(out);
  ASSERT_EQ(r.size(), 3u);
  EXPECT_EQ(r[0].type, kRepErrTooBig);
  EXPECT_EQ(r[1].type, kRepServer);
  EXPECT_EQ(r[2].type, kRepAck);
}

TEST_F(HandshakeTest, OversizeExportNameCloses) {
  start();
  Bytes hdr;
  Writer(hdr).u64(kIHaveOpt).u32(kOptExportName).u32(Handshake::kMaxOptionLength + 1);
  Bytes out;
  EXPECT_EQ(hs_.consume(hdr, out), hdr.size());
  EXPECT_TRUE(out.empty());
  EXPECT_TRUE(hs_.closed());
}

// --- Abort ---

TEST_F(HandshakeTest, OptAbortAcksAndCloses) {
  start();
  Bytes in = concat({option(kOptAbort), option(kOptList)});
  Bytes out;
  size_t used = hs_.consume(in, out);
  EXPECT_EQ(used, option(kOptAbort).size()) << "nothing after OPT_ABORT is consumed";
  auto r = parse_replies(out);
  ASSERT_EQ(r.size(), 1u);
  EXPECT_EQ(r[0].option, kOptAbort);
  EXPECT_EQ(r[0].type, kRepAck);
  EXPECT_TRUE(hs_.closed());
  EXPECT_FALSE(hs_.close_reason().empty());
}

// --- Framing ---

TEST(Handshake, BytesFedOneAtATimeGiveTheSameOutputAsFedAtOnce) {
  ExportInfo exp = default_export();
  Bytes set_meta = meta_request("disk0", {"base:allocation"});
  Bytes in = concat({client_flags(kClientFixedNewstyle | kClientNoZeroes), option(kOptList),
                     option(0x4242, Bytes{std::byte{7}}), option(kOptStructuredReply),
                     option(kOptListMetaContext, meta_request("", {})),
                     option(kOptSetMetaContext, set_meta),
                     option(kOptInfo, info_request("disk0", {kInfoName})),
                     option(kOptGo, info_request(""))});

  Handshake whole(exp);
  Bytes out_whole;
  EXPECT_EQ(whole.consume(in, out_whole), in.size());
  ASSERT_TRUE(whole.in_transmission());

  Handshake bytewise(exp);
  Bytes out_bytewise;
  Bytes pending;
  for (std::byte b : in) {
    pending.push_back(b);
    size_t used = bytewise.consume(pending, out_bytewise);
    pending.erase(pending.begin(), pending.begin() + static_cast<ptrdiff_t>(used));
  }
  EXPECT_TRUE(pending.empty());
  EXPECT_TRUE(bytewise.in_transmission());
  EXPECT_EQ(out_bytewise, out_whole);
  EXPECT_EQ(bytewise.session().transmission_flags, whole.session().transmission_flags);
  EXPECT_EQ(bytewise.session().base_allocation, whole.session().base_allocation);
  EXPECT_TRUE(bytewise.session().base_allocation);
  EXPECT_EQ(parse_replies(out_whole).size(), 2u + 1u + 1u + 2u + 2u + 4u + 3u);
}

TEST_F(HandshakeTest, BytesAfterOptGoAreNotConsumed) {
  start();
  Bytes go = option(kOptGo, info_request("disk0"));
  Bytes request(28, std::byte{0x25});
  Bytes in = concat({go, request});
  Bytes out;
  EXPECT_EQ(hs_.consume(in, out), go.size());
  EXPECT_TRUE(hs_.in_transmission());
  // Later calls consume nothing either.
  Bytes out2;
  EXPECT_EQ(hs_.consume(request, out2), 0u);
  EXPECT_TRUE(out2.empty());
}

TEST_F(HandshakeTest, BytesAfterCloseAreNotConsumed) {
  Bytes in = concat({client_flags(0xff), option(kOptList)});
  Bytes out;
  EXPECT_EQ(hs_.consume(in, out), 4u);
  EXPECT_TRUE(hs_.closed());
  EXPECT_EQ(hs_.consume(option(kOptList), out), 0u);
  EXPECT_TRUE(out.empty());
}

}  // namespace
}  // namespace rbdcache::nbd
