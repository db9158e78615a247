#!/usr/bin/env bash
# Benchmark: fio (nbd engine) 4K random read and write at queue depth 1
# and 32 against rbdcache, qemu-nbd (cache=none, io_uring) and, as a
# reference, nbdkit's file plugin, all serving the same image file in one
# run.  Prints a markdown table (IOPS, mean and p99 latency, ratio to
# qemu-nbd) to stdout or to --out FILE.
#
# Goal: rbdcache at least 1.0x qemu-nbd for 4K randread and randwrite at
# QD32.  Numbers are only comparable within one run on one machine.
#
# Usage: bench/fio-vs-qemu-nbd.sh [--rbdcache PATH] [--dir DIR] [--size SIZE]
#          [--runtime SECONDS] [--ramp SECONDS] [--threads N] [--no-nbdkit]
#          [--out FILE]
#   --dir must be on a real disk (not tmpfs); the image is kept there and
#   reused by later runs.
set -euo pipefail

RBDCACHE=${RBDCACHE:-build/src/cli/rbdcache}
DIR=./var/bench
SIZE=1G
RUNTIME=12
RAMP=3
THREADS=
NBDKIT=1
OUT=

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2; exit 2; }
while [ $# -gt 0 ]; do
  case $1 in
    --rbdcache) RBDCACHE=$2; shift ;;
    --dir) DIR=$2; shift ;;
    --size) SIZE=$2; shift ;;
    --runtime) RUNTIME=$2; shift ;;
    --ramp) RAMP=$2; shift ;;
    --threads) THREADS=$2; shift ;;
    --no-nbdkit) NBDKIT=0 ;;
    --out) OUT=$2; shift ;;
    -h|--help) usage ;;
    *) echo "unknown argument: $1" >&2; usage ;;
  esac
  shift
done

for tool in fio qemu-nbd python3; do
  command -v "$tool" >/dev/null || { echo "$tool is required" >&2; exit 1; }
done
fio --enghelp=nbd >/dev/null 2>&1 || { echo "fio has no nbd engine" >&2; exit 1; }
[ -x "$RBDCACHE" ] || { echo "rbdcache binary not found: $RBDCACHE (use --rbdcache)" >&2; exit 1; }
if [ $NBDKIT = 1 ] && ! command -v nbdkit >/dev/null; then NBDKIT=0; fi

mkdir -p "$DIR"
fstype=$(stat -f -c %T "$DIR")
if [ "$fstype" = tmpfs ] || [ "$fstype" = ramfs ]; then
  echo "$DIR is on $fstype; use --dir on a real disk" >&2
  exit 1
fi
IMG="$DIR/bench.img"
bytes=$(numfmt --from=iec "$SIZE")
if [ ! -f "$IMG" ] || [ "$(stat -c %s "$IMG")" -ne "$bytes" ]; then
  echo "creating $IMG ($SIZE, fully allocated)" >&2
  rm -f "$IMG"
  dd if=/dev/urandom of="$IMG" bs=1M count=$((bytes / 1048576)) oflag=direct status=none
fi

RUN=$(mktemp -d "${TMPDIR:-/tmp}/rbdcache-bench.XXXXXX")
SERVER_PID=
cleanup() {
  if [ -n "$SERVER_PID" ] && kill -0 "$SERVER_PID" 2>/dev/null; then
    kill "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
  fi
  rm -rf "$RUN"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# start NAME: start server NAME on $RUN/NAME.sock and wait for the socket.
start() {
  local name=$1 sock="$RUN/$1.sock"
  case $name in
    rbdcache)
      local extra=()
      [ -n "$THREADS" ] && extra=(--threads "$THREADS")
      "$RBDCACHE" serve --origin "file:$IMG" --socket "$sock" "${extra[@]}" \
        </dev/null >"$RUN/$name.log" 2>&1 & ;;
    qemu-nbd)
      qemu-nbd -t -k "$sock" -f raw --cache=none --aio=io_uring -e 8 "$IMG" \
        </dev/null >"$RUN/$name.log" 2>&1 & ;;
    nbdkit)
      nbdkit -f -U "$sock" file "$IMG" </dev/null >"$RUN/$name.log" 2>&1 & ;;
  esac
  SERVER_PID=$!
  local i
  for ((i = 0; i < 600; i++)); do
    [ -S "$sock" ] && return 0
    kill -0 "$SERVER_PID" 2>/dev/null || { cat "$RUN/$name.log" >&2; exit 1; }
    sleep 0.1
  done
  echo "$name did not create $sock" >&2
  exit 1
}

