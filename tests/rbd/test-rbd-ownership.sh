#!/usr/bin/env bash
# Ownership of an RBD image (docs/migration.md, "Ownership"):
#   1. A writeback rbdcache holds the image's exclusive lock: a second
#      writeback rbdcache on the same image is refused at once, naming the
#      lock holder and the first cache, and a direct librbd writer (qemu-io
#      over rbd:) gets an error instead of writing behind the cache.
#   2. The image's metadata records the cache: rbdcache.cache, host, pid,
#      epoch and state (dirty in writeback mode).
#   3. A cache stopped with dirty data (as good as a lost host, for the
#      others) leaves state=dirty: a second cache is then refused (message
#      naming the first) although the lock is free, and attaches with
#      --force, which warns loudly.
#   4. Writethrough mode does not take the lock.
source "$(dirname "$0")/../cache_integration/lib-cache.sh" "$@"
source "$(dirname "$0")/lib-ceph.sh"
require qemu-io

create_image 64M
make_host_caches a b

meta() { rbd image-meta get "$IMAGE_SPEC" "rbdcache.$1" 2>/dev/null; }

# try_serve NAME CACHE META [ARGS...]: runs a server that is expected to
# refuse to start; sets RC and OUT (its stderr).
try_serve() {
  local name=$1 cache=$2 metadev=$3
  shift 3
  local t0=$SECONDS
  timeout 60 "$RBDCACHE" serve --origin "rbd:$IMAGE_SPEC" --cache-dev "$cache" --meta-dev "$metadev" \
    --socket "$T/$name.sock" "$@" </dev/null >"$T/$name.out" 2>&1
  RC=$?
  OUT=$(cat "$T/$name.out")
  [ $((SECONDS - t0)) -lt 30 ] || fail "$name: took $((SECONDS - t0)) s to give up"
}

log "1. a writeback cache holds the exclusive lock"
start_rbd_server "$IMAGE_SPEC" --cache-dev "$CACHE_A" --meta-dev "$META_A" --mode writeback
PID_A=$SERVER_PID
qemu_io "$URI" -c 'write -P 0x5a 0 1M' -c flush
UUID_A=$(meta cache) || fail "no rbdcache.cache in the image metadata"
[ "$(meta state)" = dirty ] || fail "state is '$(meta state)', expected dirty in writeback"
[ "$(meta host)" = "$(hostname)" ] || fail "host is '$(meta host)', expected $(hostname)"
[ "$(meta pid)" = "$PID_A" ] || fail "pid is '$(meta pid)', expected $PID_A"
[ "$(meta epoch)" -ge 1 ] || fail "epoch is '$(meta epoch)'"

try_serve second "$CACHE_B" "$META_B" --mode writeback
[ "$RC" = 1 ] || fail "a second writeback instance was not refused (exit $RC): $OUT"
grep -q "is locked by" <<<"$OUT" || fail "the refusal does not name the lock holder: $OUT"
grep -q "$UUID_A" <<<"$OUT" || fail "the refusal does not name the first cache $UUID_A: $OUT"
server_alive "$PID_A" || fail "the first server died"

out=$(timeout 60 qemu-io -f raw -c 'write -P 0x77 2M 64k' "rbd:$IMAGE_SPEC:id=$CEPH_USER_ID:conf=$CEPH_CONF" 2>&1)
grep -qi "read-only\|failed" <<<"$out" || fail "a direct librbd write was not refused while the cache holds the lock: $out"
qemu_io "$URI" -c 'read -P 0x5a 0 1M' -c 'read -P 0 2M 64k'

log "3. stopped with dirty data: the next cache is refused unless --force"
stop_server "$PID_A"
[ "$(meta state)" = dirty ] || fail "state is '$(meta state)' after stopping with dirty data"
try_serve third "$CACHE_B" "$META_B" --mode writeback
[ "$RC" = 1 ] || fail "cache b attached although cache a holds dirty data (exit $RC): $OUT"
grep -q "may hold writes this image does not have" <<<"$OUT" || fail "unclear refusal: $OUT"
grep -q "$UUID_A" <<<"$OUT" || fail "the refusal does not name cache a: $OUT"
grep -q -- "--force" <<<"$OUT" || fail "the refusal does not mention --force: $OUT"

start_rbd_server "$IMAGE_SPEC" --cache-dev "$CACHE_B" --meta-dev "$META_B" --mode writeback --force
grep -q "warning: --force: IGNORING cache $UUID_A" "$SERVER_LOG" || fail "--force did not warn loudly"
UUID_B=$(meta cache)
[ "$UUID_B" != "$UUID_A" ] || fail "the metadata still names cache a"
stop_server
expect_clean_exit "cache b"

log "4. cache a, back with its dirty data, is refused: b has used the image since"
try_serve fourth "$CACHE_A" "$META_A" --mode writeback
[ "$RC" = 1 ] || fail "cache a attached over cache b's use of the image (exit $RC): $OUT"
grep -q "could overwrite newer data" <<<"$OUT" || fail "unclear refusal: $OUT"

log "5. writethrough does not take the lock"
make_cache c 64M 16M
start_rbd_server "$IMAGE_SPEC" --cache-dev "$CACHE_DEV" --meta-dev "$META_DEV" --mode writethrough --force
"$RBDCACHE" status --json -c "$CTL" >"$T/status.json" || fail "status failed"
python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); sys.exit(0 if d["ownership"]["exclusive_lock"] is False and d["ownership"]["shared_image"] is True else 1)' "$T/status.json" ||
  fail "writethrough claims the lock: $(cat "$T/status.json")"
# Another librbd client can write meanwhile (the cache cooperates).
timeout 60 qemu-io -f raw -c 'write -P 0x42 8M 64k' "rbd:$IMAGE_SPEC:id=$CEPH_USER_ID:conf=$CEPH_CONF" \
  >"$T/direct.out" 2>&1 || fail "a direct write failed beside a writethrough cache: $(cat "$T/direct.out")"
grep -qi "failed" "$T/direct.out" && fail "a direct write failed beside a writethrough cache: $(cat "$T/direct.out")"
qemu_io "$URI" -c 'write -P 0x43 12M 64k' -c 'read -P 0x42 8M 64k'
stop_server
log "PASS"
