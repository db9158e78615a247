#!/usr/bin/env bash
# rbdcache serve speaks systemd's readiness protocol (Type=notify):
#   - READY=1 comes once, from the server's own pid, with MAINPID=<that pid>
#     and STATUS=serving ..., and only when the export is really served: at
#     the moment it arrives the NBD socket answers with the NBD greeting,
#     nbdinfo reads the export, and the control socket accepts;
#   - STOPPING=1 comes after SIGTERM, after READY=1, and the server still
#     exits 0;
#   - a server that cannot start never sends READY=1;
#   - a NOTIFY_SOCKET nobody listens on changes nothing: the server serves
#     and stops as usual.
# notify_listener.py stands in for systemd's notification socket.
source "$(dirname "$0")/../cache_integration/lib-cache.sh" "$@"
require nbdinfo

LISTENER="$(dirname "$0")/notify_listener.py"
SIZE=$((32 * 1048576))
origin="$T/origin.img"
make_origin "$origin" "$SIZE" zero

# start_listener NAME [LISTENER-ARGS...]: a notification socket $T/NAME.notify
# logging to $T/NAME.jsonl; sets NOTIFY_PATH and NOTIFY_LOG.
start_listener() {
  local name=$1 i
  shift
  NOTIFY_PATH="$T/$name.notify"
  NOTIFY_LOG="$T/$name.jsonl"
  : >"$NOTIFY_LOG"
  python3 "$LISTENER" "$NOTIFY_PATH" "$NOTIFY_LOG" "$@" 2>"$T/$name-listener.log" &
  track_pid $!
  for ((i = 0; i < 100; i++)); do
    [ -e "$NOTIFY_PATH.listening" ] && return 0
    sleep 0.1
  done
  fail "the notification listener did not start"
}

# notify_count FIELD VALUE: how many notifications set FIELD=VALUE.
notify_count() {
  python3 - "$NOTIFY_LOG" "$1" "$2" <<'PY'
import json, sys
n = 0
for line in open(sys.argv[1]):
    if json.loads(line)["fields"].get(sys.argv[2]) == sys.argv[3]:
        n += 1
print(n)
PY
}

# wait_notify FIELD VALUE [SECONDS]: wait until a notification sets FIELD=VALUE.
wait_notify() {
  local i limit=${3:-$READY_TIMEOUT}
  for ((i = 0; i < limit * 10; i++)); do
    [ "$(notify_count "$1" "$2")" -gt 0 ] && return 0
    sleep 0.1
  done
  cat "$NOTIFY_LOG" >&2
  fail "no $1=$2 notification within ${limit}s"
}

# ---- A cached server under a listener.
make_cache c 64M 16M
ctl="$T/nbd1.ctl"  # start_server's first socket is $T/nbd1.sock
start_listener main --nbd-socket "$T/nbd1.sock" --control "$ctl"
export NOTIFY_SOCKET=$NOTIFY_PATH
start_cache_server "$origin" writeback
unset NOTIFY_SOCKET
wait_notify READY 1

python3 - "$NOTIFY_LOG" "$SERVER_PID" "$SIZE" <<'PY' || fail "READY=1 broke its contract (log: $(cat "$NOTIFY_LOG"))"
import json, sys
recs = [json.loads(l) for l in open(sys.argv[1])]
pid, size = int(sys.argv[2]), int(sys.argv[3])
ready = [r for r in recs if r["fields"].get("READY") == "1"]
errors = []
if len(ready) != 1:
    errors.append("%d READY=1 notifications, expected 1" % len(ready))
r = ready[0]
f = r["fields"]
if r["pid"] != pid:
    errors.append("READY=1 sent by pid %s, the server is %d" % (r["pid"], pid))
if f.get("MAINPID") != str(pid):
    errors.append("MAINPID=%s, the server is %d" % (f.get("MAINPID"), pid))
