#!/usr/bin/env bash
# A client that connects and never finishes the handshake is dropped after
# --handshake-timeout (here 1 s), with a log line; the server goes on
# serving; a client that finished the handshake may stay idle much longer.
source "$(dirname "$0")/lib.sh" "$@"
require python3
[ "$NBD_TEST_SERVER" = rbdcache ] || skip "rbdcache's own option"

make_origin "$T/origin.img" $((16 << 20)) random
start_server "$T/origin.img" --handshake-timeout 1

python3 - "$(dirname "$0")" "$SOCK" <<'PY' || fail "handshake deadline"
import sys, time
sys.path.insert(0, sys.argv[1])
import nbd_raw_client as nbd

# Greeted, then silent: dropped after about 1 s, certainly within 10 s.
silent = nbd.Conn(sys.argv[2])
silent.greeting()
t0 = time.monotonic()
silent.expect_eof("a client silent after the greeting")
took = time.monotonic() - t0
if not 0.5 <= took <= 10:
    sys.exit("dropped after %.1f s, expected about 1 s" % took)

# Half an option, then silent: dropped too.
partial = nbd.Conn(sys.argv[2])
partial.greeting()
partial.send_client_flags(1)  # NBD_FLAG_C_FIXED_NEWSTYLE
partial.send(b"IHAVEOPT"[:5])
partial.expect_eof("a client stuck in the middle of an option")

# A negotiated client idles for 3 s (three deadlines) and is still served.
idle = nbd.Conn(sys.argv[2])
idle.greeting()
idle.send_client_flags(1)
idle.go()
time.sleep(3)
idle.read(0, 4096)
print("ok", file=sys.stderr)
PY
grep -q "no handshake within 1000 ms; closing it" "$SERVER_LOG" || fail "no log line for the dropped client"
server_alive || fail "the server died"
nbdinfo --size "$URI" >/dev/null 2>&1 || fail "a new client is not served"
stop_server
expect_clean_exit "handshake timeout"
log "PASS"
