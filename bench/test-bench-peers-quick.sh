#!/usr/bin/env bash
# Smoke run of the benchmark: `scripts/bench-peers.sh --quick` against the
# test cluster must run every target to the end, hand each RBD image over
# as the ownership rules demand, and write its report and chart.  Nothing
# about the numbers is asserted: performance is not tested here.
#
#   test-bench-peers-quick.sh RBDCACHE WORKDIR
#
# WORKDIR holds the cache files and the file origin; it must be on a disk,
# not tmpfs (meson passes a directory in the build tree).  Needs the
# cluster of RBDCACHE_TEST_CEPH_ENV (tests/rbd/lib-ceph.sh), else SKIP.
source "$(dirname "$0")/../tests/integration/lib.sh" "$@"
source "$(dirname "$0")/../tests/rbd/lib-ceph.sh"

ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORKDIR=${2:?usage: test-bench-peers-quick.sh RBDCACHE WORKDIR}
require fio nbdkit qemu-nbd nbdinfo jq python3 gnuplot numfmt
for e in nbd rbd io_uring; do
  fio --enghelp="$e" >/dev/null 2>&1 || skip "fio has no $e engine"
done
ls /usr/lib/*/qemu/block-rbd.so >/dev/null 2>&1 || skip "qemu has no rbd block driver (qemu-block-extra)"

RESULTS=$T/results
images_before=$(rbd ls rbd | grep -c '^bench-' || true)
t0=$SECONDS
"$ROOT/scripts/bench-peers.sh" --quick --no-install --rbdcache "$RBDCACHE" \
  --ceph-env "$RBDCACHE_TEST_CEPH_ENV" --latency 2 --dir "$WORKDIR" --results "$RESULTS" \
  --md "$T/report.md" --png "$T/report.png" >"$T/bench.log" 2>&1
rc=$?
log "bench-peers.sh --quick took $((SECONDS - t0)) s"
if [ $rc -ne 0 ]; then
  tail -n 40 "$T/bench.log" >&2
  fail "bench-peers.sh --quick exited with status $rc"
fi

# Every target of the quick run, in the order it runs them.
expected=(local/fio-direct local/nbdkit-file local/qemu-nbd-file local/nbdkit-cache-file-warm
          local/rbdcache-file-wb-warm)
for L in lat0 lat2; do
  expected+=("$L/librbd" "$L/qemu-nbd-rbd" "$L/nbdkit-cache-rbd-cold" "$L/nbdkit-cache-rbd-warm"
             "$L/rbdcache-wb-cold+warm" "$L/rbdcache-wt-cold+warm" "$L/rbdcache-pt")
  [ $L = lat0 ] && expected+=(lat0/whole-system)
done
[ -f "$RESULTS/targets.txt" ] || fail "no $RESULTS/targets.txt"
got=$(cat "$RESULTS/targets.txt")
[ "$got" = "$(printf '%s\n' "${expected[@]}")" ] ||
  fail "targets completed: $(echo $got); expected: ${expected[*]}"
grep -q "bench-peers.sh: all ${#expected[@]} targets completed" "$T/bench.log" ||
  fail "the log does not say that all ${#expected[@]} targets completed: $(tail -n 3 "$T/bench.log")"

# Each measured target has a fio result with at least one I/O, in the report.
n=0
for d in "$RESULTS"/*/*/; do
  target=$(basename "$d")
  for f in "$d"*.json; do
    [ -e "$f" ] || fail "no fio result in $d"
    jq -e '.jobs[0] | (.read.total_ios + .write.total_ios) > 0' "$f" >/dev/null ||
      fail "fio result $f shows no I/O"
    n=$((n + 1))
  done
  grep -q "^| \*\{0,2\}$target\*\{0,2\} |" "$T/report.md" || fail "target $target is missing from the report"
done
((n >= 30)) || fail "only $n fio results in $RESULTS"
for t in fio-direct nbdkit-file qemu-nbd-file nbdkit-cache-file-warm rbdcache-file-wb-warm librbd \
         qemu-nbd-rbd nbdkit-cache-rbd-cold nbdkit-cache-rbd-warm rbdcache-wb-cold rbdcache-wb-warm \
         rbdcache-wt-cold rbdcache-wt-warm rbdcache-pt; do
  [ -d "$RESULTS/lat0/$t" ] || [ -d "$RESULTS/local/$t" ] || fail "no results for target $t"
done
jq -e '.dirty_bytes > 0 and .flush_s > 0 and .bytes_written_back > 0' "$RESULTS/system-lat0.json" >/dev/null ||
  fail "the whole-system figures are incomplete: $(cat "$RESULTS/system-lat0.json")"
grep -q '^## Goals' "$T/report.md" || fail "the report has no goals table"
grep -q '^## Whole-system figures' "$T/report.md" || fail "the report has no whole-system figures"
[ "$(head -c 4 "$T/report.png" | od -An -c | tr -d ' ')" = '211PNG' ] || fail "the chart is not a PNG"

# The images it created are gone.
images_after=$(rbd ls rbd | grep -c '^bench-' || true)
[ "$images_after" = "$images_before" ] || fail "bench-peers.sh left RBD images behind: $(rbd ls rbd)"
grep -E '^\[..:..:..\]  target |load average' "$T/bench.log" >&2
log "PASS: ${#expected[@]} targets, $n fio results, report and chart written"
