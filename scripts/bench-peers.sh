#!/usr/bin/env bash
# Benchmark rbdcache against its peers, side by side in one run, and write
# docs/benchmarks-peers.md (tables, goals) and docs/benchmarks-peers.png.
#
#   scripts/bench-peers.sh [--quick] [--runtime S] [--ramp S] [--dir DIR]
#                          [--size SIZE] [--ws SIZE] [--cache-size SIZE]
#                          [--flush-size SIZE] [--latency MS] [--profile]
#                          [--rbdcache PATH] [--ceph-env FILE]
#                          [--phases LIST] [--workloads LIST]
#                          [--results DIR] [--no-report]
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
# Each rbdcache target on the RBD image gets a freshly formatted cache and
# leaves the image as docs/migration.md says a cache must before another
# cache attaches: `rbdcache flush --wait --then passthrough` on its control
# socket, a clean stop, and its detach snapshot removed (the next cache is
# a new one, and a snapshot would make every later write copy-on-write).
# Every target must run to the end: any failure stops the script with a
# message naming the target, and exit status 1. At the end it prints
# "bench-peers.sh: all N targets completed" and writes the list of targets
# to RESULTS/targets.txt.
#
# Options:
#   --runtime S      seconds per timed fio run (default 10)
#   --ramp S         ramp seconds before each timed run (default 2)
#   --quick          a smoke run of every target in about a minute (plus
#                    the Ceph start): --runtime 1 --ramp 0, --size 64M
#                    --ws 16M --cache-size 32M --flush-size 16M, one or two
#                    workloads per target, whole-system tests only without
#                    injected latency. Its numbers mean nothing.
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
#   --rbdcache PATH  the rbdcache binary to measure (implies --no-build;
#                    default build-bench/src/cli/rbdcache, or $RBDCACHE)
#   --ceph-env FILE  use the running cluster that `scripts/dev-ceph.sh env`
#                    described in FILE instead of starting one; each pass
#                    creates its own image (removed at the end) and injects
#                    latency through its client configuration
#   --phases LIST    comma-separated subset of local,rbd,lat (default all):
#                    file origin, RBD origin, RBD origin with latency
#   --workloads LIST comma-separated subset of rr1,rr32,rw1,rw32,mix,seqw,mc4
#                    for the timed runs of every target (cold runs and the
#                    whole-system tests are not affected)
#   --results DIR    keep the raw results (fio JSON, server statistics,
#                    targets.txt) in DIR (default DIR/results, removed at
#                    the end unless --keep)
#   --no-report      do not write the markdown report and the chart
#   --no-install     do not run apt-get
#   --no-build       use an existing build-bench/ (or $RBDCACHE)
#   --keep           keep the raw fio JSON under DIR/results
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
source bench/lib-bench.sh
source bench/lib-peers.sh
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
REPORT=1
CEPH_ENV=
PHASES=local,rbd,lat
WORKLOADS=
RES=
MD=$ROOT/docs/benchmarks-peers.md
PNG=$ROOT/docs/benchmarks-peers.png
declare -A SET=()
ARGS_TEXT="$*"

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; }
need() { [ $# -ge 2 ] || { echo "bench-peers.sh: $1 needs a value" >&2; exit 2; }; }
while [ $# -gt 0 ]; do
  case $1 in
    --runtime) need "$@"; RUNTIME=$2; SET[runtime]=1; shift ;;
    --ramp) need "$@"; RAMP=$2; SET[ramp]=1; shift ;;
    --quick) QUICK=1 ;;
    --dir) need "$@"; DIR=$2; shift ;;
    --size) need "$@"; SIZE=$2; SET[size]=1; shift ;;
    --ws) need "$@"; WS=$2; SET[ws]=1; shift ;;
    --cache-size) need "$@"; CACHE_SIZE=$2; SET[cache]=1; shift ;;
    --flush-size) need "$@"; FLUSH_SIZE=$2; SET[flush]=1; shift ;;
    --latency) need "$@"; LAT_MS=$2; shift ;;
    --profile) PROFILE=1 ;;
    --rbdcache) need "$@"; RBDCACHE=$(realpath "$2"); BUILD=0; shift ;;
    --ceph-env) need "$@"; CEPH_ENV=$(realpath "$2"); shift ;;
    --phases) need "$@"; PHASES=$2; shift ;;
    --workloads) need "$@"; WORKLOADS=$2; shift ;;
    --results) need "$@"; RES=$2; KEEP=1; shift ;;
    --no-report) REPORT=0 ;;
    --no-install) INSTALL=0 ;;
    --no-build) BUILD=0 ;;
    --keep) KEEP=1 ;;
    --md) need "$@"; MD=$2; shift ;;
    --png) need "$@"; PNG=$2; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "bench-peers.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
  shift
