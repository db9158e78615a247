#!/usr/bin/env bash
# scripts/systemd/rbdcache@.service is a valid unit that runs rbdcache the
# way the server expects, without a running systemd (CI has none as PID 1):
#   - systemd-analyze verify accepts the template and an instance with no
#     warning at all (an unknown key or a missing binary would print one:
#     checked on a broken copy, so the check can fail);
#   - the settings the server relies on are there: Type=notify,
#     ExecStart=/usr/bin/rbdcache serve --config /etc/rbdcache/%i.conf,
#     SIGTERM to stop with a generous timeout, RuntimeDirectory=rbdcache kept
#     across instances, Restart=on-failure, ordering after the network, and
#     hardening that leaves block devices reachable (DeviceAllow=block-*,
#     no PrivateDevices) and /var/lib/rbdcache writable under
#     ProtectSystem=strict;
#   - systemd-analyze security rates its exposure 3.5 or lower;
#   - the unit, docs/examples/rbdcache-vm.conf and docs/examples/libvirt-disk.xml
#     agree on the socket's place;
#   - what systemd would run works: ExecStart with %i expanded (and /etc,
#     /run moved under a temporary directory), under the unit's UMask, with
#     NOTIFY_SOCKET, sends READY=1 with the export served, gives the NBD
#     socket the example's socket-group and socket-mode (libvirt-qemu, 0660)
#     and other users no access to it, and on the unit's KillSignal exits within
#     TimeoutStopSec with a status the unit counts as success.
source "$(dirname "$0")/../cache_integration/lib-cache.sh" "$@"
require systemd-analyze nbdinfo

TOP="$(cd "$(dirname "$0")/../.." && pwd)"
UNIT="$TOP/scripts/systemd/rbdcache@.service"
EXAMPLE="$TOP/docs/examples/rbdcache-vm.conf"
LIBVIRT="$TOP/docs/examples/libvirt-disk.xml"
LISTENER="$TOP/tests/ops/notify_listener.py"
for f in "$UNIT" "$EXAMPLE" "$LIBVIRT" "$LISTENER"; do
  [ -r "$f" ] || fail "missing $f"
done
RBDCACHE_ABS=$(readlink -f "$RBDCACHE")

