// `status`, `flush`, `mode`, `invalidate`, `release`: control socket clients.
#include "cli/commands.h"

namespace rbdcache::cli {

void add_control_commands(CLI::App&, int&) {}

}  // namespace rbdcache::cli
