#!/usr/bin/env bash
# rbdcache caching an RBD image (rbd:rbd/IMAGE) in each mode (writeback,
# writethrough, passthrough): qemu-io writes, zeroes, FUA writes, discards
# and flushes at aligned and unaligned offsets, then fio's nbd engine with 4
# connections on disjoint regions verified with crc32c, and fresh
# connections verify again.  The whole export is saved; after writeback has
# finished (dirty_bytes 0) and the server has stopped, `rbd export` of the
# image equals it byte for byte.  In writeback mode the image does not have
# the data before the writeback (a clean stop leaves it dirty in the cache).
source "$(dirname "$0")/lib-cache.sh" "$@"
source "$(dirname "$0")/../rbd/lib-ceph.sh"
require qemu-io fio nbdcopy
fio --enghelp=nbd >/dev/null 2>&1 || skip "fio has no nbd engine"


# qemu-io works in the first 16 MiB; fio's 4 jobs own 8 MiB each at
# 16, 40, 64 and 88 MiB; the rest stays zero.
ops=(
  'write -P 0xab 0 64k'
  'write -P 0x11 512 1'
  'write -P 0x22 1000 511'
  'write -P 0x33 4097 12345'
  'write -z 4096 8192'
  'write -z 100001 12345'
  'write -P 0x55 1M 1M'
  'write -z -u 1M 64k'
  'discard 1536k 64k'
  'write -P 0x66 1600k 1000'
  'write -f -P 0x77 3M 4097'
  'write -P 0x88 4095k 2M'
  'write -z 8M 4M'
  'write -P 0xaa 10M 1'
  'write -f -z 9M 4096'
  'write -P 0xcc 15M 1048575'
)
reads=(
  -c 'read -P 0xab 0 512' -c 'read -P 0x11 512 1' -c 'read -P 0xab 513 487'
  -c 'read -P 0x22 1000 511' -c 'read -P 0xab 1511 2585'
  -c 'read -P 0 4096 8192' -c 'read -P 0x33 12288 4154'
  -c 'read -P 0 100001 12345'
  -c 'read -P 0 1M 64k' -c 'read -P 0x55 1088k 448k' -c 'read -P 0x66 1600k 1000'
  -c 'read -P 0x77 3M 4097' -c 'read -P 0x88 4095k 2M'
  -c 'read -P 0 8M 1M' -c 'read -P 0 9M 4096' -c 'read -P 0xaa 10M 1' -c 'read -P 0 10241k 1023k'
  -c 'read -P 0xcc 15M 1048575'
)

write_fio_verify_job "$T/verify.fio" 8m 24m 16m

# run_fio LABEL ARGS...: fio must exit 0 and report no job errors.
run_fio() {
  local label=$1
  shift
  run_fio_verify "$T/verify.fio" "$label" $((8 << 20)) 150 "$@"
}

# check_data FILE WHAT: the qemu-io ops (over zeroes) in the first 16 MiB,
# fio's data in its regions, zeroes everywhere else.
check_data() {
  python3 - "$1" "${ops[@]}" <<'PY' || fail "$2 does not hold the data written"
import sys
M = 1 << 20
data = open(sys.argv[1], "rb").read()
if len(data) != 128 * M:
    sys.exit("size %d" % len(data))
model = bytearray(16 * M)
care = bytearray(b"\1" * (16 * M))
def num(s):
    mult = {"k": 1024, "K": 1024, "M": M}.get(s[-1], 1)
    return int(s[:-1] if mult != 1 else s, 0) * mult
for op in sys.argv[2:]:
    w = op.split()
    off, ln = num(w[-2]), num(w[-1])
    if w[0] == "discard":
        care[off:off + ln] = b"\0" * ln
    elif "-z" in w:
        model[off:off + ln] = b"\0" * ln
        care[off:off + ln] = b"\1" * ln
    else:
        model[off:off + ln] = bytes([num(w[w.index("-P") + 1])]) * ln
        care[off:off + ln] = b"\1" * ln
bad = [o for o in range(0, 16 * M, 4096)
       if data[o:o + 4096] != model[o:o + 4096] and
       any(c and a != m for a, m, c in zip(data[o:o + 4096], model[o:o + 4096], care[o:o + 4096]))]
if bad:
    sys.exit("qemu-io data differs at %r" % bad[:10])
for j in range(4):
    start = 16 * M + j * 24 * M
    if data[start:start + 8 * M].count(0) > 6 * M:
        sys.exit("fio region %d is mostly zero" % j)
    gap = data[start + 8 * M:start + 24 * M] if j < 3 else data[start + 8 * M:]
    if gap.count(0) != len(gap):
        sys.exit("data after fio region %d" % j)
PY
}

nowb=(--dirty-high 90 --dirty-low 80 --max-dirty-age 3600)
for mode in writeback writethrough passthrough; do
  log "mode $mode"
  create_image 128M
  make_cache "$mode" 256M 16M

  start_rbd_server "$IMAGE_SPEC" --cache-dev "$CACHE_DEV" --meta-dev "$META_DEV" --mode "$mode" "${nowb[@]}"
  args=()
  for op in "${ops[@]}"; do args+=(-c "$op"); done
  qemu_io "$URI" "${args[@]}" -c flush "${reads[@]}"
  run_fio "$mode-write-verify"
  run_fio "$mode-verify-only" --verify_only
  qemu_io "$URI" "${reads[@]}"
  nbdcopy --connections=4 "$URI" "$T/data-$mode.img" 2>"$T/nbdcopy.err" ||
    { cat "$T/nbdcopy.err" >&2; fail "$mode: nbdcopy out of the export failed"; }
  check_data "$T/data-$mode.img" "$mode: the export"
  get_stats
  expect_no_writeback_errors
  case $mode in
    writeback) [ "$(stat_field dirty_bytes)" -gt 0 ] || fail "writeback: no dirty data: $STATS" ;;
    *) [ "$(stat_field dirty_bytes)" = 0 ] || fail "$mode: dirty data: $STATS" ;;
  esac
  if [ "$mode" = passthrough ]; then
    [ "$(stat_field mapped_blocks)" = 0 ] || fail "passthrough cached blocks: $STATS"
  fi
  stop_server
  expect_clean_exit "$mode: after the writes"

  if [ "$mode" = writeback ]; then
    # The image does not have the data yet: it is dirty in the cache.
    rbd_export "$IMAGE_SPEC" "$T/before-wb.img"
    cmp -s "$T/before-wb.img" "$T/data-$mode.img" && fail "writeback: the image has the data before writeback"
    rm -f "$T/before-wb.img"
    start_rbd_server "$IMAGE_SPEC" --cache-dev "$CACHE_DEV" --meta-dev "$META_DEV" --mode writeback \
      --dirty-high 0 --dirty-low 0 --max-dirty-age 0.1
    wait_clean
    expect_no_writeback_errors
    [ "$(stat_field bytes_written_back)" -gt 0 ] || fail "writeback: nothing written back: $STATS"
    stop_server
    expect_clean_exit "writeback: after the writeback"
  fi

  rbd_export "$IMAGE_SPEC" "$T/export-$mode.img"
  cmp "$T/export-$mode.img" "$T/data-$mode.img" || fail "$mode: rbd export differs from the data written"
  rm -f "$T/export-$mode.img" "$T/data-$mode.img" "$CACHE_DEV" "$META_DEV"
done

log "PASS"
