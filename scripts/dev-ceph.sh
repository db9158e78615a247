#!/usr/bin/env bash
# A throw-away single-node Ceph cluster on loopback, for development, tests
# and benchmarks: one monitor, one memstore OSD (data lives in RAM), cephx
# on, a pool "rbd" initialised for RBD, and a restricted user
# client.rbdcache (mon 'profile rbd', osd 'profile rbd pool=rbd').
#
#   scripts/dev-ceph.sh start  [--dir DIR] [--latency MS] [--osd-bytes N]
#   scripts/dev-ceph.sh env    [--dir DIR] [--latency MS] [--admin]
#   scripts/dev-ceph.sh status [--dir DIR]
#   scripts/dev-ceph.sh stop   [--dir DIR]
#
# start   creates the cluster in DIR and returns when the pool is usable.
#         If a cluster is already running in DIR it says so and exits 0.
# env     prints shell lines to eval: CEPH_CONF and CEPH_ARGS for the
#         restricted user (or client.admin with --admin), so that `rbd ls`
#         and `rbdcache serve --origin rbd:rbd/IMAGE` work as they are.
# status  prints the cluster's state; exits 1 when it is not running.
# stop    stops every process start started, waits for them, removes DIR.
#
# Options:
#   --dir DIR       where the cluster lives (default $TMPDIR/rbdcache-dev-ceph,
#                   TMPDIR defaulting to /tmp)
#   --latency MS    client-side latency, as on a networked cluster: every
#                   message from the OSD to a client is delayed by a random
#                   time between 0 and MS milliseconds (mean MS/2). With
#                   start it goes into the [client] section of ceph.conf (all
#                   clients, for the cluster's life); with env into CEPH_ARGS.
#   --osd-bytes N   memstore size in bytes (default 2147483648, 2 GiB of RAM
#                   at most, used only as data is written)
#   --admin         env: act as client.admin instead of client.rbdcache
#
# Example:
#   scripts/dev-ceph.sh start && eval "$(scripts/dev-ceph.sh env)"
#   rbd create --size 1G rbd/vm1
#   rbdcache serve --origin rbd:rbd/vm1 --socket /tmp/vm1.sock
set -euo pipefail

die() { echo "dev-ceph.sh: $*" >&2; exit 1; }

# While start runs, any failure stops the daemons already started (their
# logs stay in DIR/log) so that nothing is left behind.
STARTING=0
on_exit() {
  if [ $STARTING -eq 1 ]; then
    [ -z "${OSD_PID:-}" ] || kill -KILL "$OSD_PID" 2>/dev/null || true
    [ -z "${MON_PID:-}" ] || kill -KILL "$MON_PID" 2>/dev/null || true
    echo "dev-ceph.sh: start failed; logs are in $DIR/log" >&2
  fi
}
trap on_exit EXIT

usage() { sed -n '2,35p' "$0" | sed 's/^# \{0,1\}//'; }

cmd=${1:-}
[ $# -gt 0 ] && shift
case $cmd in
  start|stop|env|status) ;;
  -h|--help|help) usage; exit 0 ;;
  "") usage >&2; exit 2 ;;
  *) echo "dev-ceph.sh: unknown command '$cmd' (see --help)" >&2; exit 2 ;;
esac

DIR="${TMPDIR:-/tmp}/rbdcache-dev-ceph"
LATENCY_MS=""
OSD_BYTES=2147483648
ADMIN=0
while [ $# -gt 0 ]; do
  case $1 in
    --dir) [ $# -ge 2 ] || die "--dir needs a value"; DIR=$2; shift ;;
    --dir=*) DIR=${1#--dir=} ;;
    --latency) [ $# -ge 2 ] || die "--latency needs a value"; LATENCY_MS=$2; shift ;;
    --latency=*) LATENCY_MS=${1#--latency=} ;;
    --osd-bytes) [ $# -ge 2 ] || die "--osd-bytes needs a value"; OSD_BYTES=$2; shift ;;
    --admin) ADMIN=1 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "dev-ceph.sh: unknown option '$1' (see --help)" >&2; exit 2 ;;
  esac
  shift
done
CLI_LATENCY_MS=$LATENCY_MS
if [ -n "$LATENCY_MS" ]; then
  [[ $LATENCY_MS =~ ^[0-9]+(\.[0-9]+)?$ ]] || die "--latency takes milliseconds, got '$LATENCY_MS'"
fi
[[ $OSD_BYTES =~ ^[0-9]+$ ]] || die "--osd-bytes takes a number of bytes, got '$OSD_BYTES'"
mkdir -p "$(dirname "$DIR")"
DIR=$(cd "$(dirname "$DIR")" && pwd)/$(basename "$DIR")

