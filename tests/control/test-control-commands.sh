#!/usr/bin/env bash
# The control socket's other commands and their errors:
#   - mode switches the running server's mode (status shows it);
#   - invalidate refuses while dirty data exists, names --discard-dirty,
#     and drops only clean blocks once clean; --discard-dirty warns loudly
#     and the discarded writes really are gone (reads return the origin's);
#   - release on a file origin is refused with a clear message;
#   - a missing control socket, an unknown command and a malformed request
#     get clear errors; --help of every client command explains it.
source "$(dirname "$0")/../cache_integration/lib-cache.sh" "$@"
require qemu-io python3

make_origin "$T/origin.img" $((64 << 20)) sparse
make_cache c 64M 16M
start_cache_server "$T/origin.img" writeback --dirty-high 90 --dirty-low 80 --max-dirty-age 3600 \
  --sequential-cutoff 0

field() {  # field PATH: a field of status --json
  "$RBDCACHE" status --json -c "$CTL" | python3 -c '
import json, sys
v = json.load(sys.stdin)
for k in sys.argv[1].split("."):
    v = v[k]
print(v)' "$1"
}

log "mode"
out=$("$RBDCACHE" mode -c "$CTL" writethrough 2>&1) || fail "mode failed: $out"
grep -q "mode: writethrough (was writeback)" <<<"$out" || fail "mode output: $out"
[ "$(field mode)" = writethrough ] || fail "status shows mode $(field mode)"
"$RBDCACHE" mode -c "$CTL" writeback >/dev/null || fail "mode writeback failed"
"$RBDCACHE" mode -c "$CTL" sideways >"$T/bad-mode.out" 2>&1 && fail "mode sideways accepted"

log "invalidate refuses with dirty data"
qemu_io "$URI" -c 'write -P 0x21 0 1M' -c 'write -P 0x22 8M 1M' -c flush
"$RBDCACHE" invalidate -c "$CTL" >"$T/inv.out" 2>&1 && fail "invalidate succeeded with dirty data"
grep -q "dirty" "$T/inv.out" && grep -q -- "--discard-dirty" "$T/inv.out" || fail "unclear refusal: $(cat "$T/inv.out")"
qemu_io "$URI" -c 'read -P 0x21 0 1M'

log "invalidate after a flush drops the clean blocks only"
"$RBDCACHE" flush --wait -c "$CTL" >/dev/null 2>&1 || fail "flush failed"
[ "$(field cache.mapped_blocks)" -gt 0 ] || fail "nothing cached before invalidate"
out=$("$RBDCACHE" invalidate -c "$CTL" 2>&1) || fail "invalidate failed: $out"
grep -q "invalidated .* blocks: 2.0 MiB clean dropped" <<<"$out" || fail "invalidate output: $out"
[ "$(field cache.mapped_blocks)" = 0 ] || fail "blocks left after invalidate"
qemu_io "$URI" -c 'read -P 0x21 0 1M' -c 'read -P 0x22 8M 1M'

log "invalidate --discard-dirty destroys dirty data, loudly"
qemu_io "$URI" -c 'write -P 0x33 0 1M' -c flush
out=$("$RBDCACHE" invalidate --discard-dirty -c "$CTL" 2>&1) || fail "invalidate --discard-dirty failed: $out"
grep -q "DESTROYED" <<<"$out" || fail "--discard-dirty is not loud: $out"
grep -q "DISCARDING" "$SERVER_LOG" || fail "the server did not log the discard"
[ "$(field cache.dirty_bytes)" = 0 ] || fail "dirty data left"
# The discarded write is gone: the origin's (flushed) data is back.
qemu_io "$URI" -c 'read -P 0x21 0 1M'

log "release on a file origin"
"$RBDCACHE" release -c "$CTL" >"$T/rel.out" 2>&1 && fail "release succeeded on a file origin"
grep -q "not a shared (RBD) image" "$T/rel.out" || fail "unclear release refusal: $(cat "$T/rel.out")"

log "errors"
"$RBDCACHE" status -c "$T/none.ctl" >"$T/none.out" 2>&1 && fail "status on a missing socket succeeded"
grep -q "is 'rbdcache serve' running" "$T/none.out" || fail "unclear missing-socket error: $(cat "$T/none.out")"
"$RBDCACHE" status >"$T/noarg.out" 2>&1
[ $? = 2 ] || fail "status without --control did not exit 2"
RBDCACHE_CONTROL=$CTL "$RBDCACHE" status >/dev/null 2>&1 || fail "RBDCACHE_CONTROL is not used"
reply=$(python3 - "$CTL" <<'PY'
import socket, sys
def ask(line):
    s = socket.socket(socket.AF_UNIX)
    s.connect(sys.argv[1])
    s.sendall(line)
    data = b""
    while not data.endswith(b"\n"):
        chunk = s.recv(4096)
        if not chunk:
            break
        data += chunk
    return data.decode()
print(ask(b'{"cmd":"frobnicate"}\n').strip())
print(ask(b'not json\n').strip())
PY
)
grep -q '"code":"bad-request".*unknown command' <<<"$reply" || fail "unknown command reply: $reply"
[ "$(grep -c '"ok":false' <<<"$reply")" = 2 ] || fail "malformed request reply: $reply"
server_alive || fail "the server died on a bad request"

for c in status flush mode invalidate release; do
  "$RBDCACHE" "$c" --help >"$T/help-$c.out" 2>&1 || fail "$c --help failed"
  grep -q -- "--control" "$T/help-$c.out" || fail "$c --help does not explain --control"
done
stop_server
expect_clean_exit "commands"
log "PASS"
