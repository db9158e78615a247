#!/usr/bin/env bash
# fio's nbd engine with 4 jobs (4 connections) writing random blocks of
# mixed sizes to disjoint regions, each block verified with crc32c: in the
# same job after writing, from new connections, and after a server restart.
source "$(dirname "$0")/lib.sh" "$@"
require fio python3
fio --enghelp=nbd >/dev/null 2>&1 || skip "fio has no nbd engine"

SIZE=$((256 * 1048576))
origin="$T/origin.img"
make_origin "$origin" "$SIZE" sparse

# Each job owns 48 MiB at 64 MiB intervals.  The same job file is used
# to write and then, with --verify_only, to check from fresh connections.
write_fio_verify_job "$T/verify.fio" 48m 64m

# run_fio LABEL ARGS...: fio must exit 0 and report no job errors.
run_fio() {
  local label=$1
  shift
  run_fio_verify "$T/verify.fio" "$label" $((48 << 20)) 0 "$@"
}

start_server "$origin"
run_fio write-verify
# Fresh connections see every block written by every other connection.
run_fio verify-only --verify_only
stop_server
expect_clean_exit "after fio"

# After a restart, still all there.
start_server "$origin"
run_fio verify-after-restart --verify_only
stop_server
expect_clean_exit "after restart"

# The gaps between the regions were never written: still zero.
python3 - "$origin" <<'EOF' || fail "fio wrote outside its regions"
import sys
M = 1 << 20
with open(sys.argv[1], "rb") as f:
    for job in range(4):
        f.seek(job * 64 * M + 48 * M)
        if f.read(16 * M).count(0) != 16 * M:
            sys.exit("gap after region %d holds data" % job)
EOF

log "PASS"
