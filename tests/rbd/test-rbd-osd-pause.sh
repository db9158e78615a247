#!/usr/bin/env bash
# The cluster's only OSD is paused (SIGSTOP, then SIGCONT 10 s later) while a
# writeback cache over an RBD image is busy: fio (4 connections, random
# writes with an NBD FLUSH every few writes, verified with crc32c) runs
# across the pause, and the writeback follows it all the time (every block
# dirty for 1 s is written back).
#
# Before the pause a 32 MiB working set is written, flushed and written back,
# so it sits clean in the cache.  During the pause:
#   - fio goes on writing and flushing, every FLUSH answered quickly;
#   - reads of the working set (cache hits) return the right data, long
#     before the OSD comes back;
#   - writes into the working set (cache hits, aligned and unaligned) and a
#     FLUSH succeed, also long before the OSD comes back, and read back;
#   - the writeback makes no progress (which shows the pause is real) while
#     the dirty data grows.
# After SIGCONT the same server process goes on: fio finishes without an
# error, the export holds every write a completed FLUSH covered, the
# writeback drains to 0 dirty bytes, no client request failed in the log,
# and after a graceful stop `rbd export` of the image equals the expected
# image byte for byte; fio's data also verifies through a fresh, uncached
# server.
#
# A writeback holds a block's lock only while it copies the dirty data out
# of the cache, not across the origin write and flush, so fio's writes to
# blocks whose writeback is stalled on the OSD must not wait either: any
# write or FLUSH that takes 5 s fails the test.
#
# The OSD is found from the cluster's own state file (RBDCACHE_DEV_CEPH_DIR),
# never by name: other clusters may run on the machine.  It is resumed
# whatever happens (exit trap, and a watchdog that survives the script).
_here=$(cd "$(dirname "$0")" && pwd)
source "$_here/../cache_integration/lib-cache.sh" "$@"
source "$_here/lib-ceph.sh"
require qemu-io fio nbdcopy
fio --enghelp=nbd >/dev/null 2>&1 || skip "fio has no nbd engine"

M=1048576
PAUSE=10          # seconds the OSD stays stopped
FAST_MS=5000      # a request that does not wait for the OSD finishes within this
# 1: also fail when a fio write waited for the OSD (see the fio checks).
STRICT=${RBDCACHE_TEST_OSD_PAUSE_STRICT:-1}

# --- the OSD of this cluster ------------------------------------------------
CEPH_DIR=${RBDCACHE_DEV_CEPH_DIR:-}
if [ -z "$CEPH_DIR" ] || [ ! -r "$CEPH_DIR/state" ]; then
  skip "the env file sets no RBDCACHE_DEV_CEPH_DIR with a state file (scripts/dev-ceph.sh env)"
fi
OSD_PID=$(sed -n 's/^OSD_PID=\([0-9][0-9]*\)$/\1/p' "$CEPH_DIR/state" | tail -n 1)
[ -n "$OSD_PID" ] || fail "no OSD_PID in $CEPH_DIR/state"
# The pid must still be that cluster's ceph-osd (not a reused pid).
[ "$(cat "/proc/$OSD_PID/comm" 2>/dev/null)" = ceph-osd ] ||
  fail "pid $OSD_PID from $CEPH_DIR/state is not a ceph-osd"
tr '\0' ' ' <"/proc/$OSD_PID/cmdline" | grep -qF -- "$CEPH_DIR/ceph.conf" ||
  fail "ceph-osd pid $OSD_PID does not belong to the cluster in $CEPH_DIR"

osd_state() { awk '{print $3}' "/proc/$OSD_PID/stat" 2>/dev/null; }

_osd_stopped=0
resume_osd() {
  kill -CONT "$OSD_PID" 2>/dev/null
  _osd_stopped=0
}
# Resume the OSD before anything else on exit (the cleanup removes images,
# which needs the OSD).
_pause_cleanup() {
  local rc=$? pid spec
  [ $_osd_stopped -eq 0 ] || resume_osd
  [ -z "${_watchdog_pid:-}" ] || kill "$_watchdog_pid" 2>/dev/null
  # The clients go first, so that the servers can drain and close the image.
  for pid in "${_tracked_pids[@]}" "${_server_pids[@]}"; do
    _kill_and_reap "$pid"
  done
  # A cache detached cleanly leaves a snapshot rbdcache.<cache uuid> on the
  # image, which `rbd rm` refuses to remove.
  for spec in "${_images[@]}"; do
    timeout 60 rbd snap purge --no-progress "$spec" >/dev/null 2>&1 ||
      log "warning: could not purge the snapshots of image $spec"
  done
  (exit "$rc")
  _ceph_cleanup
}
trap _pause_cleanup EXIT

