#!/usr/bin/env bash
# SIGTERM under load from several connections: the server answers what it
# has taken in and exits 0 in bounded time, also with idle clients still
# connected.  No client sees an error reply.  Writes flushed (or FUA)
# before the signal are in the origin file; every write answered with
# success is read back by a new server.
source "$(dirname "$0")/lib.sh" "$@"
require python3 qemu-io

CLIENT="$(dirname "$0")/nbd_raw_client.py"
SIZE=$((64 * 1048576))
M=1048576
origin="$T/origin.img"
make_origin "$origin" "$SIZE" sparse

# wait_file FILE PID: wait until FILE exists; fail if PID exits first.
wait_file() {
  local i
  for ((i = 0; i < READY_TIMEOUT * 10; i++)); do
    [ -e "$1" ] && return 0
    kill -0 "$2" 2>/dev/null || fail "client $2 exited before $1 appeared"
    sleep 0.1
  done
  fail "timed out waiting for $1"
}

start_server "$origin"

# Written and flushed, and the client gone, before any signal.
qemu_io "$URI" -c 'write -P 0xab 0 1M' -c flush

# Two idle clients (one stuck before its handshake, one negotiated) and
# two loaded connections writing to disjoint regions.
python3 - "$SOCK" <<'PY' &
import socket, sys, time
s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); time.sleep(300)
PY
track_pid $!
python3 "$CLIENT" "$SOCK" idle --ready "$T/idle.ready" --duration 300 &
idle_pid=$!
track_pid $idle_pid
python3 "$CLIENT" "$SOCK" load --region $((1 * M)):$((31 * M)) --seed 1 \
  --ready "$T/a.ready" --log "$T/a.json" &
load_a=$!
track_pid $load_a
python3 "$CLIENT" "$SOCK" load --region $((32 * M)):$((32 * M)) --seed 2 \
  --ready "$T/b.ready" --log "$T/b.json" &
load_b=$!
track_pid $load_b
wait_file "$T/idle.ready" $idle_pid
wait_file "$T/a.ready" $load_a
wait_file "$T/b.ready" $load_b

stop_server "$SERVER_PID" TERM
[ "$SERVER_RC" != 124 ] || fail "server still running ${EXIT_TIMEOUT}s after SIGTERM"
expect_clean_exit "SIGTERM under load"

wait $load_a || fail "load client A saw an error (see above)"
wait $load_b || fail "load client B saw an error (see above)"
wait $idle_pid || fail "the idle client was not disconnected cleanly"

# Flushed before the signal: in the origin file itself.
head -c $M /dev/zero | tr '\0' '\253' | cmp -n $M - "$origin" ||
  fail "data written and flushed before SIGTERM is not in the origin file"
python3 "$CLIENT" "$SOCK" verify_log --log "$T/a.json" --origin-file "$origin" ||
  fail "durable writes of client A are not in the origin file"
python3 "$CLIENT" "$SOCK" verify_log --log "$T/b.json" --origin-file "$origin" ||
  fail "durable writes of client B are not in the origin file"

# Answered before the signal: served by the next server.
start_server "$origin"
python3 "$CLIENT" "$SOCK" verify_log --log "$T/a.json" ||
  fail "writes answered to client A are lost"
python3 "$CLIENT" "$SOCK" verify_log --log "$T/b.json" ||
  fail "writes answered to client B are lost"
qemu_io "$URI" -c 'read -P 0xab 0 1M'

# SIGTERM with no client at all.
stop_server "$SERVER_PID" TERM
expect_clean_exit "SIGTERM when idle"

log "PASS"
