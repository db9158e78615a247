#!/usr/bin/env bash
# qemu-io writes, zeroes, FUA writes, discards and flushes at aligned and
# unaligned offsets through a cache in each mode (writeback, writethrough,
# passthrough), over a file origin of random data.  Every read checks its
# pattern and the whole export equals a model of the operations.
#   writethrough, passthrough: the origin file holds the data as soon as the
#     writes are answered (no writeback); passthrough caches nothing.
#   writeback: the origin file does not have the written data yet (the cache
#     absorbed it; write-zeroes and discards may reach the origin at once) and the data stays dirty across a clean restart; after a forced
#     writeback the origin file equals what the export read.
source "$(dirname "$0")/lib-cache.sh" "$@"
require qemu-io qemu-img

SIZE=$((16 * 1048576))

ops=(
  'write -P 0xab 0 64k'
  'write -P 0x11 512 1'
  'write -P 0x22 1000 511'
  'write -P 0x33 4097 12345'
  'write -P 0x44 65535 2'
  'write -z 4096 8192'
  'write -z 100001 12345'
  'write -P 0x55 1M 1M'
  'write -z -u 1M 64k'
  'discard 1536k 64k'
  'write -P 0x66 1600k 1000'
  'write -f -P 0x77 3M 4097'
  'write -P 0x88 15360k 1024k'
  'write -P 0x99 16777215 1'
  'write -z 8M 4M'
  'write -P 0xaa 10M 1'
  'write -f -z 9M 4096'
  'write -P 0xcc 6M 200000'
  'write -P 0xcd 6200k 3'
)
reads=(
  -c 'read -P 0xab 0 512' -c 'read -P 0x11 512 1' -c 'read -P 0xab 513 487'
  -c 'read -P 0x22 1000 511' -c 'read -P 0xab 1511 2585'
  -c 'read -P 0 4096 8192' -c 'read -P 0x33 12288 4154'
  -c 'read -P 0xab 16442 49093' -c 'read -P 0x44 65535 2'
  -c 'read -P 0 100001 12345'
  -c 'read -P 0 1M 64k' -c 'read -P 0x55 1088k 448k' -c 'read -P 0x66 1600k 1000'
  -c "read -P 0x55 $((1600 * 1024 + 1000)) $((448 * 1024 - 1000))"
  -c 'read -P 0x77 3M 4097'
  -c 'read -P 0x88 15360k 1048575' -c 'read -P 0x99 16777215 1'
  -c 'read -P 0 8M 1M' -c 'read -P 0 9M 4096' -c 'read -P 0xaa 10M 1' -c 'read -P 0 10241k 1023k'
  -c 'read -P 0xcc 6M 57344' -c 'read -P 0xcd 6200k 3' -c 'read -P 0xcc 6348803 142653'
)
# Larger than the export: must fail and change nothing.
bad_op='write -P 0xbb 5M 33554432'

# check_model FILE WHAT ORIGINAL: FILE equals ORIGINAL with every op applied
# (ranges discarded last are not checked).
check_model() {
  python3 - "$1" "$3" "${all_ops[@]}" <<'EOF' || fail "$2 differs from the model"
import sys
actual = open(sys.argv[1], "rb").read()
model = bytearray(open(sys.argv[2], "rb").read())
care = bytearray(b"\1" * len(model))
def num(s):
    mult = {"k": 1024, "K": 1024, "M": 1 << 20}.get(s[-1], 1)
    return int(s[:-1] if mult != 1 else s, 0) * mult
for op in sys.argv[3:]:
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
if len(actual) != len(model):
    sys.exit("size %d, expected %d" % (len(actual), len(model)))
bad = []
for c in range(0, len(model), 4096):
    a, m, k = actual[c:c + 4096], model[c:c + 4096], care[c:c + 4096]
    if a == m:
        continue
    if k.count(1) == len(k) or any(kk and aa != mm for aa, mm, kk in zip(a, m, k)):
        bad.append(c)
if bad:
    print("first differing 4 KiB blocks at offsets:", bad[:10], file=sys.stderr)
    sys.exit(1)
EOF
}

# untouched FILE ORIGINAL OFFSET LENGTH: the range still holds the original data.
untouched() {
  cmp -s <(tail -c +$(($3 + 1)) "$1" | head -c "$4") <(tail -c +$(($3 + 1)) "$2" | head -c "$4")
}