# now_ms: monotonic-enough wall clock in milliseconds.
now_ms() { echo $(($(date +%s%N) / 1000000)); }

# --- set-up -------------------------------------------------------------------
SIZE=$((64 * M))
create_image 64M
make_cache pause 256M 16M
# The writeback is driven by age: a block dirty for 1 s is written back, so
# the writeback follows fio all the time.  (The watermarks stay above the
# level reached: a block written during the pause is not written back
# before it is 1 s old, so the reads that follow it in the pause do not
# meet a writeback of their block, which holds the block's lock until the
# OSD answers.)  The sequential cutoff at 0: every write lands in the cache
# (none bypasses it to the origin, which would make a FLUSH wait for the
# origin).
start_rbd_server "$IMAGE_SPEC" --cache-dev "$CACHE_DEV" --meta-dev "$META_DEV" --mode writeback \
  --dirty-high 50 --dirty-low 40 --max-dirty-age 1 --sequential-cutoff 0
pid_before=$SERVER_PID

# --- phase 1: the working set, flushed and written back -----------------------
# 0..16M 0xa1, 16..32M 0xa2, in 1 MiB writes.
ops1=()
for ((i = 0; i < 32; i++)); do
  ops1+=("write -P $((i < 16 ? 0xa1 : 0xa2)) $((i * M)) 1M")
done
args=()
for op in "${ops1[@]}"; do args+=(-c "$op"); done
qemu_io "$URI" "${args[@]}" -c flush
wait_clean 60
expect_no_writeback_errors
get_stats
[ "$(stat_field bytes_written_back)" -ge $((32 * M)) ] ||
  fail "phase 1: expected at least $((32 * M)) bytes written back, stats: $STATS"
# The working set is cached (clean): reading it is all hits.
hits0=$(stat_field read_hits)
qemu_io "$URI" -c "read -P 0xa1 0 16M" -c "read -P 0xa2 16M 16M"
get_stats
misses1=$(stat_field read_misses)
[ "$misses1" = 0 ] || fail "phase 1: the working set is not all cached: $misses1 read misses, stats: $STATS"
[ "$(stat_field read_hits)" -gt "$hits0" ] || fail "phase 1: no read hits: $STATS"

# --- fio across the pause -----------------------------------------------------
# 4 jobs own 8 MiB each at 32, 40, 48 and 56 MiB; writes are rate-limited so
# that the jobs write for ~16 s and straddle the pause; a FLUSH every 8
# writes and one at the end (end_fsync), then crc32c verification.  Jobs
# are threads, so that killing fio stops them all.
cat >"$T/pause.fio" <<JOB
[global]
ioengine=nbd
uri=\${NBD_URI}
thread
offset=32m
size=8m
offset_increment=8m
numjobs=4
iodepth=8
bssplit=4k/40:16k/30:64k/30
rw=randwrite
rate=,512k
fsync=8
end_fsync=1
randrepeat=1
random_generator=tausworthe64
verify=crc32c
verify_fatal=1
verify_dump=0
verify_state_save=0
do_verify=1
group_reporting=0

[pause]
JOB
(cd "$T" && NBD_URI=$URI exec fio --output-format=json --output="$T/fio.json" "$T/pause.fio" \
  >"$T/fio.out" 2>&1) &
fio_pid=$!
track_pid "$fio_pid"
sleep 2
kill -0 "$fio_pid" 2>/dev/null || { cat "$T/fio.out" >&2; fail "fio ended before the pause"; }

# --- phase 2: the pause ---------------------------------------------------------
# Writes into the working set during the pause (cache hits), then a FLUSH.
ops2=(
  'write -P 0xb1 0 64k'
  'write -P 0xb2 1M 1M'
  'write -P 0xb3 4097 3000'
  'write -P 0xb4 5M 513'
  'write -P 0xb5 6291455 4099'
  'write -P 0xb6 17M 2M'
  'write -P 0xb7 30M 65537'
)
# Parts of the working set the pause writes do not touch.
reads_clean=(-c 'read -P 0xa1 8M 4M' -c 'read -P 0xa2 20M 8M' -c 'read -P 0xa1 2M 512')
reads_new=(
  -c 'read -P 0xb1 0 4097' -c 'read -P 0xb3 4097 3000' -c 'read -P 0xb1 7097 58439'
  -c 'read -P 0xa1 64k 960k' -c 'read -P 0xb2 1M 1M'
  -c 'read -P 0xb4 5M 513' -c 'read -P 0xa1 5243393 100'
  -c 'read -P 0xb5 6291455 4099' -c 'read -P 0xa1 6291454 1'
  -c 'read -P 0xb6 17M 2M' -c 'read -P 0xb7 30M 65537'
)
wargs=()
for op in "${ops2[@]}"; do wargs+=(-c "$op"); done

