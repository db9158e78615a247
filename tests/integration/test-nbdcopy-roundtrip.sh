#!/usr/bin/env bash
# nbdcopy over 4 connections copies an image with data and holes into the
# export (replacing different data), copies it back out identical, and after
# the server stops the origin file holds exactly the copied image.
source "$(dirname "$0")/lib.sh" "$@"
require nbdcopy python3

SIZE=$((96 * 1048576))
origin="$T/origin.img"
src="$T/source.img"
make_origin "$origin" "$SIZE" random

# The source: random data with holes, so that nbdcopy sends zero requests
# as well as writes, over an origin whose old data must disappear.  Chunks
# have odd sizes and offsets.
truncate -s "$SIZE" "$src"
python3 - "$src" <<'EOF'
import os, random, sys
rnd = random.Random(os.getpid())
with open(sys.argv[1], "r+b") as f:
    size = os.fstat(f.fileno()).st_size
    for _ in range(40):
        off = rnd.randrange(0, size - (3 << 20))
        f.seek(off)
        f.write(os.urandom(rnd.choice([1, 511, 4096, 12345, 65536, 1 << 20, (2 << 20) + 7])))
    f.seek(0)
    f.write(os.urandom(1 << 20))
    f.seek(size - 4097)
    f.write(os.urandom(4097))
EOF

start_server "$origin"

nbdcopy --connections=4 --flush "$src" "$URI" || fail "nbdcopy into the export failed"
nbdcopy --connections=4 "$URI" "$T/back.img" || fail "nbdcopy out of the export failed"
cmp "$src" "$T/back.img" || fail "data copied back differs from the source"

# A second pass over the same data, with small requests and without holes
# detection on the way out, must also read back identical.
nbdcopy --connections=4 --requests=16 --request-size=65536 --flush "$URI" "$T/back2.img" ||
  fail "second nbdcopy out of the export failed"
cmp "$src" "$T/back2.img" || fail "second copy back differs from the source"

stop_server
expect_clean_exit "after nbdcopy"
cmp "$src" "$origin" || fail "origin file differs from the source after the server stopped"

# The data survives a restart.
start_server "$origin" --read-only
nbdcopy --connections=2 "$URI" "$T/back3.img" || fail "nbdcopy after restart failed"
cmp "$src" "$T/back3.img" || fail "data read after a restart differs from the source"
stop_server
expect_clean_exit "read-only restart"

log "PASS"
