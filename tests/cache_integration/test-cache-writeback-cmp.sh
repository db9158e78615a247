#!/usr/bin/env bash
# nbdcopy (4 connections, with a final flush) writes a random image through a
# writeback cache over a zeroed file origin, while writeback runs (watermarks
# at 0).  The export reads back the image; once writeback has finished
# (dirty_bytes 0) and the server has stopped, the origin file is
# byte-identical to the image, and `rbdcache check` accepts the metadata.
# A second pass overwrites scattered blocks with qemu-io so that writeback
# also writes back partial, non-contiguous dirty blocks.
source "$(dirname "$0")/lib-cache.sh" "$@"
require nbdcopy qemu-io

SIZE=$((96 * 1048576))
origin="$T/origin.img"
make_origin "$origin" "$SIZE" sparse
head -c "$SIZE" /dev/urandom >"$T/source.img"
# 64 MiB of cache for 96 MiB of data: eviction runs too.
make_cache c 64M 16M

start_cache_server "$origin" writeback --dirty-high 0 --dirty-low 0 --max-dirty-age 0.5
nbdcopy --connections=4 --flush "$T/source.img" "$URI" 2>"$T/nbdcopy.err" ||
  { cat "$T/nbdcopy.err" >&2; fail "nbdcopy into the export failed"; }
nbdcopy --connections=4 "$URI" "$T/export.img" 2>"$T/nbdcopy.err" ||
  { cat "$T/nbdcopy.err" >&2; fail "nbdcopy out of the export failed"; }
cmp "$T/source.img" "$T/export.img" || fail "the export does not read back the image"

# Scattered small overwrites: 4 KiB pieces in 64 KiB blocks, unaligned too.
ops=()
for i in $(seq 0 39); do
  off=$(( (i * 2654435761 % (SIZE / 65536)) * 65536 + (i % 16) * 4096 + (i % 3) * 7 ))
  len=$(( 4096 + (i % 5) * 1000 ))
  ops+=(-c "write -P $((0x40 + i)) $off $len")
  python3 - "$T/source.img" "$off" "$len" "$((0x40 + i))" <<'EOF'
import sys
path, off, ln, b = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
with open(path, "r+b") as f:
    f.seek(off)
    f.write(bytes([b]) * ln)
EOF
done
qemu_io "$URI" "${ops[@]}" -c flush

wait_clean
expect_no_writeback_errors
[ "$(stat_field bytes_written_back)" -gt 0 ] || fail "nothing was written back: $STATS"
nbdcopy --connections=4 "$URI" "$T/export.img" 2>"$T/nbdcopy.err" ||
  { cat "$T/nbdcopy.err" >&2; fail "nbdcopy out of the export failed"; }
cmp "$T/source.img" "$T/export.img" || fail "the export differs from the image after the overwrites"
stop_server
expect_clean_exit "after writeback"

cmp "$origin" "$T/source.img" || fail "the origin file differs from the image after writeback"
"$RBDCACHE" check --meta-dev "$META_DEV" >"$T/check.out" 2>&1 ||
  { cat "$T/check.out" >&2; fail "rbdcache check failed on the metadata"; }

# A restart finds nothing dirty: the writeback was committed.
start_cache_server "$origin" writeback --dirty-high 100 --dirty-low 100 --max-dirty-age 3600
get_stats
[ "$(stat_field dirty_bytes)" = 0 ] || fail "dirty data after a completed writeback and restart: $STATS"
stop_server
expect_clean_exit "after restart"

log "PASS"