# timed NAME QEMU-IO-ARGS...: runs qemu-io; appends "NAME RC MILLISECONDS" to
# $T/pause.res and keeps the output in $T/pause-NAME.out.
timed() {
  local name=$1 t0 rc
  shift
  t0=$(now_ms)
  timeout 120 qemu-io -f raw "$@" >"$T/pause-$name.out" 2>&1
  rc=$?
  echo "$name $rc $(($(now_ms) - t0))" >>"$T/pause.res"
}
pause_clients() {
  timed hit-read "$URI" "${reads_clean[@]}"
  timed write-flush "$URI" "${wargs[@]}" -c flush
  timed read-back "$URI" "${reads_new[@]}"
  timed hit-read-again "$URI" "${reads_clean[@]}"
}

# A watchdog resumes the OSD even if this script dies without running its
# exit trap (SIGKILL): the shared cluster must not stay paused.  It runs in
# its own session, out of reach of a kill of the test's process group.
# shellcheck disable=SC2016
setsid bash -c 'for ((i = 0; i < $2 * 10; i++)); do sleep 0.1; done; kill -CONT "$1"' \
  watchdog "$OSD_PID" $((PAUSE + 20)) </dev/null >/dev/null 2>&1 &
_watchdog_pid=$!

: >"$T/pause.res"
log "pausing ceph-osd pid $OSD_PID for ${PAUSE}s"
_osd_stopped=1
kill -STOP "$OSD_PID" || fail "cannot send SIGSTOP to ceph-osd pid $OSD_PID"
t_stop=$(now_ms)
for ((i = 0; i < 50; i++)); do
  [ "$(osd_state)" = T ] && break
  sleep 0.01
done
[ "$(osd_state)" = T ] || fail "ceph-osd pid $OSD_PID is not stopped after SIGSTOP (state $(osd_state))"

pause_clients &
clients_pid=$!
track_pid "$clients_pid"

# Statistics early and late in the pause: nothing can be written back.
sleep 1
get_stats
stats_early=$STATS
wb_early=$(stat_field bytes_written_back)
writes_early=$(($(stat_field write_hits) + $(stat_field write_misses)))
while [ $(($(now_ms) - t_stop)) -lt $(((PAUSE - 1) * 1000)) ]; do sleep 0.1; done
get_stats
stats_late=$STATS
wb_late=$(stat_field bytes_written_back)
dirty_late=$(stat_field dirty_bytes)
writes_late=$(($(stat_field write_hits) + $(stat_field write_misses)))
clients_done_in_pause=0
kill -0 "$clients_pid" 2>/dev/null || clients_done_in_pause=1
fio_alive_at_resume=0
kill -0 "$fio_pid" 2>/dev/null && fio_alive_at_resume=1
while [ $(($(now_ms) - t_stop)) -lt $((PAUSE * 1000)) ]; do sleep 0.05; done
[ "$(osd_state)" = T ] || fail "ceph-osd pid $OSD_PID was resumed by someone else during the pause"
resume_osd
pause_ms=$(($(now_ms) - t_stop))
kill "$_watchdog_pid" 2>/dev/null
wait "$_watchdog_pid" 2>/dev/null
_watchdog_pid=
log "resumed ceph-osd after ${pause_ms} ms"
[ "$(osd_state)" != T ] || fail "ceph-osd pid $OSD_PID still stopped after SIGCONT"

wait "$clients_pid"
log "requests during the pause (name rc ms): $(tr '\n' ';' <"$T/pause.res")"
log "writes counted during the pause: $((writes_late - writes_early)); dirty at the end of the pause: $dirty_late bytes"

# --- checks of the pause ----------------------------------------------------------
server_alive "$pid_before" || fail "the server died during the pause"
for name in hit-read write-flush read-back hit-read-again; do
  line=$(grep "^$name " "$T/pause.res") || fail "pause: no result for $name"
  read -r _ rc ms <<<"$line"
  if [ "$rc" != 0 ] || grep -qiE 'pattern verification failed|failed|error' "$T/pause-$name.out"; then
    cat "$T/pause-$name.out" >&2
    fail "pause: qemu-io $name: exit $rc, expected 0 and no error"
  fi
  [ "$ms" -lt "$FAST_MS" ] ||
    fail "pause: $name took $ms ms during a ${PAUSE}s OSD pause, expected < $FAST_MS ms (it waited for the OSD)"
