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
#  6. a map with two connections serves I/O too;
#  7. a map with more connections than CPUs: list-mapped shows them all, and
#     after kill -9 and a restart, attach reopens every one of them.
# Needs root and the nbd kernel module: exits 77 (skip) where `modprobe nbd`
# fails. meson runs it inside a Debian-kernel guest (tests/vm) with 2 vCPUs.
source "$(dirname "$0")/../integration/lib.sh" "$@"
source "$(dirname "$0")/lib-kernel.sh"
require dd cmp blockdev python3 timeout readlink

SIZE=$((64 * M))
origin="$T/origin.img"
make_origin "$origin" "$SIZE" random
serve_origin() { serve --origin "file:$origin"; }

# same_region A B SKIP_MB COUNT_MB WHAT
same_region() {
  region "$1" "$3" "$4" >"$T/a.bin" || fail "$5: reading $1 failed"
  region "$2" "$3" "$4" >"$T/b.bin" || fail "$5: reading $2 failed"
  cmp -s "$T/a.bin" "$T/b.bin" || fail "$5: $1 and $2 differ at MiB $3..$(($3 + $4))"
}

# --- 1. map ---
serve_origin
map_device --dead-conn-timeout 90
idx=${DEV#/dev/nbd}
[ "$(blockdev --getsize64 "$DEV")" -eq "$SIZE" ] || fail "$DEV is $(blockdev --getsize64 "$DEV") bytes, expected $SIZE"
canon=$(readlink -f "$VSOCK")
if [ -e "/sys/block/nbd$idx/backend" ]; then
  [ "$(cat "/sys/block/nbd$idx/backend")" = "rbdcache:$canon;connections=1" ] ||
    fail "backend is '$(cat "/sys/block/nbd$idx/backend")', expected rbdcache:$canon;connections=1"
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
log "2. I/O through the kernel (${SECONDS}s)"
same_region "$DEV" "$origin" 0 4 "read through $DEV"
head -c $((4 * M)) /dev/urandom >"$T/pattern1"
dd if="$T/pattern1" of="$DEV" bs=$M seek=8 oflag=direct conv=fsync status=none || fail "write to $DEV failed"
region "$origin" 8 4 | cmp -s - "$T/pattern1" || fail "data written through $DEV is not in the origin"
region "$DEV" 8 4 | cmp -s - "$T/pattern1" || fail "data written through $DEV does not read back"

# --- 3. server death, restart, attach ---
log "3. server death, restart, attach (${SECONDS}s)"
kill -KILL "$VM_PID"
wait "$VM_PID" 2>/dev/null
timeout 120 dd if="$DEV" of="$T/held" bs=$M skip=20 count=2 iflag=direct status=none &
held=$!
track_pid $held
sleep 3
kill -0 $held 2>/dev/null || fail "a read issued while the server was dead ended before attach (exit: $(wait $held; echo $?))"
serve_origin
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
log "4. attach from another socket is refused (${SECONDS}s)"
if [ -e "/sys/block/nbd$idx/backend" ]; then
  start_server "$origin"  # lib.sh: a second server on its own $SOCK
  "$RBDCACHE" attach --socket "$SOCK" --device "$DEV" >/dev/null 2>"$T/err" &&
    fail "attach from another server's socket succeeded"
  grep -qi 'mapped from' "$T/err" || fail "attach from another socket: $(cat "$T/err")"
fi

# --- 5. unmap ---
log "5. unmap (${SECONDS}s)"
unmap_device "$DEV"
"$RBDCACHE" unmap "$DEV" >/dev/null 2>"$T/err" && fail "a second unmap of $DEV succeeded"
grep -qi 'not mapped' "$T/err" || fail "a second unmap: $(cat "$T/err")"
server_alive "$VM_PID" || fail "the server died on unmap"

# --- 6. two connections ---
log "6. two connections (${SECONDS}s)"
map_device --connections 2
DEV2=$DEV
[ "$(list_conns "$DEV2")" = 2 ] || fail "$DEV2 has $(list_conns "$DEV2") connections, expected 2"
head -c $((8 * M)) /dev/urandom >"$T/pattern3"
dd if="$T/pattern3" of="$DEV2" bs=$M seek=40 oflag=direct conv=fsync status=none || fail "write to $DEV2 failed"
region "$DEV2" 40 8 | cmp -s - "$T/pattern3" || fail "data written through $DEV2 does not read back"
region "$origin" 40 8 | cmp -s - "$T/pattern3" || fail "data written through $DEV2 is not in the origin"
unmap_device "$DEV2"

# --- 7. more connections than CPUs, through a restart ---
log "7. more connections than CPUs, through a restart (${SECONDS}s)"
# The kernel makes one hardware queue per connection but no more than the
# CPUs, so the count must come from what map recorded.
NCONN=$(($(nproc) + 2))
[ "$NCONN" -le 16 ] || NCONN=16
map_device --connections "$NCONN" --dead-conn-timeout 90
DEV3=$DEV
[ "$(list_conns "$DEV3")" = "$NCONN" ] ||
  fail "list-mapped shows $(list_conns "$DEV3") connections for $DEV3, mapped with $NCONN on $(nproc) CPUs"
[ "$(conns_to_server)" -eq "$NCONN" ] || fail "the server has $(conns_to_server) connections, expected $NCONN"
kill -KILL "$VM_PID"
wait "$VM_PID" 2>/dev/null
serve_origin
"$RBDCACHE" attach --socket "$VSOCK" --device "$DEV3" >/dev/null 2>"$T/attach3.err" ||
  fail "attach of $DEV3 failed: $(cat "$T/attach3.err")"
[ "$(conns_to_server)" -eq "$NCONN" ] ||
  fail "after attach the restarted server has $(conns_to_server) connections, expected $NCONN"
[ "$(list_conns "$DEV3")" = "$NCONN" ] || fail "after attach list-mapped shows $(list_conns "$DEV3") connections"
head -c $((8 * M)) /dev/urandom >"$T/pattern4"
timeout 120 dd if="$T/pattern4" of="$DEV3" bs=$M seek=48 oflag=direct conv=fsync status=none ||
  fail "write to $DEV3 after attach failed"
region "$DEV3" 48 8 | cmp -s - "$T/pattern4" || fail "data written through $DEV3 after attach does not read back"
region "$origin" 48 8 | cmp -s - "$T/pattern4" || fail "data written through $DEV3 is not in the origin"
unmap_device "$DEV3"

log "PASS"
