# Helpers for the tests against a real Ceph cluster.  Source it after the
# integration helpers:
#
#   source "$(dirname "$0")/../integration/lib.sh" "$@"
#   source "$(dirname "$0")/lib-ceph.sh"
#
# The cluster is not started here.  RBDCACHE_TEST_CEPH_ENV names a file of
# shell lines written by `scripts/dev-ceph.sh env` (scripts/test.sh starts
# the cluster and sets it).  When it is unset, or the cluster does not answer,
# the test exits 77 (SKIP).
#
# After sourcing:
#   CEPH_CONF, CEPH_ARGS        the restricted user client.rbdcache, exported
#   CEPH_USER_ID, CEPH_KEYRING  its id (without "client.") and keyring
#   create_image [SIZE]         creates rbd/test-PID-RANDOM (default 256M) and
#                               sets IMAGE and IMAGE_SPEC (rbd/IMAGE); every
#                               image created is removed at exit, after the
#                               servers have been stopped
#   start_rbd_server SPEC [ARGS...]
#                               like start_server, for --origin rbd:SPEC;
#                               runs under "${RBD_SERVER_ENV[@]}" (default
#                               `env`), e.g. (env -u CEPH_ARGS -u CEPH_CONF)
#   rbd_export SPEC FILE        exports the image to FILE (fails the test on error)

require rbd ceph-authtool
require_rbdcache

[ -n "${RBDCACHE_TEST_CEPH_ENV:-}" ] ||
  skip "RBDCACHE_TEST_CEPH_ENV is not set (scripts/test.sh starts a cluster with scripts/dev-ceph.sh)"
[ -r "$RBDCACHE_TEST_CEPH_ENV" ] || skip "RBDCACHE_TEST_CEPH_ENV=$RBDCACHE_TEST_CEPH_ENV is not readable"
# shellcheck disable=SC1090
source "$RBDCACHE_TEST_CEPH_ENV"
CEPH_USER_ID=${RBDCACHE_DEV_CEPH_ID:?the env file sets no RBDCACHE_DEV_CEPH_ID}
CEPH_KEYRING=${RBDCACHE_DEV_CEPH_KEYRING:?the env file sets no RBDCACHE_DEV_CEPH_KEYRING}
export CEPH_CONF CEPH_ARGS

timeout 20 rbd ls rbd >/dev/null 2>"$T/rbd-ls.err" ||
  skip "the Ceph cluster in $RBDCACHE_TEST_CEPH_ENV does not answer: $(tail -n 2 "$T/rbd-ls.err")"

_images=()
RBD_SERVER_ENV=(env)

create_image() {
  local size=${1:-256M}
  IMAGE="test-$$-$RANDOM"
  IMAGE_SPEC="rbd/$IMAGE"
  timeout 60 rbd create --size "$size" "$IMAGE_SPEC" || fail "rbd create --size $size $IMAGE_SPEC failed"
  _images+=("$IMAGE_SPEC")
}

rbd_export() {
  local spec=$1 file=$2
  rm -f "$file"
  timeout 120 rbd export --no-progress "$spec" "$file" >/dev/null 2>"$T/rbd-export.err" ||
    fail "rbd export $spec failed: $(cat "$T/rbd-export.err")"
}

# make_host_caches a b ...: one cache (64 MiB, 16 MiB of metadata) per host
# sharing the image, as CACHE_A/META_A, CACHE_B/META_B, ... (lib-cache.sh's
# make_cache).
make_host_caches() {
  local h
  for h in "$@"; do
    make_cache "$h" 64M 16M
    declare -g "CACHE_${h^^}=$CACHE_DEV" "META_${h^^}=$META_DEV"
  done
}

start_rbd_server() {
  local spec=$1
  shift
  _server_seq=$((_server_seq + 1))
  SOCK="$T/nbd$_server_seq.sock"
  CTL="$T/nbd$_server_seq.ctl"
  SERVER_LOG="$T/server$_server_seq.log"
  "${RBD_SERVER_ENV[@]}" "$RBDCACHE" serve --origin "rbd:$spec" --socket "$SOCK" "$@" </dev/null >"$SERVER_LOG" 2>&1 &
  SERVER_PID=$!
  _server_pids+=("$SERVER_PID")
  wait_for_socket "$SOCK" "$SERVER_PID"
  URI="nbd+unix:///?socket=$SOCK"
}

# Runs before lib.sh's cleanup: an image cannot be removed while a server
# still has it open.
_ceph_cleanup() {
  local rc=$? pid spec
  trap - EXIT
  for pid in "${_server_pids[@]}"; do
    _kill_and_reap "$pid"
  done
  for spec in "${_images[@]}"; do
    # A cache's detach snapshot (rbdcache.UUID) would keep the image.
    timeout 60 rbd snap purge --no-progress "$spec" >/dev/null 2>&1
    timeout 60 rbd rm --no-progress "$spec" >/dev/null 2>&1 ||
      log "warning: could not remove image $spec"
  done
  (exit "$rc")
  _cleanup
}
trap _ceph_cleanup EXIT
