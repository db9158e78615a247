// rbdcache: a userspace SSD cache for Ceph RBD images, served over NBD.
#include <cstdio>

#include "cli/commands.h"

#ifndef RBDCACHE_VERSION
#define RBDCACHE_VERSION "unknown"
#endif

int main(int argc, char** argv) {
  CLI::App app{
      "rbdcache " RBDCACHE_VERSION
      ": a userspace SSD cache for Ceph RBD images, served over NBD.\n"
      "Run 'rbdcache SUBCOMMAND --help' for the options of each subcommand."};
  app.set_version_flag("--version", std::string("rbdcache ") + RBDCACHE_VERSION);
  app.require_subcommand(1);

  int exit_code = 0;
  rbdcache::cli::add_serve_command(app, exit_code);
  rbdcache::cli::add_metadata_commands(app, exit_code);
  rbdcache::cli::add_control_commands(app, exit_code);
  rbdcache::cli::add_kernel_commands(app, exit_code);

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    // Usage errors exit 2; --help and --version exit 0.
    int rc = app.exit(e);
    return rc == 0 ? 0 : 2;
  }
  return exit_code;
}
