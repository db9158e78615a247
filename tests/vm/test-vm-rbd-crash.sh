#!/usr/bin/env bash
# A VM booted on rbdcache over RBD survives a crash of the whole host: a
# QEMU guest whose virtio-blk disk is rbdcache's NBD socket (writeback, over
# an image of the test Ceph cluster) writes sequence-tagged blocks with
# O_DIRECT and fdatasync (guest/blockcheck.cc), and prints "SYNCED seq=N"
# after each fdatasync.
#   1. At a random moment after some syncs, SIGKILL QEMU and rbdcache
#      together: the cache holds writes the image does not have yet.
#   2. rbdcache restarts on the same cache (still dirty), the guest boots
#      again in verify mode: every block whose write had been synced holds
#      that write or a later one of the run; no block is torn or garbage.
#      The guest prints a sha256 of its whole disk.
#   3. rbdcache flush: `rbd export` of the image equals what the guest read.
#   4. The check itself can fail: one byte of a written block is changed
#      through rbdcache, and a second verify boot must report that block.
source "$(dirname "$0")/../cache_integration/lib-cache.sh" "$@"
source "$(dirname "$0")/../rbd/lib-ceph.sh"
source "$(dirname "$0")/lib-guest.sh"
require qemu-io sha256sum

guest_setup
create_image 32M
make_cache c 64M 16M
# Nothing is written back before the crash unless the guest asks for it.
nowb=(--dirty-high 90 --dirty-low 80 --max-dirty-age 3600 --sequential-cutoff 0)
serve() { start_rbd_server "$IMAGE_SPEC" --cache-dev "$CACHE_DEV" --meta-dev "$META_DEV" --mode writeback "${nowb[@]}"; }
RUN_ID=$((RANDOM * 32768 + RANDOM + 1))

log "1. the guest writes on rbdcache (writeback, run $RUN_ID)"
serve
guest_start w "$SOCK" "bc.mode=write bc.args=run=$RUN_ID,batch=16"
guest_wait w 'blockcheck: SYNCED' 90 40
sleep "$((RANDOM % 3)).$((RANDOM % 10))"
kill -KILL "${GUEST_PIDS[w]}" "$SERVER_PID"
wait "${GUEST_PIDS[w]}" "$SERVER_PID" 2>/dev/null
SYNCED=$(guest_last_synced w)
log "killed QEMU and rbdcache after seq $SYNCED was synced"

log "2. rbdcache restarts on the same cache; the guest verifies"
start=$SECONDS
serve
log "rbdcache attached again after $((SECONDS - start))s (the dead holder's lock)"
get_stats
[ "$(stat_field dirty_bytes)" -gt 0 ] || fail "the cache held no dirty data after the crash: $STATS"
verify_boot() {  # verify_boot NAME: boots the verifier on $SOCK, waits for its result
  guest_start "$1" "$SOCK" "bc.mode=verify bc.args=run=$RUN_ID,synced=$SYNCED bc.sha256=1"
  guest_wait "$1" 'guest: exit' 120
  guest_exited "$1" 30
}
verify_boot v
grep -E 'blockcheck: (PASS|FAIL)' "$T/v.console" >&2
grep -qE "blockcheck: PASS verify .* synced_ok=[1-9]" "$T/v.console" ||
  fail "the guest's verify did not pass: $(grep blockcheck: "$T/v.console" | tail -n 6)"
GUEST_SHA=$(grep -oE 'guest: sha256 [0-9a-f]{64}' "$T/v.console" | cut -d' ' -f3)
[ -n "$GUEST_SHA" ] || fail "the guest printed no sha256"

log "3. flush; the image equals what the guest read"
"$RBDCACHE" flush --wait -c "$CTL" >"$T/flush.out" 2>&1 || fail "flush failed: $(cat "$T/flush.out")"
rbd_export "$IMAGE_SPEC" "$T/export.img"
IMAGE_SHA=$(sha256sum "$T/export.img" | cut -d' ' -f1)
[ "$IMAGE_SHA" = "$GUEST_SHA" ] || fail "rbd export ($IMAGE_SHA) differs from the guest's disk ($GUEST_SHA)"

log "4. the verifier catches a changed byte"
off=$(python3 - "$T/export.img" <<'PY'
import sys
d = open(sys.argv[1], "rb").read()
print(next(b * 4096 for b in range(len(d) // 4096) if d[b * 4096:b * 4096 + 8] == b"BLKCHK01"))
PY
) || fail "no written block in the image"
qemu_io "$URI" -c "write -P 0x55 $((off + 2048)) 512" -c flush
GUEST_FAIL_RE='guest: no /dev/vda' verify_boot n
grep -qE "blockcheck: FAIL verify .* garbage=1 " "$T/n.console" ||
  fail "the verifier missed a changed block at $off: $(grep blockcheck: "$T/n.console" | tail -n 4)"
stop_server "$SERVER_PID"
expect_clean_exit "rbdcache"
log "PASS (synced seq $SYNCED; $(grep -oE 'synced_ok=[0-9]+ newer=[0-9]+' "$T/v.console"))"
