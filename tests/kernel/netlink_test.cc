// Tests for the kernel NBD netlink messages (nbd/netlink.h), no kernel needed.
//
// Each builder test builds a message, parses it back with libnl as the
// kernel would (genlmsg_parse with the kernel's attribute policy, then the
// nested socket list) and checks every attribute: its presence, its width
// and its value. The parser tests build replies the way the kernel does
// (nbd_connect_reply(), nbd_genl_status()) and read them back.
#include "nbd/netlink.h"

#include <gtest/gtest.h>
#include <linux/genetlink.h>
#include <linux/nbd-netlink.h>
#include <linux/nbd.h>
#include <netlink/attr.h>
#include <netlink/genl/genl.h>
#include <netlink/msg.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

namespace rbdcache::nbd {
namespace {

constexpr int kFamily = 0x1f;  // any generic netlink family id will do

using MsgPtr = std::unique_ptr<nl_msg, decltype(&nlmsg_free)>;

MsgPtr new_msg() { return MsgPtr(nlmsg_alloc(), &nlmsg_free); }

// A message parsed back: its header and attributes.
struct Parsed {
  uint16_t type = 0;
  uint8_t cmd = 0;
  uint8_t version = 0;
  nlattr* tb[NBD_ATTR_MAX + 1] = {};
};

// Parses `msg` with the policy of the kernel's nbd_attr_policy.
Parsed parse(nl_msg* msg) {
  nla_policy policy[NBD_ATTR_MAX + 1] = {};
  policy[NBD_ATTR_INDEX].type = NLA_U32;
  policy[NBD_ATTR_SIZE_BYTES].type = NLA_U64;
  policy[NBD_ATTR_BLOCK_SIZE_BYTES].type = NLA_U64;
  policy[NBD_ATTR_TIMEOUT].type = NLA_U64;
  policy[NBD_ATTR_SERVER_FLAGS].type = NLA_U64;
  policy[NBD_ATTR_CLIENT_FLAGS].type = NLA_U64;
  policy[NBD_ATTR_SOCKETS].type = NLA_NESTED;
  policy[NBD_ATTR_DEAD_CONN_TIMEOUT].type = NLA_U64;
  policy[NBD_ATTR_DEVICE_LIST].type = NLA_NESTED;
  policy[NBD_ATTR_BACKEND_IDENTIFIER].type = NLA_STRING;
  Parsed p;
  nlmsghdr* nlh = nlmsg_hdr(msg);
  p.type = nlh->nlmsg_type;
  EXPECT_TRUE(genlmsg_valid_hdr(nlh, 0));
  genlmsghdr* gh = genlmsg_hdr(nlh);
  p.cmd = gh->cmd;
  p.version = gh->version;
  EXPECT_EQ(genlmsg_parse(nlh, 0, p.tb, NBD_ATTR_MAX, policy), 0);
  return p;
}

// The NBD_SOCK_FD of every NBD_SOCK_ITEM, in order; fails the test on
// anything else inside NBD_ATTR_SOCKETS.
std::vector<int> socket_fds(nlattr* socks) {
  std::vector<int> fds;
  nla_policy policy[NBD_SOCK_MAX + 1] = {};
  policy[NBD_SOCK_FD].type = NLA_U32;
  int rem = nla_len(socks);
  for (auto* item = static_cast<nlattr*>(nla_data(socks)); nla_ok(item, rem); item = nla_next(item, &rem)) {
    EXPECT_EQ(nla_type(item), NBD_SOCK_ITEM);
    nlattr* tb[NBD_SOCK_MAX + 1] = {};
    EXPECT_EQ(nla_parse_nested(tb, NBD_SOCK_MAX, item, policy), 0);
    EXPECT_NE(tb[NBD_SOCK_FD], nullptr);
    if (tb[NBD_SOCK_FD] != nullptr) {
      EXPECT_EQ(nla_len(tb[NBD_SOCK_FD]), 4);
      fds.push_back(static_cast<int>(nla_get_u32(tb[NBD_SOCK_FD])));
    }
  }
  EXPECT_EQ(rem, 0) << "trailing bytes in NBD_ATTR_SOCKETS";
  return fds;
}

uint64_t u64_attr(nlattr* a) {
  EXPECT_NE(a, nullptr);
  if (a == nullptr) return 0;
  EXPECT_EQ(nla_len(a), 8) << "the kernel reads this attribute as a u64";
  return nla_get_u64(a);
}

ConnectRequest full_connect() {
  ConnectRequest r;
  r.index = 7;
  r.size_bytes = 10ull << 30;
  r.block_size = 4096;
  r.timeout = 45;
  r.dead_conn_timeout = 120;
  r.server_flags = NBD_FLAG_HAS_FLAGS | NBD_FLAG_SEND_FLUSH | NBD_FLAG_SEND_FUA | NBD_FLAG_CAN_MULTI_CONN;
  r.client_flags = NBD_CFLAG_DISCONNECT_ON_CLOSE;
  r.fds = {5, 9, 12};
  r.backend = "rbdcache:/run/rbdcache/vm1.sock";
  return r;
}

TEST(NbdNetlinkBuild, ConnectCarriesEveryAttribute) {
  MsgPtr msg = new_msg();
  ASSERT_TRUE(build_connect(msg.get(), kFamily, full_connect()).is_ok());
  Parsed p = parse(msg.get());
  EXPECT_EQ(p.type, kFamily);
  EXPECT_EQ(p.cmd, NBD_CMD_CONNECT);
  EXPECT_EQ(p.version, NBD_GENL_VERSION);
  ASSERT_NE(p.tb[NBD_ATTR_INDEX], nullptr);
  EXPECT_EQ(nla_len(p.tb[NBD_ATTR_INDEX]), 4);
  EXPECT_EQ(nla_get_u32(p.tb[NBD_ATTR_INDEX]), 7u);
  EXPECT_EQ(u64_attr(p.tb[NBD_ATTR_SIZE_BYTES]), 10ull << 30);
  EXPECT_EQ(u64_attr(p.tb[NBD_ATTR_BLOCK_SIZE_BYTES]), 4096u);
  EXPECT_EQ(u64_attr(p.tb[NBD_ATTR_TIMEOUT]), 45u);
  EXPECT_EQ(u64_attr(p.tb[NBD_ATTR_DEAD_CONN_TIMEOUT]), 120u);
  EXPECT_EQ(u64_attr(p.tb[NBD_ATTR_SERVER_FLAGS]),
            uint64_t{NBD_FLAG_HAS_FLAGS | NBD_FLAG_SEND_FLUSH | NBD_FLAG_SEND_FUA | NBD_FLAG_CAN_MULTI_CONN});
  EXPECT_EQ(u64_attr(p.tb[NBD_ATTR_CLIENT_FLAGS]), uint64_t{NBD_CFLAG_DISCONNECT_ON_CLOSE});
  ASSERT_NE(p.tb[NBD_ATTR_SOCKETS], nullptr);
  EXPECT_EQ(socket_fds(p.tb[NBD_ATTR_SOCKETS]), (std::vector<int>{5, 9, 12}));
  ASSERT_NE(p.tb[NBD_ATTR_BACKEND_IDENTIFIER], nullptr);
  EXPECT_EQ(nla_get_string(p.tb[NBD_ATTR_BACKEND_IDENTIFIER]), std::string("rbdcache:/run/rbdcache/vm1.sock"));
  // NUL-terminated, as the kernel's nla_strdup and nla_strcmp expect.
  EXPECT_EQ(nla_len(p.tb[NBD_ATTR_BACKEND_IDENTIFIER]),
            static_cast<int>(sizeof("rbdcache:/run/rbdcache/vm1.sock")));
  EXPECT_EQ(p.tb[NBD_ATTR_DEVICE_LIST], nullptr);
}

TEST(NbdNetlinkBuild, ConnectOmitsWhatIsUnset) {
  ConnectRequest r;
  r.size_bytes = 1 << 20;
  r.fds = {3};
  MsgPtr msg = new_msg();
  ASSERT_TRUE(build_connect(msg.get(), kFamily, r).is_ok());
  Parsed p = parse(msg.get());
  EXPECT_EQ(p.tb[NBD_ATTR_INDEX], nullptr) << "no index: the kernel picks a free device";
  EXPECT_EQ(p.tb[NBD_ATTR_TIMEOUT], nullptr) << "no timeout: the kernel never fails a slow request";
  EXPECT_EQ(p.tb[NBD_ATTR_DEAD_CONN_TIMEOUT], nullptr);
  EXPECT_EQ(p.tb[NBD_ATTR_BACKEND_IDENTIFIER], nullptr);
  EXPECT_EQ(u64_attr(p.tb[NBD_ATTR_SIZE_BYTES]), 1u << 20);
  EXPECT_EQ(u64_attr(p.tb[NBD_ATTR_BLOCK_SIZE_BYTES]), 512u);
  EXPECT_EQ(u64_attr(p.tb[NBD_ATTR_SERVER_FLAGS]), 0u);
  EXPECT_EQ(u64_attr(p.tb[NBD_ATTR_CLIENT_FLAGS]), 0u);
  EXPECT_EQ(socket_fds(p.tb[NBD_ATTR_SOCKETS]), std::vector<int>{3});
}

TEST(NbdNetlinkBuild, ConnectSendsAZeroTimeoutWhenAskedTo) {
  ConnectRequest r = full_connect();
  r.timeout = 0;
  r.dead_conn_timeout = 0;
  MsgPtr msg = new_msg();
  ASSERT_TRUE(build_connect(msg.get(), kFamily, r).is_ok());
  Parsed p = parse(msg.get());
  EXPECT_EQ(u64_attr(p.tb[NBD_ATTR_TIMEOUT]), 0u);
  EXPECT_EQ(u64_attr(p.tb[NBD_ATTR_DEAD_CONN_TIMEOUT]), 0u);
}

TEST(NbdNetlinkBuild, ConnectRefusesWhatTheKernelWouldRefuse) {
  auto expect_einval = [](ConnectRequest r, const char* why) {
    MsgPtr msg = new_msg();
    Status st = build_connect(msg.get(), kFamily, r);
    EXPECT_EQ(st.err(), EINVAL) << why;
  };
  ConnectRequest r = full_connect();
  r.fds.clear();
  expect_einval(r, "no socket");
  r = full_connect();
  r.fds = {4, -1};
  expect_einval(r, "negative fd");
  r = full_connect();
  r.size_bytes = 0;
  expect_einval(r, "zero size");
  for (uint64_t bs : {0ull, 256ull, 1000ull, 3072ull}) {
    r = full_connect();
    r.block_size = bs;
    expect_einval(r, "bad block size");
  }
  r = full_connect();
  r.backend = std::string("rbd\0cache", 9);
  expect_einval(r, "NUL in backend");
}

TEST(NbdNetlinkBuild, ManySocketsFitAndKeepTheirOrder) {
  ConnectRequest r = full_connect();
  r.fds.clear();
  for (int fd = 100; fd < 164; ++fd) r.fds.push_back(fd);
  MsgPtr msg = new_msg();
  ASSERT_TRUE(build_connect(msg.get(), kFamily, r).is_ok());
  Parsed p = parse(msg.get());
  EXPECT_EQ(socket_fds(p.tb[NBD_ATTR_SOCKETS]), r.fds);
}

TEST(NbdNetlinkBuild, DisconnectCarriesOnlyTheIndex) {
  MsgPtr msg = new_msg();
  ASSERT_TRUE(build_disconnect(msg.get(), kFamily, 3).is_ok());
  Parsed p = parse(msg.get());
  EXPECT_EQ(p.cmd, NBD_CMD_DISCONNECT);
  EXPECT_EQ(p.version, NBD_GENL_VERSION);
  ASSERT_NE(p.tb[NBD_ATTR_INDEX], nullptr);
  EXPECT_EQ(nla_get_u32(p.tb[NBD_ATTR_INDEX]), 3u);
  for (int a = NBD_ATTR_INDEX + 1; a <= NBD_ATTR_MAX; ++a) EXPECT_EQ(p.tb[a], nullptr) << "attribute " << a;
}

TEST(NbdNetlinkBuild, ReconfigureCarriesIndexSocketsBackendAndOnlyGivenTimeouts) {
  ReconfigureRequest r;
  r.index = 11;
  r.dead_conn_timeout = 300;
  r.fds = {20, 21};
  r.backend = "rbdcache:/run/x.sock?export=disk";
  MsgPtr msg = new_msg();
  ASSERT_TRUE(build_reconfigure(msg.get(), kFamily, r).is_ok());
  Parsed p = parse(msg.get());
  EXPECT_EQ(p.cmd, NBD_CMD_RECONFIGURE);
  ASSERT_NE(p.tb[NBD_ATTR_INDEX], nullptr);
  EXPECT_EQ(nla_get_u32(p.tb[NBD_ATTR_INDEX]), 11u);
  EXPECT_EQ(p.tb[NBD_ATTR_TIMEOUT], nullptr) << "unset: the device keeps its timeout";
  EXPECT_EQ(u64_attr(p.tb[NBD_ATTR_DEAD_CONN_TIMEOUT]), 300u);
  EXPECT_EQ(socket_fds(p.tb[NBD_ATTR_SOCKETS]), (std::vector<int>{20, 21}));
  ASSERT_NE(p.tb[NBD_ATTR_BACKEND_IDENTIFIER], nullptr);
  EXPECT_EQ(nla_get_string(p.tb[NBD_ATTR_BACKEND_IDENTIFIER]), std::string("rbdcache:/run/x.sock?export=disk"));
  // Size, block size and flags would resize or reflag a live device.
  EXPECT_EQ(p.tb[NBD_ATTR_SIZE_BYTES], nullptr);
  EXPECT_EQ(p.tb[NBD_ATTR_BLOCK_SIZE_BYTES], nullptr);
  EXPECT_EQ(p.tb[NBD_ATTR_SERVER_FLAGS], nullptr);
  EXPECT_EQ(p.tb[NBD_ATTR_CLIENT_FLAGS], nullptr);

  ReconfigureRequest empty;
  empty.index = 1;
  msg = new_msg();
  EXPECT_EQ(build_reconfigure(msg.get(), kFamily, empty).err(), EINVAL) << "no socket";
}

TEST(NbdNetlinkBuild, StatusAsksAboutOneDeviceOrAll) {
  MsgPtr one = new_msg();
  ASSERT_TRUE(build_status(one.get(), kFamily, 4).is_ok());
  Parsed p = parse(one.get());
  EXPECT_EQ(p.cmd, NBD_CMD_STATUS);
  ASSERT_NE(p.tb[NBD_ATTR_INDEX], nullptr);
  EXPECT_EQ(nla_get_u32(p.tb[NBD_ATTR_INDEX]), 4u);

  MsgPtr all = new_msg();
  ASSERT_TRUE(build_status(all.get(), kFamily, std::nullopt).is_ok());
  Parsed q = parse(all.get());
  EXPECT_EQ(q.cmd, NBD_CMD_STATUS);
  EXPECT_EQ(q.tb[NBD_ATTR_INDEX], nullptr);
}

// --- Replies, built as drivers/block/nbd.c builds them ---

MsgPtr kernel_reply(uint8_t cmd) {
  MsgPtr msg = new_msg();
  EXPECT_NE(genlmsg_put(msg.get(), 0, 1, kFamily, 0, 0, cmd, NBD_GENL_VERSION), nullptr);
  return msg;
}

void put_device(nl_msg* msg, uint32_t index, uint8_t connected) {
  nlattr* item = nla_nest_start(msg, NBD_DEVICE_ITEM);
  ASSERT_NE(item, nullptr);
  ASSERT_EQ(nla_put_u32(msg, NBD_DEVICE_INDEX, index), 0);
  ASSERT_EQ(nla_put_u8(msg, NBD_DEVICE_CONNECTED, connected), 0);
  nla_nest_end(msg, item);
}

TEST(NbdNetlinkParse, ConnectReplyNamesTheDevice) {
  MsgPtr msg = kernel_reply(NBD_CMD_CONNECT);
  ASSERT_EQ(nla_put_u32(msg.get(), NBD_ATTR_INDEX, 42), 0);
  Result<uint32_t> index = parse_connect_reply(nlmsg_hdr(msg.get()));
  ASSERT_TRUE(index.is_ok()) << index.status().to_string();
  EXPECT_EQ(index.value(), 42u);
}

TEST(NbdNetlinkParse, ConnectReplyWithoutIndexIsAProtocolError) {
  MsgPtr msg = kernel_reply(NBD_CMD_CONNECT);
  EXPECT_EQ(parse_connect_reply(nlmsg_hdr(msg.get())).status().err(), EPROTO);
}

TEST(NbdNetlinkParse, ReplyToAnotherCommandIsAProtocolError) {
  MsgPtr msg = kernel_reply(NBD_CMD_STATUS);
  ASSERT_EQ(nla_put_u32(msg.get(), NBD_ATTR_INDEX, 1), 0);
  EXPECT_EQ(parse_connect_reply(nlmsg_hdr(msg.get())).status().err(), EPROTO);
  MsgPtr other = kernel_reply(NBD_CMD_CONNECT);
  EXPECT_EQ(parse_status_reply(nlmsg_hdr(other.get())).status().err(), EPROTO);
}

TEST(NbdNetlinkParse, StatusReplyListsEveryDevice) {
  MsgPtr msg = kernel_reply(NBD_CMD_STATUS);
  nlattr* list = nla_nest_start(msg.get(), NBD_ATTR_DEVICE_LIST);
  ASSERT_NE(list, nullptr);
  put_device(msg.get(), 0, 1);
  put_device(msg.get(), 1, 0);
  put_device(msg.get(), 15, 1);
  nla_nest_end(msg.get(), list);
  auto devices = parse_status_reply(nlmsg_hdr(msg.get()));
  ASSERT_TRUE(devices.is_ok()) << devices.status().to_string();
  ASSERT_EQ(devices->size(), 3u);
  EXPECT_EQ((*devices)[0].index, 0u);
  EXPECT_TRUE((*devices)[0].connected);
  EXPECT_EQ((*devices)[1].index, 1u);
  EXPECT_FALSE((*devices)[1].connected);
  EXPECT_EQ((*devices)[2].index, 15u);
  EXPECT_TRUE((*devices)[2].connected);
}

TEST(NbdNetlinkParse, StatusReplyWithAnEmptyListHasNoDevice) {
  // The kernel's answer about an index that does not exist.
  MsgPtr msg = kernel_reply(NBD_CMD_STATUS);
  nlattr* list = nla_nest_start(msg.get(), NBD_ATTR_DEVICE_LIST);
  nla_nest_end_keep_empty(msg.get(), list);
  auto devices = parse_status_reply(nlmsg_hdr(msg.get()));
  ASSERT_TRUE(devices.is_ok()) << devices.status().to_string();
  EXPECT_TRUE(devices->empty());

  MsgPtr bare = kernel_reply(NBD_CMD_STATUS);
  devices = parse_status_reply(nlmsg_hdr(bare.get()));
  ASSERT_TRUE(devices.is_ok());
  EXPECT_TRUE(devices->empty());
}

TEST(NbdNetlinkParse, StatusReplyDeviceWithoutIndexIsAProtocolError) {
  MsgPtr msg = kernel_reply(NBD_CMD_STATUS);
  nlattr* list = nla_nest_start(msg.get(), NBD_ATTR_DEVICE_LIST);
  nlattr* item = nla_nest_start(msg.get(), NBD_DEVICE_ITEM);
  ASSERT_EQ(nla_put_u8(msg.get(), NBD_DEVICE_CONNECTED, 1), 0);
  nla_nest_end(msg.get(), item);
  nla_nest_end(msg.get(), list);
  EXPECT_EQ(parse_status_reply(nlmsg_hdr(msg.get())).status().err(), EPROTO);
}

// --- Device names and backends ---

TEST(NbdDeviceName, AcceptsDevNbdNAndNbdN) {
  EXPECT_EQ(parse_device("/dev/nbd0").value(), 0u);
  EXPECT_EQ(parse_device("/dev/nbd15").value(), 15u);
  EXPECT_EQ(parse_device("nbd7").value(), 7u);
  EXPECT_EQ(device_path(12), "/dev/nbd12");
}

TEST(NbdDeviceName, RejectsEverythingElse) {
  for (const char* bad : {"", "/dev/sda", "nbd", "/dev/nbd", "nbd-1", "nbd+1", "nbd01", "/dev/nbd1p1", "nbdx",
                          "/dev/nbd 1", "/tmp/nbd1", "99999999999", "nbd99999999999", "nbd1048576"}) {
    Result<uint32_t> r = parse_device(bad);
    EXPECT_FALSE(r.is_ok()) << bad;
    if (!r.is_ok()) {
      EXPECT_EQ(r.status().err(), EINVAL) << bad;
    }
  }
}

TEST(NbdBackend, IdentifierNamesTheSocketAndTheExport) {
  EXPECT_EQ(backend_identifier("/run/rbdcache/vm1.sock", "", 0), "rbdcache:/run/rbdcache/vm1.sock");
  EXPECT_EQ(backend_identifier("/run/x.sock", "disk", 0), "rbdcache:/run/x.sock?export=disk");
  EXPECT_EQ(socket_of_backend("rbdcache:/run/rbdcache/vm1.sock"), std::optional<std::string>("/run/rbdcache/vm1.sock"));
  EXPECT_EQ(socket_of_backend("rbdcache:/run/x.sock?export=disk"), std::optional<std::string>("/run/x.sock"));
  EXPECT_EQ(socket_of_backend("c704cb91-c6cf-466e-a335-0e935c0d5e47"), std::nullopt) << "rbd-nbd's cookie";
  EXPECT_EQ(socket_of_backend(""), std::nullopt);
}

TEST(NbdBackend, IdentifierRecordsTheConnectionCount) {
  EXPECT_EQ(backend_identifier("/run/x.sock", "", 4), "rbdcache:/run/x.sock;connections=4");
  EXPECT_EQ(backend_identifier("/run/x.sock", "disk", 16), "rbdcache:/run/x.sock?export=disk;connections=16");
  auto b = parse_backend("rbdcache:/run/x.sock?export=disk;connections=16");
  ASSERT_TRUE(b.has_value());
  EXPECT_EQ(b->socket, "/run/x.sock");
  EXPECT_EQ(b->export_name, "disk");
  EXPECT_EQ(b->connections, std::optional<unsigned>(16));
  b = parse_backend("rbdcache:/run/x.sock;connections=3");
  ASSERT_TRUE(b.has_value());
  EXPECT_EQ(b->socket, "/run/x.sock");
  EXPECT_EQ(b->export_name, "");
  EXPECT_EQ(b->connections, std::optional<unsigned>(3));
}

TEST(NbdBackend, IdentifiersWithoutACountStillParse) {
  auto b = parse_backend("rbdcache:/run/x.sock?export=disk");
  ASSERT_TRUE(b.has_value());
  EXPECT_EQ(b->socket, "/run/x.sock");
  EXPECT_EQ(b->export_name, "disk");
  EXPECT_EQ(b->connections, std::nullopt);
  // Not a count: left in the name.
  b = parse_backend("rbdcache:/run/x.sock?export=d;connections=many");
  ASSERT_TRUE(b.has_value());
  EXPECT_EQ(b->export_name, "d;connections=many");
  EXPECT_EQ(b->connections, std::nullopt);
  b = parse_backend("rbdcache:/run/x.sock;connections=0");
  ASSERT_TRUE(b.has_value());
  EXPECT_EQ(b->socket, "/run/x.sock;connections=0");
  EXPECT_EQ(b->connections, std::nullopt);
  EXPECT_EQ(parse_backend("nbd-client"), std::nullopt);
}

// --- sysfs ---

class SysfsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/rbdcache-sysfs.XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    root_ = tmpl;
  }
  void TearDown() override { std::filesystem::remove_all(root_); }