CONF=$DIR/ceph.conf
STATE=$DIR/state
ADMIN_KEYRING=$DIR/client.admin.keyring
USER_KEYRING=$DIR/client.rbdcache.keyring

# The caller's Ceph environment must not leak into the cluster's set-up.
unset CEPH_ARGS CEPH_CONF

latency_seconds() { awk -v ms="$1" 'BEGIN { printf "%.6f", ms / 1000 }'; }

# alive PID: the process runs and is not a zombie.
alive() {
  local pid=$1 st
  kill -0 "$pid" 2>/dev/null || return 1
  st=$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null) || return 1
  [ "$st" != Z ]
}

load_state() {
  MON_PID="" OSD_PID="" PORT=""
  [ -f "$STATE" ] || return 1
  # shellcheck disable=SC1090
  source "$STATE"
}

running() {
  load_state || return 1
  [ -n "$MON_PID" ] && alive "$MON_PID" && [ -n "$OSD_PID" ] && alive "$OSD_PID"
}

# Admin commands: short connect timeout so a broken cluster fails fast.
ceph_admin() { timeout 30 ceph -c "$CONF" -n client.admin -k "$ADMIN_KEYRING" --connect-timeout 10 "$@"; }

admin_failed() { die "$1 failed: $(tail -n 3 "$DIR/log/admin.err" 2>/dev/null)"; }

stop_pid() {  # stop_pid PID NAME: TERM, wait up to 10 s, then KILL.
  local pid=$1 name=$2 i
  [ -n "$pid" ] || return 0
  alive "$pid" || return 0
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < 100; i++)); do
    alive "$pid" || return 0
    sleep 0.1
  done
  echo "dev-ceph.sh: $name (pid $pid) ignored SIGTERM; killing it" >&2
  kill -KILL "$pid" 2>/dev/null || true
  for ((i = 0; i < 50; i++)); do
    alive "$pid" || return 0
    sleep 0.1
  done
  die "$name (pid $pid) did not exit"
}

do_stop() {
  if ! load_state; then
    echo "dev-ceph.sh: no cluster in $DIR"
    return 0
  fi
  stop_pid "$OSD_PID" ceph-osd
  stop_pid "$MON_PID" ceph-mon
  # Only remove what start created: a directory holding our state file.
  rm -rf "$DIR"
  echo "dev-ceph.sh: stopped the cluster in $DIR"
}

# A free loopback TCP port for the monitor: random, below the kernel's
# ephemeral range (32768-60999) and away from the OSD's (6800-7300), and
# checked by binding it.
free_port() {
  python3 - <<'PY' || die "no free TCP port found on 127.0.0.1"
import random, socket, sys
for _ in range(200):
    port = random.randrange(20000, 32000)
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", port))
    except OSError:
        continue
    finally:
        s.close()
    print(port)
    sys.exit(0)
sys.exit(1)
PY
}

# wait_until SECONDS WHAT CMD...: retry CMD every 0.2 s.
wait_until() {
  local secs=$1 what=$2 i
  shift 2
  for ((i = 0; i < secs * 5; i++)); do
    "$@" >/dev/null 2>&1 && return 0
    alive "$MON_PID" || die "ceph-mon exited while waiting for $what (see $DIR/log/mon.a.log)"
    [ -z "$OSD_PID" ] || alive "$OSD_PID" ||
      die "ceph-osd exited while waiting for $what (see $DIR/log/osd.0.log)"
    sleep 0.2
  done
  die "timed out after ${secs}s waiting for $what (logs in $DIR/log)"
}

osd_up_and_in() {
  ceph_admin osd stat -f json |
    python3 -c 'import json,sys; d=json.load(sys.stdin); sys.exit(0 if d["num_up_osds"]==1 and d["num_in_osds"]==1 else 1)'
}

