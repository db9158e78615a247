#include "nbd/netlink.h"

#include <linux/nbd-netlink.h>
#include <netlink/attr.h>
#include <netlink/genl/ctrl.h>
#include <netlink/genl/genl.h>
#include <netlink/msg.h>
#include <netlink/netlink.h>
#include <sys/stat.h>

#include <cerrno>
#include <charconv>
#include <cstring>
#include <filesystem>
#include <functional>
#include <fstream>

namespace rbdcache::nbd {

namespace {

constexpr std::string_view kBackendPrefix = "rbdcache:";
constexpr std::string_view kBackendExport = "?export=";
constexpr std::string_view kBackendConnections = ";connections=";

Status message_full() { return Status::from_errno(EMSGSIZE, "netlink message too small"); }

// Appends the generic netlink header for `cmd`.
Status put_header(nl_msg* msg, int family, uint8_t cmd) {
  if (genlmsg_put(msg, NL_AUTO_PORT, NL_AUTO_SEQ, family, 0, 0, cmd, NBD_GENL_VERSION) == nullptr) {
    return message_full();
  }
  return Status::ok();
}

// NBD_ATTR_SOCKETS { NBD_SOCK_ITEM { NBD_SOCK_FD u32 } ... }
Status put_sockets(nl_msg* msg, const std::vector<int>& fds) {
  nlattr* socks = nla_nest_start(msg, NBD_ATTR_SOCKETS);
  if (socks == nullptr) return message_full();
  for (int fd : fds) {
    nlattr* item = nla_nest_start(msg, NBD_SOCK_ITEM);
    if (item == nullptr || nla_put_u32(msg, NBD_SOCK_FD, static_cast<uint32_t>(fd)) < 0) return message_full();
    nla_nest_end(msg, item);
  }
  nla_nest_end(msg, socks);
  return Status::ok();
}

Status check_fds(const std::vector<int>& fds) {
  if (fds.empty()) return Status::invalid_argument("at least one socket is needed");
  for (int fd : fds) {
    if (fd < 0) return Status::invalid_argument(fmt::format("invalid socket descriptor {}", fd));
  }
  return Status::ok();
}

Status check_backend(const std::string& backend) {
  if (backend.find('\0') != std::string::npos) return Status::invalid_argument("backend identifier contains NUL");
  return Status::ok();
}

Status put_u64(nl_msg* msg, int type, uint64_t v) { return nla_put_u64(msg, type, v) < 0 ? message_full() : Status::ok(); }

Status put_timeouts(nl_msg* msg, const std::optional<uint64_t>& timeout,
                    const std::optional<uint64_t>& dead_conn_timeout) {
  if (timeout) RBDCACHE_RETURN_IF_ERROR(put_u64(msg, NBD_ATTR_TIMEOUT, *timeout));
  if (dead_conn_timeout) RBDCACHE_RETURN_IF_ERROR(put_u64(msg, NBD_ATTR_DEAD_CONN_TIMEOUT, *dead_conn_timeout));
  return Status::ok();
}

Status put_backend(nl_msg* msg, const std::string& backend) {
  if (backend.empty()) return Status::ok();
  return nla_put_string(msg, NBD_ATTR_BACKEND_IDENTIFIER, backend.c_str()) < 0 ? message_full() : Status::ok();
}

// Parses the generic netlink attributes of a kernel answer to `cmd`.
Status parse_reply(nlmsghdr* nlh, uint8_t cmd, nlattr** tb) {
  nla_policy policy[NBD_ATTR_MAX + 1] = {};
  policy[NBD_ATTR_INDEX].type = NLA_U32;
  policy[NBD_ATTR_DEVICE_LIST].type = NLA_NESTED;
  if (nlh == nullptr || !genlmsg_valid_hdr(nlh, 0)) return Status::from_errno(EPROTO, "short netlink reply");
  if (genlmsg_hdr(nlh)->cmd != cmd) {
    return Status::from_errno(EPROTO, fmt::format("netlink reply to command {}, expected {}", genlmsg_hdr(nlh)->cmd, cmd));
  }
  int rc = genlmsg_parse(nlh, 0, tb, NBD_ATTR_MAX, policy);
  if (rc < 0) return Status::from_errno(EPROTO, fmt::format("malformed netlink reply: {}", nl_geterror(rc)));
  return Status::ok();
}

// Reads a small sysfs attribute, without its trailing newline. nullopt when
// absent or unreadable.
std::optional<std::string> read_attr(const std::filesystem::path& p) {
  std::ifstream in(p);
  if (!in) return std::nullopt;
  std::string s;
  std::getline(in, s);
  if (in.bad()) return std::nullopt;
  return s;
}

template <typename T>
std::optional<T> parse_number(std::string_view s) {
  T v{};
  auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (ec != std::errc() || end != s.data() + s.size() || s.empty()) return std::nullopt;
  return v;
}

// The operator-facing message for a kernel errno on `what` (a verb phrase
// naming the device).
Status explain(int err, std::string_view what, std::optional<uint32_t> index) {
  const std::string dev = index ? device_path(*index) : std::string("an nbd device");
  switch (err) {
    case EPERM:
    case EACCES:
      return Status::from_errno(EPERM, fmt::format("{}: permission denied; configuring {} needs CAP_SYS_ADMIN (run as root)",
                                                   what, dev));
    case EBUSY:
      return Status::from_errno(EBUSY, fmt::format("{}: {} is already in use (see rbdcache list-mapped)", what, dev));
    case EINVAL:
      return Status::from_errno(EINVAL, fmt::format("{}: the kernel refused the request for {} (invalid argument; "
                                                    "'dmesg' shows the nbd driver's reason)",
                                                    what, dev));
    default:
      return Status::system_error(err, fmt::format("{} ({})", what, dev));
  }
}

}  // namespace

// --- Builders ---

Status build_connect(nl_msg* msg, int family, const ConnectRequest& req) {
  RBDCACHE_RETURN_IF_ERROR(check_fds(req.fds));
  RBDCACHE_RETURN_IF_ERROR(check_backend(req.backend));
  if (req.size_bytes == 0) return Status::invalid_argument("the device size must not be zero");
  if (req.block_size < 512 || (req.block_size & (req.block_size - 1)) != 0) {
    return Status::invalid_argument(fmt::format("block size {} is not a power of two of at least 512", req.block_size));
  }
  RBDCACHE_RETURN_IF_ERROR(put_header(msg, family, NBD_CMD_CONNECT));
  if (req.index && nla_put_u32(msg, NBD_ATTR_INDEX, *req.index) < 0) return message_full();
  RBDCACHE_RETURN_IF_ERROR(put_u64(msg, NBD_ATTR_SIZE_BYTES, req.size_bytes));
  RBDCACHE_RETURN_IF_ERROR(put_u64(msg, NBD_ATTR_BLOCK_SIZE_BYTES, req.block_size));
  RBDCACHE_RETURN_IF_ERROR(put_timeouts(msg, req.timeout, req.dead_conn_timeout));
  RBDCACHE_RETURN_IF_ERROR(put_u64(msg, NBD_ATTR_SERVER_FLAGS, req.server_flags));
  RBDCACHE_RETURN_IF_ERROR(put_u64(msg, NBD_ATTR_CLIENT_FLAGS, req.client_flags));
  RBDCACHE_RETURN_IF_ERROR(put_sockets(msg, req.fds));
  return put_backend(msg, req.backend);
}

Status build_disconnect(nl_msg* msg, int family, uint32_t index) {
  RBDCACHE_RETURN_IF_ERROR(put_header(msg, family, NBD_CMD_DISCONNECT));
  return nla_put_u32(msg, NBD_ATTR_INDEX, index) < 0 ? message_full() : Status::ok();
}

Status build_reconfigure(nl_msg* msg, int family, const ReconfigureRequest& req) {
  RBDCACHE_RETURN_IF_ERROR(check_fds(req.fds));
  RBDCACHE_RETURN_IF_ERROR(check_backend(req.backend));
  RBDCACHE_RETURN_IF_ERROR(put_header(msg, family, NBD_CMD_RECONFIGURE));
  if (nla_put_u32(msg, NBD_ATTR_INDEX, req.index) < 0) return message_full();
  RBDCACHE_RETURN_IF_ERROR(put_timeouts(msg, req.timeout, req.dead_conn_timeout));
  RBDCACHE_RETURN_IF_ERROR(put_sockets(msg, req.fds));
  return put_backend(msg, req.backend);
}

Status build_status(nl_msg* msg, int family, std::optional<uint32_t> index) {
  RBDCACHE_RETURN_IF_ERROR(put_header(msg, family, NBD_CMD_STATUS));
  if (index && nla_put_u32(msg, NBD_ATTR_INDEX, *index) < 0) return message_full();
  return Status::ok();
}

// --- Parsers ---

Result<uint32_t> parse_connect_reply(nlmsghdr* nlh) {
  nlattr* tb[NBD_ATTR_MAX + 1] = {};
  RBDCACHE_RETURN_IF_ERROR(parse_reply(nlh, NBD_CMD_CONNECT, tb));
  if (tb[NBD_ATTR_INDEX] == nullptr) return Status::from_errno(EPROTO, "CONNECT reply without a device index");
  return nla_get_u32(tb[NBD_ATTR_INDEX]);
}

Result<std::vector<DeviceStatus>> parse_status_reply(nlmsghdr* nlh) {
  nlattr* tb[NBD_ATTR_MAX + 1] = {};
  RBDCACHE_RETURN_IF_ERROR(parse_reply(nlh, NBD_CMD_STATUS, tb));
  std::vector<DeviceStatus> devices;
  if (tb[NBD_ATTR_DEVICE_LIST] == nullptr) return devices;  // no device at that index
  nla_policy policy[NBD_DEVICE_ATTR_MAX + 1] = {};
  policy[NBD_DEVICE_INDEX].type = NLA_U32;
  policy[NBD_DEVICE_CONNECTED].type = NLA_U8;
  int rem = nla_len(tb[NBD_ATTR_DEVICE_LIST]);
  for (auto* item = static_cast<nlattr*>(nla_data(tb[NBD_ATTR_DEVICE_LIST])); nla_ok(item, rem);
       item = nla_next(item, &rem)) {
    if (nla_type(item) != NBD_DEVICE_ITEM) continue;
    nlattr* dev[NBD_DEVICE_ATTR_MAX + 1] = {};
    int rc = nla_parse_nested(dev, NBD_DEVICE_ATTR_MAX, item, policy);
    if (rc < 0) return Status::from_errno(EPROTO, fmt::format("malformed device in STATUS reply: {}", nl_geterror(rc)));
    if (dev[NBD_DEVICE_INDEX] == nullptr) return Status::from_errno(EPROTO, "device without an index in STATUS reply");
    DeviceStatus d;
    d.index = nla_get_u32(dev[NBD_DEVICE_INDEX]);
    d.connected = dev[NBD_DEVICE_CONNECTED] != nullptr && nla_get_u8(dev[NBD_DEVICE_CONNECTED]) != 0;
    devices.push_back(d);
  }
  return devices;
}

// --- NbdNetlink ---

Result<std::unique_ptr<NbdNetlink>> NbdNetlink::open(const std::string& family_name) {
  nl_sock* sock = nl_socket_alloc();
  if (sock == nullptr) return Status::from_errno(ENOMEM, "cannot allocate a netlink socket");
  int rc = genl_connect(sock);
  if (rc < 0) {
    nl_socket_free(sock);
    return Status::io_error(fmt::format("cannot open a generic netlink socket: {}", nl_geterror(rc)));
  }
  int family = genl_ctrl_resolve(sock, family_name.c_str());
  if (family < 0) {
    nl_socket_free(sock);
    if (family == -NLE_OBJ_NOTFOUND && family_name == NBD_GENL_FAMILY_NAME) {
      return Status::from_errno(ENODEV,
                                "the nbd kernel module is not loaded (load it with 'modprobe nbd'; "
                                "containers need it loaded on the host)");
    }
    return Status::io_error(fmt::format("cannot find the {} netlink family: {}", family_name, nl_geterror(family)));
  }
  return std::unique_ptr<NbdNetlink>(new NbdNetlink(sock, family));
}

NbdNetlink::~NbdNetlink() { nl_socket_free(sock_); }

namespace {

// State shared with the libnl callbacks of one transact().
struct Exchange {
  bool done = false;
  int err = 0;  // the kernel's errno, positive
  Status reply_status;
  std::function<Status(nlmsghdr*)> on_reply;
};

int on_valid(nl_msg* msg, void* arg) {
  auto* ex = static_cast<Exchange*>(arg);
  if (ex->on_reply && ex->reply_status.is_ok()) ex->reply_status = ex->on_reply(nlmsg_hdr(msg));
  return NL_OK;
}

int on_ack(nl_msg*, void* arg) {
  static_cast<Exchange*>(arg)->done = true;
  return NL_STOP;
}

int on_error(sockaddr_nl*, nlmsgerr* e, void* arg) {
  auto* ex = static_cast<Exchange*>(arg);
  ex->err = e->error < 0 ? -e->error : e->error;
  ex->done = true;
  return NL_STOP;
}

}  // namespace

Status NbdNetlink::transact(nl_msg* msg, std::string_view what, std::optional<uint32_t> index,
                            const std::function<Status(nlmsghdr*)>& on_reply) {
  std::unique_ptr<nl_msg, decltype(&nlmsg_free)> owned(msg, &nlmsg_free);
  std::unique_ptr<nl_cb, decltype(&nl_cb_put)> cb(nl_cb_alloc(NL_CB_DEFAULT), &nl_cb_put);
  if (!cb) return Status::from_errno(ENOMEM, "cannot allocate netlink callbacks");
  Exchange ex;
  ex.on_reply = on_reply;
  nl_cb_set(cb.get(), NL_CB_VALID, NL_CB_CUSTOM, on_valid, &ex);
  nl_cb_set(cb.get(), NL_CB_ACK, NL_CB_CUSTOM, on_ack, &ex);
  nl_cb_err(cb.get(), NL_CB_CUSTOM, on_error, &ex);
  int rc = nl_send_auto(sock_, msg);
  if (rc < 0) return Status::io_error(fmt::format("{}: netlink send: {}", what, nl_geterror(rc)));
  while (!ex.done) {
    rc = nl_recvmsgs(sock_, cb.get());
    // After on_error stops it, nl_recvmsgs() returns the kernel's error as
    // a libnl code; ex.err has the errno itself.
    if (ex.err != 0) break;
    if (rc < 0) return Status::io_error(fmt::format("{}: netlink receive: {}", what, nl_geterror(rc)));
  }
  if (ex.err != 0) return explain(ex.err, what, index);
  return ex.reply_status;
}

namespace {

using MsgPtr = std::unique_ptr<nl_msg, decltype(&nlmsg_free)>;

Result<nl_msg*> new_message() {
  nl_msg* msg = nlmsg_alloc();
  if (msg == nullptr) return Status::from_errno(ENOMEM, "cannot allocate a netlink message");
  return msg;
}

}  // namespace

Result<uint32_t> NbdNetlink::connect(const ConnectRequest& req) {
  auto m = new_message();
  if (!m.is_ok()) return m.status();
  MsgPtr msg(m.value(), &nlmsg_free);
  RBDCACHE_RETURN_IF_ERROR(build_connect(msg.get(), family_, req));
  std::optional<uint32_t> index;
  Status st = transact(msg.release(), "connect", req.index, [&index](nlmsghdr* nlh) {
    auto i = parse_connect_reply(nlh);
    if (!i.is_ok()) return i.status();
    index = i.value();
    return Status::ok();
  });
  if (!st.is_ok()) return st;
  if (!index) return Status::from_errno(EPROTO, "the kernel acknowledged CONNECT without naming the device");
  return *index;
}

Status NbdNetlink::disconnect(uint32_t index) {
  auto m = new_message();
  if (!m.is_ok()) return m.status();
  MsgPtr msg(m.value(), &nlmsg_free);
  RBDCACHE_RETURN_IF_ERROR(build_disconnect(msg.get(), family_, index));
  return transact(msg.release(), "disconnect", index, nullptr);
}

Status NbdNetlink::reconfigure(const ReconfigureRequest& req) {
  auto m = new_message();
  if (!m.is_ok()) return m.status();
  MsgPtr msg(m.value(), &nlmsg_free);
  RBDCACHE_RETURN_IF_ERROR(build_reconfigure(msg.get(), family_, req));
  return transact(msg.release(), "reconfigure", req.index, nullptr);
}

Result<std::vector<DeviceStatus>> NbdNetlink::status(std::optional<uint32_t> index) {
  auto m = new_message();
  if (!m.is_ok()) return m.status();
  MsgPtr msg(m.value(), &nlmsg_free);
  RBDCACHE_RETURN_IF_ERROR(build_status(msg.get(), family_, index));
  std::vector<DeviceStatus> devices;
  Status st = transact(msg.release(), "status", index, [&devices](nlmsghdr* nlh) {
    auto d = parse_status_reply(nlh);
    if (!d.is_ok()) return d.status();
    devices = std::move(d).value();
    return Status::ok();
  });
  if (!st.is_ok()) return st;
  return devices;
}

// --- Names and sysfs ---

Result<uint32_t> parse_device(std::string_view name) {
  std::string_view s = name;
  if (s.rfind("/dev/", 0) == 0) s.remove_prefix(5);
  if (s.rfind("nbd", 0) != 0) {
    return Status::invalid_argument(fmt::format("'{}' is not an nbd device (expected /dev/nbdN)", name));
  }
  s.remove_prefix(3);
  // No sign, no leading zeros (nbd01 is not a device name), at most 2^20 devices.
  auto n = parse_number<uint32_t>(s);
  if (!n || (s.size() > 1 && s[0] == '0') || *n >= (1u << 20)) {
    return Status::invalid_argument(fmt::format("'{}' is not an nbd device (expected /dev/nbdN)", name));
  }
  return *n;
}

std::string device_path(uint32_t index) { return fmt::format("/dev/nbd{}", index); }

std::string backend_identifier(std::string_view socket_path, std::string_view export_name, unsigned connections) {
  std::string id(kBackendPrefix);
  id += socket_path;
  if (!export_name.empty()) {
    id += kBackendExport;
    id += export_name;
  }
  if (connections != 0) id += fmt::format("{}{}", kBackendConnections, connections);
  return id;
}

std::optional<RbdcacheBackend> parse_backend(std::string_view backend) {
  if (backend.rfind(kBackendPrefix, 0) != 0) return std::nullopt;
  backend.remove_prefix(kBackendPrefix.size());
  RbdcacheBackend b;
  // The count comes last and is digits only.
  size_t c = backend.rfind(kBackendConnections);
  if (c != std::string_view::npos) {
    if (auto n = parse_number<unsigned>(backend.substr(c + kBackendConnections.size())); n && *n > 0) {
      b.connections = *n;
      backend = backend.substr(0, c);
    }
  }
  // A socket path may itself contain "?export=": the last one separates.
  size_t q = backend.rfind(kBackendExport);
  if (q != std::string_view::npos) {
    b.export_name = std::string(backend.substr(q + kBackendExport.size()));
    backend = backend.substr(0, q);
  }
  b.socket = std::string(backend);
  return b;
}

std::optional<std::string> socket_of_backend(std::string_view backend) {
  auto b = parse_backend(backend);
  if (!b) return std::nullopt;
  return b->socket;
}

Result<SysfsDevice> read_sysfs_device(uint32_t index, const std::string& sysfs_root) {
  namespace fs = std::filesystem;
  const fs::path dir = fs::path(sysfs_root) / "block" / fmt::format("nbd{}", index);
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) {
    return Status::from_errno(ENOENT, fmt::format("{} does not exist ({} is missing)", device_path(index), dir.string()));
  }
  SysfsDevice d;
  d.index = index;
  if (auto pid = read_attr(dir / "pid")) {
    if (auto v = parse_number<pid_t>(*pid)) d.pid = *v;
  }
  d.backend = read_attr(dir / "backend").value_or("");
  if (auto size = read_attr(dir / "size")) d.size_bytes = parse_number<uint64_t>(*size).value_or(0) * 512;
  if (auto lbs = read_attr(dir / "queue" / "logical_block_size")) {
    d.logical_block_size = parse_number<uint32_t>(*lbs).value_or(512);
  }
  d.read_only = read_attr(dir / "ro").value_or("0") == "1";
  for (const auto& e : fs::directory_iterator(dir / "mq", ec)) {
    if (e.is_directory(ec)) ++d.hw_queues;
  }
  auto rb = parse_backend(d.backend);
  d.connections = rb && rb->connections ? *rb->connections : d.hw_queues;
  return d;
}

}  // namespace rbdcache::nbd
