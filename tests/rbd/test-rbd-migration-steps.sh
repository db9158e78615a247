#!/usr/bin/env bash
# The steps of docs/migration.md's procedure, in the order the doc gives
# them, with two rbdcache instances (two caches, two control sockets, one
# RBD image) and qemu-io playing the VM:
#   0. The VM writes on A, which serves in writeback and holds dirty data.
#   1. B starts in passthrough while A still serves in writeback: it must
#      attach, and must leave A's record (state dirty) in the image, so that
#      a writeback cache is still refused.
#   2. A: flush --wait --then passthrough; the image then holds every write.
#   3. A: release; status shows dirty 0 B, passthrough, lock not held.
#   4. The VM moves to B: it reads A's writes and writes through B.
#   5. A stops cleanly.
#   6. B: mode writeback takes the lock and records B, state dirty; the VM
#      writes and reads on B, and B's flush puts everything in the image.
source "$(dirname "$0")/../cache_integration/lib-cache.sh" "$@"
source "$(dirname "$0")/lib-ceph.sh"
require qemu-io

create_image 64M
make_host_caches a b c
nowb=(--dirty-high 90 --dirty-low 80 --max-dirty-age 3600 --sequential-cutoff 0)
meta() { rbd image-meta get "$IMAGE_SPEC" "rbdcache.$1" 2>/dev/null; }

log "0. the VM writes on A (writeback)"
start_rbd_server "$IMAGE_SPEC" --cache-dev "$CACHE_A" --meta-dev "$META_A" --mode writeback "${nowb[@]}"
PID_A=$SERVER_PID URI_A=$URI CTL_A=$CTL LOG_A=$SERVER_LOG
qemu_io "$URI_A" -c 'write -P 0xa1 0 4M' -c 'write -P 0xa2 8M 64k' -c flush
get_stats "$PID_A" "$LOG_A"
[ "$(stat_field dirty_bytes)" -gt 0 ] || fail "A holds no dirty data: $STATS"
UUID_A=$(meta cache)
[ "$(meta state)" = dirty ] || fail "state is '$(meta state)' with A in writeback"

log "1. B starts in passthrough while A still serves in writeback"
start_rbd_server "$IMAGE_SPEC" --cache-dev "$CACHE_B" --meta-dev "$META_B" --mode passthrough "${nowb[@]}"
PID_B=$SERVER_PID URI_B=$URI CTL_B=$CTL LOG_B=$SERVER_LOG
# start_rbd_server returns once the socket exists, and serve attaches before
# it binds the socket, so a refused attach has already failed the start.
# B must also answer on its control socket (bound just after the NBD one).
for ((i = 0; i < 100; i++)); do
  "$RBDCACHE" status -c "$CTL_B" >/dev/null 2>&1 && break
  sleep 0.1
done
"$RBDCACHE" status -c "$CTL_B" >/dev/null 2>&1 || fail "B in passthrough does not answer status: $(cat "$LOG_B")"
server_alive "$PID_B" || fail "B in passthrough was refused: $(cat "$LOG_B")"
[ "$(meta cache)" = "$UUID_A" ] || fail "B's attach replaced A's record: cache is now $(meta cache)"
[ "$(meta state)" = dirty ] || fail "B's attach cleared A's dirty state: '$(meta state)'"
timeout 60 "$RBDCACHE" serve --origin "rbd:$IMAGE_SPEC" --cache-dev "$CACHE_C" --meta-dev "$META_C" \
  --socket "$T/c.sock" --mode writeback </dev/null >"$T/c.out" 2>&1 &&
  fail "a writeback cache attached while A holds dirty data: $(cat "$T/c.out")"
grep -q "may hold writes this image does not have" "$T/c.out" || fail "unclear refusal: $(cat "$T/c.out")"

log "2. A: flush --wait --then passthrough"
"$RBDCACHE" flush --wait --then passthrough -c "$CTL_A" >"$T/flush-a.out" 2>&1 ||
  fail "flush on A failed: $(cat "$T/flush-a.out")"
[ "$(meta state)" = clean ] || fail "A's flush did not record state clean"
rbd_export "$IMAGE_SPEC" "$T/after-flush.img"
cmp -s -n 4M "$T/after-flush.img" <(head -c 4M /dev/zero | tr '\0' '\241') ||
  fail "the image lacks A's writes after the flush"

log "3. A: release"
"$RBDCACHE" release -c "$CTL_A" >"$T/release.out" 2>&1 || fail "release failed: $(cat "$T/release.out")"
"$RBDCACHE" status --json -c "$CTL_A" >"$T/status-a.json" || fail "status on A failed"
python3 - "$T/status-a.json" <<'PY' || fail "A's status after release: $(cat "$T/status-a.json")"
import json, sys
d = json.load(open(sys.argv[1]))
assert d["ownership"]["exclusive_lock"] is False, "lock"
assert d["mode"] == "passthrough", d["mode"]
PY

log "4. the VM moves to B"
qemu_io "$URI_B" -c 'read -P 0xa1 0 4M' -c 'read -P 0xa2 8M 64k' -c 'write -P 0xb1 1M 64k' -c flush

log "5. A stops"
stop_server "$PID_A"
expect_clean_exit "A"

log "6. B: mode writeback"
"$RBDCACHE" mode writeback -c "$CTL_B" >"$T/mode-b.out" 2>&1 || fail "mode writeback on B failed: $(cat "$T/mode-b.out")"
[ "$(meta cache)" != "$UUID_A" ] || fail "B in writeback is not recorded in the image"
[ "$(meta state)" = dirty ] || fail "state is '$(meta state)' with B in writeback"
qemu_io "$URI_B" -c 'write -P 0xb2 2M 64k' -c flush -c 'read -P 0xa1 0 1M' -c 'read -P 0xb1 1M 64k' \
  -c 'read -P 0xb2 2M 64k' -c 'read -P 0xa1 2112k 1984k' -c 'read -P 0xa2 8M 64k'
"$RBDCACHE" flush --wait -c "$CTL_B" >"$T/flush-b.out" 2>&1 || fail "flush on B failed: $(cat "$T/flush-b.out")"
rbd_export "$IMAGE_SPEC" "$T/final.img"
python3 - "$T/final.img" <<'PY' || fail "the image after B's flush is wrong"
import sys
K, M = 1 << 10, 1 << 20
d = open(sys.argv[1], "rb").read()
assert d[:1 * M] == b"\xa1" * M, "0-1M"
assert d[1 * M:1 * M + 64 * K] == b"\xb1" * 64 * K, "1M"
assert d[2 * M:2 * M + 64 * K] == b"\xb2" * 64 * K, "2M"
assert d[8 * M:8 * M + 64 * K] == b"\xa2" * 64 * K, "8M"
PY
stop_server "$PID_B"
expect_clean_exit "B"
log "PASS"
