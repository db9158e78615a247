// The kernel's NBD client, /dev/nbdN, driven over generic netlink.
//
// The kernel NBD driver is configured through the generic netlink family
// "nbd" (linux/nbd-netlink.h): CONNECT hands it connected sockets, already
// past the handshake (nbd/client_handshake.h), and makes /dev/nbdN serve
// them; DISCONNECT tears a device down; RECONFIGURE replaces the sockets the
// kernel has seen die, which is how a restarted server takes a device back;
// STATUS lists the devices.
//
// This header has three layers, each usable without the next:
//  - build_*() and parse_*(): pure message builders and reply parsers. They
//    fill or read a libnl `struct nl_msg` / `struct nlmsghdr` and touch
//    nothing else, so tests check every attribute without a kernel.
//  - NbdNetlink: a netlink socket resolved to the "nbd" family. It sends the
//    messages, waits for the kernel's answer, and turns the kernel's errno
//    into a Status whose message tells the operator what to do.
//  - read_sysfs_device() and the device-name helpers: what /sys/block/nbdN
//    says about a device (backend, size, connections).
//
// Glossary:
//  index              N in /dev/nbdN.
//  backend            a free-form string given at CONNECT, shown in
//                     /sys/block/nbdN/backend. Since Linux 5.14 RECONFIGURE
//                     must repeat it exactly, so a device cannot be attached
//                     to the wrong server by mistake.
//  dead connection    a socket the kernel saw fail (the server died). I/O
//                     waits up to dead_conn_timeout for RECONFIGURE to bring
//                     a new socket before it fails.
//  timeout            the per-request I/O timeout. Unset, the kernel never
//                     fails a slow request; it only logs it.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "rbdcache/status.h"

struct nl_msg;
struct nl_sock;
struct nlmsghdr;

namespace rbdcache::nbd {

// --- Requests, as plain values ---

struct ConnectRequest {
  std::optional<uint32_t> index;   // unset: the kernel picks a free device, or adds one
  uint64_t size_bytes = 0;         // the export's size; the kernel requires it
  uint64_t block_size = 512;       // logical block size: a power of two, 512 to the page size
  std::optional<uint64_t> timeout;            // I/O timeout, seconds; unset: none
  std::optional<uint64_t> dead_conn_timeout;  // seconds to wait for a new socket; unset: 0, fail at once
  uint64_t server_flags = 0;       // NBD transmission flags from the handshake
  uint64_t client_flags = 0;       // NBD_CFLAG_*
  std::vector<int> fds;            // connected sockets in the transmission phase; at least one
  std::string backend;             // NBD_ATTR_BACKEND_IDENTIFIER; empty: not sent
};

struct ReconfigureRequest {
  uint32_t index = 0;
  std::optional<uint64_t> timeout;            // seconds; unset: unchanged
  std::optional<uint64_t> dead_conn_timeout;  // seconds; unset: unchanged
  std::vector<int> fds;            // each replaces one dead connection; extras are dropped by the kernel
  std::string backend;             // must equal the CONNECT's backend when that had one
};

// One entry of the STATUS answer.
struct DeviceStatus {
  uint32_t index = 0;
  bool connected = false;  // configured: mapped, or unmapped but still held open
};

// --- Pure message building and parsing ---
//
// Each builder writes the generic netlink header (command, version
// NBD_GENL_VERSION, `family` as the message type) and the attributes into
// `msg`, which must be freshly allocated (nlmsg_alloc()) and empty. Integer
// attributes have the kernel's widths: INDEX and SOCK_FD u32, the rest u64.
// Errors: EINVAL for a request the kernel would refuse (no socket, zero size,
// bad block size, negative fd), EMSGSIZE when `msg` is too small.

[[nodiscard]] Status build_connect(nl_msg* msg, int family, const ConnectRequest& req);
[[nodiscard]] Status build_disconnect(nl_msg* msg, int family, uint32_t index);
[[nodiscard]] Status build_reconfigure(nl_msg* msg, int family, const ReconfigureRequest& req);
// Without `index`, asks about every device.
[[nodiscard]] Status build_status(nl_msg* msg, int family, std::optional<uint32_t> index);

// The kernel answers CONNECT with the index of the device it configured.
// EPROTO if `nlh` is not such an answer.
[[nodiscard]] Result<uint32_t> parse_connect_reply(nlmsghdr* nlh);
// The kernel answers STATUS with NBD_ATTR_DEVICE_LIST: one NBD_DEVICE_ITEM
// (index, connected) per device. EPROTO if malformed.
[[nodiscard]] Result<std::vector<DeviceStatus>> parse_status_reply(nlmsghdr* nlh);

// --- Talking to the kernel ---

// A generic netlink socket bound to the "nbd" family. Not thread-safe: use
// one per thread. CONNECT, DISCONNECT and RECONFIGURE need CAP_SYS_ADMIN;
// STATUS does not.
class NbdNetlink {
 public:
  // Errors: ENODEV when the nbd module is not loaded (the message says
  // "modprobe nbd"), or the socket's own error. `family_name` is for tests,
  // which aim the messages at a family every kernel has ("nlctrl").
  [[nodiscard]] static Result<std::unique_ptr<NbdNetlink>> open(const std::string& family_name = "nbd");
  ~NbdNetlink();
  NbdNetlink(const NbdNetlink&) = delete;
  NbdNetlink& operator=(const NbdNetlink&) = delete;

