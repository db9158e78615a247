# shellcheck shell=bash
# Helpers for the /dev/nbdN tests (test-nbd-kernel-*.sh). Source it after
# ../integration/lib.sh (directly or through ../cache_integration/lib-cache.sh):
#
#   source "$(dirname "$0")/lib-kernel.sh"
#
# Skips (exit 77) unless run as root with the nbd module loadable; meson
# runs these tests inside a Debian-kernel guest (tests/vm/run-in-vm.sh).
#
#   serve ARGS...        starts `rbdcache serve --socket $VSOCK ARGS...`,
#                        replacing a stale socket file; sets VM_PID (and
#                        SERVER_PID). Restarting it keeps the same socket.
#   map_device ARGS...   rbdcache map --socket $VSOCK ARGS...; sets DEV and
#                        waits for the block device; unmapped on exit.
#   is_listed DEV        list-mapped shows DEV.
#   unmap_device DEV     unmaps and waits until list-mapped no longer shows it.
#   list_conns DEV       the connections list-mapped --json reports for DEV.
#   conns_to_server      connections the server has accepted on $VSOCK.
#   region FILE SKIP_MB COUNT_MB   COUNT_MB MiB of FILE (O_DIRECT on devices).

[ "$(id -u)" -eq 0 ] || skip "needs root to map /dev/nbdN"
modprobe nbd >/dev/null 2>&1 || skip "no nbd kernel module ('modprobe nbd' failed)"
[ -d /sys/module/nbd ] || skip "no nbd kernel module (/sys/module/nbd is absent)"
require_rbdcache

M=1048576
VSOCK="$T/vm.sock"

# Unmap whatever the test mapped before lib.sh stops the servers.
MAPPED=()
_unmap_all() {
  local d
  for d in "${MAPPED[@]}"; do "$RBDCACHE" unmap "$d" >/dev/null 2>&1; done
}
trap '_rc=$?; _unmap_all; (exit $_rc); _cleanup' EXIT

serve() {
  rm -f "$VSOCK"
  "$RBDCACHE" serve --socket "$VSOCK" "$@" </dev/null >>"$T/server.log" 2>&1 &
  SERVER_PID=$!
  VM_PID=$SERVER_PID
  track_pid "$VM_PID"
  wait_for_socket "$VSOCK" "$VM_PID"
}

map_device() {
  local i
  DEV=$("$RBDCACHE" map --socket "$VSOCK" "$@" 2>"$T/map.err") || fail "map $* failed: $(cat "$T/map.err")"
  [[ $DEV =~ ^/dev/nbd[0-9]+$ ]] || fail "map printed '$DEV', expected /dev/nbdN"
  MAPPED+=("$DEV")
  for ((i = 0; i < 50; i++)); do [ -b "$DEV" ] && break; sleep 0.1; done
  [ -b "$DEV" ] || fail "$DEV is not a block device"
}

# is_listed DEV: list-mapped shows DEV. Its output is read whole first: a
# `list-mapped | grep -q` pipeline under pipefail fails when grep exits
# before list-mapped has written everything.
is_listed() {
  local out
  out=$("$RBDCACHE" list-mapped) || fail "list-mapped failed"
  grep -q "^$1 " <<<"$out"
}

unmap_device() {
  local dev=$1 i d keep=()
  "$RBDCACHE" unmap "$dev" 2>"$T/unmap.err" || fail "unmap $dev failed: $(cat "$T/unmap.err")"
  for ((i = 0; i < 100; i++)); do
    is_listed "$dev" || break
    sleep 0.1
  done
  is_listed "$dev" && fail "$dev is still listed after unmap"
  for d in "${MAPPED[@]}"; do [ "$d" = "$dev" ] || keep+=("$d"); done
  MAPPED=("${keep[@]}")
}

list_conns() {
  "$RBDCACHE" list-mapped --json | python3 -c '
import json, sys
rows = [r for r in json.load(sys.stdin) if r["device"] == sys.argv[1]]
print(rows[0]["connections"] if rows else "none")' "$1"
}

# Accepted unix sockets carry the listener's path in /proc/net/unix; the
# listener itself is in state 01, connected ones in 03.
conns_to_server() { awk -v p="$(readlink -f "$VSOCK")" '$8 == p && $6 == "03"' /proc/net/unix | wc -l; }

region() {
  local flags=()
  [ -b "$1" ] && flags=(iflag=direct)
  dd if="$1" bs=$M skip="$2" count="$3" "${flags[@]}" status=none
}
