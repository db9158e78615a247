# Shared helpers for the benchmark scripts (sourced, not run).
#
# The caller sets RUN (a scratch directory) and RES (where results go) and
# calls bench_cleanup from its EXIT trap.  Every server started with
# bench_start is recorded and stopped by bench_stop or bench_cleanup.

BENCH_PIDS=()          # servers started by bench_start and still running
BENCH_CLUSTERS=()      # dev-ceph.sh cluster directories we started
BENCH_DEV_CEPH=${BENCH_DEV_CEPH:-scripts/dev-ceph.sh}
BENCH_IMAGES=()        # "CONF ID POOL/IMAGE" of RBD images we created

bench_log() { printf '[%(%H:%M:%S)T] %s\n' -1 "$*" >&2; }

# bench_now: seconds since the epoch, microsecond resolution.
bench_now() { printf '%s' "$EPOCHREALTIME"; }

# bench_uri SOCKET
bench_uri() { printf 'nbd+unix:///?socket=%s' "$1"; }

# bench_wait_nbd SOCKET PID [TIMEOUT_S]: wait until nbdinfo gets an answer.
bench_wait_nbd() {
  local sock=$1 pid=$2 limit=${3:-120} t0=$SECONDS
  while ! nbdinfo --size "$(bench_uri "$sock")" >/dev/null 2>&1; do
    if ! kill -0 "$pid" 2>/dev/null; then
      bench_log "server (pid $pid) for $sock exited"
      return 1
    fi
    if ((SECONDS - t0 > limit)); then
      bench_log "no answer on $sock after ${limit}s"
      return 1
    fi
    sleep 0.02
  done
}

# bench_start NAME SOCKET CMD...: start a server in the background, log to
# $RUN/NAME.log, wait until it answers nbdinfo.  Sets BENCH_PID and
# BENCH_READY_S (seconds from exec to the first nbdinfo answer).
bench_start() {
  local name=$1 sock=$2
  shift 2
  rm -f "$sock"
  local t0 t1
  t0=$(bench_now)
  "$@" </dev/null >>"$RUN/$name.log" 2>&1 &
  BENCH_PID=$!
  BENCH_PIDS+=("$BENCH_PID")
  if ! bench_wait_nbd "$sock" "$BENCH_PID"; then
    tail -n 20 "$RUN/$name.log" >&2
    return 1
  fi
  t1=$(bench_now)
  BENCH_READY_S=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", b - a }')
}

_bench_forget() {
  local p keep=()
  for p in "${BENCH_PIDS[@]}"; do [ "$p" = "$1" ] || keep+=("$p"); done
  BENCH_PIDS=("${keep[@]}")
}

# bench_stop PID [SIGNAL]: stop one server and wait for it.  Returns the
# server's exit status (128 + the signal's number if it was killed by one;
# 137 if it ignored the signal and had to be killed).
bench_stop() {
  local pid=$1 sig=${2:-TERM} i rc=0
  kill -"$sig" "$pid" 2>/dev/null || true
  for ((i = 0; i < 300; i++)); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  if kill -0 "$pid" 2>/dev/null; then
    bench_log "pid $pid ignored SIG$sig; killing it"
    kill -KILL "$pid" 2>/dev/null || true
  fi
  wait "$pid" 2>/dev/null || rc=$?
  _bench_forget "$pid"
  return $rc
}

# bench_stats PID LOG: make an rbdcache server log its statistics (SIGUSR1)
# and print the JSON object.  Fails when no statistics line appears in 5 s.
bench_stats() {
  local pid=$1 log=$2 n i
  n=$(grep -c 'info: stats {' "$log" || true)
  kill -USR1 "$pid"
  for ((i = 0; i < 250; i++)); do
    if [ "$(grep -c 'info: stats {' "$log" || true)" -gt "$n" ]; then
      grep 'info: stats {' "$log" | tail -n 1 | sed 's/^.*info: stats //'
      return 0
    fi
    sleep 0.02
  done
  bench_log "no stats line from pid $pid in $log"
  return 1
}

# bench_field JSON FIELD
bench_field() { jq -r ".$2 // 0" <<<"$1"; }

# bench_cluster_start DIR LATENCY_MS OSD_BYTES: start a dev cluster; writes a
# client configuration DIR.client.conf naming the client.rbdcache keyring
# (fio's rbd engine and qemu's rbd driver do not read CEPH_ARGS).
bench_cluster_start() {
  local dir=$1 lat=$2 bytes=$3 args=(start --dir "$1" --osd-bytes "$3")
  [ "$lat" != 0 ] && args+=(--latency "$lat")
  BENCH_CLUSTERS+=("$dir")
  "$BENCH_DEV_CEPH" "${args[@]}" >&2
  cp "$dir/ceph.conf" "$dir.client.conf"
  printf '\n[client.rbdcache]\nkeyring = %s\n' "$dir/client.rbdcache.keyring" >>"$dir.client.conf"
}

bench_cluster_stop() {
  local d keep=()
  "$BENCH_DEV_CEPH" stop --dir "$1" >&2 || true
  rm -f "$1.client.conf"
  for d in "${BENCH_CLUSTERS[@]}"; do [ "$d" = "$1" ] || keep+=("$d"); done
  BENCH_CLUSTERS=("${keep[@]}")
}

# bench_image_remove "CONF ID POOL/IMAGE": remove an image we created, with
# its snapshots (a cache's detach snapshot would keep it).
bench_image_remove() {
  local conf id spec d keep=()
  read -r conf id spec <<<"$1"
  timeout 60 rbd --conf "$conf" --id "$id" snap purge --no-progress "$spec" >/dev/null 2>&1 || true
  timeout 60 rbd --conf "$conf" --id "$id" rm --no-progress "$spec" >/dev/null 2>&1 ||
    bench_log "warning: could not remove image $spec"
  for d in "${BENCH_IMAGES[@]}"; do [ "$d" = "$1" ] || keep+=("$d"); done
  BENCH_IMAGES=("${keep[@]}")
}

bench_cleanup() {
  local p d
  for p in "${BENCH_PIDS[@]}"; do
    kill -TERM "$p" 2>/dev/null || true
  done
  for p in "${BENCH_PIDS[@]}"; do
    local i
    for ((i = 0; i < 100; i++)); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$p" 2>/dev/null || true
    wait "$p" 2>/dev/null || true
  done
  BENCH_PIDS=()
  for d in "${BENCH_IMAGES[@]}"; do bench_image_remove "$d"; done
  for d in "${BENCH_CLUSTERS[@]}"; do
    "$BENCH_DEV_CEPH" stop --dir "$d" >&2 || true
    rm -f "$d.client.conf"
  done
  BENCH_CLUSTERS=()
}
