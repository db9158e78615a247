#!/usr/bin/env bash
# The live-migration procedure of docs/migration.md, with two rbdcache
# instances on one machine playing two hosts (two caches, two control
# sockets, one RBD image) and qemu-io playing the VM:
#   1. A serves in writeback; the VM writes.
#   2. On A: flush --wait --then passthrough exits 0 only once `rbd export`
#      shows every write; release, after which another librbd client can
#      write beside A and A can still write; stop A.
#   3. B takes over (writeback, its own cache); the VM writes again.
#   4. B flushes and stops.
#   5. A starts again with its old cache.
#   6. Every read returns the newest data: B's where B wrote, A's elsewhere;
#      no write is lost, and A's stale copies were dropped.
source "$(dirname "$0")/../cache_integration/lib-cache.sh" "$@"
source "$(dirname "$0")/lib-ceph.sh"
require qemu-io

create_image 64M
make_host_caches a b
nowb=(--dirty-high 90 --dirty-low 80 --max-dirty-age 3600 --sequential-cutoff 0)

log "1. the VM writes on A"
start_rbd_server "$IMAGE_SPEC" --cache-dev "$CACHE_A" --meta-dev "$META_A" --mode writeback "${nowb[@]}"
CTL_A=$CTL
qemu_io "$URI" -c 'write -P 0xa1 0 8M' -c 'write -P 0xa2 8M 8M' -c 'write -P 0xa3 20M 64k' -c flush
get_stats
[ "$(stat_field dirty_bytes)" -gt 0 ] || fail "A holds no dirty data: $STATS"
rbd_export "$IMAGE_SPEC" "$T/before.img"
cmp -s -n 8M "$T/before.img" <(head -c 8M /dev/zero | tr '\0' '\241') &&
  fail "the image has A's data before the flush: the test proves nothing"

log "2. flush --wait --then passthrough on A, release, stop"
"$RBDCACHE" flush --wait --then passthrough -c "$CTL_A" >"$T/flush-a.out" 2>&1 ||
  fail "flush on A failed: $(cat "$T/flush-a.out")"
grep -q "flush complete" "$T/flush-a.out" || fail "no completion line: $(cat "$T/flush-a.out")"
rbd_export "$IMAGE_SPEC" "$T/after-flush.img"
python3 - "$T/after-flush.img" <<'PY' || fail "rbd export after A's flush lacks A's writes"
import sys
M = 1 << 20
d = open(sys.argv[1], "rb").read()
assert d[:8 * M] == b"\xa1" * 8 * M, "0-8M"
assert d[8 * M:16 * M] == b"\xa2" * 8 * M, "8-16M"
assert d[20 * M:20 * M + 65536] == b"\xa3" * 65536, "20M"
PY
[ "$(rbd image-meta get "$IMAGE_SPEC" rbdcache.state)" = clean ] || fail "A did not record the clean state"
"$RBDCACHE" release -c "$CTL_A" >"$T/release.out" 2>&1 || fail "release failed: $(cat "$T/release.out")"
# After the release another client (the migration target) can write while
# A still runs, and A, now a cooperating librbd client, can still write.
timeout 60 qemu-io -f raw -c 'write -P 0x99 40M 64k' "rbd:$IMAGE_SPEC:id=$CEPH_USER_ID:conf=$CEPH_CONF" \
  >"$T/direct.out" 2>&1 || fail "a direct write after the release failed: $(cat "$T/direct.out")"
grep -qi "failed" "$T/direct.out" && fail "a direct write after the release failed: $(cat "$T/direct.out")"
qemu_io "$URI" -c 'write -P 0x9a 44M 64k' -c flush -c 'read -P 0x99 40M 64k'
stop_server
expect_clean_exit "A"

log "3. B takes over and the VM writes"
start_rbd_server "$IMAGE_SPEC" --cache-dev "$CACHE_B" --meta-dev "$META_B" --mode writeback "${nowb[@]}"
CTL_B=$CTL
qemu_io "$URI" -c 'read -P 0xa1 0 8M' -c 'write -P 0xb1 4M 1M' -c 'write -P 0xb2 10M 4096' \
  -c 'write -P 0xb3 30M 2M' -c flush

log "4. B flushes and stops"
"$RBDCACHE" flush --wait -c "$CTL_B" >"$T/flush-b.out" 2>&1 || fail "flush on B failed: $(cat "$T/flush-b.out")"
stop_server
expect_clean_exit "B"

log "5. A starts again with its old cache"
start_rbd_server "$IMAGE_SPEC" --cache-dev "$CACHE_A" --meta-dev "$META_A" --mode writeback "${nowb[@]}"
grep -q "written elsewhere since this cache detached" "$SERVER_LOG" ||
  fail "A did not notice that the image changed while it was away"

log "6. every read returns the newest data"
qemu_io "$URI" -c 'read -P 0xa1 0 4M' -c 'read -P 0xb1 4M 1M' -c 'read -P 0xa1 5M 3M' \
  -c 'read -P 0xa2 8M 2M' -c 'read -P 0xb2 10M 4096' -c 'read -P 0xa2 10244k 6140k' \
  -c 'read -P 0xa3 20M 64k' -c 'read -P 0xb3 30M 2M' -c 'read -P 0 16M 4M' \
  -c 'read -P 0x99 40M 64k' -c 'read -P 0x9a 44M 64k'
get_stats
[ "$(stat_field read_hits)" -gt 0 ] || fail "A's unchanged blocks were not kept: $STATS"
stop_server
log "PASS"