  // Configures a device and returns its index. Errors: EPERM (not root),
  // EBUSY (the device is in use), EINVAL (refused; the kernel log says why).
  // The kernel takes its own references to the sockets: the caller may
  // close `req.fds` once this returns, whatever the outcome.
  [[nodiscard]] Result<uint32_t> connect(const ConnectRequest& req);
  // Asks the kernel to disconnect the device: it sends NBD_CMD_DISC to the
  // server, fails queued I/O and frees the device once nobody holds it open.
  [[nodiscard]] Status disconnect(uint32_t index);
  // Replaces dead connections and updates timeouts. EINVAL when the device
  // is not configured or the backend does not match.
  [[nodiscard]] Status reconfigure(const ReconfigureRequest& req);
  // The devices the kernel knows (all, or just `index`; empty if `index` does
  // not exist).
  [[nodiscard]] Result<std::vector<DeviceStatus>> status(std::optional<uint32_t> index = std::nullopt);

  int family() const { return family_; }

 private:
  NbdNetlink(nl_sock* sock, int family) : sock_(sock), family_(family) {}
  // Sends `msg` (which this frees) and reads until the kernel's ack or error.
  // Each reply message other than the ack is passed to `on_reply`, when set.
  // A kernel error becomes a Status naming `what` and the device `index`.
  Status transact(nl_msg* msg, std::string_view what, std::optional<uint32_t> index,
                  const std::function<Status(nlmsghdr*)>& on_reply);

  nl_sock* sock_;
  int family_;
};

// --- Device names and sysfs ---

// "/dev/nbd3" or "nbd3" to 3. EINVAL for anything else.
[[nodiscard]] Result<uint32_t> parse_device(std::string_view name);
// 3 to "/dev/nbd3".
std::string device_path(uint32_t index);

// The backend identifier rbdcache gives a device it maps from the unix
// socket `socket_path` (which should be canonical, so that map and attach
// agree) with `connections` sockets: "rbdcache:" + path, then "?export=" +
// name if the name is not empty, then ";connections=N" when `connections`
// is not 0. The kernel shows as many hardware queues as the machine has CPUs
// at most, so the identifier is where attach finds how many sockets the
// device really had.
std::string backend_identifier(std::string_view socket_path, std::string_view export_name, unsigned connections);

// What an identifier made by backend_identifier() says. Identifiers of
// earlier versions have no connection count (nullopt).
struct RbdcacheBackend {
  std::string socket;
  std::string export_name;
  std::optional<unsigned> connections;
};
// nullopt if `backend` is not rbdcache's.
std::optional<RbdcacheBackend> parse_backend(std::string_view backend);
// parse_backend(backend)->socket.
std::optional<std::string> socket_of_backend(std::string_view backend);

// What /sys/block/nbdN says. Attributes the kernel does not show read as
// empty or zero: `pid` exists only while the device is configured, `backend`
// since Linux 5.14.
struct SysfsDevice {
  uint32_t index = 0;
  std::optional<pid_t> pid;       // the process that configured the device
  std::string backend;
  uint64_t size_bytes = 0;
  uint32_t logical_block_size = 512;
  bool read_only = false;
  // The sockets given at CONNECT: the count rbdcache's backend identifier
  // records, else `hw_queues`.
  unsigned connections = 0;
  // /sys/block/nbdN/mq entries: one per socket, but no more than the CPUs.
  unsigned hw_queues = 0;
};

// ENOENT when /sys/block/nbdN does not exist. `sysfs_root` is for tests.
[[nodiscard]] Result<SysfsDevice> read_sysfs_device(uint32_t index, const std::string& sysfs_root = "/sys");

}  // namespace rbdcache::nbd
