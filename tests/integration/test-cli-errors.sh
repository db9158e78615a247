#!/usr/bin/env bash
# rbdcache serve refuses bad command lines (exit 2) and impossible setups
# (exit 1) with a message naming the problem; --help documents every
# option; a stale socket left by a killed server is reused.
source "$(dirname "$0")/lib.sh" "$@"
require_rbdcache
require nbdinfo

origin="$T/origin.img"
make_origin "$origin" $((8 * 1048576)) sparse

# expect_exit CODE PATTERN ARGS...: rbdcache ARGS must exit with CODE (or
# any non-zero code when CODE is "nonzero") within 30 s, and its stderr
# must match the extended regexp PATTERN (case-insensitive).  A mismatch
# is recorded and the test goes on, so that one run reports every problem.
errors=0
expect_exit() {
  local want=$1 pattern=$2
  shift 2
  timeout 30 "$RBDCACHE" "$@" </dev/null >"$T/out" 2>"$T/err"
  local rc=$? why=
  if [ $rc -eq 124 ]; then
    why="did not exit within 30 s"
  elif [ "$want" = nonzero ] && [ $rc -eq 0 ]; then
    why="exit 0, expected an error"
  elif [ "$want" != nonzero ] && [ $rc -ne "$want" ]; then
    why="exit $rc, expected $want"
  elif ! grep -qiE -- "$pattern" "$T/err"; then
    why="stderr does not match /$pattern/"
  fi
  if [ -n "$why" ]; then
    printf '%s: ERROR: rbdcache %s: %s; stderr was:\n' "$TEST_NAME" "$*" "$why" >&2
    sed 's/^/    /' "$T/err" >&2
    errors=$((errors + 1))
  fi
}

S="$T/cli.sock"

# --help lists every option.
timeout 30 "$RBDCACHE" serve --help >"$T/help" 2>&1 || fail "serve --help failed"
for opt in --origin --socket --listen --export --read-only --threads; do
  grep -q -- "$opt" "$T/help" || fail "serve --help does not mention $opt"
done

# Usage errors: exit 2.
expect_exit 2 'bogus' serve --origin "file:$origin" --socket "$S" --bogus-flag
expect_exit 2 'origin' serve --socket "$S"
expect_exit 2 'threads' serve --origin "file:$origin" --socket "$S" --threads 0
expect_exit 2 'threads' serve --origin "file:$origin" --socket "$S" --threads -3
expect_exit 2 'threads' serve --origin "file:$origin" --socket "$S" --threads lots
expect_exit 2 'origin|scheme|nosuch' serve --origin "nosuch:$origin" --socket "$S"
expect_exit 2 'listen|address|port' serve --origin "file:$origin" --socket "$S" --listen 127.0.0.1:notaport
expect_exit 2 'serve|subcommand|required' --no-such-global-flag
[ ! -e "$S" ] || fail "a failed start left $S behind"

# Runtime errors: exit 1, naming what is wrong.
expect_exit 1 "$T/missing.img" serve --origin "file:$T/missing.img" --socket "$S"
[ ! -e "$S" ] || fail "a start with a missing origin left $S behind"
expect_exit 1 "$T/no-such-dir" serve --origin "file:$origin" --socket "$T/no-such-dir/x.sock"

[ $errors -eq 0 ] || fail "$errors command lines were not handled as expected (see above)"

# A socket path in use by a live server: refused, and the running server
# keeps its socket and keeps serving.
start_server "$origin"
expect_exit 1 "$SOCK|in use|already" serve --origin "file:$origin" --socket "$SOCK"
[ $errors -eq 0 ] || fail "a second server on a live server's socket was not refused"
server_alive || fail "the first server died when a second one tried its socket"
[ -S "$SOCK" ] || fail "the second server removed the first server's socket"
nbdinfo --size "$URI" >/dev/null || fail "the first server stopped serving after a second one tried its socket"

# A stale socket left by a killed server is not "in use": a new server
# starts on it.
stop_server "$SERVER_PID" KILL
[ -S "$SOCK" ] || fail "expected the killed server to leave its socket behind"
stale=$SOCK
"$RBDCACHE" serve --origin "file:$origin" --socket "$stale" </dev/null >"$T/server-stale.log" 2>&1 &
pid=$!
track_pid $pid
# The stale socket exists from the start, so wait until it answers.
for ((i = 0; i < READY_TIMEOUT * 10; i++)); do
  nbdinfo --size "nbd+unix:///?socket=$stale" >/dev/null 2>&1 && break
  kill -0 $pid 2>/dev/null || { cat "$T/server-stale.log" >&2; fail "server refused a stale socket"; }
  sleep 0.1
done
nbdinfo --size "nbd+unix:///?socket=$stale" >/dev/null || fail "server on a stale socket does not answer"
stop_server "$pid" TERM
expect_clean_exit "server on a stale socket"

# A clean exit removes the socket.
start_server "$origin"
stop_server
expect_clean_exit "plain start and stop"
[ ! -e "$SOCK" ] || fail "the socket is still there after a clean exit"

log "PASS"
