#!/usr/bin/env bash
# /dev/nbdN end to end through the kernel's NBD client:
#  1. map a running server's export; the device has the export's size and
#     rbdcache:SOCKET as its backend, and list-mapped shows it;
#  2. reads through the device see the origin, writes reach the origin;
#  3. kill -9 the server; a read issued while it is dead waits (the
#     dead-connection timeout) instead of failing; restart the server on the
#     same socket and attach; the held read completes with the right data
#     and new I/O works;
#  4. attach from another server's socket is refused;
#  5. unmap; the device is gone from list-mapped; a second unmap fails;
#  6. a map with two connections serves I/O too.
# Needs root and the nbd kernel module: exits 77 (skip) where `modprobe nbd`
# fails, as on machines without the module.
source "$(dirname "$0")/../integration/lib.sh" "$@"

[ "$(id -u)" -eq 0 ] || skip "needs root to map /dev/nbdN"
modprobe nbd >/dev/null 2>&1 || skip "no nbd kernel module ('modprobe nbd' failed)"
[ -d /sys/module/nbd ] || skip "no nbd kernel module (/sys/module/nbd is absent)"
require_rbdcache
require dd cmp blockdev python3 timeout readlink

M=1048576
SIZE=$((64 * M))
origin="$T/origin.img"
make_origin "$origin" "$SIZE" random
VSOCK="$T/vm.sock"

# Unmap whatever this test mapped before lib.sh stops the servers.
MAPPED=()
_unmap_all() {
  local d
  for d in "${MAPPED[@]}"; do "$RBDCACHE" unmap "$d" >/dev/null 2>&1; done
}
trap '_rc=$?; _unmap_all; (exit $_rc); _cleanup' EXIT

# serve: starts a server on $VSOCK (replacing a stale socket file); sets
# SERVER_PID.
serve() {
  rm -f "$VSOCK"
  "$RBDCACHE" serve --origin "file:$origin" --socket "$VSOCK" </dev/null >>"$T/server.log" 2>&1 &
  SERVER_PID=$!
  track_pid "$SERVER_PID"
  wait_for_socket "$VSOCK" "$SERVER_PID"
}

# region FILE SKIP_MB COUNT_MB: COUNT_MB MiB of FILE from SKIP_MB MiB on,
# read without the page cache when FILE is a device.
region() {
  local flags=()
  [ -b "$1" ] && flags=(iflag=direct)
  dd if="$1" bs=$M skip="$2" count="$3" "${flags[@]}" status=none
}

# same_region A B SKIP_MB COUNT_MB WHAT
same_region() {
  region "$1" "$3" "$4" >"$T/a.bin" || fail "$5: reading $1 failed"
  region "$2" "$3" "$4" >"$T/b.bin" || fail "$5: reading $2 failed"
  cmp -s "$T/a.bin" "$T/b.bin" || fail "$5: $1 and $2 differ at MiB $3..$(($3 + $4))"
}

# --- 1. map ---
serve
DEV=$("$RBDCACHE" map --socket "$VSOCK" --dead-conn-timeout 90 2>"$T/map.err") ||
  fail "map failed: $(cat "$T/map.err")"
