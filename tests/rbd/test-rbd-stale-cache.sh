#!/usr/bin/env bash
# Stale-cache protection (docs/migration.md): the image written behind a
# detached cache must never be served from the cache's old blocks.
#   1. rbdcache caches 8 MiB (reads and writes), flushes and stops cleanly.
#   2. New data is written to the image directly (qemu-io over rbd:).
#   3. rbdcache starts again on the same cache: reads return the new data
#      where the image changed and the cached data elsewhere, the log says
#      why blocks were dropped, and the detach snapshot is gone.
#   4. After a kill -9 (no detach snapshot) and another direct write, every
#      clean block is dropped and the reads again return the image's data.
source "$(dirname "$0")/../cache_integration/lib-cache.sh" "$@"
source "$(dirname "$0")/lib-ceph.sh"
require qemu-io

create_image 64M
make_cache s 64M 16M
RBD_URI="rbd:$IMAGE_SPEC:id=$CEPH_USER_ID:conf=$CEPH_CONF"
serve() {
  start_rbd_server "$IMAGE_SPEC" --cache-dev "$CACHE_DEV" --meta-dev "$META_DEV" --mode writeback \
    --sequential-cutoff 0 "$@"
}

log "1. cache 8 MiB, flush, stop"
serve
qemu_io "$URI" -c 'write -P 0x11 0 4M' -c 'write -P 0x22 4M 4M' -c flush
"$RBDCACHE" flush --wait -c "$CTL" >"$T/flush.out" 2>&1 || fail "flush failed: $(cat "$T/flush.out")"
qemu_io "$URI" -c 'read -P 0x11 0 4M' -c 'read -P 0x22 4M 4M'
get_stats
[ "$(stat_field mapped_blocks)" -gt 0 ] || fail "nothing cached: $STATS"
stop_server
expect_clean_exit "first run"
SNAP=$(rbd snap ls "$IMAGE_SPEC" | awk '/rbdcache\./ {print $2}')
[ -n "$SNAP" ] || fail "no detach snapshot: $(rbd snap ls "$IMAGE_SPEC")"

log "2. write the image directly"
timeout 60 qemu-io -f raw -c 'write -P 0x99 1M 64k' -c 'write -P 0x98 6M 4096' "$RBD_URI" >/dev/null ||
  fail "direct write failed"

log "3. the restarted cache serves the new data"
serve
grep -q "dropping clean cached blocks before serving: .* written elsewhere" "$SERVER_LOG" ||
  fail "the log does not say why blocks were dropped"
qemu_io "$URI" -c 'read -P 0x11 0 1M' -c 'read -P 0x99 1M 64k' -c 'read -P 0x11 1088k 2944k' \
  -c 'read -P 0x22 4M 2M' -c 'read -P 0x98 6M 4096' -c 'read -P 0x22 6148k 2044k'
rbd snap ls "$IMAGE_SPEC" | grep -q "rbdcache\." && fail "the detach snapshot was not removed"
# Unchanged parts stay cached: reading them again hits.
get_stats
[ "$(stat_field read_hits)" -gt 0 ] || fail "no read hit: the unchanged blocks were dropped too: $STATS"

log "4. a kill -9 leaves no snapshot: every clean block is dropped"
qemu_io "$URI" -c 'read -P 0x11 0 1M'
kill -9 "$SERVER_PID"
wait "$SERVER_PID" 2>/dev/null
timeout 60 qemu-io -f raw -c 'write -P 0x77 0 8M' "$RBD_URI" >/dev/null 2>"$T/direct.err" ||
  fail "direct write after the kill failed: $(cat "$T/direct.err")"
serve
grep -q "not detached cleanly" "$SERVER_LOG" || fail "the log does not say the cache was not detached cleanly"
qemu_io "$URI" -c 'read -P 0x77 0 8M'
stop_server
log "PASS"
