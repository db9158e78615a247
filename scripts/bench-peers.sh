#!/usr/bin/env bash
# Benchmark rbdcache against its peers, side by side in one run, and write
# docs/benchmarks-peers.md (tables, goals) and docs/benchmarks-peers.png.
#
#   scripts/bench-peers.sh [--quick] [--runtime S] [--ramp S] [--dir DIR]
#                          [--size SIZE] [--ws SIZE] [--cache-size SIZE]
#                          [--flush-size SIZE] [--latency MS] [--profile]
#                          [--no-install] [--no-build] [--keep]
#                          [--md FILE] [--png FILE]
#
# It installs what it needs (scripts/install-deps.sh, qemu-block-extra for
# qemu's rbd driver, gnuplot-nox), builds rbdcache in build-bench/, starts a
# throw-away Ceph cluster on loopback (scripts/dev-ceph.sh) twice, without
# and with client-side latency injection, and stops every server and
# cluster it started when it exits.
#
# Targets, all read and written with fio (nbd engine unless noted):
#   rbdcache over rbd: writeback and writethrough, cold and warm, and
#     passthrough (no caching: rbdcache's own overhead over librbd)
#   qemu-nbd -t --cache=none over rbd: (qemu's rbd driver, no cache)
#   librbd directly (fio's rbd engine)
#   nbdkit's cache filter over qemu-nbd on rbd, cold and warm
#   file origin on the cache's filesystem: rbdcache, nbdkit's cache filter,
#     qemu-nbd --cache=none --aio=io_uring, nbdkit's file plugin (the NBD
#     transport limit) and fio io_uring O_DIRECT (the device limit)
# Whole-system figures: writeback (flush) throughput against librbd's 1 MiB
# sequential write, restart time with a populated cache, and the hit ratio
# after kill -9.
#
# Options:
#   --runtime S      seconds per timed fio run (default 10)
#   --ramp S         ramp seconds before each timed run (default 2)
#   --quick          about 5 minutes: --runtime 2 --ramp 1, no writethrough
#                    or passthrough targets, fewer workloads with latency
#                    injection and on the file origin
#   --dir DIR        work directory on the disk under test (default
#                    var/bench-peers); the cache files and the file origin
#                    live there, so it must not be tmpfs
#   --size SIZE      RBD image and file origin size (default 1G)
#   --ws SIZE        working set of the timed workloads (default 256M)
#   --cache-size S   rbdcache cache device and nbdkit cache-max-size
#                    (default 512M)
#   --flush-size S   dirty data written back in the flush test (default 384M)
#   --latency MS     dev-ceph.sh --latency for the "latency on" pass: each
#                    OSD reply is delayed by 0..MS ms, MS/2 on average
#                    (default 2, about 1 ms mean)
#   --profile        perf record (cpu-clock) rbdcache during warm randread
#                    and randwrite QD32 and add the top symbols to the report
#   --no-install     do not run apt-get
#   --no-build       use an existing build-bench/ (or $RBDCACHE)
#   --keep           keep the raw fio JSON under DIR/results
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
source bench/lib-bench.sh
BENCH_DEV_CEPH=$ROOT/scripts/dev-ceph.sh

RUNTIME=10
RAMP=2
QUICK=0
DIR=$ROOT/var/bench-peers
SIZE=1G
WS=256M
CACHE_SIZE=512M
FLUSH_SIZE=384M
LAT_MS=2
PROFILE=0
INSTALL=1
BUILD=1
KEEP=0
MD=$ROOT/docs/benchmarks-peers.md
PNG=$ROOT/docs/benchmarks-peers.png
RUNTIME_SET=0 RAMP_SET=0
ARGS_TEXT="$*"

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; }
while [ $# -gt 0 ]; do
  case $1 in
    --runtime) RUNTIME=$2; RUNTIME_SET=1; shift ;;
    --ramp) RAMP=$2; RAMP_SET=1; shift ;;
    --quick) QUICK=1 ;;
    --dir) DIR=$2; shift ;;
    --size) SIZE=$2; shift ;;
    --ws) WS=$2; shift ;;
    --cache-size) CACHE_SIZE=$2; shift ;;
    --flush-size) FLUSH_SIZE=$2; shift ;;
    --latency) LAT_MS=$2; shift ;;
    --profile) PROFILE=1 ;;
    --no-install) INSTALL=0 ;;
    --no-build) BUILD=0 ;;
    --keep) KEEP=1 ;;
    --md) MD=$2; shift ;;
    --png) PNG=$2; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "bench-peers.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
  shift
done
if [ $QUICK = 1 ]; then
  [ $RUNTIME_SET = 1 ] || RUNTIME=2
  [ $RAMP_SET = 1 ] || RAMP=1
fi

