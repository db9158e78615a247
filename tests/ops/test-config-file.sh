#!/usr/bin/env bash
# rbdcache serve --config FILE reads serve's options from FILE, as
# docs/examples/rbdcache-vm.conf shows them:
#   - the example names every serve option (set or commented out), and
#     nothing else;
#   - the example itself is accepted, every commented-out setting included
#     (with the host-specific paths overridden on the command line), and
#     gives the NBD socket the group and mode it sets (libvirt-qemu, 0660);
#   - a config derived from it takes effect: export name, read-only, cache
#     mode, threads and the control socket path all come from the file;
#   - an option on the command line wins over the file;
#   - an unknown key, a bad value, a missing file or a missing origin stops
#     serve with exit status 2 and a message naming the culprit, and nothing
#     is served.
source "$(dirname "$0")/../cache_integration/lib-cache.sh" "$@"
require nbdinfo

EXAMPLE="$(cd "$(dirname "$0")/../../docs/examples" && pwd)/rbdcache-vm.conf"
[ -r "$EXAMPLE" ] || fail "no example config at $EXAMPLE"
SIZE=$((32 * 1048576))
origin="$T/origin.img"
make_origin "$origin" "$SIZE" zero
make_cache vm1 64M 16M

# The example gives the NBD socket to libvirt's QEMU group. Where libvirt
# is not installed that group does not exist and serve would refuse it: the
# server's own group stands in, in every config derived here and on the
# command line for the example itself.
EXAMPLE_GROUP=$(sed -n 's/^socket-group = "\(.*\)"$/\1/p' "$EXAMPLE")
EXAMPLE_MODE=$(sed -n 's/^socket-mode = "0*\([0-7]*\)"$/\1/p' "$EXAMPLE")
[ -n "$EXAMPLE_GROUP" ] && [ -n "$EXAMPLE_MODE" ] || fail "the example sets no socket-group or socket-mode"
SOCKET_GROUP=$EXAMPLE_GROUP
group_override=()
if ! getent group "$EXAMPLE_GROUP" >/dev/null; then
  SOCKET_GROUP=$(id -gn)
  group_override=(--socket-group "$SOCKET_GROUP")
  log "no group $EXAMPLE_GROUP on this host (libvirt not installed): using $SOCKET_GROUP"
fi

# derive_config OUT KEY=VALUE...: the example with each KEY set to VALUE
# (written verbatim, so strings carry their quotes), uncommented if it was
# commented out; KEY=- comments it out; a KEY not in the example is
# appended. socket-group is $SOCKET_GROUP unless given.
derive_config() {
  local out=$1
  shift
  python3 - "$EXAMPLE" "$out" "socket-group=\"$SOCKET_GROUP\"" "$@" <<'PY' || fail "derive_config failed"
import re, sys
src, out, pairs = sys.argv[1], sys.argv[2], sys.argv[3:]
want = dict(p.split("=", 1) for p in pairs)
lines, seen = [], set()
for line in open(src):
    m = re.match(r"^#?([a-z][a-z0-9-]*) = ", line)
    if m and m.group(1) in want:
        k = m.group(1)
        seen.add(k)
        line = ("#%s = x\n" % k) if want[k] == "-" else ("%s = %s\n" % (k, want[k]))
    lines.append(line)
for k, v in want.items():
    if k not in seen and v != "-":
        lines.append("%s = %s\n" % (k, v))
open(out, "w").write("".join(lines))
PY
}

# serve_config NAME SOCKET ARGS...: start serve with ARGS (a --config among
# them) in the background and wait for SOCKET; sets SERVER_PID, SERVER_LOG.
serve_config() {
  local name=$1 sock=$2
  shift 2
  SERVER_LOG="$T/$name.log"
  "$RBDCACHE" serve "$@" </dev/null >"$SERVER_LOG" 2>&1 &
  SERVER_PID=$!
  track_pid "$SERVER_PID"
  wait_for_socket "$sock" "$SERVER_PID"
}

