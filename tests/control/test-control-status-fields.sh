#!/usr/bin/env bash
# `rbdcache status --json` lists exactly the fields docs/status.md documents,
# with the documented types, and the values move as they should: writes
# raise write misses, dirty bytes and used bytes; reads of cached data
# raise read hits. The table output shows the same mode and origin.
source "$(dirname "$0")/../cache_integration/lib-cache.sh" "$@"
require qemu-io
DOC="$(dirname "$0")/../../docs/status.md"
[ -r "$DOC" ] || fail "docs/status.md is missing"

make_origin "$T/origin.img" $((64 << 20)) sparse
make_cache s 64M 16M
start_cache_server "$T/origin.img" writeback --dirty-high 90 --dirty-low 80 --max-dirty-age 3600 \
  --sequential-cutoff 0

status_json() {  # status_json FILE
  "$RBDCACHE" status --json -c "$CTL" >"$1" 2>"$T/status.err" || fail "status --json failed: $(cat "$T/status.err")"
}
status_json "$T/s0.json"
qemu_io "$URI" -c 'write -P 0x11 0 2M' -c flush -c 'read -P 0x11 0 2M'
status_json "$T/s1.json"

python3 - "$DOC" "$T/s0.json" "$T/s1.json" <<'PY' || fail "status --json does not match docs/status.md"
import json, re, sys
doc, s0, s1 = sys.argv[1], json.load(open(sys.argv[2])), json.load(open(sys.argv[3]))
documented = {}
for line in open(doc):
    m = re.match(r"\|\s*`([a-z_.]+)`\s*\|\s*([a-z ]+?)\s*\|", line)
    if m:
        documented[m.group(1)] = m.group(2)
if len(documented) < 30:
    sys.exit("docs/status.md documents only %d fields" % len(documented))
def leaves(d, prefix=""):
    for k, v in d.items():
        if isinstance(v, dict):
            yield from leaves(v, prefix + k + ".")
        else:
            yield prefix + k, v
seen = dict(leaves(s1))
missing = sorted(set(documented) - set(seen))
extra = sorted(set(seen) - set(documented))
if missing or extra:
    sys.exit("documented but absent: %s; present but undocumented: %s" % (missing, extra))
def type_ok(v, t):
    ok = {"integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
          "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
          "string": lambda v: isinstance(v, str),
          "boolean": lambda v: isinstance(v, bool)}
    alts = [a.strip() for a in t.split(" or ")]
    return any((a == "null" and v is None) or (a in ok and ok[a](v)) for a in alts)
for doc_state in (dict(leaves(s0)), seen):
    for k, t in documented.items():
        if not type_ok(doc_state[k], t):
            sys.exit("%s = %r is not %s" % (k, doc_state[k], t))
# Values that must have moved.
a, b = dict(leaves(s0)), seen
checks = [
    ("format_version", b["format_version"] == 1),
    ("mode", b["mode"] == "writeback"),
    ("origin", b["origin"].startswith("file:") and b["origin"].endswith("origin.img")),
    ("origin_size_bytes", b["origin_size_bytes"] == 64 << 20),
    ("io.write_misses rose", b["io.write_misses"] > a["io.write_misses"]),
    ("cache.dirty_bytes", b["cache.dirty_bytes"] == 2 << 20),
    ("cache.used_bytes", b["cache.used_bytes"] >= 2 << 20),
    ("io.read_hits rose", b["io.read_hits"] > a["io.read_hits"]),
    ("io.read_hit_ratio", b["io.read_hit_ratio"] == 1.0),
    ("io.read_hit_ratio before any read", a["io.read_hit_ratio"] is None),
    ("cache.size_bytes", b["cache.size_bytes"] == b["cache.blocks"] * b["cache.block_size_bytes"]),
    ("metadata.commits rose", b["metadata.commits"] > a["metadata.commits"]),
    ("memory.mapping_bytes", b["memory.mapping_bytes"] > 0),
    ("ownership on a file", b["ownership.shared_image"] is False and b["ownership.cache_epoch"] is None),
    ("erase counts ordered", b["metadata.erase_count_min"] <= b["metadata.erase_count_mean"] <= b["metadata.erase_count_max"]),
]
bad = [name for name, ok in checks if not ok]
if bad:
    sys.exit("wrong values: %s\n%s" % (bad, json.dumps(s1, indent=1)))
PY

"$RBDCACHE" status -c "$CTL" >"$T/table.out" 2>&1 || fail "status failed: $(cat "$T/table.out")"
grep -Eq '^  mode +writeback$' "$T/table.out" || fail "the table lacks the mode: $(cat "$T/table.out")"
grep -q "origin.img (64.0 MiB)" "$T/table.out" || fail "the table lacks the origin: $(cat "$T/table.out")"
grep -Eq '^  dirty +2.0 MiB' "$T/table.out" || fail "the table lacks the dirty bytes: $(cat "$T/table.out")"
grep -Eq '^  read hits +100.0%' "$T/table.out" || fail "the table lacks the read hit ratio: $(cat "$T/table.out")"

# The control socket is the owner's alone.
[ "$(stat -c %a "$CTL")" = 600 ] || fail "control socket mode is $(stat -c %a "$CTL"), not 600"
log "PASS"