done
[ $clients_done_in_pause = 1 ] || fail "pause: the cache-hit requests were still running when the OSD was resumed"
[ "$wb_late" = "$wb_early" ] ||
  fail "pause: bytes_written_back went from $wb_early to $wb_late while the OSD was stopped (is the pause real?)"
[ "$dirty_late" -gt 0 ] || fail "pause: no dirty data at the end of the pause, expected the writes absorbed: $stats_late"
[ $fio_alive_at_resume = 1 ] || fail "fio finished before the OSD was resumed; it should straddle the pause"
# fio writes ~80 requests a second (the pause's qemu-io ~60 more, counted
# per 64 KiB block): most of them must go on in the pause.  (A job whose
# write meets the writeback of its block waits for the OSD; the others go
# on.)
[ $((writes_late - writes_early)) -gt 100 ] ||
  fail "pause: $((writes_late - writes_early)) writes reached the cache engine in 8 s of the pause, expected > 100 (fio blocked?): ${stats_early} then ${stats_late}"

# --- after SIGCONT ----------------------------------------------------------------
# fio finishes: every write and flush succeeded and the data verifies.
for ((i = 0; i < 900; i++)); do
  kill -0 "$fio_pid" 2>/dev/null || break
  sleep 0.1
done
kill -0 "$fio_pid" 2>/dev/null && fail "fio still running 90 s after the OSD was resumed (hang?)"
wait "$fio_pid"
fio_rc=$?
if [ $fio_rc -ne 0 ] || grep -qiE 'verify|bad|error' "$T/fio.out"; then
  cat "$T/fio.out" >&2
  fail "fio across the pause: exit $fio_rc, expected 0 and no error"
fi
python3 - "$T/fio.json" "$FAST_MS" "$STRICT" <<'PY' || fail "fio across the pause: see above"
import json, sys
text = open(sys.argv[1]).read()
fast_ms, strict = int(sys.argv[2]), sys.argv[3] == "1"
doc = json.loads(text[text.index("{"):])
jobs = doc["jobs"]
if len(jobs) != 4:
    sys.exit("expected 4 jobs, got %d" % len(jobs))
for j in jobs:
    if j.get("error"):
        sys.exit("job %s: error %r" % (j["jobname"], j["error"]))
    if j["write"]["io_bytes"] < 8 << 20:
        sys.exit("job %s wrote %d bytes, expected %d" % (j["jobname"], j["write"]["io_bytes"], 8 << 20))
    if j["read"]["io_bytes"] < 8 << 20:
        sys.exit("job %s verified %d bytes, expected %d" % (j["jobname"], j["read"]["io_bytes"], 8 << 20))
    if j["sync"]["total_ios"] < 2:
        sys.exit("job %s sent %d flushes, expected some" % (j["jobname"], j["sync"]["total_ios"]))
w_ms = [round(j["write"]["clat_ns"]["max"] / 1e6) for j in jobs]
f_ms = [round(j["sync"]["lat_ns"]["max"] / 1e6) for j in jobs]
print("fio: max write latency %s ms, max flush latency %s ms, flushes %s" % (
    w_ms, f_ms, [j["sync"]["total_ios"] for j in jobs]), file=sys.stderr)
# Every write landed in the cache, so a FLUSH needs the cache only: it
# never waits for the OSD.
if max(f_ms) >= fast_ms:
    sys.exit("a FLUSH took %d ms, expected < %d ms: it waited for the OSD" % (max(f_ms), fast_ms))
# A write to a block whose writeback is in flight goes to the cache without
# waiting for the origin (RBDCACHE_TEST_OSD_PAUSE_STRICT=0 only logs it).
if max(w_ms) >= fast_ms:
    print("fio: note: a write took %d ms during the pause: it waited for the writeback "
          "of its block, stalled on the OSD" % max(w_ms), file=sys.stderr)
    if strict:
        sys.exit("a write took %d ms, expected < %d ms (strict)" % (max(w_ms), fast_ms))
PY

# Same server process, still serving.
server_alive "$pid_before" || fail "the server is not running after the pause"
[ "$SERVER_PID" = "$pid_before" ] || fail "the server was restarted ($pid_before -> $SERVER_PID)"