for mode in writeback writethrough passthrough; do
  log "mode $mode"
  origin="$T/origin-$mode.img"
  make_origin "$origin" "$SIZE" random
  cp "$origin" "$T/original.img"
  make_cache "$mode" 256M 16M
  # Writeback must not start by itself during this phase.
  start_cache_server "$origin" "$mode" --dirty-high 90 --dirty-low 80 --max-dirty-age 3600

  args=()
  for op in "${ops[@]}"; do args+=(-c "$op"); done
  args+=(-c flush "${reads[@]}")
  qemu_io "$URI" "${args[@]}"
  all_ops=("${ops[@]}")

  # Asynchronous unaligned writes in flight together, crossing cache blocks.
  aio=()
  for i in $(seq 0 15); do
    op="write -P $((0x20 + i)) $((12 * 1048576 + i * 69632 + 3)) 65537"
    aio+=(-c "aio_$op")
    all_ops+=("$op")
  done
  aio+=(-c aio_flush)
  qemu_io "$URI" "${aio[@]}"
  qemu_io "$URI" -c "read -P 0x2f $((12 * 1048576 + 15 * 69632 + 3)) 65537" -c 'read -P 0x77 3M 4097'
  qemu_io_expect_fail "$URI" -c "$bad_op"

  # A second pass over cached data: overwrite parts of what is there.
  over=('write -P 0xe1 32k 8k' 'write -P 0xe2 1100k 3' 'write -z 1048000 2000' 'write -P 0xe3 15M 4096')
  args=()
  for op in "${over[@]}"; do args+=(-c "$op"); all_ops+=("$op"); done
  qemu_io "$URI" "${args[@]}" -c flush -c 'read -P 0xe1 32k 8k' -c 'read -P 0xe2 1100k 3' \
    -c 'read -P 0 1048000 2000' -c 'read -P 0xe3 15M 4096' -c 'read -P 0xab 40k 24575'

  qemu-img convert -f raw -O raw "$URI" "$T/export-$mode.img" ||
    fail "$mode: qemu-img convert out of the export failed"
  check_model "$T/export-$mode.img" "$mode: the export" "$T/original.img"

  get_stats
  case $mode in
    writeback)
      [ "$(stat_field dirty_bytes)" -gt 0 ] || fail "writeback: no dirty data after the writes: $STATS"
      [ "$(stat_field bytes_written_back)" = 0 ] || fail "writeback: wrote back too early: $STATS"
      # The cache absorbed the data writes: the origin still has its old data.
      for r in '0 4096' '12288 4096' '1114112 458752' '3145728 4096' '15728640 1048576' '6291456 200000'; do
        # shellcheck disable=SC2086
        untouched "$origin" "$T/original.img" $r ||
          fail "writeback: the origin already has the data at offset/length $r"
      done
      ;;
    writethrough | passthrough)
      [ "$(stat_field dirty_bytes)" = 0 ] || fail "$mode: dirty data in the cache: $STATS"
      # The origin has every write already, while the server runs.
      check_model "$origin" "$mode: the origin file right after the writes" "$T/original.img"
      cmp "$origin" "$T/export-$mode.img" || fail "$mode: the origin file differs from the export"
      ;;
  esac
  if [ "$mode" = passthrough ]; then
    [ "$(stat_field mapped_blocks)" = 0 ] || fail "passthrough cached blocks: $STATS"
    [ "$(stat_field promotions)" = 0 ] || fail "passthrough promoted blocks: $STATS"
  else
    [ "$(stat_field mapped_blocks)" -gt 0 ] || fail "$mode: nothing was cached: $STATS"
  fi
  stop_server
  expect_clean_exit "$mode: after qemu-io"

  if [ "$mode" = writeback ]; then
    # A clean stop does not write back: the origin still has its old data.
    untouched "$origin" "$T/original.img" 1114112 458752 || fail "writeback: the data was written back at exit"
    # Force writeback: every dirty block goes to the origin.
    start_cache_server "$origin" writeback --dirty-high 0 --dirty-low 0 --max-dirty-age 0.1
    get_stats
    [ "$(stat_field dirty_bytes)" -gt 0 ] || [ "$(stat_field bytes_written_back)" -gt 0 ] ||
      fail "writeback: the dirty data did not survive the restart: $STATS"
    wait_clean
    expect_no_writeback_errors
    [ "$(stat_field bytes_written_back)" -gt 0 ] || fail "writeback: nothing written back: $STATS"
    qemu_io "$URI" -c 'read -P 0x33 12288 4154' -c 'read -P 0xe3 15M 4096'
    stop_server
    expect_clean_exit "writeback: after the forced writeback"
    cmp "$origin" "$T/export-$mode.img" || fail "writeback: the origin file differs from the export after writeback"
  fi

  # A restart on the same cache serves the same data.
  start_cache_server "$origin" "$mode"
  qemu-img convert -f raw -O raw "$URI" "$T/again.img" || fail "$mode: qemu-img convert after restart failed"
  cmp "$T/again.img" "$T/export-$mode.img" || fail "$mode: the export changed across a restart"
  stop_server
  expect_clean_exit "$mode: after restart"
  rm -f "$T/again.img" "$CACHE_DEV" "$META_DEV"
done

log "PASS"
