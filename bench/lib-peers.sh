# Helpers of scripts/bench-peers.sh: its fio runs, the servers it starts and
# the RBD image handling (sourced; the functions read the settings of
# bench-peers.sh, RUNTIME, RAMP, WS_B, RES, RUN, CACHE, META, RBDCACHE,
# CLIENT_CONF, CEPH_ID ..., when they are called, and call its die).

# ---------------------------------------------------------------- fio
# wl_args WORKLOAD: fio arguments for a workload (sets WL).
wl_args() {
  local timed=(--time_based --runtime="$RUNTIME" --ramp_time="$RAMP" --norandommap --size="$WS_B")
  case $1 in
    rr1)  WL=(--rw=randread --bs=4k --iodepth=1 "${timed[@]}") ;;
    rr32) WL=(--rw=randread --bs=4k --iodepth=32 "${timed[@]}") ;;
    rw1)  WL=(--rw=randwrite --bs=4k --iodepth=1 "${timed[@]}") ;;
    rw32) WL=(--rw=randwrite --bs=4k --iodepth=32 "${timed[@]}") ;;
    mix)  WL=(--rw=randrw --rwmixread=70 --random_distribution=zipf:1.2 --bs=4k --iodepth=32 "${timed[@]}") ;;
    seqw) WL=(--rw=write --bs=1M --iodepth=8 "${timed[@]}") ;;
    mc4)  WL=(--rw=randread --bs=4k --iodepth=8 --numjobs=4 "${timed[@]}") ;;
    cold1)  WL=(--rw=randread --bs=4k --blockalign=64k --iodepth=1 --norandommap
                --offset=0 --size="$HALF_B" --number_ios="$COLD_IOS") ;;
    cold32) WL=(--rw=randread --bs=4k --blockalign=64k --iodepth=32 --norandommap
                --offset="$HALF_B" --size="$HALF_B" --number_ios="$COLD_IOS") ;;
    warm*) WL=(--rw=randread --bs=64k --iodepth=16 --size="$WS_B") ;;  # one full pass, random order
    *) echo "unknown workload $1" >&2; exit 1 ;;
  esac
}

# Engine for the current target (ENG array) and, for rbdcache targets, the
# server whose statistics bracket each run (RC_PID, RC_LOG).
RC_PID= RC_LOG=
eng_nbd() { ENG=(--ioengine=nbd --uri="$(bench_uri "$1")"); }

# fio_run LATDIR TARGET WORKLOAD
fio_run() {
  local lat=$1 target=$2 w=$3 out s0 s1 perf_pid=
  mkdir -p "$RES/$lat/$target"
  out=$RES/$lat/$target/$w.json
  wl_args "$w"
  bench_log "  $lat $target $w"
  [ -n "$RC_PID" ] && s0=$(bench_stats "$RC_PID" "$RC_LOG")
  if [ $PROFILE = 1 ] && [ -n "$RC_PID" ] && [ "$target" = rbdcache-wb-warm ] && [ "$lat" = lat0 ] &&
     { [ "$w" = rr32 ] || [ "$w" = rw32 ]; }; then
    perf record -e cpu-clock -g -p "$RC_PID" -o "$RUN/perf-$w.data" -- sleep $((RUNTIME + RAMP)) \
      >/dev/null 2>&1 &
    perf_pid=$!
  fi
  fio --name="$w" "${ENG[@]}" "${WL[@]}" --group_reporting --randrepeat=0 \
    --output-format=json --output="$out" >/dev/null 2>"$out.err" ||
    die "$lat $target $w: fio failed: $(tail -n 5 "$out.err")"
  jq -e '.jobs[0]' "$out" >/dev/null 2>&1 || die "$lat $target $w: fio wrote no result to $out"
  if [ -n "$perf_pid" ]; then
    wait "$perf_pid" || true
    perf report -i "$RUN/perf-$w.data" --stdio --no-children --sort dso,symbol --percent-limit 1.5 \
      2>/dev/null | grep -E '^ +[0-9.]+%' | head -n 25 >"$RES/profile-$w.txt" || true
  fi
  if [ -n "$RC_PID" ]; then
    s1=$(bench_stats "$RC_PID" "$RC_LOG")
    jq -n --argjson a "$s0" --argjson b "$s1" '{before: $a, after: $b}' >"$out.stats"
  fi
}

