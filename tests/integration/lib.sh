# Shared helpers for the integration tests.  Source it from a test script:
#
#   source "$(dirname "$0")/lib.sh" "$@"
#
# The first argument of every test is the path of the rbdcache binary (meson
# passes it); RBDCACHE in the environment works as well.
#
# Contract:
#   - A temporary directory $T is created and removed on exit.
#   - Every server started with start_server and every process registered
#     with track_pid is killed on exit, whatever the outcome of the test.
#   - A test that needs a missing tool exits 77 (meson reports SKIP).
#   - fail prints a message, the logs of the servers, and exits 1.
#
# NBD_TEST_SERVER=qemu-nbd or NBD_TEST_SERVER=nbdkit runs a test against a
# reference server instead of rbdcache, to check the test itself.  Tests that
# exercise rbdcache-only behaviour (CLI, exit codes) skip in that mode.

set -u
set -o pipefail

RBDCACHE=${1:-${RBDCACHE:-}}
NBD_TEST_SERVER=${NBD_TEST_SERVER:-rbdcache}
TEST_NAME=$(basename "$0" .sh)

# Seconds to wait for a server to become ready and to exit.  Generous: the
# machines running the suite may be small and busy.
READY_TIMEOUT=${READY_TIMEOUT:-60}
EXIT_TIMEOUT=${EXIT_TIMEOUT:-30}

T=$(mktemp -d "${TMPDIR:-/tmp}/rbdcache-it.XXXXXX")
_tracked_pids=()
_server_pids=()

log() { printf '%s: %s\n' "$TEST_NAME" "$*" >&2; }