do_start() {
  if running; then
    echo "dev-ceph.sh: already running in $DIR (mon 127.0.0.1:$PORT, pids $MON_PID $OSD_PID)"
    return 0
  fi
  local t0=$SECONDS
  local tool
  for tool in ceph ceph-mon ceph-osd ceph-authtool monmaptool rbd python3; do
    command -v "$tool" >/dev/null 2>&1 ||
      die "$tool not found: install ceph-mon ceph-osd ceph-common (scripts/install-deps.sh)"
  done
  if [ -e "$DIR" ]; then
    # A dead cluster from an earlier run (memstore data is gone anyway).
    [ -f "$STATE" ] || [ -z "$(ls -A "$DIR")" ] ||
      die "$DIR exists and is not a dev-ceph.sh cluster; choose another --dir"
    load_state || true
    stop_pid "$OSD_PID" ceph-osd
    stop_pid "$MON_PID" ceph-mon
    rm -rf "$DIR"
  fi
  mkdir -p "$DIR/log" "$DIR/run" "$DIR/mon.a" "$DIR/osd.0"
  MON_PID="" OSD_PID=""
  STARTING=1
  PORT=$(free_port)
  local fsid osd_uuid
  fsid=$(cat /proc/sys/kernel/random/uuid)
  osd_uuid=$(cat /proc/sys/kernel/random/uuid)

  local client_latency=""
  if [ -n "$LATENCY_MS" ]; then
    client_latency="ms inject delay type = osd
ms inject delay probability = 1
ms inject delay max = $(latency_seconds "$LATENCY_MS")"
  fi
  cat >"$CONF" <<EOF
[global]
fsid = $fsid
mon host = [v2:127.0.0.1:$PORT]
mon initial members = a
auth cluster required = cephx
auth service required = cephx
auth client required = cephx
auth allow insecure global id reclaim = false
ms bind msgr1 = false
ms bind ipv6 = false
public network = 127.0.0.0/8
run dir = $DIR/run
admin socket = $DIR/run/\$name.asok
pid file = $DIR/run/\$name.pid
log file = $DIR/log/\$name.log
osd pool default size = 1
osd pool default min size = 1
osd pool default pg autoscale mode = off
osd crush chooseleaf type = 0
# A PG's read lease lasts osd_pool_default_read_lease_ratio (0.8) times
# this grace. A PG whose lease ran out while its OSD was stopped can stay
# "laggy" after SIGCONT with every op parked "waiting for readable" (a Ceph
# bug with a single OSD: ceph/ceph-container#1682, ceph/ceph#71663), which
# rbd-osd-pause's 10 s SIGSTOP met about once in many runs. At 60 s (a 48 s
# lease) that pause can never outlast the lease. With one OSD and no peers
# the grace has no other effect: nothing reports an OSD failed.
osd heartbeat grace = 60
mon allow pool size one = true
mon allow pool delete = true
mon warn on pool no redundancy = false
mon warn on insecure global id reclaim allowed = false
mon data avail warn = 1
mon data avail crit = 0

[mon]
mon data = $DIR/mon.\$id
mon cluster log file = $DIR/log/cluster.log

[osd]
osd data = $DIR/osd.\$id
keyring = $DIR/osd.\$id/keyring
osd objectstore = memstore
memstore device bytes = $OSD_BYTES
osd memory target = 939524096
osd op num shards = 2
osd op num threads per shard = 1
# A killed client's watch, and with it its RBD exclusive lock, lasts until
# this timeout (30 s by default): the crash tests kill rbdcache and restart
# it on the same image, and each restart waits for it. Clients ping their
# watches every objecter tick ([client] below), so a live one keeps its
# lock with a wide margin, and so does one across rbd-osd-pause's 10 s
# SIGSTOP of the OSD.
osd client watch timeout = 15

[client]
objecter tick interval = 1
log file = $DIR/log/\$name.\$pid.log
admin socket = $DIR/run/\$name.\$pid.asok
$client_latency

# Only client.admin gets a default keyring; other users name theirs.
[client.admin]
keyring = $ADMIN_KEYRING
EOF
  {
    echo "DIR='$DIR'"
    echo "PORT=$PORT"
    echo "LATENCY_MS='$LATENCY_MS'"
  } >"$STATE"

  # Keys: the monitor's, client.admin's (imported into the monitor keyring).
  ceph-authtool --create-keyring "$DIR/mon.keyring" --gen-key -n mon. --cap mon 'allow *' >/dev/null
  ceph-authtool --create-keyring "$ADMIN_KEYRING" --gen-key -n client.admin \
    --cap mon 'allow *' --cap osd 'allow *' --cap mds 'allow *' --cap mgr 'allow *' >/dev/null
  ceph-authtool "$DIR/mon.keyring" --import-keyring "$ADMIN_KEYRING" >/dev/null
  monmaptool --create --fsid "$fsid" --addv a "[v2:127.0.0.1:$PORT]" "$DIR/monmap" >/dev/null

  ceph-mon -c "$CONF" -i a --mkfs --monmap "$DIR/monmap" --keyring "$DIR/mon.keyring" \
    >"$DIR/log/mon-mkfs.out" 2>&1 || die "ceph-mon --mkfs failed: $(tail -n 5 "$DIR/log/mon-mkfs.out")"
  # Foreground daemons in their own session, so that signals sent to the
  # caller's process group do not reach them; stop ends them by pid.
  setsid ceph-mon -c "$CONF" -i a -f </dev/null >>"$DIR/log/mon.a.out" 2>&1 &
  MON_PID=$!
  echo "MON_PID=$MON_PID" >>"$STATE"

  wait_until 20 "the monitor" ceph_admin mon stat

  ceph_admin osd new "$osd_uuid" >/dev/null 2>>"$DIR/log/admin.err" || admin_failed "ceph osd new"
  ceph-authtool --create-keyring "$DIR/osd.0/keyring" --gen-key -n osd.0 >/dev/null
  ceph_admin auth add osd.0 osd 'allow *' mon 'allow profile osd' -i "$DIR/osd.0/keyring" \
    >/dev/null 2>>"$DIR/log/admin.err" || admin_failed "ceph auth add osd.0"
  ceph-osd -c "$CONF" -i 0 --mkfs --osd-uuid "$osd_uuid" >"$DIR/log/osd-mkfs.out" 2>&1 ||
    die "ceph-osd --mkfs failed: $(tail -n 5 "$DIR/log/osd-mkfs.out")"
  setsid ceph-osd -c "$CONF" -i 0 -f </dev/null >>"$DIR/log/osd.0.out" 2>&1 &
  OSD_PID=$!
  echo "OSD_PID=$OSD_PID" >>"$STATE"

  # Pool and user while the OSD boots.
  ceph_admin osd pool create rbd 8 8 >/dev/null 2>>"$DIR/log/admin.err" ||
    admin_failed "ceph osd pool create rbd"
  ceph_admin auth get-or-create client.rbdcache mon 'profile rbd' osd 'profile rbd pool=rbd' \
    -o "$USER_KEYRING" >/dev/null 2>>"$DIR/log/admin.err" || admin_failed "ceph auth get-or-create"
  [ -s "$USER_KEYRING" ] || die "could not create client.rbdcache"

  wait_until 30 "the OSD to be up and in" osd_up_and_in
  # rbd pool init writes to the pool: once it returns, the PGs are active.
  timeout 60 rbd -c "$CONF" -n client.admin -k "$ADMIN_KEYRING" pool init rbd ||
    die "rbd pool init failed (logs in $DIR/log)"
  STARTING=0
  echo "dev-ceph.sh: cluster ready in $((SECONDS - t0))s: mon 127.0.0.1:$PORT, pool rbd, user client.rbdcache, dir $DIR"
  echo "dev-ceph.sh: eval \"\$($0 env --dir $DIR)\" to use it"
}

