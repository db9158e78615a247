// Readiness and state notifications to the service manager (systemd's
// sd_notify(3) protocol, sent through libsystemd).
//
// Contract, shared by every function here:
//   - Without NOTIFY_SOCKET in the environment (not started by systemd as a
//     Type=notify service) each call does nothing and costs one getenv().
//   - A notification that cannot be sent is logged at debug level and
//     otherwise ignored: the service manager's view must never stop or fail
//     the server. Nothing here returns an error.
//   - Any thread may call any function at any time; each call sends one
//     datagram on a socket of its own.
//   - NOTIFY_SOCKET is left in the environment, so a notification may be
//     sent more than once (notify_status() while serving, for instance).
//   - Free text (`status`) is sent as STATUS=...; a newline in it would start
//     another assignment, so newlines are sent as spaces.
//
// How `rbdcache serve` uses them (the order the unit's Type=notify relies on):
//   notify_ready()     once every listening socket (NBD, control, metrics) is
//                      bound and the export accepts connections;
//   notify_status()    when the server's state changes (mode, flush progress);
//   notify_stopping()  when SIGTERM starts the drain of in-flight requests.
#pragma once

#include <chrono>
#include <string_view>

namespace rbdcache::control {

// True when NOTIFY_SOCKET is set, i.e. a service manager listens.
bool notify_socket_set();

// Sends READY=1, STATUS=`status` and MAINPID=<this process>. After it the
// service manager considers start-up done and starts the units ordered after
// this one. Call it once, after the server accepts connections.
void notify_ready(std::string_view status);

// Sends STATUS=`status`, a one-line human-readable state shown by
// `systemctl status`.
void notify_status(std::string_view status);

// Sends STOPPING=1 (and STATUS=`status` when it is not empty): the server
// has begun to shut down and will exit by itself.
void notify_stopping(std::string_view status = {});

// Sends EXTEND_TIMEOUT_USEC=`extra`: asks for `extra` more time before the
// start, runtime or stop timeout in progress fires. For long steps such as
// draining many in-flight requests or opening a slow cluster.
void notify_extend_timeout(std::chrono::microseconds extra);

// The watchdog interval the service manager expects WATCHDOG=1 within
// (WatchdogSec= in the unit), or zero when no watchdog is enabled for this
// process. A caller that enables pings should send them at half this
// interval.
std::chrono::microseconds watchdog_interval();

// Sends WATCHDOG=1: the server is alive and making progress.
void notify_watchdog();

}  // namespace rbdcache::control
