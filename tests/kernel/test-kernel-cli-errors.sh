#!/usr/bin/env bash
# rbdcache map, unmap, list-mapped and attach refuse bad command lines
# (exit 2) and impossible requests (exit 1) with a message naming the
# problem, and --help documents every option.  Needs no nbd kernel module:
# where there is none, the commands must say "modprobe nbd" (map, attach),
# "not mapped" (unmap) or list nothing (list-mapped).
source "$(dirname "$0")/../integration/lib.sh" "$@"
require_rbdcache

# expect_exit CODE PATTERN ARGS...: rbdcache ARGS must exit with CODE within
# 30 s and its stderr must match the extended regexp PATTERN
# (case-insensitive).  Every mismatch is reported; the test fails at the end.
errors=0
expect_exit() {
  local want=$1 pattern=$2
  shift 2
  timeout 30 "$RBDCACHE" "$@" </dev/null >"$T/out" 2>"$T/err"
  local rc=$? why=
  if [ $rc -eq 124 ]; then
    why="did not exit within 30 s"
  elif [ $rc -ne "$want" ]; then
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

# --help documents every option.
check_help() {
  local cmd=$1
  shift
  timeout 30 "$RBDCACHE" "$cmd" --help >"$T/help" 2>&1 || fail "$cmd --help failed"
  local opt
  for opt in "$@"; do
    grep -q -- "$opt" "$T/help" || fail "$cmd --help does not mention $opt"
  done
}
check_help map --socket --export --connections --timeout --dead-conn-timeout --device --block-size --read-only attach
check_help attach --socket --export --connections --timeout --dead-conn-timeout --device
check_help unmap DEVICE
check_help list-mapped --json
help=$(timeout 30 "$RBDCACHE" --help) || fail "rbdcache --help failed"
grep -q 'list-mapped' <<<"$help" || fail "rbdcache --help does not list list-mapped"

S="$T/none.sock"

# Usage errors: exit 2.
expect_exit 2 'socket' map
expect_exit 2 'nbd device|/dev/nbdN' map --socket "$S" --device /dev/sda
expect_exit 2 'nbd device|/dev/nbdN' map --socket "$S" --device /dev/nbd01
expect_exit 2 'connections' map --socket "$S" --connections 0
expect_exit 2 'connections' map --socket "$S" --connections 17
expect_exit 2 'block-size' map --socket "$S" --block-size 1000
expect_exit 2 'timeout' map --socket "$S" --timeout -1
expect_exit 2 'timeout' map --socket "$S" --timeout soon
expect_exit 2 'dead-conn-timeout' map --socket "$S" --dead-conn-timeout forever
expect_exit 2 'device' unmap
expect_exit 2 'nbd device|/dev/nbdN' unmap /dev/sda
expect_exit 2 'nbd device|/dev/nbdN' unmap /dev/nbd1p1
expect_exit 2 'device' attach --socket "$S"
expect_exit 2 'socket' attach --device /dev/nbd0
expect_exit 2 'bogus' list-mapped --bogus

# Runtime errors: exit 1.  A device index that no machine has in use.
expect_exit 1 'not mapped' unmap /dev/nbd1000
if [ ! -d /sys/module/nbd ]; then
  expect_exit 1 'modprobe nbd' map --socket "$S"
  expect_exit 1 'modprobe nbd' attach --socket "$S" --device /dev/nbd0
  timeout 30 "$RBDCACHE" list-mapped >"$T/out" 2>"$T/err" || fail "list-mapped without the module: exit $?"
  [ ! -s "$T/out" ] || fail "list-mapped without the module printed: $(cat "$T/out")"
  timeout 30 "$RBDCACHE" list-mapped --json >"$T/out" 2>"$T/err" || fail "list-mapped --json: exit $?"
  [ "$(tr -d ' \n' <"$T/out")" = '[]' ] || fail "list-mapped --json without the module printed: $(cat "$T/out")"
else
  expect_exit 1 'no server socket' map --socket "$S"
  : >"$T/plain"
  expect_exit 1 'not a socket' map --socket "$T/plain"
  expect_exit 1 'not mapped' attach --socket "$S" --device /dev/nbd1000
  timeout 30 "$RBDCACHE" list-mapped --json >"$T/out" || fail "list-mapped --json: exit $?"
  python3 -c 'import json, sys; assert isinstance(json.load(open(sys.argv[1])), list)' "$T/out" ||
    fail "list-mapped --json did not print a JSON array"
fi

[ "$errors" -eq 0 ] || fail "$errors command line(s) misbehaved (see above)"
log "PASS"
