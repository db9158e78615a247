#!/usr/bin/env bash
# Compare two rbdcache binaries (say the old and the new build) on the file
# origin, in one quiet period: scripts/bench-peers.sh --phases local runs
# for each binary in turn, interleaved over several rounds (old, new, then
# new, old, ...), and a table of the new binary's figures over the old
# one's is printed (and written to --out FILE).
#
#   scripts/bench-compare.sh OLD_BIN NEW_BIN [--rounds N] [--out FILE]
#                            [--workloads LIST] [BENCH-PEERS OPTIONS...]
#
# Each round runs every file-origin target (fio on the device, nbdkit,
# qemu-nbd, nbdkit's cache filter and rbdcache), so the device limit of the
# two runs of a round shows how much the machine itself drifted between
# them (the "noise" column: 1.00x is a steady machine).
#
# Options:
#   --rounds N        rounds of (old, new) pairs (default 3; the table shows
#                     the median over the rounds)
#   --out FILE        also write the table to FILE
#   --workloads LIST  default rr1,rr32,rw1,rw32
#   --runtime S, --ramp S, --dir DIR, --size, --ws, --cache-size ...
#                     passed to bench-peers.sh (default --runtime 5 --ramp 1)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; }
case ${1:-} in -h|--help) usage; exit 0 ;; esac
[ $# -ge 2 ] || { usage >&2; exit 2; }
OLD=$(realpath "$1")
NEW=$(realpath "$2")
shift 2
for b in "$OLD" "$NEW"; do
  [ -x "$b" ] || { echo "bench-compare.sh: $b is not an executable" >&2; exit 1; }
done
ROUNDS=3
OUT=
WORKLOADS=rr1,rr32,rw1,rw32
pass=(--runtime 5 --ramp 1)
while [ $# -gt 0 ]; do
  case $1 in
    --rounds) ROUNDS=$2; shift ;;
    --out) OUT=$2; shift ;;
    --workloads) WORKLOADS=$2; shift ;;
    --phases|--rbdcache|--results|--md|--png|--ceph-env)
      echo "bench-compare.sh: $1 is chosen by bench-compare.sh itself" >&2; exit 2 ;;
    --quick|--profile|--no-install|--no-build|--keep) pass+=("$1") ;;
    --*) [ $# -ge 2 ] || { echo "bench-compare.sh: $1 needs a value" >&2; exit 2; }
         pass+=("$1" "$2"); shift ;;
    *) echo "bench-compare.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
  shift
done

WORK=$(mktemp -d "${TMPDIR:-/tmp}/bench-compare.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
for ((r = 1; r <= ROUNDS; r++)); do
  order=(old new)
  ((r % 2 == 0)) && order=(new old)
  for which in "${order[@]}"; do
    bin=$OLD
    [ "$which" = new ] && bin=$NEW
    echo "bench-compare.sh: round $r/$ROUNDS, $which ($bin)" >&2
    scripts/bench-peers.sh --phases local --no-report --rbdcache "$bin" \
      --workloads "$WORKLOADS" --results "$WORK/$which-$r" "${pass[@]}" ||
      { echo "bench-compare.sh: FAILED: the $which binary's run in round $r (see above)" >&2; exit 1; }
  done
done
LOAD_END=$(cut -d' ' -f1-3 /proc/loadavg)

python3 bench/compare-report.py "$WORK" "$ROUNDS" "$OLD" "$NEW" "$LOAD_START" "$LOAD_END" \
  >"$WORK/table.md"
cat "$WORK/table.md"
[ -z "$OUT" ] || cp "$WORK/table.md" "$OUT"
