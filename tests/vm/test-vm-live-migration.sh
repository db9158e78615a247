#!/usr/bin/env bash
# Live migration of a running VM whose disk rbdcache serves, there and back,
# by docs/migration.md's procedure: two rbdcache instances (two caches, two
# control sockets) on one image of the test Ceph cluster, two QEMU
# processes per move, and a self-contained guest (no 9p) that writes
# throughout (guest/blockcheck.cc) and, every few batches, re-reads its
# whole disk: each block must hold exactly the last write it was told was
# done ("VERIFY round=R PASS" on its serial console).
#
# Each move from host S to host D:
#   1. D's rbdcache starts in passthrough, and D's QEMU opens its disk with
#      -incoming, while the VM still writes on S (S in writeback, dirty).
#   2. S: flush --wait --then passthrough (the VM still writes).
#   3. S: release (then: dirty 0, passthrough, lock not held).
#   4. QMP migrate S -> D.
#   5. S's QEMU and rbdcache stop.
#   6. D: mode writeback; the VM goes on writing on D and verifies twice.
# A -> B, then back to A with A's old, warm cache: A must drop what the VM
# wrote since A released (no stale read) and keep the rest (read hits; the
# hit ratio after the return is printed).
source "$(dirname "$0")/../cache_integration/lib-cache.sh" "$@"
source "$(dirname "$0")/../rbd/lib-ceph.sh"
source "$(dirname "$0")/lib-guest.sh"

guest_setup
create_image 32M
make_host_caches a b
nowb=(--dirty-high 90 --dirty-low 80 --max-dirty-age 3600 --sequential-cutoff 0)
RUN_ID=$((RANDOM * 32768 + RANDOM + 1))
APPEND="bc.mode=write bc.args=run=$RUN_ID,batch=16,verify_every=15"
VERIFY_RE='blockcheck: VERIFY round=[0-9]+ PASS'

serve() {  # serve HOST MODE: HOST's rbdcache; sets PID_H, SOCK_H, CTL_H, LOG_H (H: HOST upper case)
  local h=${1^^} c m
  c=CACHE_$h m=META_$h
  start_rbd_server "$IMAGE_SPEC" --cache-dev "${!c}" --meta-dev "${!m}" --mode "$2" "${nowb[@]}"
  declare -g "PID_$h=$SERVER_PID" "SOCK_$h=$SOCK" "CTL_$h=$CTL" "LOG_$h=$SERVER_LOG"
}
ctl() {  # ctl HOST WHAT ARGS...: an rbdcache control command on HOST's server
  local h=${1^^} what=$2 c
  c=CTL_$h
  shift 2
  "$RBDCACHE" "$@" -c "${!c}" >"$T/$what.out" 2>&1 || fail "$what failed: $(cat "$T/$what.out")"
}
io_field() {  # io_field HOST FIELD: a counter of HOST's `status --json` "io" section
  ctl "$1" "status-$1" status --json
  python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["io"][sys.argv[2]])' "$T/status-$1.out" "$2"
}
more_writes() {  # more_writes GUEST N: waits for N more syncs of GUEST
  guest_wait "$1" 'blockcheck: SYNCED' 60 $(($(guest_count "$1" 'blockcheck: SYNCED') + $2))
}

# migrate S D GUEST-ON-S NEW-GUEST: moves the VM from host S to host D.
migrate() {
  local s=$1 d=$2 g=$3 ng=$4 sock pid
  log "$s -> $d, 1: $d's rbdcache in passthrough, its QEMU with -incoming; the VM writes on $s"
  serve "$d" passthrough
  sleep 1
  pid=PID_${d^^}
  server_alive "${!pid}" || fail "$d's rbdcache in passthrough was refused"
  sock=SOCK_${d^^}
  guest_start "$ng" "${!sock}" "$APPEND" -incoming "unix:$T/$ng.migrate"
  more_writes "$g" 3
  log "$s -> $d, 2: $s drains (flush --wait --then passthrough) while the VM writes"
  ctl "$s" "flush-$s-$ng" flush --wait --then passthrough
  more_writes "$g" 3
  log "$s -> $d, 3: $s releases the image"
  ctl "$s" "release-$s-$ng" release
  ctl "$s" "status-$s-$ng" status --json
  python3 - "$T/status-$s-$ng.out" <<'PY' || fail "$s's status after release: $(cat "$T/status-$s-$ng.out")"
import json, sys
d = json.load(open(sys.argv[1]))
assert d["ownership"]["exclusive_lock"] is False, "lock still held"
assert d["mode"] == "passthrough", d["mode"]
assert d["cache"]["dirty_bytes"] == 0, d["cache"]["dirty_bytes"]
PY
  more_writes "$g" 3
  log "$s -> $d, 4: QMP migrate"
  guest_qmp "$g" migrate "unix:$T/$ng.migrate" 60 >"$T/migrate-$ng.out" || fail "migration to $d failed"
  guest_qmp "$ng" query-status | grep -q '"running"' || fail "the VM does not run on $d after the migration"
  log "$s -> $d, 5: $s's QEMU and rbdcache stop"
  guest_stop "$g"
  pid=PID_${s^^}
  stop_server "${!pid}"
  expect_clean_exit "$s's rbdcache"
  local verified
  verified=$(guest_count "$ng" "$VERIFY_RE")
  log "$s -> $d, 6: $d switches to writeback"
  ctl "$d" "mode-$d-$ng" mode writeback
  guest_wait "$ng" "$VERIFY_RE" 120 $((verified + 2))
  log "the VM verified its disk on $d: $(grep -E "$VERIFY_RE" "$T/$ng.console" | tail -n 1)"
}

log "0. the VM boots on A (writeback)"
serve a writeback
guest_start g1 "$SOCK_A" "$APPEND"
guest_wait g1 "$VERIFY_RE" 120 2
ctl a status-a0 status --json
python3 -c 'import json,sys; assert json.load(open(sys.argv[1]))["cache"]["dirty_bytes"] > 0' "$T/status-a0.out" ||
  fail "A holds no dirty data before the migration: $(cat "$T/status-a0.out")"

migrate a b g1 g2
migrate b a g2 g3
grep -q "written since this cache last held its lock" "$LOG_A" ||
  fail "A did not check its warm cache when it took the lock again"
grep "written since this cache last held its lock" "$LOG_A" | tail -n 1 >&2

log "after the return: the VM verifies its disk on A twice more"
hits0=$(io_field a read_hits) misses0=$(io_field a read_misses)
guest_wait g3 "$VERIFY_RE" 120 $(($(guest_count g3 "$VERIFY_RE") + 2))
hits=$(io_field a read_hits) misses=$(io_field a read_misses) ratio=$(io_field a read_hit_ratio)
[ "$hits" -gt "$hits0" ] || fail "A's warm cache served no read after the return (read_hits $hits0 -> $hits)"
log "hit ratio on A after the return: $(python3 -c "import sys; h, m = int(sys.argv[1]), int(sys.argv[2]); print('%.3f (%d hits, %d misses)' % (h / max(h + m, 1), h, m))" \
  $((hits - hits0)) $((misses - misses0))) over the last two verify rounds; $ratio since A restarted"
guest_stop g3
stop_server "$PID_A"
expect_clean_exit "A's rbdcache"
log "PASS"
