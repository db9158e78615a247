#!/usr/bin/env bash
# Builds rbdcache and runs it on the embedded default: a 1 GiB file-backed
# origin image under ./var/, cached in writeback mode on a 256 MiB cache file
# (with a 32 MiB metadata file), exported on a unix socket. No Ceph needed.
#
#   scripts/run.sh           install packages, build, start in the background
#   scripts/run.sh stop      stop the server started by this script
#   scripts/run.sh status    say whether it is running
#
# The server's log is var/rbdcache.log.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
VAR=$ROOT/var
SOCK=$VAR/rbdcache.sock
PIDFILE=$VAR/rbdcache.pid
LOG=$VAR/rbdcache.log
ORIGIN=$VAR/origin.img
CACHE=$VAR/cache.img
META=$VAR/meta.img
BUILD=$ROOT/build

running() { [ -f "$PIDFILE" ] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null; }

stop() {
  if running; then
    pid=$(cat "$PIDFILE")
    kill -TERM "$pid"
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    echo "rbdcache stopped"
  else
    echo "rbdcache is not running"
  fi
  rm -f "$PIDFILE"
}

say_how_to_use() {
  local uri="nbd+unix:///?socket=$SOCK"
  cat <<MSG

rbdcache is serving $ORIGIN, cached in writeback mode on $CACHE
  URI:   $uri
  Try:   nbdinfo '$uri'
         qemu-io -f raw -c 'write -P 0xab 0 64k' -c 'read -P 0xab 0 64k' '$uri'
  State: $BUILD/src/cli/rbdcache status --control ${SOCK%.sock}.ctl
  Log:   $LOG
  Stop:  scripts/run.sh stop
MSG
}

case "${1:-start}" in
  stop) stop; exit 0 ;;
  status)
    if running; then echo "rbdcache is running (pid $(cat "$PIDFILE"))"; say_how_to_use; else echo "rbdcache is not running"; exit 1; fi
    exit 0 ;;
  start) ;;
  -h|--help) sed -n '2,9p' "$0"; exit 0 ;;
  *) echo "run.sh: unknown command '$1' (start, stop, status)" >&2; exit 2 ;;
esac

scripts/install-deps.sh
if [ ! -f "$BUILD/build.ninja" ]; then
  meson setup "$BUILD" --buildtype=release >/dev/null
fi
ninja -C "$BUILD" >/dev/null
BIN=$BUILD/src/cli/rbdcache

mkdir -p "$VAR"
if running; then
  echo "rbdcache is already running (pid $(cat "$PIDFILE"))"
  say_how_to_use
  exit 0
fi
if [ ! -f "$ORIGIN" ]; then
  truncate -s 1G "$ORIGIN"
  echo "created a 1 GiB origin image at $ORIGIN"
fi

if [ ! -f "$META" ] || [ ! -f "$CACHE" ]; then
  rm -f "$META" "$CACHE"
  truncate -s 256M "$CACHE"
  truncate -s 32M "$META"
  "$BIN" format --meta-dev "$META" --cache-dev "$CACHE" >/dev/null
  echo "formatted a 256 MiB cache at $CACHE (metadata: $META)"
fi

nohup "$BIN" serve --origin "file:$ORIGIN" --cache-dev "$CACHE" --meta-dev "$META" \
  --mode writeback --socket "$SOCK" >>"$LOG" 2>&1 </dev/null &
echo $! >"$PIDFILE"
for _ in $(seq 100); do
  [ -S "$SOCK" ] && break
  if ! running; then
    echo "rbdcache failed to start; its log says:" >&2
    tail -n 20 "$LOG" >&2
    exit 1
  fi
  sleep 0.1
done
if [ ! -S "$SOCK" ]; then
  echo "rbdcache did not create $SOCK within 10 s; see $LOG" >&2
  exit 1
fi
say_how_to_use
