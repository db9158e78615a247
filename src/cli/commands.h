// Subcommand registration for the rbdcache command line.
//
// Each add_*_command function adds one or more subcommands to `app`. Their
// callbacks run after parsing and store the process exit status in
// `exit_code` (0 success, 1 failure or corruption found, 2 usage error).
// `exit_code` must outlive app.parse().
#pragma once

#include <CLI/CLI.hpp>

namespace rbdcache::cli {

// `serve`: run the NBD server.
void add_serve_command(CLI::App& app, int& exit_code);

// `format`, `check` and `dump`: the metadata device tools.
void add_metadata_commands(CLI::App& app, int& exit_code);

// `status`, `flush`, `mode`, `invalidate` and `release`: clients of a
// running server's control socket.
void add_control_commands(CLI::App& app, int& exit_code);

// `map`, `unmap`, `list-mapped` and `attach`: the kernel's /dev/nbdX.
void add_kernel_commands(CLI::App& app, int& exit_code);

}  // namespace rbdcache::cli