# unit_get KEY: every value of KEY in the unit, one per line, in order
# (repeated keys and space-separated lists kept as written).
unit_get() {
  python3 - "$UNIT" "$1" <<'PY'
import sys
for line in open(sys.argv[1]):
    line = line.strip()
    if line and line[0] not in "#;[" and "=" in line:
        k, v = line.split("=", 1)
        if k.strip() == sys.argv[2]:
            print(v.strip())
PY
}
# (Pipe it into grep without -q: grep -q exits at the first match, and
# unit_get, still writing, then fails with EPIPE, which pipefail turns into
# a failed check.)
# unit_one KEY: the value of KEY; fails unless it is set exactly once.
unit_one() {
  local v n
  v=$(unit_get "$1")
  n=$(printf '%s' "$v" | grep -c '^')
  [ "$n" = 1 ] || fail "$1= is set $n times in the unit, expected once"
  printf '%s\n' "$v"
}
# seconds SPAN: a systemd time span ("5min", "90s", "1h 30s", "300") in seconds.
seconds() {
  python3 - "$1" <<'PY'
import re, sys
units = {"": 1, "s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "hr": 3600}
total = 0
for num, unit in re.findall(r"(\d+)\s*([a-z]*)", sys.argv[1]):
    if unit not in units:
        sys.exit("unknown time unit %r" % unit)
    total += int(num) * units[unit]
print(total)
PY
}

# ---- 1. systemd-analyze verify: silent on the unit, loud on a broken copy.
mkdir -p "$T/units" "$T/broken"
grep -qx 'ExecStart=/usr/bin/rbdcache serve --config /etc/rbdcache/%i.conf' "$UNIT" ||
  fail "ExecStart is not '/usr/bin/rbdcache serve --config /etc/rbdcache/%i.conf'"
# The build's binary stands in for /usr/bin/rbdcache (verify checks it is
# executable).
sed "s|^ExecStart=/usr/bin/rbdcache |ExecStart=$RBDCACHE_ABS |" "$UNIT" >"$T/units/rbdcache@.service"
for name in rbdcache@.service rbdcache@vm1.service; do
  systemd-analyze verify --man=no "$T/units/$name" >"$T/verify.out" 2>&1
  rc=$?
  [ "$rc" = 0 ] || { cat "$T/verify.out" >&2; fail "systemd-analyze verify $name: exit $rc"; }
  [ ! -s "$T/verify.out" ] || { cat "$T/verify.out" >&2; fail "systemd-analyze verify $name warns"; }
done
sed 's/^KillMode=/KillMod=/' "$T/units/rbdcache@.service" >"$T/broken/rbdcache@.service"
systemd-analyze verify --man=no "$T/broken/rbdcache@vm1.service" >"$T/verify-broken.out" 2>&1
grep -q "KillMod" "$T/verify-broken.out" ||
  { cat "$T/verify-broken.out" >&2; fail "systemd-analyze verify does not report an unknown key here"; }
log "systemd-analyze verify: no warning on the template and on rbdcache@vm1.service"

# ---- 2. The settings the server relies on.
[ "$(unit_one Type)" = notify ] || fail "Type= is not notify"
[ "$(unit_one NotifyAccess)" = main ] || fail "NotifyAccess= is not main"
[ "$(unit_one KillSignal)" = SIGTERM ] || fail "KillSignal= is not SIGTERM (SIGTERM drains)"
case $(unit_one KillMode) in mixed | main) ;; *) fail "KillMode= must be mixed or main: SIGTERM goes to the server alone" ;; esac
stop_s=$(seconds "$(unit_one TimeoutStopSec)") || fail "bad TimeoutStopSec="
((stop_s >= 120)) || fail "TimeoutStopSec= is ${stop_s}s; draining I/O waiting on the cluster needs minutes"
start_s=$(seconds "$(unit_one TimeoutStartSec)") || fail "bad TimeoutStartSec="
((start_s >= 120)) || fail "TimeoutStartSec= is ${start_s}s; opening an image may take 3 x --ceph-timeout"
[ "$(unit_one Restart)" = on-failure ] || fail "Restart= is not on-failure"
unit_get RestartPreventExitStatus | grep -w 2 >/dev/null || fail "usage errors (exit 2) are retried"
[ "$(unit_one RuntimeDirectory)" = rbdcache ] || fail "RuntimeDirectory= is not rbdcache"
[ "$(unit_one RuntimeDirectoryPreserve)" = yes ] ||
  fail "RuntimeDirectoryPreserve= is not yes: stopping one instance would delete the others' sockets"
unit_get Wants | grep -w network-online.target >/dev/null || fail "no Wants=network-online.target"
unit_get After | grep -w network-online.target >/dev/null || fail "no After=network-online.target"
unit_get After | grep -w ceph.target >/dev/null || fail "not ordered after ceph.target"
unit_get WantedBy | grep -w multi-user.target >/dev/null || fail "no WantedBy=multi-user.target"
# Block devices stay reachable.
case $(unit_get PrivateDevices) in "" | no | false) ;; *) fail "PrivateDevices= hides the cache devices" ;; esac
if [ -n "$(unit_get DeviceAllow)$(unit_get DevicePolicy)$(unit_get ProtectClock)" ]; then
  # Any of these turns the device cgroup into an allow list.
  unit_get DeviceAllow | grep -E '^block-\* +rw' >/dev/null || fail "the device allow list lacks 'block-* rw'"
fi
# ProtectSystem=strict needs the writable places spelled out.
if [ "$(unit_get ProtectSystem)" = strict ]; then
  unit_get ReadWritePaths | grep -E '(^| )-?/var/lib/rbdcache( |$)' >/dev/null ||
    fail "ProtectSystem=strict without ReadWritePaths=/var/lib/rbdcache: file-backed caches fail"
