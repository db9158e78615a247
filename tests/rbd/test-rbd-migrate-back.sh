#!/usr/bin/env bash
# Migrating back to a host whose cache is warm from an earlier visit, with
# two rbdcache instances (two caches, two control sockets, one RBD image)
# and qemu-io playing the VM. The VM writes on the source until the
# switch-over, after the destination has attached: no cache may serve a
# block that changed behind it since it last held the image's lock.
#   1. B caches the image (writeback), drains, releases and stops cleanly.
#   2. The VM runs on A (writeback), which caches other blocks.
#   3. Back to B, in the order of docs/migration.md: A flush --wait --then
#      passthrough; B starts in passthrough with its old cache; the VM,
#      still on A, writes a block B has cached; A releases; the VM moves to
#      B, writes a block A has cached and 512 bytes inside what it wrote on
#      A; A stops.
#   4. The VM reads through B: the new block in passthrough, again after
#      mode writeback, and B's unchanged blocks are still hits.
#   5. B drains and stops; A comes back with its old cache, and reads the
#      block B wrote after A had released, not A's old copy.
source "$(dirname "$0")/../cache_integration/lib-cache.sh" "$@"
source "$(dirname "$0")/lib-ceph.sh"
require qemu-io

create_image 64M
make_host_caches a b
nowb=(--dirty-high 90 --dirty-low 80 --max-dirty-age 3600 --sequential-cutoff 0)

serve() {  # serve CACHE META MODE: sets PID, U, C, L for the new server
  start_rbd_server "$IMAGE_SPEC" --cache-dev "$1" --meta-dev "$2" --mode "$3" "${nowb[@]}"
  PID=$SERVER_PID U=$URI C=$CTL L=$SERVER_LOG
}
drain() {  # drain CTL NAME: flush --wait --then passthrough
  "$RBDCACHE" flush --wait --then passthrough -c "$1" >"$T/flush-$2.out" 2>&1 ||
    fail "flush on $2 failed: $(cat "$T/flush-$2.out")"
}
release() {  # release CTL NAME
  "$RBDCACHE" release -c "$1" >"$T/release-$2.out" 2>&1 || fail "release on $2 failed: $(cat "$T/release-$2.out")"
}
hits() {  # hits PID LOG: prints read_hits
  get_stats "$1" "$2"
  stat_field read_hits
}

log "1. B caches the image, drains and stops"
serve "$CACHE_B" "$META_B" writeback
qemu_io "$U" -c 'write -P 0xb1 0 1M' -c 'write -P 0xb2 4M 1M' -c flush -c 'read -P 0xb1 0 1M' \
  -c 'read -P 0xb2 4M 1M'
drain "$C" b1
release "$C" b1
stop_server "$PID"
expect_clean_exit "B, first visit"

log "2. the VM runs on A"
serve "$CACHE_A" "$META_A" writeback
PID_A=$PID URI_A=$U CTL_A=$C
qemu_io "$URI_A" -c 'read -P 0xb1 0 1M' -c 'write -P 0xa1 8M 1M' -c flush -c 'read -P 0xa1 8M 1M'

log "3. back to B"
drain "$CTL_A" a
serve "$CACHE_B" "$META_B" passthrough
PID_B=$PID URI_B=$U CTL_B=$C LOG_B=$L
# The VM, still on A, writes a block that B has cached.
qemu_io "$URI_A" -c 'write -P 0xc1 0 64k' -c flush
release "$CTL_A" a
# Switch-over: the VM now writes through B, over a block A has cached, and
# a part of a sub-block of what it wrote on A (merged with the image's
# data around it, not with B's old copy).
qemu_io "$URI_B" -c 'write -P 0xc2 8M 64k' -c 'write -P 0xd1 512 512' -c flush
stop_server "$PID_A"
expect_clean_exit "A"

log "4. the VM reads through B"
reads_b=(-c 'read -P 0xc1 0 512' -c 'read -P 0xd1 512 512' -c 'read -P 0xc1 1024 63k'
  -c 'read -P 0xb1 64k 960k' -c 'read -P 0xb2 4M 1M')
qemu_io "$URI_B" "${reads_b[@]}"
"$RBDCACHE" mode writeback -c "$CTL_B" >"$T/mode-b.out" 2>&1 || fail "mode writeback on B failed: $(cat "$T/mode-b.out")"
grep -q "written since this cache last held its lock" "$LOG_B" ||
  fail "B did not check its clean blocks when it took the lock"
before=$(hits "$PID_B" "$LOG_B")
qemu_io "$URI_B" "${reads_b[@]}" -c 'read -P 0xc2 8M 64k' -c 'read -P 0xa1 8256k 960k'
after=$(hits "$PID_B" "$LOG_B")
[ "$after" -gt "$before" ] || fail "B's unchanged blocks were not kept (read_hits $before -> $after): $STATS"

log "5. B drains and stops; A comes back with its old cache"
drain "$CTL_B" b2
release "$CTL_B" b2
stop_server "$PID_B"
expect_clean_exit "B"
serve "$CACHE_A" "$META_A" writeback
qemu_io "$U" "${reads_b[@]}" -c 'read -P 0xc2 8M 64k' -c 'read -P 0xa1 8256k 960k'
stop_server "$PID"
expect_clean_exit "A, back"
log "PASS"