# The expected image: the working set from the ops in order, fio's region
# as the export serves it (fio verified it), zeroes elsewhere.  The export
# must agree with the model in the working set.
nbdcopy --connections=4 "$URI" "$T/served.img" 2>"$T/nbdcopy.err" ||
  { cat "$T/nbdcopy.err" >&2; fail "nbdcopy out of the export after the pause failed"; }
python3 - "$T/served.img" "$T/expected.img" "$SIZE" "${ops1[@]}" "${ops2[@]}" <<'PY' ||
import sys
M = 1 << 20
served_path, expected_path, size = sys.argv[1], sys.argv[2], int(sys.argv[3])
served = open(served_path, "rb").read()
if len(served) != size:
    sys.exit("the export is %d bytes, expected %d" % (len(served), size))
model = bytearray(size)
def num(s):
    mult = {"k": 1024, "K": 1024, "M": M}.get(s[-1], 1)
    return int(s[:-1] if mult != 1 else s, 0) * mult
for op in sys.argv[4:]:
    w = op.split()
    off, ln = num(w[-2]), num(w[-1])
    model[off:off + ln] = bytes([num(w[w.index("-P") + 1])]) * ln
fio = served[32 * M:64 * M]
for j in range(4):
    part = fio[j * 8 * M:(j + 1) * 8 * M]
    if part.count(0) > 2 * M:
        sys.exit("fio region %d of the export is mostly zero (%d zero bytes)" % (j, part.count(0)))
model[32 * M:64 * M] = fio
bad = [o for o in range(0, 32 * M, 4096) if served[o:o + 4096] != model[o:o + 4096]]
if bad:
    o = bad[0]
    sys.exit("the export's working set differs from the writes at %d 4 KiB blocks, first at %d: "
             "expected %s..., seen %s..." % (len(bad), o, model[o:o + 8].hex(), served[o:o + 8].hex()))
open(expected_path, "wb").write(model)
PY
  fail "the export after the pause does not hold the data written"

# The cluster itself must answer again before the writeback can catch up;
# if it does not, say so (with the OSD's own view), not "writeback hangs".
cluster_ok=0
for _ in $(seq 1 12); do
  if timeout 10 rbd ls rbd >/dev/null 2>&1; then cluster_ok=1; break; fi
done
if [ "$cluster_ok" = 0 ]; then
  log "ceph-osd pid $OSD_PID state: $(osd_state)"
  tail -n 40 "$RBDCACHE_DEV_CEPH_DIR/log/osd.0.log" >&2 2>/dev/null
  tail -n 20 "$RBDCACHE_DEV_CEPH_DIR/log/mon.a.log" >&2 2>/dev/null
  fail "the Ceph cluster does not answer 2 minutes after SIGCONT (OSD and mon logs above)"
fi

# The writeback catches up.
wait_clean 60
expect_no_writeback_errors
[ "$(stat_field bypassed_bytes)" = 0 ] || fail "writes bypassed the cache to the origin: $STATS"
[ "$(stat_field bytes_written_back)" -gt "$wb_late" ] || fail "nothing written back after the pause: $STATS"
server_alive "$pid_before" || fail "the server is not running after the writeback"

stop_server "$pid_before"
expect_clean_exit "after the pause and the writeback"

# No client request failed ("request type ... failed"), no writeback or
# flush failed: no warning or error of any kind in the log.
if grep -nE 'rbdcache: (warning|error):' "$SERVER_LOG" >"$T/log-errors"; then
  cat "$T/log-errors" >&2
  fail "the server logged warnings or errors (above), expected none"
fi

# The image holds every write: the working set's and fio's.
rbd_export "$IMAGE_SPEC" "$T/export.img"
if ! cmp "$T/export.img" "$T/expected.img" >"$T/cmp.out" 2>&1; then
  cat "$T/cmp.out" >&2
  fail "rbd export of $IMAGE_SPEC differs from the expected image"
fi

# fio's data verifies through a fresh server without the cache.
start_rbd_server "$IMAGE_SPEC" --read-only
(cd "$T" && NBD_URI=$URI timeout -k 5 60 fio --output-format=json --output="$T/fio-verify.json" --verify_only \
  "$T/pause.fio" >"$T/fio-verify.out" 2>&1)
rc=$?
if [ $rc -ne 0 ] || grep -qiE 'verify|bad|error' "$T/fio-verify.out"; then
  cat "$T/fio-verify.out" >&2
  fail "fio --verify_only on the image after the pause: exit $rc"
fi
stop_server
expect_clean_exit "after the uncached verification"

log "PASS (pause ${pause_ms} ms; $(tr '\n' ';' <"$T/pause.res"))"