  void write(const std::string& rel, const std::string& text) {
    std::filesystem::path p = root_ / rel;
    std::filesystem::create_directories(p.parent_path());
    std::ofstream(p) << text;
  }

  std::filesystem::path root_;
};

TEST_F(SysfsTest, ReadsAConnectedDevice) {
  write("block/nbd3/pid", "4242\n");
  write("block/nbd3/backend", "rbdcache:/run/x.sock\n");
  write("block/nbd3/size", "2097152\n");  // 512-byte sectors: 1 GiB
  write("block/nbd3/ro", "1\n");
  write("block/nbd3/queue/logical_block_size", "4096\n");
  std::filesystem::create_directories(root_ / "block/nbd3/mq/0");
  std::filesystem::create_directories(root_ / "block/nbd3/mq/1");
  auto d = read_sysfs_device(3, root_.string());
  ASSERT_TRUE(d.is_ok()) << d.status().to_string();
  EXPECT_EQ(d->index, 3u);
  EXPECT_EQ(d->pid, std::optional<pid_t>(4242));
  EXPECT_EQ(d->backend, "rbdcache:/run/x.sock");
  EXPECT_EQ(d->size_bytes, 1ull << 30);
  EXPECT_EQ(d->logical_block_size, 4096u);
  EXPECT_TRUE(d->read_only);
  EXPECT_EQ(d->hw_queues, 2u);
  EXPECT_EQ(d->connections, 2u) << "no count in the backend: the queues";
}

