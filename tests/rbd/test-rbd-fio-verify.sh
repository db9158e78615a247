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
cat >"$T/verify.fio" <<'FIO'
[global]
ioengine=nbd
uri=${NBD_URI}
size=48m
offset_increment=64m
numjobs=4
iodepth=8
bssplit=4k/50:16k/20:64k/20:1m/10
rw=randwrite
randrepeat=1
random_generator=tausworthe64
verify=crc32c
verify_fatal=1
verify_dump=0
verify_state_save=0
do_verify=1
group_reporting=0

[mixed]
FIO

run_fio() {
  local label=$1
  shift
  (cd "$T" && NBD_URI=$URI timeout 120 fio --output-format=json --output="$T/$label.json" "$@" "$T/verify.fio" \
    >"$T/$label.out" 2>&1)
  local rc=$?
  if [ $rc -ne 0 ] || grep -qiE 'verify|bad|error' "$T/$label.out"; then
    cat "$T/$label.out" >&2
    fail "fio $label: exit $rc"
  fi
  python3 - "$T/$label.json" <<'PY' || fail "fio $label reported errors"
import json, sys
text = open(sys.argv[1]).read()
doc = json.loads(text[text.index("{"):])
jobs = doc["jobs"]
if len(jobs) != 4:
    sys.exit("expected 4 jobs, got %d" % len(jobs))
bad = [j["jobname"] for j in jobs if j.get("error")]
if bad:
    sys.exit("jobs with errors: %r" % bad)
for j in jobs:
    moved = j["write"]["io_bytes"] + j["read"]["io_bytes"]
    if moved < 48 << 20:
        sys.exit("job %s moved only %d bytes" % (j["jobname"], moved))
PY
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
