#!/usr/bin/env bash
# rbdcache serving an RBD image (as the restricted user client.rbdcache,
# given with --ceph-conf/--ceph-id/--keyring) takes qemu-io writes, zeroes,
# FUA writes, discards and flushes at aligned and unaligned offsets; reads
# return them; after the server stops, `rbd export` of the image equals a
# model of the same operations.  Concurrent writes through a queue depth of
# 1 all land, and a read-only server reads the data back and refuses writes.
source "$(dirname "$0")/../integration/lib.sh" "$@"
source "$(dirname "$0")/lib-ceph.sh"
require qemu-io python3

create_image 256M
SIZE=$((256 * 1048576))
# The server gets its Ceph settings from its options, not the environment.
RBD_SERVER_ENV=(env -u CEPH_ARGS -u CEPH_CONF)
ceph_opts=(--ceph-conf "$CEPH_CONF" --ceph-id "$CEPH_USER_ID" --keyring "$CEPH_KEYRING" --ceph-timeout 20)

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
  'write -P 0xcc 255M 1M'
  'write -P 0xdd 268435455 1'
)
args=()
for op in "${ops[@]}"; do args+=(-c "$op"); done
args+=(-c flush)
args+=(
  -c 'read -P 0xab 0 512' -c 'read -P 0x11 512 1' -c 'read -P 0xab 513 487'
  -c 'read -P 0x22 1000 511' -c 'read -P 0xab 1511 2585'
  -c 'read -P 0 4096 8192' -c 'read -P 0x33 12288 4154'
  -c 'read -P 0 100001 12345'
  -c 'read -P 0 1M 64k' -c 'read -P 0x55 1088k 448k' -c 'read -P 0x66 1600k 1000'
  -c 'read -P 0x77 3M 4097' -c 'read -P 0x88 4095k 2M'
  -c 'read -P 0 8M 1M' -c 'read -P 0 9M 4096' -c 'read -P 0xaa 10M 1' -c 'read -P 0 10241k 1023k'
  -c 'read -P 0xcc 255M 1048575' -c 'read -P 0xdd 268435455 1'
)
start_rbd_server "$IMAGE_SPEC" "${ceph_opts[@]}"
qemu_io "$URI" "${args[@]}"
grep -q "opened RBD image rbd:$IMAGE_SPEC as client.$CEPH_USER_ID" "$SERVER_LOG" ||
  fail "the server log does not name the image and the user"
nbdinfo_out=$(nbdinfo --json "$URI" 2>&1) || fail "nbdinfo failed: $nbdinfo_out"
python3 - "$SIZE" "$nbdinfo_out" <<'EOF' || fail "nbdinfo reports the wrong size or description"
import json, sys
d = json.loads(sys.argv[2])["exports"][0]
assert d["export-size"] == int(sys.argv[1]), d["export-size"]
assert "rbd:" in d.get("description", ""), d.get("description")
EOF
stop_server
expect_clean_exit "after qemu-io"

# A queue depth of 1: 16 concurrent writes on one connection wait their turn.
start_rbd_server "$IMAGE_SPEC" "${ceph_opts[@]}" --rbd-queue-depth 1
aio=()
for i in $(seq 0 15); do
  op="write -P $((0x20 + i)) $((12 * 1048576 + i * 69632 + 3)) 65537"
  aio+=(-c "aio_$op")
  ops+=("$op")
done
aio+=(-c aio_flush)
qemu_io "$URI" "${aio[@]}"
qemu_io "$URI" -c "read -P 0x2f $((12 * 1048576 + 15 * 69632 + 3)) 65537" -c 'read -P 0x33 12288 4154'
stop_server
expect_clean_exit "after queued writes"

check_model() {
  python3 - "$1" "$SIZE" "${ops[@]}" <<'EOF' || fail "$2 differs from the model"
import sys
path, size = sys.argv[1], int(sys.argv[2])
actual = open(path, "rb").read()
model = bytearray(size)
care = bytearray(b"\1" * size)
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
if len(actual) != size:
    sys.exit("size %d, expected %d" % (len(actual), size))
M = 1 << 20
bad = []
for c in range(0, size, M):
    a, m, k = actual[c:c + M], model[c:c + M], care[c:c + M]
    if k.count(1) == len(k):
        if a != m:
            bad.append(c + next(i for i in range(len(a)) if a[i] != m[i]))
    elif any(kk and aa != mm for aa, mm, kk in zip(a, m, k)):
        bad.append(c)
if bad:
    sys.exit("first differing bytes near offsets %r" % bad[:10])
EOF
}
rbd_export "$IMAGE_SPEC" "$T/export.img"
check_model "$T/export.img" "the exported image"

# Read-only: reads see the data, writes are refused, the image is unchanged.
start_rbd_server "$IMAGE_SPEC" "${ceph_opts[@]}" --read-only
qemu_io -r "$URI" -c 'read -P 0x33 12288 4154' -c 'read -P 0 4096 8192' -c 'read -P 0xdd 268435455 1'
qemu_io_expect_fail "$URI" -c 'write -P 0x99 0 4096'
stop_server
expect_clean_exit "read-only"
rbd_export "$IMAGE_SPEC" "$T/export2.img"
cmp "$T/export.img" "$T/export2.img" || fail "the image changed under a read-only server"

log "PASS"
