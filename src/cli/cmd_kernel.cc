// `map`, `unmap`, `list-mapped`, `attach`: the kernel NBD client.
#include "cli/commands.h"

namespace rbdcache::cli {

void add_kernel_commands(CLI::App&, int&) {}

}  // namespace rbdcache::cli
