#!/usr/bin/env bash
# kill -9 of a caching server while a client has writes in flight and has
# never sent a FLUSH: after the restart on the same cache, every write the
# server ACKNOWLEDGED reads back, and every other 4 KiB unit holds its last
# acknowledged content or that of a write still in flight at the kill.  A
# crash of the process alone, with no power cut, may lose no acknowledged
# write (docs/crash-consistency.md), in any mode.
#
# One cache (32 MiB) over a 64 MiB origin, so eviction and writeback run;
# the rounds cycle through writeback, writethrough and passthrough, each
# restart in the next round's mode, so passthrough and writethrough writes
# land on blocks an earlier round left cached (and dirty).  The writer keeps
# 8 writes in flight (libnbd, nbd_crash_client acked).  The kill comes
# 0.2-1 s after the round's 300th acknowledgement, inside the metadata
# commit interval.  At the end everything is written back and the origin
# alone, read without the cache, must hold the same.
#
# Arguments: RBDCACHE NBD_CRASH_CLIENT [file|rbd].  With rbd the origin is
# an RBD image (needs the test cluster, tests/rbd/lib-ceph.sh).
# MODES (default "writeback writethrough passthrough writeback passthrough
# writethrough") lists the rounds.
source "$(dirname "$0")/lib-cache.sh" "$1" "$2"
{ [ -n "$CRASH_CLIENT" ] && [ -x "$CRASH_CLIENT" ]; } ||
  fail "usage: $0 RBDCACHE NBD_CRASH_CLIENT [file|rbd]"
ORIGIN_KIND=${3:-file}
SIZE=$((64 * 1048576))
case $ORIGIN_KIND in
  file)
    origin="$T/origin.img"
    make_origin "$origin" "$SIZE" zero
    ;;
  rbd)
    source "$(dirname "$0")/../rbd/lib-ceph.sh"
    create_image 64M
    ;;
  *) fail "unknown origin kind $ORIGIN_KIND (file or rbd)" ;;
esac
read -r -a modes <<<"${MODES:-writeback writethrough passthrough writeback passthrough writethrough}"
make_cache c 32M 16M
wlog="$T/acked.log"
client_asan="${ASAN_OPTIONS:-}"
: >"$wlog"

# start MODE [SERVE-ARGS...]: the caching server over this test's origin.
start() {
  local mode=$1
  shift
  if [ "$ORIGIN_KIND" = rbd ]; then
    start_rbd_server "$IMAGE_SPEC" --cache-dev "$CACHE_DEV" --meta-dev "$META_DEV" --mode "$mode" "$@"
  else
    start_cache_server "$origin" "$mode" "$@"
  fi
}

# Acknowledgements in run number $1 (1-based) of the log.
acks_in_run() { awk -v run="$1" '/^S/{r++} /^A/ && r == run {n++} END{print n+0}' "$wlog"; }

# verify WHAT: prints the number of bad units; the client's summary is logged.
verify() {
  local what=$1 bad
  ASAN_OPTIONS=$client_asan "$CRASH_CLIENT" verify "$URI" "$wlog" >"$T/verify.out" 2>&1
  bad=$(sed -n 's/^nbd_crash_client: checked .*, \([0-9]*\) bad$/\1/p' "$T/verify.out")
  [ -n "$bad" ] || { cat "$T/verify.out" >&2; fail "$what: the verifier did not finish"; }
  if [ "$bad" != 0 ]; then
    grep 'holds neither' "$T/verify.out" | head -n 3 >&2
  fi
  log "$what: $(tail -n 1 "$T/verify.out")"
  VERIFY_BAD=$bad
}

lost=0
start "${modes[0]}"
for ((round = 0; round < ${#modes[@]}; round++)); do
  mode=${modes[round]}
  next=${modes[(round + 1) % ${#modes[@]}]}
  seed=$((RANDOM * 32768 + RANDOM + 1))
  ASAN_OPTIONS=$client_asan "$CRASH_CLIENT" acked "$URI" "$wlog" 60 "$seed" 8 2>"$T/writer.err" &
  writer=$!
  track_pid "$writer"
  for ((i = 0; i < 600; i++)); do
    [ "$(acks_in_run $((round + 1)))" -ge 300 ] && break
    kill -0 "$writer" 2>/dev/null || { cat "$T/writer.err" >&2; fail "round $round: the writer exited early"; }
    sleep 0.1
  done
  [ "$(acks_in_run $((round + 1)))" -ge 300 ] || fail "round $round: fewer than 300 writes acknowledged in 60s"
  ms=$((200 + RANDOM % 801))
  sleep "0.$(printf '%03d' "$ms")"
  server_alive || fail "round $round: the server died before it was killed"
  stop_server "$SERVER_PID" KILL
  for ((i = 0; i < 300; i++)); do
    kill -0 "$writer" 2>/dev/null || break
    sleep 0.1
  done
  kill -0 "$writer" 2>/dev/null && fail "round $round: the writer did not notice the server died"
  wait "$writer" 2>/dev/null
  log "round $round ($mode, killed ${ms} ms after the 300th ack): $(tail -n 1 "$T/writer.err")"

  start "$next"
  verify "round $round ($mode), read back in $next"
  if [ "$VERIFY_BAD" != 0 ]; then
    log "round $round ($mode): $VERIFY_BAD acknowledged 4 KiB units lost"
    lost=$((lost + VERIFY_BAD))
  fi
done
[ "$lost" = 0 ] || fail "acknowledged writes lost by kill -9: $lost 4 KiB units over ${#modes[@]} rounds"

# Everything dirty goes to the origin; then the origin alone (no cache)
# must hold the same.
stop_server
expect_clean_exit "after the last round"
start writeback --dirty-high 0 --dirty-low 0 --max-dirty-age 0.1
wait_clean
expect_no_writeback_errors
stop_server
expect_clean_exit "after writeback"
if [ "$ORIGIN_KIND" = rbd ]; then
  origin="$T/exported.img"
  rbd_export "$IMAGE_SPEC" "$origin"
fi
start_server "$origin"
verify "origin after writeback"
[ "$VERIFY_BAD" = 0 ] || fail "the origin lost acknowledged writes: $VERIFY_BAD 4 KiB units"
stop_server
expect_clean_exit "plain server"
log "PASS"