[[ $DEV =~ ^/dev/nbd[0-9]+$ ]] || fail "map printed '$DEV', expected /dev/nbdN"
MAPPED+=("$DEV")
idx=${DEV#/dev/nbd}
for ((i = 0; i < 50; i++)); do [ -b "$DEV" ] && break; sleep 0.1; done
[ -b "$DEV" ] || fail "$DEV is not a block device"
[ "$(blockdev --getsize64 "$DEV")" -eq "$SIZE" ] || fail "$DEV is $(blockdev --getsize64 "$DEV") bytes, expected $SIZE"
canon=$(readlink -f "$VSOCK")
if [ -e "/sys/block/nbd$idx/backend" ]; then
  [ "$(cat "/sys/block/nbd$idx/backend")" = "rbdcache:$canon" ] ||
    fail "backend is '$(cat "/sys/block/nbd$idx/backend")', expected rbdcache:$canon"
fi
"$RBDCACHE" list-mapped >"$T/list" || fail "list-mapped failed"
grep -qE "^$DEV +$SIZE " "$T/list" || fail "list-mapped does not show $DEV: $(cat "$T/list")"
"$RBDCACHE" list-mapped --json >"$T/list.json" || fail "list-mapped --json failed"
python3 - "$T/list.json" "$DEV" "$SIZE" "$canon" <<'PY' || fail "list-mapped --json is wrong: $(cat "$T/list.json")"
import json, os, sys
rows = [r for r in json.load(open(sys.argv[1])) if r["device"] == sys.argv[2]]
assert len(rows) == 1, rows
r = rows[0]
assert r["size"] == int(sys.argv[3]), r
assert r["connections"] == 1, r
assert r["read_only"] is False, r
if os.path.exists("/sys/block/%s/backend" % os.path.basename(sys.argv[2])):
    assert r["rbdcache"] is True and r["socket"] == sys.argv[4], r
PY
# The device is taken.
"$RBDCACHE" map --socket "$VSOCK" --device "$DEV" >/dev/null 2>"$T/err" && fail "a second map to $DEV succeeded"
grep -qi 'in use' "$T/err" || fail "a second map to $DEV: $(cat "$T/err")"

# --- 2. I/O through the kernel ---
same_region "$DEV" "$origin" 0 4 "read through $DEV"
head -c $((4 * M)) /dev/urandom >"$T/pattern1"
dd if="$T/pattern1" of="$DEV" bs=$M seek=8 oflag=direct conv=fsync status=none || fail "write to $DEV failed"
region "$origin" 8 4 | cmp -s - "$T/pattern1" || fail "data written through $DEV is not in the origin"
region "$DEV" 8 4 | cmp -s - "$T/pattern1" || fail "data written through $DEV does not read back"

# --- 3. server death, restart, attach ---
kill -KILL "$SERVER_PID"
wait "$SERVER_PID" 2>/dev/null
timeout 120 dd if="$DEV" of="$T/held" bs=$M skip=20 count=2 iflag=direct status=none &
held=$!
track_pid $held
sleep 3
kill -0 $held 2>/dev/null || fail "a read issued while the server was dead ended before attach (exit: $(wait $held; echo $?))"
serve
"$RBDCACHE" attach --socket "$VSOCK" --device "$DEV" >"$T/attach.out" 2>"$T/attach.err" ||
  fail "attach failed: $(cat "$T/attach.err")"
[ "$(cat "$T/attach.out")" = "$DEV" ] || fail "attach printed '$(cat "$T/attach.out")'"
wait $held || fail "the read held while the server was dead failed after attach"
region "$origin" 20 2 | cmp -s - "$T/held" || fail "the held read returned wrong data"
head -c $((2 * M)) /dev/urandom >"$T/pattern2"
dd if="$T/pattern2" of="$DEV" bs=$M seek=30 oflag=direct conv=fsync status=none || fail "write after attach failed"
region "$origin" 30 2 | cmp -s - "$T/pattern2" || fail "data written after attach is not in the origin"
region "$DEV" 8 4 | cmp -s - "$T/pattern1" || fail "data written before the restart is lost"

# --- 4. attach from another socket is refused ---
if [ -e "/sys/block/nbd$idx/backend" ]; then
  start_server "$origin"  # lib.sh: a second server on its own $SOCK
  "$RBDCACHE" attach --socket "$SOCK" --device "$DEV" >/dev/null 2>"$T/err" &&
    fail "attach from another server's socket succeeded"
  grep -qi 'mapped from' "$T/err" || fail "attach from another socket: $(cat "$T/err")"
fi

# --- 5. unmap ---
"$RBDCACHE" unmap "$DEV" 2>"$T/unmap.err" || fail "unmap failed: $(cat "$T/unmap.err")"
for ((i = 0; i < 100; i++)); do
  "$RBDCACHE" list-mapped | grep -q "^$DEV " || break
  sleep 0.1
done
"$RBDCACHE" list-mapped | grep -q "^$DEV " && fail "$DEV is still listed after unmap"
MAPPED=()
"$RBDCACHE" unmap "$DEV" >/dev/null 2>"$T/err" && fail "a second unmap of $DEV succeeded"
grep -qi 'not mapped' "$T/err" || fail "a second unmap: $(cat "$T/err")"
server_alive "$SERVER_PID" || fail "the server died on unmap"

# --- 6. two connections ---
DEV2=$("$RBDCACHE" map --socket "$VSOCK" --connections 2 2>"$T/map2.err") ||
  fail "map --connections 2 failed: $(cat "$T/map2.err")"
MAPPED+=("$DEV2")
for ((i = 0; i < 50; i++)); do [ -b "$DEV2" ] && break; sleep 0.1; done
"$RBDCACHE" list-mapped --json | python3 -c '
import json, sys
rows = [r for r in json.load(sys.stdin) if r["device"] == sys.argv[1]]
assert rows and rows[0]["connections"] == 2, rows' "$DEV2" || fail "$DEV2 does not have 2 connections"
head -c $((8 * M)) /dev/urandom >"$T/pattern3"
dd if="$T/pattern3" of="$DEV2" bs=$M seek=40 oflag=direct conv=fsync status=none || fail "write to $DEV2 failed"
region "$DEV2" 40 8 | cmp -s - "$T/pattern3" || fail "data written through $DEV2 does not read back"
region "$origin" 40 8 | cmp -s - "$T/pattern3" || fail "data written through $DEV2 is not in the origin"
"$RBDCACHE" unmap "$DEV2" || fail "unmap $DEV2 failed"
MAPPED=()

log "PASS"
