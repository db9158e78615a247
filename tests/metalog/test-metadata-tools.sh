#!/bin/bash
# Tests of `rbdcache format`, `check` and `dump` on plain files.
# Usage: test-metadata-tools.sh RBDCACHE METALOG_FILL
set -u
RBDCACHE=$1
FILL=$2
command -v python3 >/dev/null || { echo "python3 missing"; exit 77; }
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
meta=$dir/meta.img
cache=$dir/cache.img
fail() { echo "FAIL: $*"; exit 1; }

truncate -s 2M "$meta"
truncate -s 4M "$cache"

# Missing devices are not created.
"$RBDCACHE" format --meta-dev "$dir/nope" --cache-dev "$cache" 2>/dev/null && fail "format created a missing device"

# Usage errors exit 2.
"$RBDCACHE" format --meta-dev "$meta" --cache-dev "$cache" --block-size 3000 2>/dev/null
[ $? -eq 1 ] || fail "a block size that is not a power of two must exit 1"
"$RBDCACHE" format --meta-dev "$meta" --cache-dev "$cache" --block-size banana 2>/dev/null
[ $? -eq 2 ] || fail "an unparsable size must be a usage error"

"$RBDCACHE" format --meta-dev "$meta" --cache-dev "$cache" --block-size 16K --segment-size 64K \
  || fail "format"
"$RBDCACHE" format --meta-dev "$meta" --cache-dev "$cache" 2>"$dir/err" && fail "format overwrote a formatted device"
grep -q -- "--force" "$dir/err" || fail "refusal does not mention --force"

"$RBDCACHE" check --meta-dev "$meta" || fail "check of an empty log"
"$FILL" "$meta" 40 30 >/dev/null || fail "fill"
"$RBDCACHE" check --meta-dev "$meta" >"$dir/check.out" || { cat "$dir/check.out"; fail "check of a good log"; }

"$RBDCACHE" dump --meta-dev "$meta" >/dev/null || fail "dump"
"$RBDCACHE" dump --meta-dev "$meta" --json >"$dir/dump.json" || fail "dump --json"
python3 - "$dir/dump.json" <<'PY' || fail "dump --json content"
import json, sys
d = json.load(open(sys.argv[1]))
sb = d["superblock"]
assert sb["cache_block_size"] == 16384, sb
assert sb["segment_size"] == 65536, sb
assert len(d["segments"]) == sb["segment_count"] - 1
assert len(d["mappings"]) > 0
assert any(s["state"] == "sealed" and s["live_blocks"] + s["obsolete_blocks"] > 0 for s in d["segments"])
assert d["problems"] == []
PY

# Overwrite bytes in the middle of a sealed segment's second record block.
read -r seg block < <(python3 - "$dir/dump.json" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
sealed = sorted((s for s in d["segments"] if s["state"] == "sealed" and s["written_blocks"] >= 2),
                key=lambda s: s["sequence"])
print(sealed[0]["id"], 2)
PY
)
[ -n "$seg" ] || fail "no sealed segment to corrupt"
offset=$(( seg * 65536 + block * 4096 + 1000 ))
printf 'garbage!' | dd of="$meta" bs=1 seek=$offset conv=notrunc status=none
"$RBDCACHE" check --meta-dev "$meta" >"$dir/check.out"
rc=$?
cat "$dir/check.out"
[ $rc -eq 1 ] || fail "check exit code $rc on a corrupt log"
grep -q "segment $seg block $block" "$dir/check.out" || fail "check does not name segment $seg block $block"
"$RBDCACHE" dump --meta-dev "$meta" --json >/dev/null && fail "dump of a corrupt log must exit 1"

# --force reformats it.
"$RBDCACHE" format --meta-dev "$meta" --cache-dev "$cache" --block-size 16K --segment-size 64K --force >/dev/null \
  || fail "format --force"
"$RBDCACHE" check --meta-dev "$meta" >/dev/null || fail "check after --force"
echo PASS
