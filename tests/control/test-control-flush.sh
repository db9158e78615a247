#!/usr/bin/env bash
# `rbdcache flush`:
#   - on an idle (clean) cache it exits 0 at once;
#   - with dirty data, --wait on a pseudo-terminal (script(1)) draws a
#     progress bar with bytes left, rate and ETA, and exits 0 only when the
#     origin file holds every write; without a terminal it prints plain
#     progress lines;
#   - --max-rate limits the writeback rate: a flush of N bytes at rate R
#     with a burst of B takes at least (N - B) / R;
#   - --timeout gives up with exit status 3 and leaves the data dirty;
#   - without --wait it starts the flush and returns;
#   - client I/O keeps working during a flush;
#   - --then passthrough switches the mode.
source "$(dirname "$0")/../cache_integration/lib-cache.sh" "$@"
require qemu-io script
M=$((1 << 20))

make_origin "$T/origin.img" $((128 << 20)) sparse
make_cache f 128M 16M
start_cache_server "$T/origin.img" writeback --dirty-high 90 --dirty-low 80 --max-dirty-age 3600 \
  --sequential-cutoff 0

log "idle flush exits 0 at once"
t0=$(date +%s%N)
"$RBDCACHE" flush --wait -c "$CTL" >"$T/idle.out" 2>&1 || fail "idle flush failed: $(cat "$T/idle.out")"
ms=$((($(date +%s%N) - t0) / 1000000))
[ "$ms" -lt 3000 ] || fail "idle flush took $ms ms"
grep -q "flush complete: 0 B written back" "$T/idle.out" || fail "idle flush output: $(cat "$T/idle.out")"

log "flush --wait on a terminal draws a bar and returns when the origin has the data"
qemu_io "$URI" -c 'write -P 0x5c 0 24M' -c flush
cmp -s -n $((24 * M)) "$T/origin.img" <(head -c $((24 * M)) /dev/zero | tr '\0' '\134') &&
  fail "the origin has the data before the flush: the test proves nothing"
script -qec "$RBDCACHE flush --wait --max-rate 8M -c $CTL" "$T/typescript" </dev/null >"$T/tty.out" 2>&1 ||
  fail "flush under a terminal failed: $(tr '\r' '\n' <"$T/tty.out")"
tr '\r' '\n' <"$T/tty.out" >"$T/tty.lines"
grep -Eq '^\[#*\.+\] +[0-9]+%  .* left  .*/s  ETA ' "$T/tty.lines" ||
  fail "no progress bar under a terminal: $(cat "$T/tty.lines")"
grep -Eq '^\[#{30}\] 100%  0 B left' "$T/tty.lines" || fail "the bar did not reach 100%: $(cat "$T/tty.lines")"
grep -q "flush complete: 24.0 MiB written back" "$T/tty.lines" || fail "no completion line: $(cat "$T/tty.lines")"
cmp -n $((24 * M)) "$T/origin.img" <(head -c $((24 * M)) /dev/zero | tr '\0' '\134') ||
  fail "flush exited 0 but the origin lacks the data"
# 24 MiB at 8 MiB/s with a 4 MiB burst: at least 2.5 s.
secs=$(grep -o 'written back in [0-9.]* s' "$T/tty.lines" | grep -o '[0-9.]*')
python3 -c "import sys; sys.exit(0 if float('$secs') >= 2.4 else 1)" ||
  fail "--max-rate 8M flushed 24 MiB in $secs s"

log "without a terminal: plain progress lines; client I/O goes on meanwhile"
qemu_io "$URI" -c 'write -P 0x6d 32M 24M' -c flush
"$RBDCACHE" flush --wait --max-rate 8M -c "$CTL" >"$T/plain.out" 2>&1 &
flush_pid=$!
# The client write below must land after the flush started (the flush
# counts only what was dirty when it began).
active=0
for _ in $(seq 1 100); do
  "$RBDCACHE" status --json -c "$CTL" | python3 -c 'import json,sys; sys.exit(0 if json.load(sys.stdin)["flush"]["active"] else 1)' &&
    { active=1; break; }
  sleep 0.1
done
[ $active = 1 ] || fail "the flush did not start within 10 s"
qemu_io "$URI" -c 'write -P 0x77 100M 1M' -c 'read -P 0x6d 32M 24M' -c 'read -P 0x77 100M 1M'
wait "$flush_pid" || fail "plain flush failed: $(cat "$T/plain.out")"
grep -Eq '^flush: [0-9.]+ [KMG]?i?B of 24.0 MiB left, .*/s, ETA ' "$T/plain.out" ||
  fail "no plain progress lines: $(cat "$T/plain.out")"
grep -q $'\r' "$T/plain.out" && fail "carriage returns without a terminal"

log "--timeout gives up with exit 3 and keeps the data dirty"
qemu_io "$URI" -c 'write -P 0x7e 64M 32M' -c flush
"$RBDCACHE" flush --wait --max-rate 1M --timeout 1 -c "$CTL" >"$T/timeout.out" 2>&1
rc=$?
[ "$rc" = 3 ] || fail "flush --timeout exited $rc, not 3: $(cat "$T/timeout.out")"
grep -q "timed out after" "$T/timeout.out" || fail "unclear timeout message: $(cat "$T/timeout.out")"
"$RBDCACHE" status --json -c "$CTL" | python3 -c 'import json,sys; sys.exit(0 if json.load(sys.stdin)["cache"]["dirty_bytes"] > 0 else 1)' ||
  fail "no dirty data after a timed-out flush"

log "without --wait it starts and returns; --then passthrough switches the mode"
"$RBDCACHE" flush --then passthrough -c "$CTL" >"$T/nowait.out" 2>&1 || fail "flush without --wait failed: $(cat "$T/nowait.out")"
grep -q "flush started" "$T/nowait.out" || fail "no start line: $(cat "$T/nowait.out")"
for _ in $(seq 1 120); do
  "$RBDCACHE" status --json -c "$CTL" >"$T/s.json" || fail "status failed"
  python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); sys.exit(0 if d["cache"]["dirty_bytes"] == 0 and not d["flush"]["active"] else 1)' "$T/s.json" && break
  sleep 0.5
done
python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); sys.exit(0 if d["mode"] == "passthrough" and d["cache"]["dirty_bytes"] == 0 else 1)' "$T/s.json" ||
  fail "after flush --then passthrough: $(cat "$T/s.json")"
cmp -n $((32 * M)) <(tail -c +$((64 * M + 1)) "$T/origin.img") <(head -c $((32 * M)) /dev/zero | tr '\0' '\176') ||
  fail "the background flush did not write the data to the origin"
stop_server
expect_clean_exit "flush tests"
log "PASS"
