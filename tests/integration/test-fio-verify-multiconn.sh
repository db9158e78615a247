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
cat >"$T/verify.fio" <<'EOF'
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
EOF

# run_fio LABEL ARGS...: fio must exit 0 and report no job errors.
run_fio() {
  local label=$1
  shift
  (cd "$T" && NBD_URI=$URI fio --output-format=json --output="$T/$label.json" "$@" "$T/verify.fio" \
    >"$T/$label.out" 2>&1)
  local rc=$?
  if [ $rc -ne 0 ] || grep -qiE 'verify|bad|error' "$T/$label.out"; then
    cat "$T/$label.out" >&2
    fail "fio $label: exit $rc"
  fi
  python3 - "$T/$label.json" <<'EOF' || fail "fio $label reported errors"
import json, sys
text = open(sys.argv[1]).read()
doc = json.loads(text[text.index("{"):])
jobs = doc["jobs"]
bad = [j["jobname"] for j in jobs if j.get("error")]
if len(jobs) != 4:
    sys.exit("expected 4 jobs, got %d" % len(jobs))
if bad:
    sys.exit("jobs with errors: %r" % bad)
# Every job really moved data.
for j in jobs:
    moved = j["write"]["io_bytes"] + j["read"]["io_bytes"]
    if moved < 48 << 20:
        sys.exit("job %s moved only %d bytes" % (j["jobname"], moved))
EOF
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