# warm_up LATDIR TARGET: one full pass of random 64K reads over the working
# set.  rbdcache's policy never promotes a block on its first touch (scan
# resistance), so for rbdcache repeat the pass, up to 4 times (2 with
# --quick), until the working set is mapped; the report says how many
# passes it took.
warm_up() {
  local lat=$1 target=$2 n=1 st mapped max=$((QUICK == 1 ? 2 : 4))
  fio_run "$lat" "$target" warm
  [ -n "$RC_PID" ] || return 0
  while ((n < max)); do
    st=$(bench_stats "$RC_PID" "$RC_LOG")
    mapped=$(( $(bench_field "$st" mapped_blocks) * $(bench_field "$st" block_size) ))
    ((mapped * 100 >= WS_B * 98)) && break
    n=$((n + 1))
    fio_run "$lat" "$target" "warm$n"
  done
}

run_set() {  # run_set LATDIR TARGET WORKLOAD...
  local lat=$1 target=$2 w
  shift 2
  for w in "$@"; do fio_run "$lat" "$target" "$w"; done
}

# rbdcache_start NAME ORIGIN MODE [EXTRA...]: start rbdcache on the cache
# files in the background (RC_PID, RC_LOG, RC_SOCK, RC_CTL, RC_ORIGIN).
rbdcache_start() {
  local name=$1 origin=$2 mode=$3
  shift 3
  RC_SOCK=$RUN/$name.sock
  RC_CTL=$RUN/$name.ctl
  RC_LOG=$RUN/$name.log
  RC_ORIGIN=$origin
  local ceph=()
  [[ $origin == rbd:* ]] && ceph=(--ceph-conf "$CLIENT_CONF" --ceph-id "$CEPH_ID")
  bench_start "$name" "$RC_SOCK" "$RBDCACHE" serve --origin "$origin" "${ceph[@]}" \
    --cache-dev "$CACHE" --meta-dev "$META" --mode "$mode" --socket "$RC_SOCK" \
    --control "$RC_CTL" "$@" || die "rbdcache ($name) did not start: $(tail -n 5 "$RC_LOG")"
  RC_PID=$BENCH_PID
  eng_nbd "$RC_SOCK"
}
rbdcache_format() {
  "$RBDCACHE" format --meta-dev "$META" --cache-dev "$CACHE" --force >/dev/null ||
    die "rbdcache format failed"
}
# rbdcache_stop [SIGNAL]: stop the server; a SIGTERM stop must exit 0.
rbdcache_stop() {
  local sig=${1:-TERM} rc=0
  bench_stop "$RC_PID" "$sig" || rc=$?
  [ "$sig" != TERM ] || [ $rc = 0 ] ||
    die "rbdcache (pid $RC_PID) exited with status $rc on SIGTERM: $(tail -n 5 "$RC_LOG")"
  RC_PID=
}
# rbdcache_retire: leave the RBD image as a cache must before another cache
# attaches (docs/migration.md): write back everything and record the image
# clean (flush --wait --then passthrough), stop cleanly, and drop the
# detach snapshot the clean stop left, since the next cache is a fresh one.
rbdcache_retire() {
  if [[ $RC_ORIGIN == rbd:* ]]; then
    "$RBDCACHE" flush --wait --then passthrough --control "$RC_CTL" >"$RUN/flush.out" 2>&1 ||
      die "rbdcache flush --wait --then passthrough failed: $(tail -n 3 "$RUN/flush.out")"
  fi
  rbdcache_stop
  if [[ $RC_ORIGIN == rbd:* ]]; then
    rbd_cmd snap purge --no-progress "${RC_ORIGIN#rbd:}" >/dev/null 2>"$RUN/purge.err" ||
      die "rbd snap purge ${RC_ORIGIN#rbd:} failed: $(cat "$RUN/purge.err")"
    local state
    state=$(rbd_cmd image-meta get "${RC_ORIGIN#rbd:}" rbdcache.state 2>/dev/null || echo none)
    [ "$state" = clean ] || die "the image's rbdcache.state is '$state' after a flush and a clean stop"
  fi
}

