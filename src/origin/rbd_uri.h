// RbdUri: the `rbd:` origin URI, parsed and checked without touching Ceph;
// and the cephx user named in a CEPH_ARGS string.
//
//   rbd:POOL/IMAGE             an image in the pool's default namespace
//   rbd:POOL/NAMESPACE/IMAGE   an image in an RBD namespace
//
// Snapshots (`@SNAP`) are refused: the origin must be writable and follow
// the image head. Names may not be empty, may not contain '/', '@', white
// space or control characters; a pool name may not start with '.'
// (reserved by Ceph).
#pragma once

#include <string>
#include <string_view>

#include "rbdcache/status.h"

namespace rbdcache {

struct RbdUri {
  std::string pool;
  std::string name_space;  // empty: the default namespace
  std::string image;

  // "rbd:POOL/IMAGE" or "rbd:POOL/NAMESPACE/IMAGE".
  std::string to_string() const;
  // "POOL/IMAGE" or "POOL/NAMESPACE/IMAGE", as the rbd CLI spells it.
  std::string spec() const;
};

// Parses `uri`, which must start with "rbd:". The Status message names the
// faulty part and shows the expected form.
Result<RbdUri> parse_rbd_uri(std::string_view uri);

// The client id that CEPH_ARGS selects, as the Ceph tools read it:
// "--id X", "--id=X", "--user X", "--user=X", or "--name client.X", "-n client.X",
// "--name=client.X" (the last one wins). Empty when CEPH_ARGS names none,
// or names an entity that is not a client. librados cannot take the user
// from CEPH_ARGS once a handle exists, so the origin reads it here first.
std::string client_id_from_ceph_args(std::string_view ceph_args);

}  // namespace rbdcache
