#!/usr/bin/env bash
# kill -9 of a caching server in the middle of a write/flush workload, over
# and over on the same cache: after each restart every write covered by a
# completed FLUSH reads back intact, every other 4 KiB unit holds its flushed
# content or that of a later write (never anything else), and the cache
# still holds its blocks.  The cache (32 MiB) is smaller than the 64 MiB the
# client writes to, so eviction and writeback run during the workload.
# Rounds alternate between writeback and writethrough.  At the end a full
# writeback leaves the origin file with the same guarantees, read without
# the cache.
#
# ROUNDS (default 4) sets the number of kill -9 rounds.
source "$(dirname "$0")/lib-cache.sh" "$@"
{ [ -n "$CRASH_CLIENT" ] && [ -x "$CRASH_CLIENT" ]; } || fail "usage: $0 RBDCACHE NBD_CRASH_CLIENT"

ROUNDS=${ROUNDS:-4}
SIZE=$((64 * 1048576))
origin="$T/origin.img"
make_origin "$origin" "$SIZE" zero
make_cache c 32M 16M
wlog="$T/crash.log"
client_asan="${ASAN_OPTIONS:-}"
: >"$wlog"

# FLUSHes completed in run number $1 (1-based) of the crash log.
flushes_in_run() { awk -v run="$1" '/^S/{r++} /^F/ && r == run {n++} END{print n+0}' "$wlog"; }

verify() {
  local what=$1
  ASAN_OPTIONS=$client_asan "$CRASH_CLIENT" verify "$URI" "$wlog" >"$T/verify.out" 2>&1 ||
    { cat "$T/verify.out" >&2; fail "$what: flushed data lost or corrupted"; }
  log "$what: $(tail -n 1 "$T/verify.out")"
}

mode_of() { if (($1 % 2 == 0)); then echo writeback; else echo writethrough; fi; }

start_cache_server "$origin" "$(mode_of 0)"
for ((round = 0; round < ROUNDS; round++)); do
  mode=$(mode_of "$round")
  seed=$((RANDOM * 32768 + RANDOM + 1))
  ASAN_OPTIONS=$client_asan "$CRASH_CLIENT" write "$URI" "$wlog" 60 "$seed" 2>"$T/writer.err" &
  writer=$!
  track_pid "$writer"

  # Let the first FLUSH of this run complete, then run for 1-3 s more.
  for ((i = 0; i < 600; i++)); do
    [ "$(flushes_in_run $((round + 1)))" -gt 0 ] && break
    kill -0 "$writer" 2>/dev/null || { cat "$T/writer.err" >&2; fail "round $round: the writer exited early"; }
    sleep 0.1
  done
  [ "$(flushes_in_run $((round + 1)))" -gt 0 ] || fail "round $round: no FLUSH completed within 60s"
  ms=$((1000 + RANDOM % 2001))
  sleep "$((ms / 1000)).$(printf '%03d' $((ms % 1000)))"

  server_alive || fail "round $round: the server died before it was killed"
  stop_server "$SERVER_PID" KILL
  # The writer stops when its connection dies.
  for ((i = 0; i < 300; i++)); do
    kill -0 "$writer" 2>/dev/null || break
    sleep 0.1
  done
  kill -0 "$writer" 2>/dev/null && fail "round $round: the writer did not notice the server died"
  wait "$writer" 2>/dev/null
  log "round $round ($mode, killed after ${ms} ms): $(tail -n 1 "$T/writer.err")"

  # Restart on the same cache, in the next round's mode.
  start_cache_server "$origin" "$(mode_of $((round + 1)))"
  get_stats
  mapped=$(stat_field mapped_blocks)
  [ "$mapped" -gt 0 ] || fail "round $round: the cache is empty after kill -9 and restart: $STATS"
  verify "round $round"
done

# Everything dirty goes to the origin; then the origin alone (no cache)
# must satisfy the same checks.
stop_server
expect_clean_exit "after the last round"
start_cache_server "$origin" writeback --dirty-high 0 --dirty-low 0 --max-dirty-age 0.1
wait_clean
expect_no_writeback_errors
stop_server
expect_clean_exit "after writeback"
start_server "$origin"
verify "origin file after writeback"
stop_server
expect_clean_exit "plain server"

log "PASS"
