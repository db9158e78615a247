#!/usr/bin/env bash
# /dev/nbdN on a writeback cache over a file origin, through the kernel's
# NBD client, with an ext4 file system and a server crash:
#  1. map with 1 connection, then with 4: fio --direct=1 --verify=crc32c on
#     the raw device passes with each;
#  2. mkfs.ext4 on the 4-connection device, mount, write files and keep
#     their checksums;
#  3. while a writer loop writes and fsyncs more files, kill -9 the server,
#     restart it on the same cache and socket, and attach: the writer sees
#     no I/O error, and attach reopens all 4 connections (more than the
#     guest's 2 CPUs);
#  4. after drop_caches every file written and fsynced, before and during
#     the crash, has its checksum; after umount, e2fsck finds the file
#     system clean; unmap; list-mapped shows nothing.
# Needs root and the nbd module (skips otherwise); meson runs it inside a
# Debian-kernel guest (tests/vm) with 2 vCPUs.
source "$(dirname "$0")/../cache_integration/lib-cache.sh" "$@"
source "$(dirname "$0")/lib-kernel.sh"
require fio mkfs.ext4 e2fsck sha256sum mount umount timeout

SIZE=$((256 * M))
origin="$T/origin.img"
make_origin "$origin" "$SIZE" sparse
make_cache c 128M 16M
serve_cache() {
  serve --origin "file:$origin" --cache-dev "$CACHE_DEV" --meta-dev "$META_DEV" --mode writeback
}
serve_cache

# fio_verify DEV OFFSET LABEL: writes 24 MiB of DEV from OFFSET with mixed
# block sizes and O_DIRECT, then reads it back and checks every block's crc32c.
fio_verify() {
  local dev=$1 offset=$2 label=$3
  timeout 150 fio --name="$label" --filename="$dev" --direct=1 --ioengine=libaio --iodepth=16 \
    --rw=randwrite --bssplit=4k/40:64k/40:1m/20 --offset="$offset" --size=24m \
    --verify=crc32c --verify_fatal=1 --do_verify=1 --verify_state_save=0 --randrepeat=1 \
    --output="$T/$label.out" >/dev/null 2>"$T/$label.err"
  local rc=$?
  if [ $rc -ne 0 ] || grep -qiE 'verify|bad|error' "$T/$label.err"; then
    cat "$T/$label.out" "$T/$label.err" >&2
    fail "fio $label on $dev: exit $rc"
  fi
  grep -qE 'err= *0' "$T/$label.out" || { cat "$T/$label.out" >&2; fail "fio $label reported an error"; }
}

# --- 1. raw device, 1 and 4 connections ---
log "1. fio verify on the raw device (${SECONDS}s)"
map_device --connections 1 --dead-conn-timeout 120
fio_verify "$DEV" 0 fio-1conn
unmap_device "$DEV"
map_device --connections 4 --dead-conn-timeout 120
[ "$(list_conns "$DEV")" = 4 ] || fail "list-mapped shows $(list_conns "$DEV") connections, mapped with 4"
fio_verify "$DEV" 64m fio-4conn

# --- 2. a file system ---
log "2. ext4 (${SECONDS}s)"
MNT="$T/mnt"
mkdir -p "$MNT"
mkfs.ext4 -q -F -E nodiscard "$DEV" >"$T/mkfs.out" 2>&1 || { cat "$T/mkfs.out" >&2; fail "mkfs.ext4 $DEV failed"; }
mount -t ext4 "$DEV" "$MNT" || fail "mount $DEV failed"
trap '_rc=$?; umount "$MNT" 2>/dev/null; _unmap_all; (exit $_rc); _cleanup' EXIT
SUMS="$T/sums"  # sha256sum lines of every file that must survive
: >"$SUMS"
mkdir "$MNT/before" "$MNT/during"
for i in $(seq 1 16); do
  head -c $(((i % 5 + 1) * 192 * 1024)) /dev/urandom >"$MNT/before/f$i" || fail "writing before/f$i failed"
done
sync -f "$MNT" || fail "sync failed"
(cd "$MNT" && sha256sum before/*) >>"$SUMS"

# --- 3. crash and attach under a writer ---
log "3. kill -9 under a writer (${SECONDS}s)"
# The writer: files of 256 KiB, each fsynced; its checksum is recorded only
# once the fsync returned. Any failed write or fsync stops it with exit 1.
STOP="$T/stop-writer"
: >"$T/writer.sums"
(
  n=0
  while [ ! -e "$STOP" ]; do
    n=$((n + 1))
    head -c 262144 /dev/urandom >"$T/wbuf"
    dd if="$T/wbuf" of="$MNT/during/w$n" bs=64k conv=fsync status=none 2>"$T/writer.err" || exit 1
    (cd "$MNT" && sha256sum "during/w$n") >>"$T/writer.sums" || exit 1
  done
  exit 0
) &
WRITER=$!
track_pid $WRITER
wait_writes() {  # wait_writes N: until the writer has N more files, at most 120 s
  local want=$(($(wc -l <"$T/writer.sums" 2>/dev/null || echo 0) + $1)) i
  for ((i = 0; i < 1200; i++)); do
    [ "$(wc -l <"$T/writer.sums" 2>/dev/null || echo 0)" -ge "$want" ] && return 0
    kill -0 $WRITER 2>/dev/null || fail "the writer stopped: $(cat "$T/writer.err")"
    sleep 0.1
  done
  fail "the writer wrote fewer than $1 files in 120 s"
}
wait_writes 5
kill -KILL "$VM_PID"
wait "$VM_PID" 2>/dev/null
log "server killed after $(wc -l <"$T/writer.sums") fsynced files (${SECONDS}s)"
sleep 1
serve_cache
"$RBDCACHE" attach --socket "$VSOCK" --device "$DEV" >/dev/null 2>"$T/attach.err" ||
  fail "attach failed: $(cat "$T/attach.err")"
[ "$(conns_to_server)" -eq 4 ] || fail "after attach the server has $(conns_to_server) connections, expected 4"
log "attached (${SECONDS}s)"
wait_writes 5
touch "$STOP"
wait $WRITER || fail "the writer saw an I/O error: $(cat "$T/writer.err")"
cat "$T/writer.sums" >>"$SUMS"
log "the writer fsynced $(wc -l <"$T/writer.sums") files (${SECONDS}s)"

# --- 4. everything is there ---
log "4. checksums after drop_caches (${SECONDS}s)"
sync
echo 3 >/proc/sys/vm/drop_caches
if ! (cd "$MNT" && sha256sum -c --quiet "$SUMS") >"$T/check.out" 2>&1; then
  cat "$T/check.out" >&2
  fail "$(grep -c 'FAILED' "$T/check.out") of $(wc -l <"$SUMS") files do not match their checksums"
fi
umount "$MNT" || fail "umount failed"
e2fsck -fn "$DEV" >"$T/fsck.out" 2>&1 || { cat "$T/fsck.out" >&2; fail "e2fsck found errors on $DEV"; }
unmap_device "$DEV"
[ -z "$("$RBDCACHE" list-mapped)" ] || fail "list-mapped still shows: $("$RBDCACHE" list-mapped)"
log "PASS"