TEST_F(SysfsTest, ConnectionsComeFromTheBackendNotTheQueues) {
  // Four sockets on a two-CPU machine: two hardware queues.
  write("block/nbd1/pid", "4242\n");
  write("block/nbd1/backend", "rbdcache:/run/x.sock;connections=4\n");
  write("block/nbd1/size", "2048\n");
  std::filesystem::create_directories(root_ / "block/nbd1/mq/0");
  std::filesystem::create_directories(root_ / "block/nbd1/mq/1");
  auto d = read_sysfs_device(1, root_.string());
  ASSERT_TRUE(d.is_ok()) << d.status().to_string();
  EXPECT_EQ(d->hw_queues, 2u);
  EXPECT_EQ(d->connections, 4u);
}

TEST_F(SysfsTest, AnUnconfiguredDeviceHasNoPidNorBackend) {
  write("block/nbd0/size", "0\n");
  write("block/nbd0/ro", "0\n");
  auto d = read_sysfs_device(0, root_.string());
  ASSERT_TRUE(d.is_ok()) << d.status().to_string();
  EXPECT_EQ(d->pid, std::nullopt);
  EXPECT_EQ(d->backend, "");
  EXPECT_EQ(d->size_bytes, 0u);
  EXPECT_FALSE(d->read_only);
  EXPECT_EQ(d->logical_block_size, 512u);
  EXPECT_EQ(d->connections, 0u);
  EXPECT_EQ(d->hw_queues, 0u);
}

