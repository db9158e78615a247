#!/usr/bin/env bash
# fio's nbd engine with 4 jobs (4 connections) writes random blocks of mixed
# sizes to disjoint regions of an RBD image, through a librbd queue depth of
# 4 shared by all connections (so requests wait in the FIFO), each block
# verified with crc32c: in the same job, then from fresh connections to a
# restarted server.  The gaps between the regions stay zero in the image.
source "$(dirname "$0")/../integration/lib.sh" "$@"
source "$(dirname "$0")/lib-ceph.sh"
require fio python3
fio --enghelp=nbd >/dev/null 2>&1 || skip "fio has no nbd engine"

create_image 256M

# Each job owns 48 MiB at 64 MiB intervals.
write_fio_verify_job "$T/verify.fio" 48m 64m

# run_fio LABEL ARGS...: fio must exit 0 and report no job errors.
run_fio() {
  local label=$1
  shift
  run_fio_verify "$T/verify.fio" "$label" $((48 << 20)) 120 "$@"
}

start_rbd_server "$IMAGE_SPEC" --rbd-queue-depth 4
run_fio write-verify
stop_server
expect_clean_exit "after fio"

start_rbd_server "$IMAGE_SPEC" --read-only
run_fio verify-after-restart --verify_only
stop_server
expect_clean_exit "after verify"

rbd_export "$IMAGE_SPEC" "$T/export.img"
python3 - "$T/export.img" <<'PY' || fail "fio's data is not where it was written in the image"
import sys
M = 1 << 20
with open(sys.argv[1], "rb") as f:
    for job in range(4):
        f.seek(job * 64 * M)
        if f.read(48 * M).count(0) > 40 * M:
            sys.exit("region %d is mostly zero" % job)
        if f.read(16 * M).count(0) != 16 * M:
            sys.exit("gap after region %d holds data" % job)
PY

log "PASS"
