#!/usr/bin/env bash
# A cache is served only with its own devices and its own origin.  Each of
# these is refused before anything is served (exit 1, a clear message, no
# socket left behind):
#   - an unformatted metadata file (the message says to run rbdcache format);
#   - a cache file of another cache ("belongs to cache");
#   - a cache bound to origin A served over origin B ("belongs to origin");
#   - a cache file truncated below the size it was formatted with.
# Usage errors exit 2: --cache-dev without --meta-dev and the reverse, an
# unknown --mode.  After all the refusals the cache still serves origin A
# with its dirty data intact.
source "$(dirname "$0")/lib-cache.sh" "$@"
require qemu-io

SIZE=$((16 * 1048576))
make_origin "$T/a.img" "$SIZE" zero
make_origin "$T/b.img" "$SIZE" zero

# expect_refused WHAT RC PATTERN SERVE-ARGS...: rbdcache serve must exit with
# RC, print PATTERN (an extended regex) and not serve.
expect_refused() {
  local what=$1 want=$2 pattern=$3 rc
  shift 3
  local sock="$T/refused.sock"
  rm -f "$sock"
  timeout 60 "$RBDCACHE" serve --socket "$sock" "$@" </dev/null >"$T/refused.out" 2>&1
  rc=$?
  [ "$rc" = "$want" ] || { cat "$T/refused.out" >&2; fail "$what: exit $rc, expected $want"; }
  grep -qE -- "$pattern" "$T/refused.out" ||
    { cat "$T/refused.out" >&2; fail "$what: the message does not match '$pattern'"; }
  [ ! -e "$sock" ] || fail "$what: a socket was left behind"
  log "$what: refused: $(head -n 1 "$T/refused.out")"
}

# Cache A, first served over a.img: that binds it to a.img.  It keeps
# dirty data (no writeback).
make_cache a 64M 16M
cache_a=$CACHE_DEV meta_a=$META_DEV
nowb=(--dirty-high 100 --dirty-low 100 --max-dirty-age 3600)
start_cache_server "$T/a.img" writeback "${nowb[@]}"
qemu_io "$URI" -c 'write -P 0x5a 0 1M' -c 'write -P 0xa5 5M 12345' -c flush
stop_server
expect_clean_exit "first serve of cache A"

# Cache B, formatted separately.
make_cache b 64M 16M
cache_b=$CACHE_DEV meta_b=$META_DEV

# 1. Unformatted metadata (and a matching unformatted cache file).
truncate -s 16M "$T/blank.meta"
truncate -s 64M "$T/blank.cache"
expect_refused "unformatted metadata" 1 'rbdcache format' \
  --origin "file:$T/a.img" --cache-dev "$T/blank.cache" --meta-dev "$T/blank.meta"
# Unformatted metadata with a formatted cache file.
expect_refused "unformatted metadata, formatted cache file" 1 'rbdcache format' \
  --origin "file:$T/a.img" --cache-dev "$cache_a" --meta-dev "$T/blank.meta"

# 2. Cache files swapped between caches.
expect_refused "cache A's metadata with cache B's cache file" 1 'belongs to cache' \
  --origin "file:$T/a.img" --cache-dev "$cache_b" --meta-dev "$meta_a"
expect_refused "cache B's metadata with cache A's cache file" 1 'belongs to cache' \
  --origin "file:$T/a.img" --cache-dev "$cache_a" --meta-dev "$meta_b"

# 3. Cache A over another origin, in every mode.
for mode in writeback writethrough passthrough; do
  expect_refused "cache of a.img over b.img ($mode)" 1 'belongs to origin' \
    --origin "file:$T/b.img" --cache-dev "$cache_a" --meta-dev "$meta_a" --mode "$mode"
done
cmp -s "$T/b.img" <(head -c "$SIZE" /dev/zero) || fail "origin B was written by a refused server"

# 4. A truncated cache file.
cp --sparse=always "$cache_a" "$T/short.cache"
truncate -s 32M "$T/short.cache"
expect_refused "truncated cache file" 1 'smaller' \
  --origin "file:$T/a.img" --cache-dev "$T/short.cache" --meta-dev "$meta_a"

# 5. Usage errors.
expect_refused "--cache-dev without --meta-dev" 2 'meta-dev' \
  --origin "file:$T/a.img" --cache-dev "$cache_a"
expect_refused "--meta-dev without --cache-dev" 2 'cache-dev' \
  --origin "file:$T/a.img" --meta-dev "$meta_a"
expect_refused "unknown mode" 2 'mode' \
  --origin "file:$T/a.img" --cache-dev "$cache_a" --meta-dev "$meta_a" --mode writearound

# None of this harmed cache A: it still serves a.img, with its dirty data.
CACHE_DEV=$cache_a META_DEV=$meta_a
start_cache_server "$T/a.img" writeback "${nowb[@]}"
get_stats
[ "$(stat_field dirty_bytes)" -gt 0 ] || fail "cache A lost its dirty data: $STATS"
qemu_io "$URI" -c 'read -P 0x5a 0 1M' -c 'read -P 0xa5 5M 12345' -c 'read -P 0 1M 4M'
stop_server
expect_clean_exit "cache A after the refusals"
"$RBDCACHE" check --meta-dev "$meta_a" >"$T/check.out" 2>&1 ||
  { cat "$T/check.out" >&2; fail "rbdcache check fails on cache A's metadata"; }
# And cache B is still usable, for its first origin.
CACHE_DEV=$cache_b META_DEV=$meta_b
start_cache_server "$T/b.img" writethrough
qemu_io "$URI" -c 'write -P 0x77 0 64k' -c 'read -P 0x77 0 64k'
stop_server
expect_clean_exit "cache B"

log "PASS"