do_env() {
  running || die "no cluster running in $DIR (scripts/dev-ceph.sh start)"
  local args
  if [ $ADMIN -eq 1 ]; then
    args="--id admin --keyring $ADMIN_KEYRING"
  else
    args="--id rbdcache --keyring $USER_KEYRING"
  fi
  # Latency given to env (that given to start is in ceph.conf already).
  if [ -n "$CLI_LATENCY_MS" ]; then
    args+=" --ms_inject_delay_type=osd --ms_inject_delay_probability=1"
    args+=" --ms_inject_delay_max=$(latency_seconds "$CLI_LATENCY_MS")"
  fi
  echo "export CEPH_CONF='$CONF'"
  echo "export CEPH_ARGS='$args'"
  echo "export RBDCACHE_DEV_CEPH_DIR='$DIR'"
  echo "export RBDCACHE_DEV_CEPH_ID='$([ $ADMIN -eq 1 ] && echo admin || echo rbdcache)'"
  echo "export RBDCACHE_DEV_CEPH_KEYRING='$([ $ADMIN -eq 1 ] && echo "$ADMIN_KEYRING" || echo "$USER_KEYRING")'"
  echo "export RBDCACHE_DEV_CEPH_MON='127.0.0.1:$PORT'"
}

do_status() {
  if ! running; then
    echo "dev-ceph.sh: no cluster running in $DIR"
    return 1
  fi
  echo "dir:     $DIR"
  echo "mon:     127.0.0.1:$PORT (pid $MON_PID)"
  echo "osd.0:   pid $OSD_PID"
  echo "latency: ${LATENCY_MS:-none} (ms, max per OSD reply)"
  ceph_admin -s || return 1
}

case $cmd in
  start) do_start ;;
  stop) do_stop ;;
  env) do_env ;;
  status) do_status ;;
esac
