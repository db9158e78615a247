#!/usr/bin/env bash
# fio's nbd engine, 4 jobs (4 connections) writing random blocks of mixed
# sizes to disjoint regions through a cache, each block verified with
# crc32c, in every mode (writeback, writethrough, passthrough):
#   - in the same job after writing, then from fresh connections;
#   - writeback: the server is restarted between the write and the
#     verify-only phases, with the data still dirty in the cache (it must
#     persist across a clean restart); then a forced writeback;
#   - finally the origin file alone (served without the cache) passes the
#     same verification, and the gaps between the regions are still zero.
# The writeback cache (48 MiB) is smaller than the 64 MiB written, so
# writeback (from half the cache dirty) and eviction run while fio writes.
source "$(dirname "$0")/lib-cache.sh" "$@"
require fio
fio --enghelp=nbd >/dev/null 2>&1 || skip "fio has no nbd engine"

SIZE=$((128 * 1048576))

# Each job owns 16 MiB at 32 MiB intervals.
write_fio_verify_job "$T/verify.fio" 16m 32m

# run_fio LABEL ARGS...: fio must exit 0 and report no job errors.
run_fio() {
  local label=$1
  shift
  run_fio_verify "$T/verify.fio" "$label" $((16 << 20)) 120 "$@"
}

check_gaps() {
  python3 - "$1" <<'EOF' || fail "$2: fio's data is not where it was written"
import sys
M = 1 << 20
with open(sys.argv[1], "rb") as f:
    for job in range(4):
        f.seek(job * 32 * M)
        if f.read(16 * M).count(0) > 12 * M:
            sys.exit("region %d is mostly zero" % job)
        if f.read(16 * M).count(0) != 16 * M:
            sys.exit("gap after region %d holds data" % job)
EOF
}

for mode in writeback writethrough passthrough; do
  log "mode $mode"
  origin="$T/origin-$mode.img"
  make_origin "$origin" "$SIZE" sparse
  if [ "$mode" = writeback ]; then
    make_cache "$mode" 48M 16M
  else
    make_cache "$mode" 256M 16M
  fi

  if [ "$mode" = writeback ]; then
    # Writeback runs whenever half the cache is dirty and stops at 40%, so
    # data is still dirty when the server stops, whatever the timing.
    start_cache_server "$origin" "$mode" --dirty-high 50 --dirty-low 40 --max-dirty-age 3600
  else
    start_cache_server "$origin" "$mode"
  fi
  run_fio "$mode-write-verify"
  # Fresh connections see every block written by every other connection.
  run_fio "$mode-verify-only" --verify_only
  get_stats
  expect_no_writeback_errors
  case $mode in
    writeback)
      [ "$(stat_field bytes_written_back)" -gt 0 ] ||
        fail "writeback: the cache filled up but nothing was written back: $STATS"
      [ "$(stat_field dirty_bytes)" -gt 0 ] || fail "writeback: no dirty data left: $STATS"
      ;;
    writethrough)
      [ "$(stat_field dirty_bytes)" = 0 ] || fail "writethrough: dirty data: $STATS"
      [ "$(stat_field mapped_blocks)" -gt 0 ] || fail "writethrough: nothing cached: $STATS"
      ;;
    passthrough)
      [ "$(stat_field mapped_blocks)" = 0 ] || fail "passthrough: cached blocks: $STATS"
      ;;
  esac
  stop_server
  expect_clean_exit "$mode: after fio"

  if [ "$mode" = writeback ]; then
    # The data stays in the cache across a clean restart: a server that
    # does not write back (high watermarks, long age) verifies it.
    start_cache_server "$origin" writeback --dirty-high 100 --dirty-low 100 --max-dirty-age 3600
    get_stats
    [ "$(stat_field dirty_bytes)" -gt 0 ] || fail "writeback: no dirty data after the restart: $STATS"
    dirty_before=$(stat_field dirty_bytes)
    run_fio "$mode-verify-after-restart" --verify_only
    get_stats
    [ "$(stat_field bytes_written_back)" = 0 ] || fail "writeback: wrote back although told not to: $STATS"
    [ "$(stat_field dirty_bytes)" = "$dirty_before" ] ||
      fail "writeback: dirty data changed during a read-only pass: $dirty_before -> $STATS"
    stop_server
    expect_clean_exit "writeback: after the verify-only restart"

    start_cache_server "$origin" writeback --dirty-high 0 --dirty-low 0 --max-dirty-age 0.1
    wait_clean
    expect_no_writeback_errors
    run_fio "$mode-verify-after-writeback" --verify_only
    stop_server
    expect_clean_exit "writeback: after the forced writeback"
  fi

  # The origin file alone holds everything.
  start_server "$origin"
  run_fio "$mode-verify-origin" --verify_only
  stop_server
  expect_clean_exit "$mode: origin without the cache"
  check_gaps "$origin" "$mode: origin file"
  rm -f "$origin" "$CACHE_DEV" "$META_DEV"
done

log "PASS"