fi
case $(unit_get ProtectHome) in "" | no | false | read-only | tmpfs | yes) ;; *) fail "odd ProtectHome=" ;; esac
umask_v=$(unit_one UMask)
(((8#$umask_v & 8#007) == 8#007)) || fail "UMask=$umask_v gives other users access to the NBD socket"
log "Type=notify, SIGTERM, timeouts, restart, runtime directory, ordering and device access as expected"

# ---- 3. Exposure.
systemd-analyze security --offline=true --threshold=35 "$T/units/rbdcache@vm1.service" >"$T/security.out" 2>&1 ||
  { tail -n 5 "$T/security.out" >&2; fail "systemd-analyze security rates the unit above 3.5"; }
log "$(grep -o 'Overall exposure level.*' "$T/security.out" | head -n 1)"

# ---- 4. The unit, the example config and the libvirt snippet agree.
python3 - "$EXAMPLE" "$LIBVIRT" <<'PY' || fail "the examples disagree with the unit"
import re, sys, xml.etree.ElementTree as ET
conf = {}
for line in open(sys.argv[1]):
    m = re.match(r'^([a-z][a-z0-9-]*) = "?([^"]*)"?\s*$', line)
    if m:
        conf[m.group(1)] = m.group(2)
errors = []
sock = conf.get("socket", "")
if not sock.startswith("/run/rbdcache/"):
    errors.append("the example's socket %r is not under the unit's RuntimeDirectory /run/rbdcache" % sock)
for k in ("cache-dev", "meta-dev"):
    v = conf.get(k, "")
    if not (v.startswith("/dev/") or v.startswith("/var/lib/rbdcache/")):
        errors.append("the example's %s %r is neither a device nor under /var/lib/rbdcache" % (k, v))
disk = ET.parse(sys.argv[2]).getroot()
host = disk.find("./source/host")
src = disk.find("./source")
drv = disk.find("./driver")
if disk.get("type") != "network" or src is None or src.get("protocol") != "nbd":
    errors.append("the libvirt disk is not a network disk with protocol nbd")
if host is None or host.get("transport") != "unix" or host.get("socket") != sock:
    errors.append("the libvirt disk's socket %r is not the example's %r"
                  % (None if host is None else host.get("socket"), sock))
if drv is None or drv.get("type") != "raw" or drv.get("cache") != "none" or drv.get("discard") != "unmap":
    errors.append("the libvirt driver is not type=raw cache=none discard=unmap")
if src is not None and src.get("name", "") != conf.get("export", ""):
    errors.append("the libvirt export name %r is not the example's %r" % (src.get("name"), conf.get("export", "")))
for e in errors:
    print("test-systemd-unit:", e, file=sys.stderr)
sys.exit(1 if errors else 0)
PY
log "the example config and the libvirt disk use the unit's /run/rbdcache socket"

# ---- 5. What systemd would run, run by hand.
size=$((32 * 1048576))
make_origin "$T/vm1.img" "$size" zero
make_cache vm1 64M 16M
mkdir -p "$T/etc/rbdcache" "$T/run/rbdcache"
# The example's socket group is libvirt's; where libvirt is not installed
# the group does not exist (serve would refuse it) and the server's own
# group stands in.
EXAMPLE_GROUP=$(sed -n 's/^socket-group = "\(.*\)"$/\1/p' "$EXAMPLE")
EXAMPLE_MODE=$(sed -n 's/^socket-mode = "0*\([0-7]*\)"$/\1/p' "$EXAMPLE")
[ -n "$EXAMPLE_GROUP" ] && [ -n "$EXAMPLE_MODE" ] || fail "the example sets no socket-group or socket-mode"
SOCKET_GROUP=$EXAMPLE_GROUP
if ! getent group "$EXAMPLE_GROUP" >/dev/null; then
  SOCKET_GROUP=$(id -gn)
  log "no group $EXAMPLE_GROUP on this host (libvirt not installed): using $SOCKET_GROUP"
fi
python3 - "$EXAMPLE" "$T/etc/rbdcache/vm1.conf" "$T" "$CACHE_DEV" "$META_DEV" "$SOCKET_GROUP" <<'PY' || fail "cannot write the config"
import re, sys
src, out, t, cache, meta, group = sys.argv[1:]
set_to = {"origin": '"file:%s/vm1.img"' % t, "cache-dev": '"%s"' % cache, "meta-dev": '"%s"' % meta,
          "socket-group": '"%s"' % group}
lines = []
for line in open(src):
    m = re.match(r"^([a-z][a-z0-9-]*) = ", line)
    if m and m.group(1) in set_to:
        line = "%s = %s\n" % (m.group(1), set_to[m.group(1)])
    lines.append(line.replace("/run/rbdcache/", t + "/run/rbdcache/"))
open(out, "w").write("".join(lines))
PY
exec_start=$(unit_one ExecStart)
cmdline=${exec_start//%i/vm1}
cmdline=${cmdline//\/etc\/rbdcache\//$T/etc/rbdcache/}
cmdline=${cmdline/#\/usr\/bin\/rbdcache /$RBDCACHE_ABS }
read -r -a argv <<<"$cmdline"
sock="$T/run/rbdcache/vm1.sock"
NOTIFY_PATH="$T/unit.notify"
NOTIFY_LOG="$T/unit.jsonl"
python3 "$LISTENER" "$NOTIFY_PATH" "$NOTIFY_LOG" --nbd-socket "$sock" 2>"$T/listener.log" &
track_pid $!
for ((i = 0; i < 100; i++)); do [ -e "$NOTIFY_PATH.listening" ] && break; sleep 0.1; done
[ -e "$NOTIFY_PATH.listening" ] || fail "the notification listener did not start"
SERVER_LOG="$T/unit-server.log"
(umask "$umask_v" && NOTIFY_SOCKET=$NOTIFY_PATH exec "${argv[@]}") </dev/null >"$SERVER_LOG" 2>&1 &
SERVER_PID=$!
track_pid "$SERVER_PID"
ready=""
for ((i = 0; i < start_s * 10; i++)); do
  ready=$(python3 -c '
import json, sys
for l in open(sys.argv[1]):
    r = json.loads(l)
    if r["fields"].get("READY") == "1":
        print(json.dumps(r)); break' "$NOTIFY_LOG")
  [ -n "$ready" ] && break
  server_alive || fail "the unit's command exited before READY=1"
  sleep 0.1
done
[ -n "$ready" ] || fail "no READY=1 within TimeoutStartSec (${start_s}s)"
python3 - "$ready" "$SERVER_PID" "$size" <<'PY' || fail "READY=1 came before the export was served: $ready"
import json, sys
r, pid, size = json.loads(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
ok = r["pid"] == pid and r["checks"].get("nbdinfo") is None and r["checks"].get("size") == size
sys.exit(0 if ok else 1)
PY
perm=$(stat -c %a "$sock")
((8#$perm & 8#007)) && fail "the NBD socket is mode $perm under UMask=$umask_v: other users can reach the disk"
[ "$(stat -c '%a %G' "$sock")" = "$EXAMPLE_MODE $SOCKET_GROUP" ] ||
  fail "the NBD socket is '$(stat -c '%a %G' "$sock")', expected '$EXAMPLE_MODE $SOCKET_GROUP' (the example's)"
log "ExecStart with %i=vm1 sent READY=1 with the export served; socket mode $perm, group $SOCKET_GROUP"
kill_signal=$(unit_one KillSignal)
EXIT_TIMEOUT=$stop_s stop_server "$SERVER_PID" "${kill_signal#SIG}"
[ "$SERVER_RC" != 124 ] || fail "the server outlived TimeoutStopSec (${stop_s}s) after $kill_signal"
ok_status=" 0 $(unit_get SuccessExitStatus | tr '\n' ' ') "
[[ "$ok_status" == *" $SERVER_RC "* ]] || fail "exit status $SERVER_RC after $kill_signal is a failure for the unit"
log "$kill_signal: exit $SERVER_RC, counted as success"

log "PASS"