# ---------------------------------------------------------------- setup
if [ $INSTALL = 1 ]; then
  scripts/install-deps.sh
  extra=()
  for p in qemu-block-extra gnuplot-nox jq linux-perf; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || extra+=("$p")
  done
  if [ ${#extra[@]} -gt 0 ]; then
    SUDO=; [ "$(id -u)" -eq 0 ] || SUDO=sudo
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${extra[@]}" ||
      { $SUDO apt-get update -q && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${extra[@]}"; }
  fi
fi
RBDCACHE=${RBDCACHE:-$ROOT/build-bench/src/cli/rbdcache}
if [ $BUILD = 1 ]; then
  [ -d build-bench ] || meson setup build-bench --buildtype=release >&2
  ninja -C build-bench >&2
fi
[ -x "$RBDCACHE" ] || { echo "rbdcache binary not found: $RBDCACHE" >&2; exit 1; }
for tool in fio nbdkit qemu-nbd nbdinfo jq python3 gnuplot; do
  command -v "$tool" >/dev/null || { echo "bench-peers.sh: $tool is required" >&2; exit 1; }
done
for e in nbd rbd io_uring; do
  fio --enghelp="$e" >/dev/null 2>&1 || { echo "bench-peers.sh: fio has no $e engine" >&2; exit 1; }
done
QEMU_RBD=1
ls /usr/lib/*/qemu/block-rbd.so >/dev/null 2>&1 || QEMU_RBD=0

mkdir -p "$DIR"
DIR=$(cd "$DIR" && pwd)
fstype=$(df --output=fstype "$DIR" | tail -n 1)
case $fstype in tmpfs|ramfs) echo "$DIR is on $fstype; use --dir on a real disk" >&2; exit 1 ;; esac

SIZE_B=$(numfmt --from=iec "$SIZE")
WS_B=$(numfmt --from=iec "$WS")
CACHE_B=$(numfmt --from=iec "$CACHE_SIZE")
FLUSH_B=$(numfmt --from=iec "$FLUSH_SIZE")
HALF_B=$((SIZE_B / 2))
((WS_B <= CACHE_B * 3 / 4)) || { echo "--ws must be at most 3/4 of --cache-size" >&2; exit 1; }
((FLUSH_B <= CACHE_B * 3 / 4)) || { echo "--flush-size must be at most 3/4 of --cache-size" >&2; exit 1; }
OSD_BYTES=$((SIZE_B * 2 > 2147483648 ? SIZE_B * 2 : 2147483648))
# Cold random reads: 4K reads aligned to the 64K cache block, a bounded
# number of them, so that almost every one is a miss on a fresh cache.
COLD_IOS=$(( QUICK == 1 ? 1024 : 2048 ))

RUN=$(mktemp -d "${TMPDIR:-/tmp}/bench-peers.XXXXXX")
RES=$DIR/results
rm -rf "$RES"
mkdir -p "$RES"
on_exit() {
  local rc=$?
  bench_cleanup
  rm -rf "$RUN"
  [ $KEEP = 1 ] || rm -rf "$RES"
  exit $rc
}
trap on_exit EXIT
trap 'exit 130' INT TERM

T_START=$SECONDS
LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
bench_log "work dir $DIR ($fstype), runtime ${RUNTIME}s + ${RAMP}s ramp, quick=$QUICK, load $LOAD_START"

ORIGIN=$DIR/origin.img   # file origin for the file-backed targets
DIRECT=$DIR/direct.img   # fio O_DIRECT target
CACHE=$DIR/cache.img
META=$DIR/meta.img
for f in "$ORIGIN" "$DIRECT"; do
  if [ ! -f "$f" ] || [ "$(stat -c %s "$f")" -ne "$SIZE_B" ]; then
    bench_log "creating $f ($SIZE, random data)"
    rm -f "$f"
    dd if=/dev/urandom of="$f" bs=1M count=$((SIZE_B / 1048576)) oflag=direct status=none
  fi
done
truncate -s "$CACHE_B" "$CACHE"
truncate -s 64M "$META"

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
    { bench_log "fio failed: $(tail -n 3 "$out.err")"; rm -f "$out"; }
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
# resistance), so for rbdcache repeat the pass, up to 4 times, until the
# working set is mapped; the report says how many passes it took.
warm_up() {
  local lat=$1 target=$2 n=1 st mapped
  fio_run "$lat" "$target" warm
  [ -n "$RC_PID" ] || return 0
  while ((n < 4)); do
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
# files in the background (RC_PID, RC_LOG, RC_SOCK).
rbdcache_start() {
  local name=$1 origin=$2 mode=$3
  shift 3
  RC_SOCK=$RUN/$name.sock
  RC_LOG=$RUN/$name.log
  local ceph=()
  [[ $origin == rbd:* ]] && ceph=(--ceph-conf "$CLIENT_CONF" --ceph-id rbdcache)
  bench_start "$name" "$RC_SOCK" "$RBDCACHE" serve --origin "$origin" "${ceph[@]}" \
    --cache-dev "$CACHE" --meta-dev "$META" --mode "$mode" --socket "$RC_SOCK" "$@"
  RC_PID=$BENCH_PID
  eng_nbd "$RC_SOCK"
}
rbdcache_format() {
  "$RBDCACHE" format --meta-dev "$META" --cache-dev "$CACHE" --force >/dev/null
}
rbdcache_stop() { bench_stop "$RC_PID" "${1:-TERM}"; RC_PID=; }

# hit_ratio STATS_BEFORE STATS_AFTER
hit_ratio() {
  jq -n --argjson a "$1" --argjson b "$2" \
    '(($b.read_hits // 0) - ($a.read_hits // 0)) as $h | (($b.read_misses // 0) - ($a.read_misses // 0)) as $m
     | if $h + $m > 0 then $h / ($h + $m) else 0 end'
}

# ---------------------------------------------------------------- workloads per phase
ALL_W=(rr1 rr32 rw1 rw32 mix seqw mc4)
if [ $QUICK = 1 ]; then
  LOCAL_W=(rr1 rr32 rw1 rw32)
  RBD_W0=(rr1 rr32 rw1 rw32 mix seqw mc4)
  RBD_W1=(rr1 rw1)
  COLD_W0=(cold1 cold32 rw1 rw32)
  COLD_W1=(cold1 rw1)
  COLD_R0=(cold1 cold32)
  COLD_R1=(cold1)
else
  LOCAL_W=("${ALL_W[@]}")
  RBD_W0=("${ALL_W[@]}")
  RBD_W1=("${ALL_W[@]}")
  COLD_W0=(cold1 cold32 rw1 rw32)
  COLD_W1=(cold1 cold32 rw1 rw32)
  COLD_R0=(cold1 cold32)
  COLD_R1=(cold1 cold32)
fi

# ---------------------------------------------------------------- file origin
phase_local() {
  local L=local
  bench_log "file origin and device limits"
  ENG=(--ioengine=io_uring --direct=1 --filename="$DIRECT")
  RC_PID=
  run_set $L fio-direct "${LOCAL_W[@]}"

  bench_start nbdkit-file "$RUN/nf.sock" nbdkit -f -U "$RUN/nf.sock" file "$ORIGIN"
  eng_nbd "$RUN/nf.sock"
  run_set $L nbdkit-file "${LOCAL_W[@]}"
  bench_stop "$BENCH_PID"

  bench_start qemu-nbd-file "$RUN/qf.sock" qemu-nbd -t -k "$RUN/qf.sock" -f raw --cache=none \
    --aio=io_uring -e 8 "$ORIGIN"
  eng_nbd "$RUN/qf.sock"
  run_set $L qemu-nbd-file "${LOCAL_W[@]}"
  bench_stop "$BENCH_PID"

  bench_start nbdkit-cache-file "$RUN/ncf.sock" env TMPDIR="$DIR" nbdkit -f -U "$RUN/ncf.sock" \
    --filter=cache file "$ORIGIN" cache=writeback cache-on-read=true cache-max-size="$CACHE_B"
  eng_nbd "$RUN/ncf.sock"
  warm_up $L nbdkit-cache-file-warm
  run_set $L nbdkit-cache-file-warm "${LOCAL_W[@]}"
  bench_stop "$BENCH_PID"

  rbdcache_format
  rbdcache_start rbdcache-file "file:$ORIGIN" writeback
  warm_up $L rbdcache-file-wb-warm
  run_set $L rbdcache-file-wb-warm "${LOCAL_W[@]}"
  rbdcache_stop
}

# ---------------------------------------------------------------- rbd origin
IMG=bench
QEMU_RBD_URI=
phase_rbd() {
  local lat=$1 L="lat$1" w i
  i=$([ "$lat" = 0 ] && echo 0 || echo 1)
  local -n wl=RBD_W$i cw=COLD_W$i cr=COLD_R$i
  local cdir=$RUN/ceph-$L
  bench_log "rbd origin, injected latency ${lat} ms max"
  bench_cluster_start "$cdir" "$lat" "$OSD_BYTES"
  CLIENT_CONF=$cdir.client.conf
  export CEPH_CONF=$CLIENT_CONF
  unset CEPH_ARGS
  rbd --id rbdcache create --size "$SIZE" "rbd/$IMG"
  bench_log "filling rbd/$IMG"
  fio --name=fill --ioengine=rbd --clientname=rbdcache --pool=rbd --rbdname="$IMG" \
    --rw=write --bs=4M --iodepth=16 --size="$SIZE_B" --output=/dev/null >/dev/null
  QEMU_RBD_URI="rbd:rbd/$IMG:id=rbdcache:conf=$CLIENT_CONF"

  # librbd directly
  RC_PID=
  ENG=(--ioengine=rbd --clientname=rbdcache --pool=rbd --rbdname="$IMG")
  run_set "$L" librbd "${cr[@]}" "${wl[@]}"

  if [ $QEMU_RBD = 1 ]; then
    bench_start qemu-nbd-rbd "$RUN/qr.sock" qemu-nbd -t -k "$RUN/qr.sock" -f raw --cache=none \
      -e 8 "$QEMU_RBD_URI"
    local qpid=$BENCH_PID
    eng_nbd "$RUN/qr.sock"
    run_set "$L" qemu-nbd-rbd "${cr[@]}" "${wl[@]}"

    # nbdkit's cache filter over qemu-nbd: cold (its cache is a temporary
    # file, empty at start), then restarted and warmed by one full pass.
    local k
    for k in cold warm; do
      bench_start nbdkit-cache-rbd "$RUN/ncr.sock" env TMPDIR="$DIR" nbdkit -f -U "$RUN/ncr.sock" \
        --filter=cache nbd socket="$RUN/qr.sock" cache=writeback cache-on-read=true \
        cache-max-size="$CACHE_B"
      eng_nbd "$RUN/ncr.sock"
      if [ $k = cold ]; then
        run_set "$L" nbdkit-cache-rbd-cold "${cw[@]}"
      else
        warm_up "$L" nbdkit-cache-rbd-warm
        run_set "$L" nbdkit-cache-rbd-warm "${wl[@]}"
      fi
      bench_stop "$BENCH_PID"
    done
    bench_stop "$qpid"
  else
    bench_log "qemu-nbd has no rbd block driver (qemu-block-extra); rbdcache passthrough is the no-cache baseline"
  fi

  # rbdcache: cold on a fresh cache, then warm after one full read pass.
  local modes=(writeback)
  [ $QUICK = 1 ] || modes+=(writethrough)
  local m tag
  for m in "${modes[@]}"; do
    tag=$([ $m = writeback ] && echo wb || echo wt)
    rbdcache_format
    rbdcache_start "rbdcache-$tag-$L" "rbd:rbd/$IMG" "$m"
    run_set "$L" "rbdcache-$tag-cold" "${cw[@]}"
    warm_up "$L" "rbdcache-$tag-warm"
    run_set "$L" "rbdcache-$tag-warm" "${wl[@]}"
    rbdcache_stop
  done
  if [ $QUICK = 0 ] || [ $QEMU_RBD = 0 ]; then
    rbdcache_format
    rbdcache_start "rbdcache-pt-$L" "rbd:rbd/$IMG" passthrough
    run_set "$L" rbdcache-pt "${cr[@]}" "${wl[@]}"
    rbdcache_stop
  fi

  if [ "$lat" = 0 ] || [ $QUICK = 0 ]; then
    system_tests "$L"
  fi
  bench_cluster_stop "$cdir"
}

# ---------------------------------------------------------------- whole system
system_tests() {
  local L=$1 s0 s1 dirty t0 t1 flush_s restart_dirty restart_clean restart_kill9
  bench_log "whole-system tests ($L)"
  # Flush: fill the cache with dirty data and no writeback, restart with
  # writeback forced, time dirty_bytes down to 0.
  rbdcache_format
  rbdcache_start "sys-fill-$L" "rbd:rbd/$IMG" writeback --dirty-high 100 --dirty-low 100 \
    --max-dirty-age 86400 --sequential-cutoff 0
  fio --name=dirty "${ENG[@]}" --rw=randwrite --bs=1M --iodepth=8 --size="$FLUSH_B" \
    --randrepeat=0 --output=/dev/null >/dev/null
  s0=$(bench_stats "$RC_PID" "$RC_LOG")
  dirty=$(bench_field "$s0" dirty_bytes)
  rbdcache_stop
  rbdcache_start "sys-flush-$L" "rbd:rbd/$IMG" writeback --dirty-high 0 --dirty-low 0
  restart_dirty=$BENCH_READY_S
  t0=$(bench_now)
  local left=$dirty n=0
  while :; do
    s1=$(bench_stats "$RC_PID" "$RC_LOG")
    left=$(bench_field "$s1" dirty_bytes)
    [ "$left" -eq 0 ] && break
    ((++n > 6000)) && { bench_log "writeback did not finish in 10 minutes"; break; }
    sleep 0.1
  done
  t1=$(bench_now)
  flush_s=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", b - a }')
  local written
  written=$(bench_field "$s1" bytes_written_back)
  rbdcache_stop
  # Restart with a populated, clean cache.
  rbdcache_start "sys-restart-$L" "rbd:rbd/$IMG" writeback
  restart_clean=$BENCH_READY_S
  rbdcache_stop

  # Hit ratio before and after kill -9.
  rbdcache_format
  rbdcache_start "sys-k9a-$L" "rbd:rbd/$IMG" writeback
  local k st
  for k in 1 2 3 4 5 6; do
    fio --name=warm "${ENG[@]}" --rw=randread --bs=64k --iodepth=16 --size="$WS_B" --output=/dev/null >/dev/null
    st=$(bench_stats "$RC_PID" "$RC_LOG")
    (( $(bench_field "$st" mapped_blocks) * $(bench_field "$st" block_size) * 100 >= WS_B * 98 )) && break
  done
  local measure=(--name=measure --rw=randread --bs=4k --iodepth=32 --size="$WS_B" --norandommap
                 --randrepeat=0 --number_ios=$((COLD_IOS * 8)) --output=/dev/null)
  s0=$(bench_stats "$RC_PID" "$RC_LOG")
  fio "${ENG[@]}" "${measure[@]}" >/dev/null
  s1=$(bench_stats "$RC_PID" "$RC_LOG")
  local before after
  before=$(hit_ratio "$s0" "$s1")
  sleep 1.5   # past the default 1 s metadata commit interval
  rbdcache_stop KILL
  rbdcache_start "sys-k9b-$L" "rbd:rbd/$IMG" writeback
  restart_kill9=$BENCH_READY_S
  s0=$(bench_stats "$RC_PID" "$RC_LOG")
  fio "${ENG[@]}" "${measure[@]}" >/dev/null
  s1=$(bench_stats "$RC_PID" "$RC_LOG")
  after=$(hit_ratio "$s0" "$s1")
  rbdcache_stop
  jq -n --argjson dirty "$dirty" --argjson flush_s "$flush_s" --argjson written "$written" \
    --argjson rd "$restart_dirty" --argjson rc "$restart_clean" --argjson rk "$restart_kill9" \
    --argjson before "$before" --argjson after "$after" \
    '{dirty_bytes: $dirty, flush_s: $flush_s, bytes_written_back: $written,
      restart_dirty_s: $rd, restart_clean_s: $rc, restart_kill9_s: $rk,
      hit_before: $before, hit_after: $after}' >"$RES/system-$L.json"
  bench_log "  flush ${dirty} B in ${flush_s}s; restart ${restart_clean}s; hit ratio $before -> $after"
}

# ---------------------------------------------------------------- run
phase_local
phase_rbd 0
phase_rbd "$LAT_MS"
LOAD_END=$(cut -d' ' -f1-3 /proc/loadavg)
ELAPSED=$((SECONDS - T_START))

# ---------------------------------------------------------------- report
root_dev=$(df --output=source "$DIR" | tail -n 1)
disk_desc=$(lsblk -ndo NAME,SIZE,ROTA,MODEL "$root_dev" 2>/dev/null | head -n 1 || true)
cat >"$RES/meta.json" <<EOF
{"nproc": $(nproc), "mem": "$(free -h | awk '/^Mem:/ {print $2}')",
 "kernel": "$(uname -r)", "os": "$(. /etc/os-release; echo "$PRETTY_NAME")",
 "cpu": "$(lscpu | sed -n 's/^Model name: *//p' | head -n 1)",
 "disk": "$root_dev ($fstype) ${disk_desc//\"/}",
 "load_start": "$LOAD_START", "load_end": "$LOAD_END",
 "runtime": $RUNTIME, "ramp": $RAMP, "quick": $QUICK, "elapsed": $ELAPSED,
 "size": "$SIZE", "ws": "$WS", "cache": "$CACHE_SIZE", "flush": "$FLUSH_SIZE",
 "latency_ms": "$LAT_MS", "cold_ios": $COLD_IOS, "qemu_rbd": $QEMU_RBD,
 "fio": "$(fio --version)", "qemu": "$(qemu-nbd --version | head -n 1)",
 "nbdkit": "$(nbdkit --version)", "ceph": "$(ceph --version | cut -d' ' -f1-3)",
 "args": "${ARGS_TEXT//\"/}"}
EOF
cat >"$RUN/report.py" <<'PY'
import json, os, sys

res, md_path, chart = sys.argv[1:4]
meta = json.load(open(os.path.join(res, "meta.json")))
LAT = "lat%s" % meta["latency_ms"]
units = {"K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}
ws_b = int(meta["ws"][:-1]) * units[meta["ws"][-1].upper()] if meta["ws"][-1].upper() in units else int(meta["ws"])
lat_mean = float(meta["latency_ms"]) / 2

def load(lat, target, w):
    p = os.path.join(res, lat, target, w + ".json")
    if not os.path.exists(p):
        return None
    text = open(p).read()
    try:
        job = json.loads(text[text.index("{"):])["jobs"][0]
    except (ValueError, KeyError, IndexError):
        return None
    r, wr = job["read"], job["write"]
    side = wr if w.startswith("rw") or w == "seqw" else r
    out = {"iops": r["iops"] + wr["iops"], "bw": (r["bw_bytes"] + wr["bw_bytes"]) / 1e6,
           "mean": side["lat_ns"]["mean"] / 1000.0,
           "p99": side["clat_ns"].get("percentile", {}).get("99.000000", 0) / 1000.0,
           "wmean": wr["lat_ns"]["mean"] / 1000.0, "hit": None}
    sp = p + ".stats"
    if os.path.exists(sp):
        s = json.load(open(sp))
        a, b = s["before"], s["after"]
        h = b.get("read_hits", 0) - a.get("read_hits", 0)
        m = b.get("read_misses", 0) - a.get("read_misses", 0)
        if h + m:
            out["hit"] = h / (h + m)
    return out

def system(lat):
    p = os.path.join(res, "system-%s.json" % lat)
    return json.load(open(p)) if os.path.exists(p) else None

WORKLOADS = [
    ("cold1", "Cold 4K random read, QD1 (fresh cache, 64K-aligned offsets, %d reads)" % meta["cold_ios"]),
    ("cold32", "Cold 4K random read, QD32 (fresh cache, 64K-aligned offsets, %d reads)" % meta["cold_ios"]),
    ("rr1", "4K random read, QD1 (warm)"),
    ("rr32", "4K random read, QD32 (warm)"),
    ("rw1", "4K random write, QD1"),
    ("rw32", "4K random write, QD32"),
    ("mix", "70/30 random read/write, zipf(1.2), 4K, QD32 (warm)"),
    ("seqw", "1 MiB sequential write, QD8"),
    ("mc4", "4K random read, 4 connections x QD8 (warm)"),
]
DESC = {
    "rbdcache-wb-warm": "rbdcache writeback, after one full read pass of the working set",
    "rbdcache-wb-cold": "rbdcache writeback, freshly formatted cache",
    "rbdcache-wt-warm": "rbdcache writethrough, warm",
    "rbdcache-wt-cold": "rbdcache writethrough, fresh cache",
    "rbdcache-pt": "rbdcache passthrough (caches nothing: rbdcache's NBD server on librbd)",
    "nbdkit-cache-rbd-warm": "nbdkit --filter=cache (writeback, cache-on-read) over qemu-nbd rbd, warm",
    "nbdkit-cache-rbd-cold": "nbdkit --filter=cache over qemu-nbd rbd, empty cache",
    "qemu-nbd-rbd": "qemu-nbd -t --cache=none over rbd: (no cache)",
    "librbd": "fio rbd engine (librbd directly, no NBD)",
    "rbdcache-file-wb-warm": "rbdcache writeback over the file origin, warm",
    "nbdkit-cache-file-warm": "nbdkit --filter=cache file ORIGIN, warm",
    "qemu-nbd-file": "qemu-nbd -t --cache=none --aio=io_uring, file",
    "nbdkit-file": "nbdkit file plugin (page cache): the NBD transport limit",
    "fio-direct": "fio io_uring O_DIRECT on a file: the device limit",
}
RBD_T = ["rbdcache-wb-warm", "rbdcache-wb-cold", "rbdcache-wt-warm", "rbdcache-wt-cold", "rbdcache-pt",
         "nbdkit-cache-rbd-warm", "nbdkit-cache-rbd-cold", "qemu-nbd-rbd", "librbd"]
FILE_T = ["rbdcache-file-wb-warm", "nbdkit-cache-file-warm", "qemu-nbd-file", "nbdkit-file", "fio-direct"]
SECTIONS = [("lat0", "RBD origin, no injected latency", RBD_T),
            (LAT, "RBD origin, latency injected (`--latency %s`)" % meta["latency_ms"], RBD_T),
            ("local", "file origin on the cache's disk, and the limits", FILE_T)]
NOCACHE = "qemu-nbd-rbd" if meta["qemu_rbd"] else "rbdcache-pt"

def ref_target(section, w):
    if section == "local":
        return "rbdcache-file-wb-warm"
    return "rbdcache-wb-cold" if w.startswith("cold") else "rbdcache-wb-warm"

def fmt_iops(x):
    return "%.1fk" % (x / 1000) if x >= 1000 else "%.0f" % x

def fmt_us(x):
    return "%.0f" % x if x >= 100 else "%.1f" % x

L = []
P = L.append
P("# rbdcache against its peers")
P("")
P("Written by `scripts/bench-peers.sh`; do not edit by hand. Every target ran in the same run, "
  "on the same machine, with the same image sizes, one after another.")
P("")
P("**These numbers are noisy.** The machine is small and shared with other builds while the "
  "benchmark runs (load average %s at the start, %s at the end, on %d CPUs). Absolute IOPS move "
  "from run to run; the ratios between targets measured in this one run are what count, and "
  "even they move by 10-20 %% between runs at runtimes this short."
  % (meta["load_start"], meta["load_end"], meta["nproc"]))
P("")
P("## Machine and run")
P("")
P("- %s, kernel %s, %d CPUs (%s), %s RAM" % (meta["os"], meta["kernel"], meta["nproc"], meta["cpu"], meta["mem"]))
P("- disk under test: %s; the cache files, the file origin and nbdkit's cache files all live on it" % meta["disk"])
P("- load average (1/5/15 min): %s at start, %s at end" % (meta["load_start"], meta["load_end"]))
P("- Ceph %s: one monitor and one memstore OSD on loopback (`scripts/dev-ceph.sh`), cephx, user client.rbdcache; "
  "the RBD image is filled before the runs" % meta["ceph"].split()[-1])
P("- %s, %s, nbdkit %s" % (meta["fio"], meta["qemu"], meta["nbdkit"].split()[-1]))
P("- image (RBD and file origin) %s; working set of the timed runs %s from offset 0; cache device %s "
  "(rbdcache, 64 KiB blocks) and nbdkit `cache-max-size` the same" % (meta["size"], meta["ws"], meta["cache"]))
P("- timed runs: %d s after %d s ramp%s; whole run %d min"
  % (meta["runtime"], meta["ramp"], " (`--quick`: fewer targets and workloads)" if meta["quick"] else "",
     meta["elapsed"] // 60))
lr0, lr1 = load("lat0", "librbd", "cold1"), load(LAT, "librbd", "cold1")
P("- latency injection: `dev-ceph.sh --latency %s` puts `ms inject delay type = osd`, "
  "`ms inject delay max = %s ms` in the clients' configuration: each OSD reply to a client is held "
  "for a random time up to %s ms, as on a networked cluster. Ceph's delayed delivery adds more than that "
  "nominal figure: a 4K QD1 random read through librbd took %s us mean with it and %s us without "
  "(the same holds with a 0.5 ms setting), so the \"latency injected\" tables model a slow remote "
  "cluster of about 4 ms per read"
  % (meta["latency_ms"], meta["latency_ms"], meta["latency_ms"],
     fmt_us(lr1["mean"]) if lr1 else "-", fmt_us(lr0["mean"]) if lr0 else "-"))
P("- librbd through fio's rbd engine runs with librbd's defaults (its own `rbd cache` on, writeback after the "
  "first flush); qemu-nbd with `--cache=none` turns it off; rbdcache uses librbd with its own cache in front")
if not meta["qemu_rbd"]:
    P("- **qemu-nbd has no rbd block driver here**: the \"no cache\" baseline is rbdcache's own passthrough mode over librbd")
P("")
args, skip = [], False
for a in meta["args"].split():
    if skip:
        skip = False
    elif a in ("--md", "--png"):
        skip = True
    elif a not in ("--no-install", "--no-build", "--keep"):
        args.append(a)
P("Reproduce: `scripts/bench-peers.sh%s` (installs packages, builds into `build-bench/`, starts and "
  "stops its own Ceph cluster; `--help` lists the options)." % ("".join(" " + a for a in args)))
P("")

# ---- goals
goals = []
def goal(name, value, op, thr, detail, why=""):
    if value is None:
        goals.append((name, "n/a", "not measured in this run", detail, ""))
        return
    ok = value >= thr if op == ">=" else value <= thr
    if ok:
        short = ""
    elif op == ">=":
        short = "short by %.0f %% (needs %.2fx more)" % ((1 - value / thr) * 100, thr / value if value else float("inf"))
    else:
        short = "%.0f %% over the limit" % ((value / thr - 1) * 100)
    goals.append((name, "PASS" if ok else "MISS", "%.2fx (goal %s %.2fx)" % (value, op, thr), detail, short))

def ratio(a, b, key="iops"):
    if a is None or b is None or not b[key]:
        return None
    return a[key] / b[key]

g = load("lat0", "rbdcache-wb-warm", "rr32"); n = load("lat0", "nbdkit-cache-rbd-warm", "rr32")
d = load("local", "fio-direct", "rr32")
goal("Warm 4K randread QD32 vs nbdkit cache filter", ratio(g, n), ">=", 1.0,
     "rbdcache %s IOPS, nbdkit cache %s IOPS (RBD origin, warm)" % (fmt_iops(g["iops"]) if g else "-", fmt_iops(n["iops"]) if n else "-"))
goal("Warm 4K randread QD32 vs the device limit", ratio(g, d), ">=", 0.85,
     "rbdcache %s IOPS, fio io_uring O_DIRECT %s IOPS" % (fmt_iops(g["iops"]) if g else "-", fmt_iops(d["iops"]) if d else "-"))
g = load("lat0", "rbdcache-wb-warm", "rr1"); n = load("lat0", "nbdkit-cache-rbd-warm", "rr1")
goal("Warm 4K randread QD1 mean latency vs nbdkit cache filter", ratio(g, n, "mean"), "<=", 1.0,
     "rbdcache %s us, nbdkit cache %s us" % (fmt_us(g["mean"]) if g else "-", fmt_us(n["mean"]) if n else "-"))
g = load("lat0", "rbdcache-wb-warm", "rw32"); n = load("lat0", "nbdkit-cache-rbd-warm", "rw32")
q = load("local", "qemu-nbd-file", "rw32")
goal("Writeback 4K randwrite QD32 vs nbdkit cache filter (writeback)", ratio(g, n), ">=", 3.0,
     "rbdcache %s IOPS, nbdkit cache %s IOPS" % (fmt_iops(g["iops"]) if g else "-", fmt_iops(n["iops"]) if n else "-"))
goal("Writeback 4K randwrite QD32 vs qemu-nbd --cache=none on a file on the same disk", ratio(g, q), ">=", 1.2,
     "rbdcache %s IOPS, qemu-nbd file %s IOPS" % (fmt_iops(g["iops"]) if g else "-", fmt_iops(q["iops"]) if q else "-"))
g = load(LAT, "rbdcache-wb-warm", "rw1"); q = load(LAT, NOCACHE, "rw1")
goal("Writeback 4K randwrite QD1 mean latency, latency injected, vs %s" % NOCACHE, ratio(g, q, "mean"), "<=", 0.25,
     "rbdcache %s us, %s %s us" % (fmt_us(g["mean"]) if g else "-", NOCACHE, fmt_us(q["mean"]) if q else "-"))
for lat, label in ((LAT, "latency injected"), ("lat0", "no injected latency")):
    g = load(lat, "rbdcache-wb-cold", "cold1"); q = load(lat, NOCACHE, "cold1")
    hit = " (rbdcache hit ratio during the run %.0f %%)" % (100 * g["hit"]) if g and g["hit"] is not None else ""
    goal("Cold 4K randread QD1 mean latency, %s, vs %s" % (label, NOCACHE), ratio(g, q, "mean"), "<=", 1.15,
         "rbdcache %s us, %s %s us%s" % (fmt_us(g["mean"]) if g else "-", NOCACHE, fmt_us(q["mean"]) if q else "-", hit))
for lat, label in (("lat0", "no injected latency"), (LAT, "latency injected")):
    s = system(lat); lb = load(lat, "librbd", "seqw")
    if s is None or lb is None:
        if lat == "lat0" or not meta["quick"]:
            goal("Flush throughput vs librbd 1 MiB sequential write, %s" % label, None, ">=", 0.8, "")
        continue
    fl = s["dirty_bytes"] / s["flush_s"] / 1e6 if s["flush_s"] else 0
    goal("Flush throughput vs librbd 1 MiB sequential write, %s" % label, fl / lb["bw"] if lb["bw"] else None, ">=", 0.8,
         "wrote back %.0f MiB in %.1f s = %.0f MB/s; librbd 1 MiB seq write QD8 %.0f MB/s"
         % (s["dirty_bytes"] / 2**20, s["flush_s"], fl, lb["bw"]))
s = system("lat0")
if s:
    goal("Hit ratio after kill -9 vs before", s["hit_after"] / s["hit_before"] if s["hit_before"] else None, ">=", 0.95,
         "warm 4K randread hit ratio %.1f %% before, %.1f %% after kill -9 and restart"
         % (100 * s["hit_before"], 100 * s["hit_after"]))
else:
    goal("Hit ratio after kill -9 vs before", None, ">=", 0.95, "")

P("## Goals")
P("")
P("Each ratio compares two targets measured in this run.")
P("")
P("| goal | result | ratio | measured | shortfall |")
P("|---|---|---|---|---|")
for name, res_, r, detail, short in goals:
    P("| %s | **%s** | %s | %s | %s |" % (name, res_, r, detail, short))
P("")

# ---- why the misses
def iops(lat, t, w):
    r = load(lat, t, w)
    return r["iops"] if r else None
def mean(lat, t, w):
    r = load(lat, t, w)
    return r["mean"] if r else None
def x(a, b):
    return "%.2fx" % (a / b) if a and b else "-"
def stats_delta(lat, t, w, field):
    p = os.path.join(res, lat, t, w + ".json.stats")
    if not os.path.exists(p):
        return None
    st = json.load(open(p))
    return st["after"].get(field, 0) - st["before"].get(field, 0)
missed = {name for name, r_, *_ in goals if r_ == "MISS"}
why = []
if any(n.startswith("Warm 4K randread") for n in missed):
    nf, fd = iops("local", "nbdkit-file", "rr32"), iops("local", "fio-direct", "rr32")
    rcf, ncf = iops("local", "rbdcache-file-wb-warm", "rr32"), iops("local", "nbdkit-cache-file-warm", "rr32")
    why.append("**Warm reads.** nbdkit's cache filter keeps its cache in a temporary file that goes through "
               "the page cache (this machine has %s of RAM), so its warm hits are memory copies; rbdcache reads "
               "its cache device with O_DIRECT, so its floor is the device. At QD1 the device alone (fio "
               "O_DIRECT) takes %s us per 4K read and nbdkit's cached read %s us: no O_DIRECT cache can meet "
               "the QD1 latency goal against a page-cache peer; rbdcache adds %s us over the device. At QD32 "
               "on a 2-CPU machine the NBD client and server share the CPUs: even nbdkit's file plugin, "
               "serving from the page cache, reaches only %s of the device limit, so 0.85x the device is out "
               "of reach of any NBD server here (rbdcache reaches %s of that transport limit). On the same "
               "file origin rbdcache does %s of nbdkit's cache filter."
               % (meta["mem"], fmt_us(mean("local", "fio-direct", "rr1") or 0),
                  fmt_us(mean("lat0", "nbdkit-cache-rbd-warm", "rr1") or 0),
                  fmt_us((mean("lat0", "rbdcache-wb-warm", "rr1") or 0) - (mean("local", "fio-direct", "rr1") or 0)),
                  x(nf, fd), x(iops("lat0", "rbdcache-wb-warm", "rr32"), nf), x(rcf, ncf)))
if any(n.startswith("Writeback 4K randwrite QD32") for n in missed):
    g0, gf = iops("lat0", "rbdcache-wb-warm", "rw32"), iops("local", "rbdcache-file-wb-warm", "rw32")
    qf, ncf = iops("local", "qemu-nbd-file", "rw32"), iops("local", "nbdkit-cache-file-warm", "rw32")
    wb = stats_delta("lat0", "rbdcache-wb-warm", "rw32", "bytes_written_back")
    why.append("**Writeback random writes.** nbdkit's cache filter writes into its page-cache file and sends "
               "nothing to the origin until a FLUSH, which fio never sends: it measures memory writes. "
               "rbdcache writes each 4K to its cache device with O_DIRECT and, once 10 %% of the cache is "
               "dirty (`--dirty-high`), writes back to Ceph during the run (%s written back during the QD32 "
               "run), and the Ceph OSD runs on the same 2 CPUs. Without Ceph, on the file origin, rbdcache "
               "does %s IOPS: %s qemu-nbd --cache=none and %s nbdkit's cache filter on the same file; over "
               "RBD it does %s IOPS, %s of its file-origin rate."
               % ("%.0f MiB" % (wb / 2**20) if wb is not None else "-", fmt_iops(gf or 0), x(gf, qf), x(gf, ncf),
                  fmt_iops(g0 or 0), x(g0, gf)))
if any(n.startswith("Cold 4K randread") for n in missed):
    pt = mean("lat0", "rbdcache-pt", "cold1"); q = mean("lat0", "qemu-nbd-rbd", "cold1")
    lb = mean("lat0", "librbd", "cold1"); c = mean("lat0", "rbdcache-wb-cold", "cold1")
    r = load("lat0", "rbdcache-wb-cold", "cold1")
    prom = stats_delta("lat0", "rbdcache-wb-cold", "cold1", "promotions")
    mis = stats_delta("lat0", "rbdcache-wb-cold", "cold1", "read_misses")
    rp = load("lat0", "rbdcache-pt", "cold1")
    why.append("**Cold reads without injected latency.** A miss costs rbdcache in writeback mode %s us mean "
               "(p99 %s us) against %s us through qemu-nbd and %s us through librbd directly%s. "
               "The difference is promotion: the policy promoted %s of the %s misses (its hotspot regions are "
               "4 blocks, so two reads in one region in different epochs promote), and a promoting miss is "
               "answered only after its data has also been written to the cache device "
               "(`CacheEngine::fill_after_read()` calls `done` from the cache write's completion), which adds a "
               "device write to the reply and queues behind the once-a-second metadata commit's fdatasync, "
               "hence the tail. Answering as soon as the origin read lands and finishing the fill in the "
               "background (into a buffer the engine owns) would bring the miss close to passthrough. "
               "With the latency of a networked cluster this is hidden (the latency-injected goal passes)."
               % (fmt_us(c or 0), fmt_us(r["p99"]) if r else "-", fmt_us(q or 0), fmt_us(lb or 0),
                  "; rbdcache's passthrough mode, with the same NBD server and librbd path but no caching, "
                  "%s us (p99 %s us)" % (fmt_us(pt), fmt_us(rp["p99"])) if pt and rp else "",
                  prom if prom is not None else "-", mis if mis is not None else "-"))
if any(n.startswith("Flush throughput") for n in missed):
    why.append("**Writeback throughput.** `CacheEngine::write_back_unit()` flushes the origin "
               "(`rbd_aio_flush`) after every unit (up to 4 MiB of neighbouring blocks) before it marks the "
               "blocks clean; `wb_pump()` keeps at most 4 units in flight (1 while clients have requests in "
               "flight), and a batch is 256 blocks (16 MiB) that must drain completely before the next one "
               "starts. librbd's 1 MiB sequential write keeps 8 MiB in flight with no flush. What would close "
               "it: one origin flush per batch (group the units, mark them clean together), a window counted "
               "in bytes (for example 32 MiB) instead of 4 units, and starting the next batch while the "
               "previous one drains.")
profs = [p for w in ("rr32", "rw32") for p in [os.path.join(res, "profile-%s.txt" % w)] if os.path.exists(p)]
def share(names):
    out = []
    for p in profs:
        tot = 0.0
        for line in open(p):
            parts = line.split()
            if len(parts) >= 4 and parts[0].endswith("%") and parts[-1] in names or (len(parts) >= 4 and parts[3] in names):
                try:
                    tot += float(parts[0].rstrip("%"))
                except ValueError:
                    pass
        out.append("%.1f %% (%s)" % (tot, "reads" if "rr32" in p else "writes"))
    return " and ".join(out)
if profs:
    why.append("**Where rbdcache's CPU goes** (profiles below, self time): most samples are in the kernel. "
               "`iowrite16` is the virtio-blk doorbell, paid once per device I/O (fio's O_DIRECT run pays it "
               "too; the reactor already submits a loop's worth of requests with one `io_uring_submit_and_wait`). "
               "`finish_task_switch` is threads going to sleep and waking: the reactor threads, the commit and "
               "background threads and fio all share 2 CPUs, so every wait in `io_uring_submit_and_wait` is a "
               "context switch; busy-polling for a few microseconds before sleeping, or fewer threads than "
               "CPUs (`--threads 1`), would cut it. `malloc`/`free` take %s of the samples: each device I/O allocates "
               "an `Op` holding a `std::function` (`Reactor::submit_op`), and each NBD request a `Request` and "
               "`shared_ptr` callbacks; a per-reactor free list for both would remove them. "
               "`Mapping::lookup` under the engine's single mutex is %s." % (share(("malloc", "free", "_int_malloc", "_int_free", "cfree", "malloc_consolidate")), share(("rbdcache::cache::Mapping::lookup",))))
if why:
    P("### Why the misses")
    P("")
    for w_ in why:
        P(w_)
        P("")

# ---- whole-system
P("## Whole-system figures")
P("")
P("| figure | no injected latency | latency injected |")
P("|---|---|---|")
s0, s1 = system("lat0"), system(LAT)
def sv(s, f):
    return f(s) if s else "-"
P("| dirty data written back (flush test) | %s | %s |" % tuple(sv(s, lambda s: "%.0f MiB" % (s["dirty_bytes"] / 2**20)) for s in (s0, s1)))
P("| time until dirty_bytes = 0 (after the restart that forces writeback) | %s | %s |" % tuple(sv(s, lambda s: "%.2f s" % s["flush_s"]) for s in (s0, s1)))
P("| writeback throughput | %s | %s |" % tuple(sv(s, lambda s: "%.0f MB/s" % (s["dirty_bytes"] / s["flush_s"] / 1e6 if s["flush_s"] else 0)) for s in (s0, s1)))
lbs = [load(l, "librbd", "seqw") for l in ("lat0", LAT)]
P("| librbd 1 MiB sequential write QD8 (fio rbd engine) | %s | %s |" % tuple("%.0f MB/s" % x["bw"] if x else "-" for x in lbs))
P("| restart with a populated dirty cache, until nbdinfo answers | %s | %s |" % tuple(sv(s, lambda s: "%.2f s" % s["restart_dirty_s"]) for s in (s0, s1)))
P("| restart with a populated clean cache, until nbdinfo answers | %s | %s |" % tuple(sv(s, lambda s: "%.2f s" % s["restart_clean_s"]) for s in (s0, s1)))
P("| restart after kill -9 (warm cache), until nbdinfo answers | %s | %s |" % tuple(sv(s, lambda s: "%.2f s" % s["restart_kill9_s"]) for s in (s0, s1)))
P("| warm hit ratio before kill -9 / after | %s | %s |" % tuple(sv(s, lambda s: "%.1f %% / %.1f %%" % (100 * s["hit_before"], 100 * s["hit_after"])) for s in (s0, s1)))
P("")
P("Flush test: rbdcache in writeback mode with writeback held off (`--dirty-high 100 --max-dirty-age 86400 "
  "--sequential-cutoff 0`) takes %s of 1 MiB random writes, is stopped, and is restarted with "
  "`--dirty-high 0 --dirty-low 0`; the time runs from the socket answering to SIGUSR1 statistics showing "
  "`dirty_bytes` 0 (polled every 0.1 s). Hit ratio: random 64 KiB read passes over the %s working set until it is cached (as for the warm runs), "
  "then a 4K QD32 random read pass measured by the `read_hits`/`read_misses` deltas; 1.5 s later "
  "(past the 1 s metadata commit interval) `kill -9`, restart, and the same pass again."
  % (meta["flush"], meta["ws"]))
P("")

# ---- tables
P("## Results per workload")
P("")
P("IOPS; mean and p99 completion latency in microseconds (of the reads, or of the writes for write "
  "workloads); hit % from rbdcache's SIGUSR1 statistics over the run. `rbdcache ÷` is rbdcache's IOPS "
  "divided by the row's (above 1: rbdcache is faster); `lat ÷` is the row's mean latency divided by "
  "rbdcache's (above 1: rbdcache's latency is lower). The rbdcache reference is writeback, cold for the cold "
  "workloads and warm otherwise (the file-origin rbdcache in the file-origin tables).")
P("")
for w, title in WORKLOADS:
    rows_any = False
    block = ["### " + title, ""]
    for sec, stitle, targets in SECTIONS:
        ref = load(sec, ref_target(sec, w), w)
        rows = [(t, load(sec, t, w)) for t in targets]
        rows = [(t, r) for t, r in rows if r]
        if not rows:
            continue
        rows_any = True
        block.append("*%s*" % stitle)
        block.append("")
        block.append("| target | IOPS | MB/s | mean | p99 | hit % | rbdcache ÷ | lat ÷ |")
        block.append("|---|---:|---:|---:|---:|---:|---:|---:|")
        for t, r in rows:
            rr = "%.2fx" % (ref["iops"] / r["iops"]) if ref and r["iops"] else "-"
            rl = "%.2fx" % (r["mean"] / ref["mean"]) if ref and ref["mean"] else "-"
            hit = "%.0f" % (100 * r["hit"]) if r["hit"] is not None else "-"
            name = "**%s**" % t if t == ref_target(sec, w) else t
            block.append("| %s | %s | %.1f | %s | %s | %s | %s | %s |"
                         % (name, fmt_iops(r["iops"]), r["bw"], fmt_us(r["mean"]), fmt_us(r["p99"]), hit, rr, rl))
        block.append("")
    if rows_any:
        L.extend(block)

warm_rows = []
for sec in ("lat0", LAT, "local"):
    for t in RBD_T + FILE_T:
        d = os.path.join(res, sec, t)
        if not t.endswith("-warm") or not os.path.exists(os.path.join(d, "warm.json")):
            continue
        passes = len([f for f in os.listdir(d) if f.startswith("warm") and f.endswith(".json")])
        first = ""
        sp = os.path.join(d, "warm.json.stats")
        if os.path.exists(sp):
            a = json.load(open(sp))["after"]
            ws_blocks = ws_b / a.get("block_size", 65536)
            first = "%.0f %%" % (100 * a.get("mapped_blocks", 0) / ws_blocks)
        warm_rows.append("| %s | %s | %d | %s |" % (sec, t, passes, first or "all (caches on first read)"))
if warm_rows:
    P("### Warm-up")
    P("")
    P("Passes of random 64 KiB reads over the working set before the warm runs, and the share of the "
      "working set cached after the first pass. rbdcache's policy (`src/cache/smq_policy.h`) promotes a "
      "block only after its region has been touched in two distinct epochs, so one pass alone leaves most "
      "of a fresh working set uncached; the script repeats the pass (up to 4) until it is mapped. The last "
      "column counts every cached block against the working set's size: on the RBD origin the cold runs "
      "before the warm-up (writes in writeback mode cache what they write) had already cached the working "
      "set, so one pass was enough there; the file-origin row shows a fresh cache.")
    P("")
    P("| origin | target | passes | cached blocks after pass 1, % of the working set |")
    P("|---|---|---:|---:|")
    for r in warm_rows:
        P(r)
    P("")

P("### Targets")
P("")
for t in RBD_T + FILE_T:
    P("- `%s`: %s" % (t, DESC[t]))
P("")
P("Warm means after one full pass of random 64 KiB reads over the working set (a sequential pass "
  "would bypass rbdcache's cache: streams over `--sequential-cutoff`, 4 MiB, go straight to the origin). "
  "Cold reads use 4K reads at 64 KiB-aligned random offsets over half the image each (QD1 the first half, "
  "QD32 the second) so that almost each is a miss of a 64 KiB cache block; the hit % column shows how "
  "many were not. Write workloads on rbdcache run in the order listed, so in writeback mode dirty data "
  "from earlier runs may be written back while later ones run, as it would in service.")
P("")

profiles = [(w, os.path.join(res, "profile-%s.txt" % w)) for w in ("rr32", "rw32")]
profiles = [(w, p) for w, p in profiles if os.path.exists(p) and os.path.getsize(p)]
if profiles:
    P("## Profiles")
    P("")
    P("`perf record -e cpu-clock -g` of the rbdcache process during the warm QD32 runs "
      "(RBD origin, no injected latency), symbols above 1.5 %, self time:")
    P("")
    for w, p in profiles:
        P("%s:" % ("4K randread QD32" if w == "rr32" else "4K randwrite QD32"))
        P("")
        P("```")
        P("\n".join(l.rstrip(" -") for l in open(p).read().rstrip().splitlines()))
        P("```")
        P("")

open(md_path, "w").write("\n".join(L) + "\n")

# ---- chart data
os.makedirs(chart, exist_ok=True)
CW = ["rr1", "rr32", "rw1", "rw32"]
def dat(name, sec, targets):
    with open(os.path.join(chart, name), "w") as f:
        f.write("workload " + " ".join(targets) + "\n")
        for w in CW:
            vals = []
            for t in targets:
                r = load(sec, t, w)
                vals.append("%.0f" % r["iops"] if r and r["iops"] > 0 else "-")
            f.write({"rr1": "read-QD1", "rr32": "read-QD32", "rw1": "write-QD1",
                     "rw32": "write-QD32"}[w] + " " + " ".join(vals) + "\n")
ct = ["rbdcache-wb-warm", "nbdkit-cache-rbd-warm", NOCACHE, "librbd"]
dat("lat0.dat", "lat0", ct)
dat("latn.dat", LAT, ct)
dat("local.dat", "local", FILE_T)
gp = """set terminal pngcairo size 1500,620 font ",10"
set output "chart.png"
set datafile missing "-"
set style data histograms
set style histogram clustered gap 1
set style fill solid 0.85 border -1
set logscale y
set yrange [100:*]
set ylabel "IOPS (log scale)"
set key outside bottom center horizontal maxrows 2 font ",8"
set grid ytics
set xtics font ",8"
set multiplot layout 1,3 title "rbdcache and peers, fio 4K random I/O, %s s runs (load %s at start; noisy shared machine)"
set title "RBD origin, no injected latency"
plot for [i=2:%d] "lat0.dat" using i:xtic(1) title columnheader(i)
set title "RBD origin, latency injected (--latency %s)"
plot for [i=2:%d] "latn.dat" using i:xtic(1) title columnheader(i)
set title "file origin and limits"
plot for [i=2:%d] "local.dat" using i:xtic(1) title columnheader(i)
unset multiplot
""" % (meta["runtime"], meta["load_start"], len(ct) + 1, meta["latency_ms"], len(ct) + 1, len(FILE_T) + 1)
open(os.path.join(chart, "chart.gp"), "w").write(gp)
PY
python3 "$RUN/report.py" "$RES" "$MD" "$RUN"
(cd "$RUN" && gnuplot chart.gp) && cp "$RUN/chart.png" "$PNG"
bench_log "wrote $MD and $PNG in ${ELAPSED}s"
