#include "cli/commands.h"

namespace rbdcache::cli {

void add_metadata_commands(CLI::App& /*app*/, int& /*exit_code*/) {}

}  // namespace rbdcache::cli