if not f.get("STATUS", "").startswith("serving"):
    errors.append("STATUS=%r does not start with 'serving'" % f.get("STATUS"))
c = r["checks"]
for what in ("greeting", "nbdinfo", "control"):
    if c.get(what) is not None:
        errors.append("when READY=1 arrived, %s failed: %s" % (what, c[what]))
if c.get("size") != size:
    errors.append("nbdinfo at READY=1 saw size %r, expected %d" % (c.get("size"), size))
early = [x for x in recs if x["seq"] < r["seq"] and "STOPPING" in x["fields"]]
if early:
    errors.append("STOPPING before READY: %r" % early)
for e in errors:
    print("test-sd-notify:", e, file=sys.stderr)
sys.exit(1 if errors else 0)
PY
log "READY=1 from pid $SERVER_PID once the export and the control socket were up"

# Serving goes on as usual.
qemu_io_ok=0
if command -v qemu-io >/dev/null 2>&1; then
  qemu_io "$URI" -c 'write -P 0x5a 0 1M' -c flush -c 'read -P 0x5a 0 1M'
  qemu_io_ok=1
fi

stop_server
expect_clean_exit "SIGTERM under a notification socket"
wait_notify STOPPING 1 10
python3 - "$NOTIFY_LOG" "$SERVER_PID" <<'PY' || fail "STOPPING=1 broke its contract (log: $(cat "$NOTIFY_LOG"))"
import json, sys
recs = [json.loads(l) for l in open(sys.argv[1])]
pid = int(sys.argv[2])
ready = [r["seq"] for r in recs if r["fields"].get("READY") == "1"]
stopping = [r for r in recs if r["fields"].get("STOPPING") == "1"]
errors = []
if len(stopping) != 1:
    errors.append("%d STOPPING=1 notifications, expected 1" % len(stopping))
s = stopping[0]
if s["pid"] != pid:
    errors.append("STOPPING=1 sent by pid %s, the server was %d" % (s["pid"], pid))
if s["seq"] < ready[0]:
    errors.append("STOPPING=1 came before READY=1")
if any(r["fields"].get("READY") == "1" for r in recs if r["seq"] > s["seq"]):
    errors.append("READY=1 after STOPPING=1")
for e in errors:
    print("test-sd-notify:", e, file=sys.stderr)
sys.exit(1 if errors else 0)
PY
log "STOPPING=1 after SIGTERM, and exit status 0"

# ---- A server that cannot start (a cache bound to another origin) never
# says READY=1.
make_origin "$T/other.img" "$SIZE" zero
start_listener refused
NOTIFY_SOCKET=$NOTIFY_PATH timeout 60 "$RBDCACHE" serve --origin "file:$T/other.img" \
  --socket "$T/refused.sock" --cache-dev "$CACHE_DEV" --meta-dev "$META_DEV" \
  </dev/null >"$T/refused.log" 2>&1
rc=$?
[ "$rc" = 1 ] || fail "serving a cache over another origin: exit $rc, expected 1"
sleep 0.5
[ "$(notify_count READY 1)" = 0 ] || fail "a server that failed to start sent READY=1: $(cat "$NOTIFY_LOG")"
log "a refused start sent no READY=1"

# ---- Nobody listening on NOTIFY_SOCKET: serving and stopping as usual.
export NOTIFY_SOCKET="$T/nobody.notify"
start_cache_server "$origin" writeback
unset NOTIFY_SOCKET
nbdinfo --json "$URI" >"$T/nobody-nbdinfo.json" 2>&1 ||
  { cat "$T/nobody-nbdinfo.json" >&2; fail "nbdinfo fails when nobody listens on NOTIFY_SOCKET"; }
[ "$qemu_io_ok" = 1 ] && qemu_io "$URI" -c 'read -P 0x5a 0 1M'
stop_server
expect_clean_exit "SIGTERM with nobody on NOTIFY_SOCKET"

log "PASS"
