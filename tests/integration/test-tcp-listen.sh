#!/usr/bin/env bash
# --listen PORT serves the same export over TCP, bound to loopback only;
# --listen ADDR:PORT binds that address.  Data written over TCP is read
# back over the unix socket.
source "$(dirname "$0")/lib.sh" "$@"
require_rbdcache
require nbdinfo qemu-io python3

origin="$T/origin.img"
make_origin "$origin" $((16 * 1048576)) sparse

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# listeners PORT: the local addresses listening on TCP port PORT.
listeners() {
  python3 - "$1" <<'PY'
import sys
port = int(sys.argv[1])
for path, v6 in (("/proc/net/tcp", False), ("/proc/net/tcp6", True)):
    try:
        lines = open(path).read().splitlines()[1:]
    except OSError:
        continue
    for line in lines:
        f = line.split()
        addr, p = f[1].split(":")
        if f[3] != "0A" or int(p, 16) != port:
            continue
        if v6:
            print("[" + addr + "]")
        else:
            print(".".join(str(b) for b in reversed(bytes.fromhex(addr))))
PY
}

# wait_tcp PORT: wait until something listens on PORT.
wait_tcp() {
  local i
  for ((i = 0; i < READY_TIMEOUT * 10; i++)); do
    [ -n "$(listeners "$1")" ] && return 0
    server_alive || fail "server exited before listening on port $1"
    sleep 0.1
  done
  fail "nothing listens on port $1"
}

port=$(free_port)
start_server "$origin" --listen "$port"
wait_tcp "$port"
l=$(listeners "$port")
[ "$l" = 127.0.0.1 ] || fail "--listen $port: listening on '$l', expected only 127.0.0.1"
nbdinfo --size "nbd://127.0.0.1:$port" >"$T/size" || fail "nbdinfo over TCP failed"
[ "$(cat "$T/size")" = $((16 * 1048576)) ] || fail "size over TCP: $(cat "$T/size")"
qemu_io "nbd://127.0.0.1:$port" -c 'write -P 0x6b 1M 64k' -c flush
qemu_io "$URI" -c 'read -P 0x6b 1M 64k'
stop_server
expect_clean_exit "--listen PORT"

port=$(free_port)
start_server "$origin" --listen "127.0.0.1:$port" --export tcpdisk
wait_tcp "$port"
nbdinfo --size "nbd://127.0.0.1:$port/tcpdisk" >/dev/null || fail "named export over TCP failed"
qemu_io -r "nbd://127.0.0.1:$port/tcpdisk" -c 'read -P 0x6b 1M 64k'
stop_server
expect_clean_exit "--listen ADDR:PORT"
[ -z "$(listeners "$port")" ] || fail "port $port still listening after the server exited"

log "PASS"