TEST_F(SysfsTest, AMissingDeviceIsENOENT) {
  EXPECT_EQ(read_sysfs_device(9, root_.string()).status().err(), ENOENT);
}

// --- The real kernel, where it is absent ---

TEST(NbdNetlinkOpen, WithoutTheModuleSaysModprobe) {
  if (std::filesystem::exists("/sys/module/nbd")) GTEST_SKIP() << "the nbd module is loaded here";
  auto ctrl = NbdNetlink::open("nlctrl");
  if (!ctrl.is_ok()) GTEST_SKIP() << "no generic netlink here: " << ctrl.status().to_string();
  auto nl = NbdNetlink::open();
  ASSERT_FALSE(nl.is_ok());
  EXPECT_EQ(nl.status().err(), ENODEV);
  EXPECT_NE(nl.status().message().find("modprobe nbd"), std::string::npos) << nl.status().message();
}

// The send and receive path against a real kernel: messages aimed at the
// generic netlink controller, which has no operation for these command
// numbers, must come back with the kernel's errno itself.
TEST(NbdNetlinkKernel, KernelErrorsComeBackAsTheirErrno) {
  auto nl = NbdNetlink::open("nlctrl");
  if (!nl.is_ok()) GTEST_SKIP() << "no generic netlink here: " << nl.status().to_string();
  ASSERT_EQ((*nl)->family(), GENL_ID_CTRL);
  // NBD_CMD_STATUS is CTRL_CMD_NEWOPS, NBD_CMD_DISCONNECT CTRL_CMD_DELFAMILY:
  // the controller implements neither.
  auto devices = (*nl)->status(1);
  ASSERT_FALSE(devices.is_ok());
  EXPECT_EQ(devices.status().err(), EOPNOTSUPP) << devices.status().to_string();
  Status st = (*nl)->disconnect(1);
  EXPECT_EQ(st.err(), EOPNOTSUPP) << st.to_string();
  EXPECT_NE(st.message().find("/dev/nbd1"), std::string::npos) << st.message();
  // The socket stays usable after an error.
  EXPECT_EQ((*nl)->status().status().err(), EOPNOTSUPP);
}

}  // namespace
}  // namespace rbdcache::nbd
