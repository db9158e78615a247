#!/bin/sh
# Runs a libFuzzer target for a fixed time on a seed corpus without touching
# the seed directory: new corpus entries go to a throwaway directory, which
# libFuzzer treats as the first (writable) corpus.
#
# usage: run-fuzzer.sh FUZZER SEED_DIR SECONDS [extra libFuzzer flags...]
set -eu

if [ $# -lt 3 ]; then
  echo "usage: $0 FUZZER SEED_DIR SECONDS [flags...]" >&2
  exit 2
fi
fuzzer=$1
seeds=$2
seconds=$3
shift 3

work=$(mktemp -d "${TMPDIR:-/tmp}/rbdcache-fuzz.XXXXXX")
trap 'rm -rf "$work"' EXIT INT TERM
mkdir "$work/corpus" "$work/artifacts"

status=0
"$fuzzer" -max_total_time="$seconds" -rss_limit_mb=2048 -timeout=10 -print_final_stats=1 \
  -artifact_prefix="$work/artifacts/" "$@" "$work/corpus" "$seeds" || status=$?

if [ "$status" -ne 0 ]; then
  # Keep the reproducer where it survives the cleanup: the current directory.
  for f in "$work"/artifacts/*; do
    [ -e "$f" ] || continue
    cp "$f" .
    echo "reproducer saved as $(pwd)/$(basename "$f")" >&2
  done
fi
exit "$status"