stop() {
  kill "$SERVER_PID" 2>/dev/null || true
  wait "$SERVER_PID" 2>/dev/null || true
  SERVER_PID=
}

# run NAME RW QD: one fio run; JSON to $RUN/NAME-RW-QD.json.
run() {
  local name=$1 rw=$2 qd=$3
  echo "  $name $rw QD$qd" >&2
  fio --name="$rw" --ioengine=nbd --uri="nbd+unix:///?socket=$RUN/$name.sock" \
    --rw="$rw" --bs=4k --iodepth="$qd" --numjobs=1 --size="$bytes" \
    --time_based --runtime="$RUNTIME" --ramp_time="$RAMP" \
    --norandommap --randrepeat=0 --output-format=json \
    --output="$RUN/$name-$rw-$qd.json" >/dev/null
}

servers=(rbdcache qemu-nbd)
[ $NBDKIT = 1 ] && servers+=(nbdkit)
for s in "${servers[@]}"; do
  echo "benchmarking $s" >&2
  start "$s"
  for rw in randread randwrite; do
    for qd in 1 32; do
      run "$s" "$rw" "$qd"
    done
  done
  stop
done

report=$(python3 - "$RUN" "$SIZE" "$RUNTIME" "$RAMP" "$(nproc)" "${servers[@]}" <<'PY'
import json, sys
run, size, runtime, ramp, ncpu = sys.argv[1:6]
servers = sys.argv[6:]
def load(server, rw, qd):
    text = open("%s/%s-%s-%s.json" % (run, server, rw, qd)).read()
    job = json.loads(text[text.index("{"):])["jobs"][0]
    d = job["read" if rw == "randread" else "write"]
    return {"iops": d["iops"], "mean": d["lat_ns"]["mean"] / 1000.0,
            "p99": d["clat_ns"]["percentile"]["99.000000"] / 1000.0}
print("fio nbd engine, 4K, 1 job, %s image, %s s (+%s s ramp) per run, %s CPUs"
      % (size, runtime, ramp, ncpu))
print("qemu-nbd: --cache=none --aio=io_uring (O_DIRECT); nbdkit file plugin: page cache.")
print()
print("| workload | server | IOPS | mean lat (us) | p99 lat (us) | IOPS vs qemu-nbd |")
print("|---|---|---:|---:|---:|---:|")
verdicts = []
for rw in ("randread", "randwrite"):
    for qd in (1, 32):
        base = load("qemu-nbd", rw, qd)["iops"]
        for s in servers:
            r = load(s, rw, qd)
            ratio = r["iops"] / base if base else float("nan")
            print("| %s QD%d | %s | %.0f | %.1f | %.1f | %.2fx |"
                  % (rw, qd, s, r["iops"], r["mean"], r["p99"], ratio))
            if s == "rbdcache" and qd == 32:
                verdicts.append("%s QD32: %.2fx qemu-nbd (%s)"
                                % (rw, ratio, "meets" if ratio >= 1.0 else "BELOW"))
print()
print("Goal, rbdcache >= 1.0x qemu-nbd at QD32: " + "; ".join(verdicts))
PY
)
if [ -n "$OUT" ]; then
  printf '%s\n' "$report" >"$OUT"
  echo "wrote $OUT" >&2
else
  printf '%s\n' "$report"
fi