# nbdinfo_field URI FIELD: prints FIELD of the export nbdinfo --json sees.
nbdinfo_field() {
  nbdinfo --json "$1" >"$T/nbdinfo.json" 2>&1 || { cat "$T/nbdinfo.json" >&2; fail "nbdinfo $1 failed"; }
  python3 -c 'import json,sys; v=json.load(open(sys.argv[1]))["exports"][0][sys.argv[2]]; print(str(v).lower() if isinstance(v, bool) else v)' \
    "$T/nbdinfo.json" "$2" || fail "no $2 in nbdinfo's output"
}

# ---- 1. The example names every serve option, and only serve options.
"$RBDCACHE" serve --help >"$T/help.out" 2>&1 || fail "rbdcache serve --help failed"
python3 - "$EXAMPLE" "$T/help.out" <<'PY' || fail "the example config and serve's options disagree"
import re, sys
keys = set()
for line in open(sys.argv[1]):
    m = re.match(r"^#?([a-z][a-z0-9-]*) = ", line)
    if m:
        keys.add(m.group(1))
opts = set()
for line in open(sys.argv[2]):
    m = re.match(r"^\s+(?:-[a-zA-Z],)?--([a-z][a-z0-9-]*)", line)
    if m:
        opts.add(m.group(1))
opts -= {"help", "config"}
errors = ["the example sets '%s', which is not a serve option" % k for k in sorted(keys - opts)]
errors += ["the example does not mention serve option --%s" % o for o in sorted(opts - keys)]
for e in errors:
    print("test-config-file:", e, file=sys.stderr)
sys.exit(1 if errors else 0)
PY
log "the example config names every serve option"

# ---- 2. The example as it stands, every optional setting uncommented: it
# parses and serves. Host-specific values are overridden on the command
# line (an option there wins), everything else comes from the file.
python3 - "$EXAMPLE" "$T/full.conf" <<'PY' || fail "cannot uncomment the example"
import re, sys
out = []
for line in open(sys.argv[1]):
    out.append(line[1:] if re.match(r"^#[a-z][a-z0-9-]* = ", line) else line)
open(sys.argv[2], "w").write("".join(out))
PY
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
overrides=(--origin "file:$origin" --socket "$T/full.sock" --control "$T/full.ctl"
  --cache-dev "$CACHE_DEV" --meta-dev "$META_DEV" --listen "127.0.0.1:$(free_port)"
  "${group_override[@]}")
