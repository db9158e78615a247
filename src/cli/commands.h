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

}  // namespace rbdcache::cli
