#!/usr/bin/env bash
# nbdinfo sees the export size, every transmission flag the server promises,
# the advertised block sizes, a correct base:allocation map, and the export
# in --list.  With --read-only, the export is read-only and writes fail.
source "$(dirname "$0")/lib.sh" "$@"
require nbdinfo nbdcopy qemu-io python3

SIZE=$((64 * 1048576))
origin="$T/origin.img"
make_origin "$origin" "$SIZE" sparse
# The first MiB holds data, the rest of the file is one hole.
head -c 1048576 /dev/urandom | dd of="$origin" conv=notrunc status=none

# check_json FILE PYTHON-EXPR...: each expression, evaluated with e bound to
# the first export of nbdinfo --json, must be true.
check_json() {
  local file=$1
  shift
  python3 - "$file" "$@" <<'EOF' || fail "nbdinfo --json assertions failed (see above)"
import json, sys
doc = json.load(open(sys.argv[1]))
e = doc["exports"][0]
bad = [x for x in sys.argv[2:] if not eval(x, {}, {"e": e, "doc": doc})]
for x in bad:
    print("assertion failed:", x, file=sys.stderr)
if bad:
    print(json.dumps(doc, indent=1), file=sys.stderr)
    sys.exit(1)
EOF
}

### Read-write export, default (empty) export name.
start_server "$origin"
nbdinfo --json "$URI" >"$T/info.json" || fail "nbdinfo --json failed"
check_json "$T/info.json" \
  'doc["protocol"] == "newstyle-fixed"' \
  'doc["structured"] is True' \
  'e["export-name"] == ""' \
  "e.get('export-size') == $SIZE" \
  'e.get("is_read_only") is False' \
  'e.get("can_flush") is True' \
  'e.get("can_fua") is True' \
  'e.get("can_trim") is True' \
  'e.get("can_zero") is True' \
  'e.get("can_fast_zero") is True' \
  'e.get("can_df") is True' \
  'e.get("can_cache") is True' \
  'e.get("can_multi_conn") is True' \
  'e.get("block_size_minimum") == 1' \
  'e.get("block_size_preferred") == 4096' \
  'e.get("block_size_maximum") == 33554432' \
  '"base:allocation" in e.get("contexts", [])'

# nbdinfo --can: exit 0 means yes.
for cap in flush fua trim zero fast-zero df cache multi-conn; do
  nbdinfo --can "$cap" "$URI" || fail "nbdinfo --can $cap: expected yes"
done
if [ "$NBD_TEST_SERVER" = rbdcache ]; then
  grep -q 'rbdcache:.*serving' "$SERVER_LOG" || fail "no 'rbdcache: ... serving' line on stderr"
fi

### base:allocation.
# Write data in the middle of the hole, zero a range inside the data, then
# check the map: it tiles the export exactly, the untouched tail of the
# sparse file is a hole, the written range is not a hole, and every extent
# flagged "zero" really reads as zeroes.
qemu_io "$URI" -c 'write -P 0x5a 16M 64k' -c 'write -z 256k 128k' -c 'discard 512k 64k' -c flush
nbdinfo --map --json "$URI" >"$T/map.json" || fail "nbdinfo --map failed"
nbdcopy "$URI" "$T/contents.img" || fail "nbdcopy from the export failed"
python3 - "$T/map.json" "$T/contents.img" "$SIZE" <<'EOF' || fail "base:allocation map is wrong"
import json, sys
extents = json.load(open(sys.argv[1]))
data = open(sys.argv[2], "rb").read()
size = int(sys.argv[3])
M = 1 << 20
errors = []
pos = 0
for x in extents:
    if x["offset"] != pos:
        errors.append("extent at %d, expected %d" % (x["offset"], pos))
    if x["length"] <= 0:
        errors.append("empty extent at %d" % x["offset"])
    if x["type"] & 2 and data[x["offset"]:x["offset"] + x["length"]].count(0) != x["length"]:
        errors.append("extent %r is flagged zero but holds data" % x)
    pos = x["offset"] + x["length"]
if pos != size:
    errors.append("map ends at %d, expected %d" % (pos, size))
def type_at(off):
    for x in extents:
        if x["offset"] <= off < x["offset"] + x["length"]:
            return x["type"]
    return None
# Bytes written with data: never a hole, never zero.
for off in (0, 16 * M, 16 * M + 65535):
    t = type_at(off)
    if t is None or t & 3:
        errors.append("offset %d holds data but has type %r" % (off, t))
# Never written, in the sparse part of the origin: a hole.
for off in (8 * M, 40 * M, size - 1):
    t = type_at(off)
    if t is None or not t & 1:
        errors.append("offset %d is an untouched hole but has type %r" % (off, t))
for e in errors:
    print(e, file=sys.stderr)
if errors:
    print(json.dumps(extents, indent=1), file=sys.stderr)
    sys.exit(1)
EOF

### --list.
nbdinfo --list --json "$URI" >"$T/list.json" || fail "nbdinfo --list failed"
check_json "$T/list.json" \
  'len(doc["exports"]) == 1' \
  'doc["exports"][0]["export-name"] == ""'

stop_server
expect_clean_exit "read-write export"

### A named export: listed by name; the empty name also selects it.
start_server "$origin" --export disk1
nbdinfo --list --json "$URI" >"$T/list2.json" || fail "nbdinfo --list (named export) failed"
check_json "$T/list2.json" \
  'len(doc["exports"]) == 1' \
  'doc["exports"][0]["export-name"] == "disk1"'
nbdinfo --size "nbd+unix:///disk1?socket=$SOCK" >"$T/size" || fail "cannot open export disk1"
[ "$(cat "$T/size")" = "$SIZE" ] || fail "export disk1 has size $(cat "$T/size"), expected $SIZE"
if [ "$NBD_TEST_SERVER" = rbdcache ]; then
  nbdinfo --size "$URI" >/dev/null || fail "the empty export name does not select export disk1"
  if nbdinfo --size "nbd+unix:///nosuch?socket=$SOCK" >/dev/null 2>&1; then
    fail "a nonexistent export name was accepted"
  fi
fi
stop_server
expect_clean_exit "named export"

### Read-only export.
cp --sparse=always "$origin" "$T/origin.before"
start_server "$origin" --read-only
nbdinfo --json "$URI" >"$T/info-ro.json" || fail "nbdinfo --json (read-only) failed"
check_json "$T/info-ro.json" \
  'e.get("is_read_only") is True' \
  "e.get('export-size') == $SIZE" \
  'e.get("block_size_maximum") == 33554432'
nbdinfo --is read-only "$URI" || fail "nbdinfo --is read-only: expected yes"
# Clients refuse to write to a read-only export, so a raw client sends the
# writes to check that the server refuses them too.
strict=()
[ "$NBD_TEST_SERVER" = rbdcache ] && strict=(--strict)
python3 "$(dirname "$0")/nbd_raw_client.py" "$SOCK" read_only --size "$SIZE" "${strict[@]}" ||
  fail "writes to the read-only export were not refused"
qemu_io_expect_fail "$URI" -c 'write -P 0x11 0 4k'
# Reads still work and see the data written earlier.
qemu_io -r "$URI" -c 'read -P 0x5a 16M 64k' -c 'read -P 0 40M 1M'
stop_server
expect_clean_exit "read-only export"
cmp "$origin" "$T/origin.before" || fail "the read-only export modified the origin"

log "PASS"