# Prints the tail of every server log under $T.
dump_logs() {
  local f
  for f in "$T"/*.log; do
    [ -e "$f" ] || continue
    printf -- '--- %s (last 40 lines) ---\n' "$(basename "$f")" >&2
    tail -n 40 "$f" >&2
  done
}

fail() {
  printf '%s: FAIL: %s\n' "$TEST_NAME" "$*" >&2
  dump_logs
  exit 1
}

skip() {
  printf '%s: SKIP: %s\n' "$TEST_NAME" "$*" >&2
  exit 77
}

# require TOOL...: skip the test unless every TOOL is on PATH.
require() {
  local t
  for t in "$@"; do
    command -v "$t" >/dev/null 2>&1 || skip "$t not installed"
  done
}

# require_rbdcache: the test checks rbdcache itself (not a reference server).
require_rbdcache() {
  [ "$NBD_TEST_SERVER" = rbdcache ] || skip "tests rbdcache itself, not $NBD_TEST_SERVER"
}

track_pid() { _tracked_pids+=("$1"); }

_kill_and_reap() {
  local pid=$1 i
  kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null; return 0; }
  kill -TERM "$pid" 2>/dev/null
  for ((i = 0; i < 100; i++)); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  kill -KILL "$pid" 2>/dev/null
  wait "$pid" 2>/dev/null
  return 0
}

_cleanup() {
  local rc=$? pid
  trap - EXIT INT TERM
  for pid in "${_tracked_pids[@]}" "${_server_pids[@]}"; do
    _kill_and_reap "$pid"
  done
  rm -rf "$T"
  exit "$rc"
}
trap _cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

if [ "$NBD_TEST_SERVER" = rbdcache ]; then
  [ -n "$RBDCACHE" ] || fail "usage: $0 PATH-TO-RBDCACHE (or set RBDCACHE)"
  [ -x "$RBDCACHE" ] || fail "rbdcache binary not executable: $RBDCACHE"
fi

# make_origin PATH SIZE KIND: create an origin image.
#   KIND is random (incompressible data), sparse (one big hole) or zero
#   (allocated zeroes).  SIZE is in bytes and must be a multiple of 1 MiB
#   for random and zero.
make_origin() {
  local path=$1 size=$2 kind=$3
  rm -f "$path"
  case $kind in
    sparse) truncate -s "$size" "$path" ;;
    random) head -c "$size" /dev/urandom >"$path" ;;
    zero) dd if=/dev/zero of="$path" bs=1M count=$((size / 1048576)) status=none ;;
    *) fail "make_origin: unknown kind $kind" ;;
  esac
  [ "$(stat -c %s "$path")" -eq "$size" ] || fail "make_origin: $path has the wrong size"
}

# start_server ORIGIN [EXTRA-ARGS...]
# Starts a server on a fresh unix socket and waits until the socket exists.
# Sets SERVER_PID, SOCK, SERVER_LOG and URI (nbd+unix:///?socket=...).
# Each call starts a new server; all of them are stopped on exit.
# EXTRA-ARGS are rbdcache serve options; --read-only and --export NAME are
# translated for the reference servers.
_server_seq=0
start_server() {
  local origin=$1
  shift
  _server_seq=$((_server_seq + 1))
  SOCK="$T/nbd$_server_seq.sock"
  CTL="$T/nbd$_server_seq.ctl"  # rbdcache's default control socket
  SERVER_LOG="$T/server$_server_seq.log"
  local export_name=""

  case $NBD_TEST_SERVER in
    rbdcache)
      local a prev=""
      for a in "$@"; do
        [ "$prev" = --export ] && export_name=$a
        prev=$a
      done
      "$RBDCACHE" serve --origin "file:$origin" --socket "$SOCK" "$@" \
        </dev/null >"$SERVER_LOG" 2>&1 &
      ;;
    qemu-nbd)
      local qargs=(-t -k "$SOCK" -f raw --cache=none --aio=io_uring -e 8 --discard=unmap)
      while [ $# -gt 0 ]; do
        case $1 in
          --read-only) qargs+=(-r) ;;
          --export) qargs+=(-x "$2"); export_name=$2; shift ;;
          *) ;;
        esac
        shift
      done
      qemu-nbd "${qargs[@]}" "$origin" </dev/null >"$SERVER_LOG" 2>&1 &
      ;;
    nbdkit)
      local kargs=(-f -U "$SOCK")
      while [ $# -gt 0 ]; do
        case $1 in
          --read-only) kargs+=(-r) ;;
          --export) kargs+=(-e "$2"); export_name=$2; shift ;;
          *) ;;
        esac
        shift
      done
      nbdkit "${kargs[@]}" file "$origin" </dev/null >"$SERVER_LOG" 2>&1 &
      ;;
    *) fail "unknown NBD_TEST_SERVER=$NBD_TEST_SERVER" ;;
  esac
  SERVER_PID=$!
  _server_pids+=("$SERVER_PID")
  wait_for_socket "$SOCK" "$SERVER_PID"
  URI="nbd+unix:///?socket=$SOCK"
  EXPORT_URI="nbd+unix:///$export_name?socket=$SOCK"
}

# wait_for_socket SOCK PID: poll until SOCK is a socket; fail if PID dies or
# READY_TIMEOUT passes.
wait_for_socket() {
  local sock=$1 pid=$2 i
  for ((i = 0; i < READY_TIMEOUT * 10; i++)); do
    [ -S "$sock" ] && return 0
    kill -0 "$pid" 2>/dev/null || fail "server exited before it was ready"
    sleep 0.1
  done
  fail "server not ready after ${READY_TIMEOUT}s (no socket $sock)"
}

# server_alive [PID]: true while the server process runs.
server_alive() { kill -0 "${1:-$SERVER_PID}" 2>/dev/null; }

# _has_exited PID: true once PID has exited, whether or not it was reaped
# yet (a zombie still answers kill -0; its state in /proc/PID/stat is Z).
_has_exited() {
  kill -0 "$1" 2>/dev/null || return 0
  [ "$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null)" = Z ]
}

# stop_server [PID] [SIGNAL]: send SIGNAL (default TERM) and wait at most
# EXIT_TIMEOUT seconds.  Sets SERVER_RC to the exit status (or 124 when the
# server had to be killed after the timeout).  Always returns 0.
# Once the server has been seen exited, its status is the one `wait` gives:
# it is not looked at a second time, because bash may reap it in between
# (its /proc entry is then gone while kill -0 still answered a moment ago).
stop_server() {
  local pid=${1:-$SERVER_PID} sig=${2:-TERM} i
  SERVER_RC=
  kill -"$sig" "$pid" 2>/dev/null
  for ((i = 0; i < EXIT_TIMEOUT * 10; i++)); do
    if _has_exited "$pid"; then
      wait "$pid" 2>/dev/null
      SERVER_RC=$?
      return 0
    fi
    sleep 0.1
  done
  kill -KILL "$pid" 2>/dev/null
  wait "$pid" 2>/dev/null
  SERVER_RC=124
  return 0
}

# The exit status a stopped server is expected to have.  qemu-nbd and
# nbdkit do not all exit 0 on SIGTERM; only rbdcache's status is asserted.
expect_clean_exit() {
  local what=$1
  if [ "$NBD_TEST_SERVER" = rbdcache ]; then
    [ "$SERVER_RC" = 0 ] || fail "$what: server exit status $SERVER_RC, expected 0"
  else
    [ "$SERVER_RC" != 124 ] || fail "$what: server did not exit within ${EXIT_TIMEOUT}s"
  fi
}

# qemu_io ARGS...: run qemu-io on the raw export and fail on any error,
# including pattern mismatches that some versions report with exit 0.
qemu_io() {
  local out
  out=$(qemu-io -f raw "$@" 2>&1)
  local rc=$?
  printf '%s\n' "$out" >>"$T/qemu-io.out"
  if [ $rc -ne 0 ] || printf '%s\n' "$out" | grep -qiE 'pattern verification failed|failed|error'; then
    printf '%s\n' "$out" >&2
    fail "qemu-io $* (exit $rc)"
  fi
}

# qemu_io_expect_fail ARGS...: the qemu-io commands must report an error.
qemu_io_expect_fail() {
  local out
  out=$(qemu-io -f raw "$@" 2>&1)
  local rc=$?
  printf '%s\n' "$out" >>"$T/qemu-io.out"
  if [ $rc -eq 0 ] && ! printf '%s\n' "$out" | grep -qiE 'failed|error|denied|not permitted'; then
    printf '%s\n' "$out" >&2
    fail "qemu-io $* succeeded, expected an error"
  fi
}

# write_fio_verify_job FILE SIZE STRIDE [OFFSET]: a fio job file for four
# connections (numjobs=4, the multi-conn case); job i writes SIZE bytes at
# OFFSET + i * STRIDE with a mix of block sizes, then verifies them with
# crc32c. fio reads the export's URI from $NBD_URI.
write_fio_verify_job() {
  local file=$1 size=$2 stride=$3 offset=${4:-0}
  cat >"$file" <<JOB
[global]
ioengine=nbd
uri=\${NBD_URI}
offset=$offset
size=$size
offset_increment=$stride
numjobs=4
iodepth=8
bssplit=4k/50:16k/20:64k/20:1m/10
rw=randwrite
randrepeat=1
random_generator=tausworthe64
verify=crc32c
verify_fatal=1
verify_dump=0
verify_state_save=0
do_verify=1
group_reporting=0

[mixed]
JOB
}

# run_fio_verify JOBFILE LABEL MIN_BYTES TIMEOUT [FIO ARGS...]: runs the job
# against $URI (TIMEOUT seconds at most, 0 for no limit). fio must exit 0 and
# print no error, and each of its four jobs must report no error and move at
# least MIN_BYTES.
run_fio_verify() {
  local job=$1 label=$2 min_bytes=$3 limit=$4
  shift 4
  (cd "$T" && NBD_URI=$URI timeout "$limit" fio --output-format=json --output="$T/$label.json" "$@" "$job" \
    >"$T/$label.out" 2>&1)
  local rc=$?
  if [ $rc -ne 0 ] || grep -qiE 'verify|bad|error' "$T/$label.out"; then
    cat "$T/$label.out" >&2
    fail "fio $label: exit $rc"
  fi
  python3 - "$T/$label.json" "$min_bytes" <<'PY' || fail "fio $label reported errors"
import json, sys
text = open(sys.argv[1]).read()
min_bytes = int(sys.argv[2])
doc = json.loads(text[text.index("{"):])
jobs = doc["jobs"]
if len(jobs) != 4:
    sys.exit("expected 4 jobs, got %d" % len(jobs))
bad = [j["jobname"] for j in jobs if j.get("error")]
if bad:
    sys.exit("jobs with errors: %r" % bad)
# Every job really moved data.
for j in jobs:
    moved = j["write"]["io_bytes"] + j["read"]["io_bytes"]
    if moved < min_bytes:
        sys.exit("job %s moved only %d bytes" % (j["jobname"], moved))
PY
}
