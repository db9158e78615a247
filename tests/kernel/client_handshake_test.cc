// Tests for the blocking client handshake (nbd/client_handshake.h).
//
// The client runs on one end of a socketpair. On the other end runs either
// rbdcache's own server-side state machine (nbd/handshake.h), so the two
// halves are checked against each other, or a scripted peer that sends
// exactly the bytes a broken or foreign server would.
#include "nbd/client_handshake.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <thread>
#include <vector>

#include "nbd/handshake.h"
#include "nbd/protocol.h"

namespace rbdcache::nbd {
namespace {

using Bytes = std::vector<std::byte>;

struct Pair {
  UniqueFd client;
  UniqueFd server;
};

Pair socket_pair() {
  int sv[2];
  EXPECT_EQ(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
  return {UniqueFd(sv[0]), UniqueFd(sv[1])};
}

void send_bytes(int fd, const Bytes& b) {
  ASSERT_EQ(::send(fd, b.data(), b.size(), MSG_NOSIGNAL), static_cast<ssize_t>(b.size()));
}

// Serves one handshake on `fd` with rbdcache's Handshake until it reaches
// the transmission phase or closes. Returns the Handshake's final state.
void serve_handshake(int fd, Handshake& hs) {
  send_bytes(fd, hs.greeting());
  Bytes in;
  std::byte buf[4096];
  while (!hs.in_transmission() && !hs.closed()) {
    ssize_t n = ::recv(fd, buf, sizeof(buf), 0);
    if (n <= 0) return;
    in.insert(in.end(), buf, buf + n);
    Bytes out;
    size_t used = hs.consume(in, out);
    in.erase(in.begin(), in.begin() + static_cast<ptrdiff_t>(used));
    if (!out.empty()) send_bytes(fd, out);
  }
}

ExportInfo test_export() {
  ExportInfo exp;
  exp.name = "disk";
  exp.size = 3ull << 30;
  return exp;
}

TEST(ClientHandshake, NegotiatesWithRbdcachesServer) {
  ExportInfo exp = test_export();
  Handshake hs(exp);
  Pair p = socket_pair();
  std::thread server([&] { serve_handshake(p.server.get(), hs); });
  auto got = client_handshake(p.client.get(), {});
  server.join();
  ASSERT_TRUE(got.is_ok()) << got.status().to_string();
  ASSERT_TRUE(hs.in_transmission()) << hs.close_reason();
  EXPECT_EQ(got->size, 3ull << 30);
  EXPECT_EQ(got->transmission_flags, transmission_flags(exp, false));
  EXPECT_EQ(got->transmission_flags, hs.session().transmission_flags);
  EXPECT_TRUE(got->transmission_flags & kTxCanMultiConn);
  EXPECT_FALSE(got->transmission_flags & kTxSendDf) << "DF needs structured replies, which the kernel lacks";
  EXPECT_FALSE(hs.session().structured_replies) << "the kernel speaks simple replies only";
  EXPECT_EQ(got->min_block_size, kMinBlockSize);
  EXPECT_EQ(got->preferred_block_size, kPreferredBlockSize);
  EXPECT_EQ(got->max_payload, kMaxPayload);
}

TEST(ClientHandshake, SelectsTheNamedExport) {
  ExportInfo exp = test_export();
  Handshake hs(exp);
  Pair p = socket_pair();
  std::thread server([&] { serve_handshake(p.server.get(), hs); });
  ClientHandshakeOptions opts;
  opts.export_name = "disk";
  auto got = client_handshake(p.client.get(), opts);
  server.join();
  ASSERT_TRUE(got.is_ok()) << got.status().to_string();
  EXPECT_EQ(hs.session().export_name, "disk");
}

TEST(ClientHandshake, ReadOnlyExportIsReportedInTheFlags) {
  ExportInfo exp = test_export();
  exp.read_only = true;
  Handshake hs(exp);
  Pair p = socket_pair();
  std::thread server([&] { serve_handshake(p.server.get(), hs); });
  auto got = client_handshake(p.client.get(), {});
  server.join();
  ASSERT_TRUE(got.is_ok()) << got.status().to_string();
  EXPECT_TRUE(got->transmission_flags & kTxReadOnly);
}

TEST(ClientHandshake, UnknownExportIsENOENT) {
  ExportInfo exp = test_export();
  Handshake hs(exp);
  Pair p = socket_pair();
  std::thread server([&] { serve_handshake(p.server.get(), hs); });
  ClientHandshakeOptions opts;
  opts.export_name = "other";
  auto got = client_handshake(p.client.get(), opts);
  p.client.reset();  // the server thread waits for more options otherwise
  server.join();
  ASSERT_FALSE(got.is_ok());
  EXPECT_EQ(got.status().err(), ENOENT);
  EXPECT_NE(got.status().message().find("'other'"), std::string::npos) << got.status().message();
}

TEST(ClientHandshake, LeavesNoTimeoutOnTheSocket) {
  ExportInfo exp = test_export();
  Handshake hs(exp);
  Pair p = socket_pair();
  std::thread server([&] { serve_handshake(p.server.get(), hs); });
  ClientHandshakeOptions opts;
  opts.timeout = std::chrono::milliseconds(5000);
  auto got = client_handshake(p.client.get(), opts);
  server.join();
  ASSERT_TRUE(got.is_ok()) << got.status().to_string();
  for (int opt : {SO_RCVTIMEO, SO_SNDTIMEO}) {
    timeval tv{};
    socklen_t len = sizeof(tv);
    ASSERT_EQ(::getsockopt(p.client.get(), SOL_SOCKET, opt, &tv, &len), 0);
    EXPECT_EQ(tv.tv_sec, 0);
    EXPECT_EQ(tv.tv_usec, 0);
  }
}

// --- Scripted servers ---

Bytes greeting(uint64_t second_magic = kIHaveOpt, uint16_t flags = kFlagFixedNewstyle | kFlagNoZeroes) {
  Bytes b;
  Writer(b).u64(kNbdMagic).u64(second_magic).u16(flags);
  return b;
}

Bytes opt_reply(uint32_t type, const Bytes& payload, uint32_t option = kOptGo) {
  Bytes b;
  Writer(b).u64(kOptReplyMagic).u32(option).u32(type).u32(static_cast<uint32_t>(payload.size())).bytes(payload);
  return b;
}

Bytes info_export(uint64_t size, uint16_t flags) {
  Bytes b;
  Writer(b).u16(kInfoExport).u64(size).u16(flags);
  return b;
}

Bytes cat(std::initializer_list<Bytes> parts) {
  Bytes b;
  for (const Bytes& p : parts) b.insert(b.end(), p.begin(), p.end());
  return b;
}

// Runs the client against a peer that has already sent `script`, then
// closes its writing side.
Result<ClientExport> against(const Bytes& script, bool close_after = true) {
  Pair p = socket_pair();
  send_bytes(p.server.get(), script);
  if (close_after) ::shutdown(p.server.get(), SHUT_WR);
  ClientHandshakeOptions opts;
  opts.timeout = std::chrono::milliseconds(2000);
  return client_handshake(p.client.get(), opts);
}

TEST(ClientHandshakeScripted, AcceptsAMinimalServer) {
  auto got = against(cat({greeting(), opt_reply(kRepInfo, info_export(1 << 20, kTxHasFlags | kTxSendFlush)),
                          opt_reply(kRepAck, {})}));
  ASSERT_TRUE(got.is_ok()) << got.status().to_string();
  EXPECT_EQ(got->size, 1u << 20);
  EXPECT_EQ(got->transmission_flags, kTxHasFlags | kTxSendFlush);
  EXPECT_EQ(got->min_block_size, 0u) << "no NBD_INFO_BLOCK_SIZE sent";
}

TEST(ClientHandshakeScripted, IgnoresUnknownInfoTypes) {
  Bytes odd;
  Writer(odd).u16(99).u32(12345);
  auto got = against(cat({greeting(), opt_reply(kRepInfo, odd), opt_reply(kRepInfo, info_export(4096, kTxHasFlags)),
                          opt_reply(kRepAck, {})}));
  ASSERT_TRUE(got.is_ok()) << got.status().to_string();
  EXPECT_EQ(got->size, 4096u);
}

TEST(ClientHandshakeScripted, NotAnNbdServerIsEPROTO) {
  Bytes junk(18, std::byte{'x'});
  EXPECT_EQ(against(junk).status().err(), EPROTO);
}

TEST(ClientHandshakeScripted, OldstyleServerIsENOTSUP) {
  EXPECT_EQ(against(greeting(0x00420281861253ull)).status().err(), ENOTSUP);
}

TEST(ClientHandshakeScripted, ServerWithoutFixedNewstyleIsENOTSUP) {
  EXPECT_EQ(against(greeting(kIHaveOpt, 0)).status().err(), ENOTSUP);
}

TEST(ClientHandshakeScripted, ServerClosingMidHandshakeIsECONNRESET) {
  EXPECT_EQ(against(greeting()).status().err(), ECONNRESET);
  EXPECT_EQ(against(Bytes(5, std::byte{'N'})).status().err(), ECONNRESET);
}

TEST(ClientHandshakeScripted, SilentServerTimesOut) {
  Pair p = socket_pair();
  ClientHandshakeOptions opts;
  opts.timeout = std::chrono::milliseconds(100);
  auto got = client_handshake(p.client.get(), opts);
  EXPECT_EQ(got.status().err(), ETIMEDOUT);
}

TEST(ClientHandshakeScripted, RefusalsMapToErrnos) {
  const Bytes msg = {std::byte{'n'}, std::byte{'o'}};
  EXPECT_EQ(against(cat({greeting(), opt_reply(kRepErrUnsup, msg)})).status().err(), ENOTSUP);
  EXPECT_EQ(against(cat({greeting(), opt_reply(kRepErrPolicy, msg)})).status().err(), EACCES);
  EXPECT_EQ(against(cat({greeting(), opt_reply(kRepErrTlsReqd, {})})).status().err(), EACCES);
  EXPECT_EQ(against(cat({greeting(), opt_reply(kRepErrShutdown, {})})).status().err(), ESHUTDOWN);
  EXPECT_EQ(against(cat({greeting(), opt_reply(kRepErrInvalid, {})})).status().err(), EPROTO);
  auto unknown = against(cat({greeting(), opt_reply(kRepErrUnknown, msg)}));
  EXPECT_EQ(unknown.status().err(), ENOENT);
  EXPECT_NE(unknown.status().message().find("server: no"), std::string::npos) << unknown.status().message();
}

TEST(ClientHandshakeScripted, ControlBytesInServerMessagesAreNotPrinted) {
  const Bytes msg = {std::byte{'a'}, std::byte{0x1b}, std::byte{'['}, std::byte{'2'}, std::byte{'J'}};
  auto got = against(cat({greeting(), opt_reply(kRepErrPolicy, msg)}));
  EXPECT_EQ(got.status().message().find('\x1b'), std::string::npos);
}

TEST(ClientHandshakeScripted, MalformedRepliesAreEPROTO) {
  // Ack without the export's size.
  EXPECT_EQ(against(cat({greeting(), opt_reply(kRepAck, {})})).status().err(), EPROTO);
  // Ack with a payload.
  EXPECT_EQ(against(cat({greeting(), opt_reply(kRepInfo, info_export(4096, 1)), opt_reply(kRepAck, {std::byte{1}})}))
                .status()
                .err(),
            EPROTO);
  // NBD_INFO_EXPORT of the wrong length.
  Bytes short_info;
  Writer(short_info).u16(kInfoExport).u64(4096);
  EXPECT_EQ(against(cat({greeting(), opt_reply(kRepInfo, short_info)})).status().err(), EPROTO);
  // A reply to another option.
  EXPECT_EQ(against(cat({greeting(), opt_reply(kRepAck, {}, kOptList)})).status().err(), EPROTO);
  // A reply type NBD_OPT_GO cannot have.
  EXPECT_EQ(against(cat({greeting(), opt_reply(kRepServer, {})})).status().err(), EPROTO);
  // Bad reply magic.
  Bytes bad;
  Writer(bad).u64(0x1234).u32(kOptGo).u32(kRepAck).u32(0);
  EXPECT_EQ(against(cat({greeting(), bad})).status().err(), EPROTO);
}

TEST(ClientHandshakeScripted, HugeReplyLengthIsRefusedBeforeReading) {
  Bytes huge;
  Writer(huge).u64(kOptReplyMagic).u32(kOptGo).u32(kRepInfo).u32(0x7fffffff);
  EXPECT_EQ(against(cat({greeting(), huge}), /*close_after=*/false).status().err(), EPROTO);
}

TEST(ClientHandshakeScripted, EndlessInfoRepliesAreRefused) {
  Bytes script = greeting();
  for (int i = 0; i < 100; ++i) {
    Bytes r = opt_reply(kRepInfo, info_export(4096, 1));
    script.insert(script.end(), r.begin(), r.end());
  }
  EXPECT_EQ(against(script).status().err(), EPROTO);
}

// --- connect_unix ---

class ConnectUnixTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/rbdcache-cu.XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }
  std::filesystem::path dir_;
};

TEST_F(ConnectUnixTest, MissingSocketIsENOENT) {
  EXPECT_EQ(connect_unix((dir_ / "none.sock").string()).status().err(), ENOENT);
}

TEST_F(ConnectUnixTest, StaleSocketIsECONNREFUSED) {
  // A socket file whose server is gone: bound, never listening, closed.
  const std::string path = (dir_ / "stale.sock").string();
  UniqueFd s(::socket(AF_UNIX, SOCK_STREAM, 0));
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::snprintf(addr.sun_path, sizeof(addr.sun_path), "%s", path.c_str());
  ASSERT_EQ(::bind(s.get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
  s.reset();
  EXPECT_EQ(connect_unix(path).status().err(), ECONNREFUSED);
}

TEST_F(ConnectUnixTest, ConnectsToAListeningSocket) {
  const std::string path = (dir_ / "live.sock").string();
  UniqueFd s(::socket(AF_UNIX, SOCK_STREAM, 0));
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::snprintf(addr.sun_path, sizeof(addr.sun_path), "%s", path.c_str());
  ASSERT_EQ(::bind(s.get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
  ASSERT_EQ(::listen(s.get(), 1), 0);
  auto fd = connect_unix(path);
  ASSERT_TRUE(fd.is_ok()) << fd.status().to_string();
  EXPECT_TRUE(fd->valid());
}

TEST_F(ConnectUnixTest, OverlongPathIsENAMETOOLONG) {
  EXPECT_EQ(connect_unix("/tmp/" + std::string(200, 'a')).status().err(), ENAMETOOLONG);
}

TEST(UniqueFdTest, ClosesOnceAndMovesOwnership) {
  int sv[2];
  ASSERT_EQ(::socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
  UniqueFd a(sv[0]);
  UniqueFd b(std::move(a));
  EXPECT_FALSE(a.valid());  // NOLINT: testing the moved-from state
  EXPECT_EQ(b.get(), sv[0]);
  b.reset();
  EXPECT_EQ(::fcntl(sv[0], F_GETFD), -1) << "closed";
  ::close(sv[1]);
}

}  // namespace
}  // namespace rbdcache::nbd
