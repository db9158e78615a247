#!/usr/bin/env bash
# qemu-img convert writes a raw and a qcow2 image into the export (with 8
# parallel, out-of-order requests) and qemu-img compare reports the export
# identical to the source; after one byte changes, it reports a difference.
source "$(dirname "$0")/lib.sh" "$@"
require qemu-img qemu-io python3

SIZE=$((64 * 1048576))
origin="$T/origin.img"
src="$T/source.img"
make_origin "$origin" "$SIZE" random
# Random data with a few zeroed ranges (which convert sends as zero
# requests) over an origin with different random data.
head -c "$SIZE" /dev/urandom >"$src"
for r in 0:1 7:3 30:8 63:1; do
  dd if=/dev/zero of="$src" bs=1M seek="${r%:*}" count="${r#*:}" conv=notrunc status=none
done

start_server "$origin"

qemu-img convert -n -W -m 8 -f raw -O raw "$src" "$URI" || fail "qemu-img convert (raw) into the export failed"
out=$(qemu-img compare -f raw -F raw "$src" "$URI" 2>&1)
rc=$?
[ $rc -eq 0 ] || fail "qemu-img compare after the raw copy: exit $rc: $out"
grep -q 'Images are identical' <<<"$out" || fail "qemu-img compare: $out"

# A qcow2 source with data in some clusters only: the unallocated parts
# must come out as zeroes.
qemu-img create -q -f qcow2 "$T/source.qcow2" "$SIZE" || fail "qemu-img create failed"
qemu-io -f qcow2 "$T/source.qcow2" -c 'write -P 0x3c 1M 3M' -c 'write -P 0xc3 40000 70000' \
  -c 'write -P 0x5a 60M 4M' >/dev/null || fail "qemu-io on the qcow2 source failed"
qemu-img convert -n -W -m 8 -f qcow2 -O raw "$T/source.qcow2" "$URI" ||
  fail "qemu-img convert (qcow2) into the export failed"
out=$(qemu-img compare -f qcow2 -F raw "$T/source.qcow2" "$URI" 2>&1)
rc=$?
[ $rc -eq 0 ] || fail "qemu-img compare after the qcow2 copy: exit $rc: $out"

# The comparison can fail: change one byte in the export.
qemu_io "$URI" -c 'write -P 0x01 50M 1'
out=$(qemu-img compare -f qcow2 -F raw "$T/source.qcow2" "$URI" 2>&1)
rc=$?
[ $rc -eq 1 ] || fail "qemu-img compare after changing a byte: exit $rc (expected 1): $out"
grep -q 'Content mismatch at offset 52428800' <<<"$out" || fail "qemu-img compare: $out"

stop_server
expect_clean_exit "after qemu-img"
qemu-img convert -f qcow2 -O raw "$T/source.qcow2" "$T/expected.img" || fail "qemu-img convert to raw failed"
printf '\001' | dd of="$T/expected.img" bs=1 seek=$((50 * 1048576)) conv=notrunc status=none
cmp "$T/expected.img" "$origin" || fail "origin file differs from the expected image after the server stopped"

log "PASS"