grep -q '^metrics = ' "$T/full.conf" && overrides+=(--metrics "127.0.0.1:$(free_port)")
# no-control = false and force = false as written: harmless.
serve_config full "$T/full.sock" --config "$T/full.conf" "${overrides[@]}"
[ "$(nbdinfo_field "nbd+unix:///?socket=$T/full.sock" export-size)" = "$SIZE" ] ||
  fail "the full example serves the wrong size"
perms=$(stat -c '%a %G' "$T/full.sock")
[ "$perms" = "$EXAMPLE_MODE $SOCKET_GROUP" ] ||
  fail "the example's NBD socket is '$perms', expected '$EXAMPLE_MODE $SOCKET_GROUP'"
stop_server
expect_clean_exit "the example config with every setting"
log "the example config, every setting uncommented, serves (socket $perms)"

# ---- 3. A config derived from the example takes effect.
cfg="$T/vm1.conf"
derive_config "$cfg" \
  origin="\"file:$origin\"" \
  cache-dev="\"$CACHE_DEV\"" meta-dev="\"$META_DEV\"" \
  socket="\"$T/vm1.sock\"" control="\"$T/vm1-control.ctl\"" \
  export='"vm1-disk"' read-only=true mode='"writethrough"' threads=3
serve_config vm1 "$T/vm1.sock" --config "$cfg"
uri="nbd+unix:///vm1-disk?socket=$T/vm1.sock"
[ "$(nbdinfo_field "$uri" export-name)" = vm1-disk ] || fail "export name not taken from the config"
[ "$(nbdinfo_field "$uri" is_read_only)" = true ] || fail "read-only = true did not make the export read-only"
nbdinfo_field "$uri" description | grep -q 'writethrough' ||
  fail "mode = \"writethrough\" not in effect: $(nbdinfo_field "$uri" description)"
grep -q 'with 3 thread(s)' "$SERVER_LOG" || fail "threads = 3 not in effect"
[ -S "$T/vm1-control.ctl" ] || fail "no control socket at the path the config gives"
[ "$(stat -c %a "$T/vm1-control.ctl")" = 600 ] || fail "the control socket's mode is not 0600"
[ ! -e "$T/vm1.ctl" ] || fail "a control socket at the default path, though the config names another"
get_stats
[ "$(stat_field mode)" = writethrough ] || fail "the cache is not in writethrough mode: $STATS"
stop_server
expect_clean_exit "the derived config"
log "export, read-only, mode, threads and control path came from the config"

# ---- 4. The command line wins over the file.
serve_config cli "$T/vm1.sock" --config "$cfg" --export other --threads 1 --mode writeback
uri="nbd+unix:///other?socket=$T/vm1.sock"
[ "$(nbdinfo_field "$uri" export-name)" = other ] || fail "--export on the command line did not win"
grep -q 'with 1 thread(s)' "$SERVER_LOG" || fail "--threads on the command line did not win"
[ "$(nbdinfo_field "$uri" is_read_only)" = true ] || fail "read-only from the file was lost"
get_stats
[ "$(stat_field mode)" = writeback ] || fail "--mode on the command line did not win: $STATS"
stop_server
expect_clean_exit "the config with command-line overrides"
log "options on the command line win over the file"

# ---- 5. Errors: exit 2, the culprit named, nothing served.
# expect_usage_error WHAT PATTERN ARGS...
expect_usage_error() {
  local what=$1 pattern=$2 rc
  shift 2
  rm -f "$T/vm1.sock"
  timeout 60 "$RBDCACHE" serve "$@" </dev/null >"$T/error.out" 2>&1
  rc=$?
  [ "$rc" = 2 ] || { cat "$T/error.out" >&2; fail "$what: exit $rc, expected 2"; }
  grep -qE -- "$pattern" "$T/error.out" ||
    { cat "$T/error.out" >&2; fail "$what: the message does not match '$pattern'"; }
  [ ! -e "$T/vm1.sock" ] || fail "$what: a socket was created"
  log "$what: exit 2: $(head -n 1 "$T/error.out")"
}
derive_config "$T/unknown.conf" origin="\"file:$origin\"" socket="\"$T/vm1.sock\"" cache-dev=- meta-dev=- \
  cache-size='"8G"'
expect_usage_error "an unknown key" 'cache-size' --config "$T/unknown.conf"
derive_config "$T/threads.conf" origin="\"file:$origin\"" socket="\"$T/vm1.sock\"" cache-dev=- meta-dev=- \
  threads=0
expect_usage_error "threads = 0" 'threads' --config "$T/threads.conf"
derive_config "$T/mode.conf" origin="\"file:$origin\"" socket="\"$T/vm1.sock\"" \
  cache-dev="\"$CACHE_DEV\"" meta-dev="\"$META_DEV\"" mode='"writearound"'
expect_usage_error "an unknown mode" 'mode' --config "$T/mode.conf"
derive_config "$T/flag.conf" origin="\"file:$origin\"" socket="\"$T/vm1.sock\"" cache-dev=- meta-dev=- \
  read-only=maybe
expect_usage_error "read-only = maybe" 'read-only' --config "$T/flag.conf"
derive_config "$T/origin.conf" origin="\"nbd:$origin\"" socket="\"$T/vm1.sock\"" cache-dev=- meta-dev=-
expect_usage_error "a bad origin URI" 'origin' --config "$T/origin.conf"
derive_config "$T/noorigin.conf" origin=- socket="\"$T/vm1.sock\"" cache-dev=- meta-dev=-
expect_usage_error "no origin" 'origin' --config "$T/noorigin.conf"
derive_config "$T/needs.conf" origin="\"file:$origin\"" socket="\"$T/vm1.sock\"" cache-dev="\"$CACHE_DEV\"" \
  meta-dev=-
expect_usage_error "cache-dev without meta-dev" 'meta-dev' --config "$T/needs.conf"
expect_usage_error "a missing config file" "$T/none.conf" --config "$T/none.conf"

log "PASS"
