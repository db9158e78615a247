#!/usr/bin/env bash
# qemu-io (the QEMU block layer) writes, zeroes, discards and flushes at
# aligned and unaligned offsets and lengths; every read checks its pattern,
# and the whole export afterwards equals a model of the same operations.
# The origin file holds the same bytes after the server stops, and a new
# server on the same origin reads them back.
source "$(dirname "$0")/lib.sh" "$@"
require qemu-io qemu-img python3

SIZE=$((16 * 1048576))
origin="$T/origin.img"
make_origin "$origin" "$SIZE" random
cp "$origin" "$T/model.img"

# Operations, applied both by qemu-io and by the model below.  "discard"
# leaves the range unspecified (NBD TRIM may or may not zero it), so the
# model stops checking it until it is written again.  Numbers are bytes,
# or with a k/M suffix.
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
  'write -P 0xbb 5M 33554432'
)
# The last one is larger than the export: it must fail, not change data.
bad_op='write -P 0xbb 5M 33554432'
unset 'ops[${#ops[@]}-1]'

args=()
for op in "${ops[@]}"; do args+=(-c "$op"); done
args+=(-c flush)
# Reads of each written range, with their expected patterns.
args+=(
  -c 'read -P 0xab 0 512' -c 'read -P 0x11 512 1' -c 'read -P 0xab 513 487'
  -c 'read -P 0x22 1000 511' -c 'read -P 0xab 1511 2585'
  -c 'read -P 0 4096 8192' -c 'read -P 0x33 12288 4154'
  -c 'read -P 0xab 16442 49093' -c 'read -P 0x44 65535 2'
  -c 'read -P 0 100001 12345'
  -c 'read -P 0 1M 64k' -c 'read -P 0x55 1088k 448k' -c 'read -P 0x66 1600k 1000'
  -c "read -P 0x55 $((1600 * 1024 + 1000)) $((448 * 1024 - 1000))"
  -c 'read -P 0x77 3M 4097'
  -c 'read -P 0x88 15360k 1048575' -c 'read -P 0x99 16777215 1'
  -c 'read -P 0 8M 2M' -c 'read -P 0xaa 10M 1' -c 'read -P 0 10241k 1023k'
)
start_server "$origin"
qemu_io "$URI" "${args[@]}"

# Asynchronous requests in flight together on one connection.
aio=()
for i in $(seq 0 15); do
  aio+=(-c "aio_write -P $((0x20 + i)) $((12 * 1048576 + i * 69632 + 3)) 65537")
done
aio+=(-c aio_flush)
qemu_io "$URI" "${aio[@]}"
for i in $(seq 0 15); do
  ops+=("write -P $((0x20 + i)) $((12 * 1048576 + i * 69632 + 3)) 65537")
done

# An out-of-range write fails.
qemu_io_expect_fail "$URI" -c "$bad_op"

# Compare the whole export with the model.
qemu-img convert -f raw -O raw "$URI" "$T/export.img" || fail "qemu-img convert out of the export failed"

check_model() {
  python3 - "$1" "$T/model.img" "${ops[@]}" <<'EOF' || fail "$2 differs from the model"
import sys
actual = open(sys.argv[1], "rb").read()
model = bytearray(open(sys.argv[2], "rb").read())
care = bytearray(b"\1" * len(model))
def num(s):
    mult = {"k": 1024, "K": 1024, "M": 1 << 20}.get(s[-1], 1)
    return int(s[:-1] if mult != 1 else s, 0) * mult
for op in sys.argv[3:]:
    w = op.split()
    if not w or w[0] not in ("write", "discard"):
        continue
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
bad = [i for i in range(0, len(model), 512)
       if care[i:i + 512].count(1) and
       any(c and a != m for a, m, c in zip(actual[i:i + 512], model[i:i + 512], care[i:i + 512]))]
if bad:
    print("first differing 512-byte blocks at offsets:", bad[:10], file=sys.stderr)
    sys.exit(1)
EOF
}
check_model "$T/export.img" "export contents"

stop_server
expect_clean_exit "after qemu-io"
check_model "$origin" "origin file after the server stopped"

# A new server on the same origin serves the same data.
start_server "$origin"
qemu_io "$URI" -c 'read -P 0x33 12288 4154' -c 'read -P 0 4096 8192' -c 'read -P 0x99 16777215 1' \
  -c "read -P 0x2f $((12 * 1048576 + 15 * 69632 + 3)) 65537"
stop_server
expect_clean_exit "after restart"

log "PASS"
