#include "cli/commands.h"

namespace rbdcache::cli {

void add_serve_command(CLI::App& app, int& exit_code) {
  auto* cmd = app.add_subcommand("serve", "Serve an origin image over NBD");
  cmd->callback([&exit_code] { exit_code = 1; });
}

}  // namespace rbdcache::cli
