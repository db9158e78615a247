# shellcheck shell=bash
# Helpers for the cache engine's integration tests.  Source it from a test:
#
#   source "$(dirname "$0")/lib-cache.sh" "$@"
#
# Arguments: the rbdcache binary, then (optionally) the nbd_crash_client
# binary; meson passes both.  It sources ../integration/lib.sh, so every
# helper there (start_server, stop_server, fail, require, ...) is available
# and the same cleanup contract holds: servers are stopped and $T removed on
# exit.
#
# Helpers:
#   make_cache NAME CACHE-SIZE [META-SIZE] [FORMAT-ARGS...]
#       creates $T/NAME.cache and $T/NAME.meta and formats them; sets
#       CACHE_DEV and META_DEV.
#   start_cache_server ORIGIN MODE [SERVE-ARGS...]
#       start_server through the cache in CACHE_DEV/META_DEV.
#   get_stats [PID] [LOG]
#       sends SIGUSR1 to the server and waits for the statistics line it
#       logs; sets STATS (the JSON).  Defaults: SERVER_PID, SERVER_LOG.
#   stat_field FIELD     prints FIELD of the last STATS.
#   wait_clean [SECONDS] polls the statistics until dirty_bytes is 0.

_lib_cache_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=../integration/lib.sh
source "$_lib_cache_dir/../integration/lib.sh" "${1:-}"
CRASH_CLIENT=${2:-${CRASH_CLIENT:-}}

require_rbdcache
require python3

# Seconds to wait for writeback to leave no dirty data.
CLEAN_TIMEOUT=${CLEAN_TIMEOUT:-120}

make_cache() {
  local name=$1 csize=$2 msize=${3:-16M}
  shift 2
  [ $# -gt 0 ] && shift
  CACHE_DEV="$T/$name.cache"
  META_DEV="$T/$name.meta"
  rm -f "$CACHE_DEV" "$META_DEV"
  truncate -s "$csize" "$CACHE_DEV" || fail "truncate $CACHE_DEV"
  truncate -s "$msize" "$META_DEV" || fail "truncate $META_DEV"
  "$RBDCACHE" format --meta-dev "$META_DEV" --cache-dev "$CACHE_DEV" "$@" >"$T/format-$name.out" 2>&1 ||
    { cat "$T/format-$name.out" >&2; fail "rbdcache format of cache $name failed"; }
}

start_cache_server() {
  local origin=$1 mode=$2
  shift 2
  start_server "$origin" --cache-dev "$CACHE_DEV" --meta-dev "$META_DEV" --mode "$mode" "$@"
}

# Number of statistics lines in a log.
_stats_lines() { grep -c 'rbdcache: info: stats {' "$1" 2>/dev/null || true; }

get_stats() {
  local pid=${1:-$SERVER_PID} logf=${2:-$SERVER_LOG} before now i
  before=$(_stats_lines "$logf")
  # Pending signals coalesce: send again if no line came for a while.
  for ((i = 0; i < 300; i++)); do
    if ((i % 50 == 0)); then
      kill -0 "$pid" 2>/dev/null || fail "get_stats: the server is not running"
      kill -USR1 "$pid" 2>/dev/null
    fi
    sleep 0.1
    now=$(_stats_lines "$logf")
    if [ "${now:-0}" -gt "${before:-0}" ]; then
      STATS=$(grep 'rbdcache: info: stats {' "$logf" | tail -n 1 | sed 's/^.*rbdcache: info: stats //')
      return 0
    fi
  done
  fail "get_stats: no statistics line from pid $pid within 30s"
}

stat_field() {
  python3 -c 'import json,sys; v=json.loads(sys.argv[1])[sys.argv[2]]; print(v if not isinstance(v, float) else repr(v))' \
    "$STATS" "$1" || fail "no field $1 in the statistics: $STATS"
}

wait_clean() {
  local limit=${1:-$CLEAN_TIMEOUT} start=$SECONDS
  while :; do
    get_stats
    [ "$(stat_field dirty_bytes)" = 0 ] && return 0
    [ $((SECONDS - start)) -lt "$limit" ] ||
      fail "writeback did not finish within ${limit}s: $STATS"
    sleep 0.5
  done
}

# A fresh server must not have logged any writeback error.
expect_no_writeback_errors() {
  [ "$(stat_field writeback_errors)" = 0 ] || fail "writeback errors: $STATS"
}
