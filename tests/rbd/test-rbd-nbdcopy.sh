#!/usr/bin/env bash
# nbdcopy over 4 connections (with --flush) copies random data with holes
# into an RBD image served by rbdcache, which finds its Ceph settings in the
# environment (CEPH_CONF, CEPH_ARGS) as the rbd command does.  Copied back
# out it is identical, and after the server stops `rbd export` of the image
# is byte for byte the source.
source "$(dirname "$0")/../integration/lib.sh" "$@"
source "$(dirname "$0")/lib-ceph.sh"
require nbdcopy python3

SIZE=$((64 * 1048576))
create_image 64M
src="$T/source.img"

# Random data with holes (so that nbdcopy also sends zero requests), odd
# sizes and offsets, the first and last bytes of the image included.
truncate -s "$SIZE" "$src"
python3 - "$src" <<'PY'
import os, random, sys
rnd = random.Random(os.getpid())
with open(sys.argv[1], "r+b") as f:
    size = os.fstat(f.fileno()).st_size
    for _ in range(30):
        off = rnd.randrange(0, size - (3 << 20))
        f.seek(off)
        f.write(os.urandom(rnd.choice([1, 511, 4096, 12345, 65536, 1 << 20, (2 << 20) + 7])))
    f.seek(0)
    f.write(os.urandom(1 << 20))
    f.seek(size - 4097)
    f.write(os.urandom(4097))
PY

# First fill the image with other data, which the copy must replace
# (including where the source has holes).
head -c "$SIZE" /dev/urandom >"$T/old.img"
start_rbd_server "$IMAGE_SPEC"
nbdcopy --connections=4 --flush "$T/old.img" "$URI" || fail "nbdcopy of the old data into the export failed"
nbdcopy --connections=4 --flush "$src" "$URI" || fail "nbdcopy into the export failed"
nbdcopy --connections=4 "$URI" "$T/back.img" || fail "nbdcopy out of the export failed"
cmp "$src" "$T/back.img" || fail "data copied back differs from the source"
stop_server
expect_clean_exit "after nbdcopy"

rbd_export "$IMAGE_SPEC" "$T/export.img"
cmp "$src" "$T/export.img" || fail "rbd export of the image differs from the source"

log "PASS"