done
if [ $QUICK = 1 ]; then
  [ -n "${SET[runtime]:-}" ] || RUNTIME=1
  [ -n "${SET[ramp]:-}" ] || RAMP=0
  [ -n "${SET[size]:-}" ] || SIZE=64M
  [ -n "${SET[ws]:-}" ] || WS=16M
  [ -n "${SET[cache]:-}" ] || CACHE_SIZE=32M
  [ -n "${SET[flush]:-}" ] || FLUSH_SIZE=16M
fi
for p in ${PHASES//,/ }; do
  case $p in local|rbd|lat) ;; *) echo "bench-peers.sh: unknown phase '$p' in --phases" >&2; exit 2 ;; esac
done
has_phase() { [[ ,$PHASES, == *,$1,* ]]; }

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
[ -x "$RBDCACHE" ] || { echo "bench-peers.sh: rbdcache binary not found: $RBDCACHE" >&2; exit 1; }
tools=(fio nbdkit qemu-nbd nbdinfo jq python3 rbd)
[ $REPORT = 0 ] || tools+=(gnuplot)
for tool in "${tools[@]}"; do
  command -v "$tool" >/dev/null || { echo "bench-peers.sh: $tool is required" >&2; exit 1; }
done
for e in nbd rbd io_uring; do
  fio --enghelp="$e" >/dev/null 2>&1 || { echo "bench-peers.sh: fio has no $e engine" >&2; exit 1; }