# hit_ratio STATS_BEFORE STATS_AFTER
hit_ratio() {
  jq -n --argjson a "$1" --argjson b "$2" \
    '(($b.read_hits // 0) - ($a.read_hits // 0)) as $h | (($b.read_misses // 0) - ($a.read_misses // 0)) as $m
     | if $h + $m > 0 then $h / ($h + $m) else 0 end'
}

# peer_stop PID: stop a peer server (its exit status on SIGTERM varies).
peer_stop() { bench_stop "$1" || true; }
# peer_start NAME SOCKET CMD...: bench_start, fatal when it does not answer.
peer_start() {
  bench_start "$@" || die "$1 did not start: $(tail -n 5 "$RUN/$1.log")"
}

# ---------------------------------------------------------------- rbd

# rbd_cmd ARGS...: the rbd tool as the benchmark's Ceph user.
rbd_cmd() { timeout 120 rbd --conf "$CLIENT_CONF" --id "$CEPH_ID" "$@"; }

# rbd_cluster LATDIR LATENCY_MS: a cluster for one pass, and its client
# configuration (CLIENT_CONF, CEPH_ID): a fresh dev-ceph.sh cluster, or
# with --ceph-env the given one, with the latency in the client section.
rbd_cluster() {
  local L=$1 lat=$2 cdir=$RUN/ceph-$1
  if [ -z "$CEPH_ENV" ]; then
    bench_cluster_start "$cdir" "$lat" "$OSD_BYTES"
    CLIENT_CONF=$cdir.client.conf
    CEPH_ID=rbdcache
    return
  fi
  local conf id keyring
  # shellcheck disable=SC1090
  conf=$(source "$CEPH_ENV" && echo "$CEPH_CONF")
  id=$(source "$CEPH_ENV" && echo "${RBDCACHE_DEV_CEPH_ID:-}")
  keyring=$(source "$CEPH_ENV" && echo "${RBDCACHE_DEV_CEPH_KEYRING:-}")
  [ -r "$conf" ] && [ -n "$id" ] && [ -r "$keyring" ] ||
    die "--ceph-env $CEPH_ENV names no readable CEPH_CONF, RBDCACHE_DEV_CEPH_ID and RBDCACHE_DEV_CEPH_KEYRING"
  CLIENT_CONF=$RUN/ceph-$L.client.conf
  CEPH_ID=$id
  cp "$conf" "$CLIENT_CONF"
  printf '\n[client.%s]\nkeyring = %s\n' "$id" "$keyring" >>"$CLIENT_CONF"
  if [ "$lat" != 0 ]; then
    # As dev-ceph.sh start --latency does for its clients.
    printf 'ms inject delay type = osd\nms inject delay probability = 1\nms inject delay max = %s\n' \
      "$(awk -v ms="$lat" 'BEGIN { printf "%.6f", ms / 1000 }')" >>"$CLIENT_CONF"
  fi
}

# fio_quiet ARGS...: an untimed fio run whose output is not kept; fatal
# when fio fails.
fio_quiet() {
  fio "$@" --output=/dev/null >/dev/null 2>"$RUN/fio.err" ||
    die "fio $1 failed: $(tail -n 5 "$RUN/fio.err")"
}

# fence_dead_locker SPEC: remove the image's lock held by a dead client.
fence_dead_locker() {
  local locks id locker
  locks=$(rbd_cmd lock ls --format json "$1") || die "rbd lock ls $1 failed"
  while IFS=$'\t' read -r id locker; do
    [ -n "$id" ] || continue
    rbd_cmd lock rm "$1" "$id" "$locker" >/dev/null 2>"$RUN/lock.err" ||
      die "rbd lock rm $1 '$id' $locker failed: $(cat "$RUN/lock.err")"
  done < <(jq -r '(if type == "array" then . else [to_entries[] | .value + {id: .key}] end)[]
                  | "\(.id)\t\(.locker)"' <<<"$locks")
}