done
QEMU_RBD=1
ls /usr/lib/*/qemu/block-rbd.so >/dev/null 2>&1 || QEMU_RBD=0
if [ -n "$CEPH_ENV" ]; then
  [ -r "$CEPH_ENV" ] || { echo "bench-peers.sh: --ceph-env $CEPH_ENV is not readable" >&2; exit 1; }
fi

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
COLD_IOS=$(( QUICK == 1 ? 128 : 2048 ))

RUN=$(mktemp -d "${TMPDIR:-/tmp}/bench-peers.XXXXXX")
RES=${RES:-$DIR/results}
rm -rf "$RES"
mkdir -p "$RES"
RES=$(cd "$RES" && pwd)
TARGET=   # the target running now, for the failure message
FAILED_CMD=
trap 'FAILED_CMD="line $LINENO: $BASH_COMMAND"' ERR
on_exit() {
  local rc=$?
  trap - ERR
  bench_cleanup
  if [ $rc -ne 0 ]; then
    echo "bench-peers.sh: FAILED${TARGET:+ in target $TARGET}${FAILED_CMD:+ ($FAILED_CMD)};" \
      "server logs kept in $RUN" >&2
  else
    rm -rf "$RUN"
  fi
  [ $KEEP = 1 ] || rm -rf "$RES"
  exit $rc
}
trap on_exit EXIT
trap 'exit 130' INT TERM

# die MESSAGE: stop the run; on_exit names the target and keeps the logs.
die() { bench_log "ERROR: $*"; FAILED_CMD=; exit 1; }

# target_begin NAME / target_done: every target run is listed in
# RES/targets.txt when it completes; on_exit names the one that failed.
TARGETS_DONE=()
target_begin() { TARGET=$1; bench_log " target $1"; }
target_done() { TARGETS_DONE+=("$TARGET"); echo "$TARGET" >>"$RES/targets.txt"; TARGET=; }

T_START=$SECONDS
LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
bench_log "work dir $DIR ($fstype), runtime ${RUNTIME}s + ${RAMP}s ramp, quick=$QUICK, load $LOAD_START"
bench_log "rbdcache: $RBDCACHE ($("$RBDCACHE" --version 2>/dev/null | head -n 1 || echo "no --version"))"

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

# ---------------------------------------------------------------- workloads per phase
# Every target runs in every mode; --quick only gives each fewer workloads.
ALL_W=(rr1 rr32 rw1 rw32 mix seqw mc4)
if [ $QUICK = 1 ]; then
  LOCAL_W=(rr32 rw32)
  RBD_W0=(rr32 rw32)
  RBD_W1=(rr1)
  COLD_W0=(cold1)
  COLD_W1=(cold1)
  COLD_R0=(cold1)
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
if [ -n "$WORKLOADS" ]; then
  for w in ${WORKLOADS//,/ }; do
    [[ " ${ALL_W[*]} " == *" $w "* ]] || { echo "bench-peers.sh: unknown workload '$w' in --workloads" >&2; exit 2; }
  done
  read -r -a LOCAL_W <<<"${WORKLOADS//,/ }"
  RBD_W0=("${LOCAL_W[@]}") RBD_W1=("${LOCAL_W[@]}")
fi

# ---------------------------------------------------------------- file origin
phase_local() {
  local L=local
  bench_log "file origin and device limits"
  target_begin "$L/fio-direct"
  ENG=(--ioengine=io_uring --direct=1 --filename="$DIRECT")
  RC_PID=
  run_set $L fio-direct "${LOCAL_W[@]}"
  target_done

  target_begin "$L/nbdkit-file"
  peer_start nbdkit-file "$RUN/nf.sock" nbdkit -f -U "$RUN/nf.sock" file "$ORIGIN"
  eng_nbd "$RUN/nf.sock"
  run_set $L nbdkit-file "${LOCAL_W[@]}"
  peer_stop "$BENCH_PID"
  target_done

  target_begin "$L/qemu-nbd-file"
  peer_start qemu-nbd-file "$RUN/qf.sock" qemu-nbd -t -k "$RUN/qf.sock" -f raw --cache=none \
    --aio=io_uring -e 8 "$ORIGIN"
  eng_nbd "$RUN/qf.sock"
  run_set $L qemu-nbd-file "${LOCAL_W[@]}"
  peer_stop "$BENCH_PID"
  target_done

  target_begin "$L/nbdkit-cache-file-warm"
  peer_start nbdkit-cache-file "$RUN/ncf.sock" env TMPDIR="$DIR" nbdkit -f -U "$RUN/ncf.sock" \
    --filter=cache file "$ORIGIN" cache=writeback cache-on-read=true cache-max-size="$CACHE_B"
  eng_nbd "$RUN/ncf.sock"
  warm_up $L nbdkit-cache-file-warm
  run_set $L nbdkit-cache-file-warm "${LOCAL_W[@]}"
  peer_stop "$BENCH_PID"
  target_done

  target_begin "$L/rbdcache-file-wb-warm"
  rbdcache_format
  rbdcache_start rbdcache-file "file:$ORIGIN" writeback
  warm_up $L rbdcache-file-wb-warm
  run_set $L rbdcache-file-wb-warm "${LOCAL_W[@]}"
  rbdcache_retire
  target_done
}

# ---------------------------------------------------------------- rbd origin
IMG=
QEMU_RBD_URI=
phase_rbd() {
  local lat=$1 L="lat$1" w i
  i=$([ "$lat" = 0 ] && echo 0 || echo 1)
  local -n wl=RBD_W$i cw=COLD_W$i cr=COLD_R$i
  bench_log "rbd origin, injected latency ${lat} ms max"
  rbd_cluster "$L" "$lat"
  export CEPH_CONF=$CLIENT_CONF
  unset CEPH_ARGS
  IMG=bench-$$-$L
  rbd_cmd create --size "$SIZE" "rbd/$IMG" || die "rbd create rbd/$IMG failed"
  BENCH_IMAGES+=("$CLIENT_CONF $CEPH_ID rbd/$IMG")
  bench_log "filling rbd/$IMG"
  fio --name=fill --ioengine=rbd --clientname="$CEPH_ID" --pool=rbd --rbdname="$IMG" \
    --rw=write --bs=4M --iodepth=16 --size="$SIZE_B" --output=/dev/null >/dev/null 2>"$RUN/fill.err" ||
    die "filling rbd/$IMG failed: $(tail -n 3 "$RUN/fill.err")"
  QEMU_RBD_URI="rbd:rbd/$IMG:id=$CEPH_ID:conf=$CLIENT_CONF"

  target_begin "$L/librbd"
  RC_PID=
  ENG=(--ioengine=rbd --clientname="$CEPH_ID" --pool=rbd --rbdname="$IMG")
  run_set "$L" librbd "${cr[@]}" "${wl[@]}"
  target_done

  if [ $QEMU_RBD = 1 ]; then
    target_begin "$L/qemu-nbd-rbd"
    peer_start qemu-nbd-rbd "$RUN/qr.sock" qemu-nbd -t -k "$RUN/qr.sock" -f raw --cache=none \
      -e 8 "$QEMU_RBD_URI"
    local qpid=$BENCH_PID
    eng_nbd "$RUN/qr.sock"
    run_set "$L" qemu-nbd-rbd "${cr[@]}" "${wl[@]}"
    target_done

    # nbdkit's cache filter over qemu-nbd: cold (its cache is a temporary
    # file, empty at start), then restarted and warmed by one full pass.
    local k
    for k in cold warm; do
      target_begin "$L/nbdkit-cache-rbd-$k"
      peer_start nbdkit-cache-rbd "$RUN/ncr.sock" env TMPDIR="$DIR" nbdkit -f -U "$RUN/ncr.sock" \
        --filter=cache nbd socket="$RUN/qr.sock" cache=writeback cache-on-read=true \
        cache-max-size="$CACHE_B"
      eng_nbd "$RUN/ncr.sock"
      if [ $k = cold ]; then
        run_set "$L" nbdkit-cache-rbd-cold "${cw[@]}"
      else
        warm_up "$L" nbdkit-cache-rbd-warm
        run_set "$L" nbdkit-cache-rbd-warm "${wl[@]}"
      fi
      peer_stop "$BENCH_PID"
      target_done
    done
    peer_stop "$qpid"
  else
    bench_log "qemu-nbd has no rbd block driver (qemu-block-extra); rbdcache passthrough is the no-cache baseline"
  fi

  # rbdcache: cold on a fresh cache, then warm after one full read pass;
  # each mode on a cache of its own, handed over as docs/migration.md says.
  local m tag
  for m in writeback writethrough; do
    tag=$([ $m = writeback ] && echo wb || echo wt)
    target_begin "$L/rbdcache-$tag-cold+warm"
    rbdcache_format
    rbdcache_start "rbdcache-$tag-$L" "rbd:rbd/$IMG" "$m"
    run_set "$L" "rbdcache-$tag-cold" "${cw[@]}"
    warm_up "$L" "rbdcache-$tag-warm"
    run_set "$L" "rbdcache-$tag-warm" "${wl[@]}"
    rbdcache_retire
    target_done
  done
  target_begin "$L/rbdcache-pt"
  rbdcache_format
  rbdcache_start "rbdcache-pt-$L" "rbd:rbd/$IMG" passthrough
  run_set "$L" rbdcache-pt "${cr[@]}" "${wl[@]}"
  rbdcache_retire
  target_done

  if [ "$lat" = 0 ] || [ $QUICK = 0 ]; then
    target_begin "$L/whole-system"
    system_tests "$L"
    target_done
  fi
  bench_image_remove "$CLIENT_CONF $CEPH_ID rbd/$IMG"
  [ -n "$CEPH_ENV" ] || bench_cluster_stop "$RUN/ceph-$L"
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
  fio_quiet --name=dirty "${ENG[@]}" --rw=randwrite --bs=1M --iodepth=8 --size="$FLUSH_B" \
    --randrepeat=0
  s0=$(bench_stats "$RC_PID" "$RC_LOG")
  dirty=$(bench_field "$s0" dirty_bytes)
  ((dirty > 0)) || die "the flush test's writes left nothing dirty"
  rbdcache_stop   # dirty on purpose: the same cache comes back to write it back
  rbdcache_start "sys-flush-$L" "rbd:rbd/$IMG" writeback --dirty-high 0 --dirty-low 0
  restart_dirty=$BENCH_READY_S
  t0=$(bench_now)
  local left=$dirty n=0
  while :; do
    s1=$(bench_stats "$RC_PID" "$RC_LOG")
    left=$(bench_field "$s1" dirty_bytes)
    [ "$left" -eq 0 ] && break
    ((++n > 6000)) && die "writeback did not finish in 10 minutes ($left bytes left)"
    sleep 0.1
  done
  t1=$(bench_now)
  flush_s=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", b - a }')
  local written
  written=$(bench_field "$s1" bytes_written_back)
  rbdcache_stop   # clean now; the same cache comes back
  # Restart with a populated, clean cache.
  rbdcache_start "sys-restart-$L" "rbd:rbd/$IMG" writeback
  restart_clean=$BENCH_READY_S
  rbdcache_retire

  # Hit ratio before and after kill -9.
  rbdcache_format
  rbdcache_start "sys-k9a-$L" "rbd:rbd/$IMG" writeback
  local k st
  for k in 1 2 3 4 5 6; do
    fio_quiet --name=warm "${ENG[@]}" --rw=randread --bs=64k --iodepth=16 --size="$WS_B"
    st=$(bench_stats "$RC_PID" "$RC_LOG")
    (( $(bench_field "$st" mapped_blocks) * $(bench_field "$st" block_size) * 100 >= WS_B * 98 )) && break
  done
  local measure=(--name=measure --rw=randread --bs=4k --iodepth=32 --size="$WS_B" --norandommap
                 --randrepeat=0 --number_ios=$((COLD_IOS * 8)))
  s0=$(bench_stats "$RC_PID" "$RC_LOG")
  fio_quiet "${ENG[@]}" "${measure[@]}"
  s1=$(bench_stats "$RC_PID" "$RC_LOG")
  local before after
  before=$(hit_ratio "$s0" "$s1")
  sleep 1.5   # past the default 1 s metadata commit interval
  rbdcache_stop KILL
  # The next attach waits for the dead holder's exclusive lock until the
  # OSD gives up its watch (about 30 s): that wait is part of the restart
  # figure. --quick fences the dead client instead, as an operator who knows
  # it is dead would (rbd lock rm blocklists it), to keep the smoke run short.
  [ $QUICK = 0 ] || fence_dead_locker "rbd/$IMG"
  rbdcache_start "sys-k9b-$L" "rbd:rbd/$IMG" writeback
  restart_kill9=$BENCH_READY_S
  s0=$(bench_stats "$RC_PID" "$RC_LOG")
  fio_quiet "${ENG[@]}" "${measure[@]}"
  s1=$(bench_stats "$RC_PID" "$RC_LOG")
  after=$(hit_ratio "$s0" "$s1")
  rbdcache_retire
  jq -n --argjson dirty "$dirty" --argjson flush_s "$flush_s" --argjson written "$written" \
    --argjson rd "$restart_dirty" --argjson rc "$restart_clean" --argjson rk "$restart_kill9" \
    --argjson before "$before" --argjson after "$after" \
    '{dirty_bytes: $dirty, flush_s: $flush_s, bytes_written_back: $written,
      restart_dirty_s: $rd, restart_clean_s: $rc, restart_kill9_s: $rk,
      hit_before: $before, hit_after: $after}' >"$RES/system-$L.json"
  bench_log "  flush ${dirty} B in ${flush_s}s; restart ${restart_clean}s; hit ratio $before -> $after"
}

# ---------------------------------------------------------------- run
has_phase local && phase_local
has_phase rbd && phase_rbd 0
has_phase lat && phase_rbd "$LAT_MS"
LOAD_END=$(cut -d' ' -f1-3 /proc/loadavg)
ELAPSED=$((SECONDS - T_START))
bench_log "load average $LOAD_START at the start, $LOAD_END at the end"

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
if [ $REPORT = 1 ]; then
  TARGET="report"
  python3 bench/peers-report.py "$RES" "$MD" "$RUN" || die "writing the report failed"
  (cd "$RUN" && gnuplot chart.gp) || die "gnuplot failed"
  cp "$RUN/chart.png" "$PNG"
  TARGET=
  bench_log "wrote $MD and $PNG"
fi
echo "bench-peers.sh: all ${#TARGETS_DONE[@]} targets completed in ${ELAPSED}s: ${TARGETS_DONE[*]}" >&2
