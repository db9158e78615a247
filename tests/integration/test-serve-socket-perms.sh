#!/usr/bin/env bash
# serve --socket-mode and --socket-group (and the same keys in a --config
# file) set the NBD socket's mode and group before anyone can connect: a
# user in the group connects, a user outside it is refused. The default is
# never world-writable, not even under umask 0000; a world-writable mode and
# an unknown group are refused (exit 2). The control socket stays 0600.
#
# Needs root (to give the socket another group and to run clients as
# nobody with setpriv).
source "$(dirname "$0")/lib.sh" "$@"
require_rbdcache
require nbdinfo setpriv stat getent
[ "$(id -u)" = 0 ] || skip "needs root to run clients as another user"

# A group of Debian's base system that nobody is not a member of.
GROUP=daemon
GID=$(getent group "$GROUP" | cut -d: -f3)
[ -n "$GID" ] || fail "no group $GROUP on this host"
id -nG nobody | grep -qw "$GROUP" && fail "nobody is already in group $GROUP"
# nobody must reach the sockets in $T (made 0700 by mktemp).
chmod 0711 "$T"

size=$((4 * 1048576))
origin="$T/origin.img"
make_origin "$origin" "$size" sparse

# as_nobody [--in-group] CMD...: run CMD as nobody:nogroup, with $GROUP as
# its only supplementary group when --in-group is given, else with none.
as_nobody() {
  local groups=(--clear-groups)
  if [ "$1" = --in-group ]; then
    groups=(--groups "$GID")
    shift
  fi
  timeout 30 setpriv --reuid=nobody --regid=nogroup "${groups[@]}" "$@"
}

# wait_listening: root can query $URI (the socket is bound before listen()).
wait_listening() {
  local i
  for ((i = 0; i < 100; i++)); do
    [ "$(timeout 30 nbdinfo --size "$URI" 2>/dev/null)" = "$size" ] && return 0
    server_alive || fail "the server exited"
    sleep 0.1
  done
  fail "the server does not answer on $SOCK"
}

# expect_perms WANT: the NBD socket's "mode group" (stat %a %G) is WANT.
expect_perms() {
  local got
  got=$(stat -c '%a %G' "$SOCK")
  [ "$got" = "$1" ] || fail "socket $SOCK is '$got', expected '$1'"
}

# expect_member_connects: nobody in $GROUP reads the export's size.
expect_member_connects() {
  local got
  got=$(as_nobody --in-group nbdinfo --size "$URI" 2>"$T/member.err") ||
    fail "nobody in group $GROUP cannot connect: $(cat "$T/member.err")"
  [ "$got" = "$size" ] || fail "nobody in group $GROUP read size '$got', expected $size"
}

# expect_outsider_refused: nobody outside $GROUP gets EACCES.
expect_outsider_refused() {
  if as_nobody nbdinfo --size "$URI" >/dev/null 2>"$T/outsider.err"; then
    fail "nobody outside group $GROUP connected to $SOCK ($(stat -c '%a %G' "$SOCK"))"
  fi
  grep -qi 'permission denied' "$T/outsider.err" ||
    fail "nobody outside group $GROUP failed, but not with EACCES: $(cat "$T/outsider.err")"
}

# ---- 1. The default: bind()'s mode under the umask, never o+w.
umask 0000
start_server "$origin"
umask 0022
wait_listening
expect_perms "775 root"
expect_outsider_refused
stop_server
log "default under umask 0000: 775, not world-writable"

start_server "$origin"
wait_listening
expect_perms "755 root"
expect_outsider_refused
stop_server
log "default under umask 0022: 755"

# ---- 2. --socket-mode 0660 --socket-group GROUP.
start_server "$origin" --socket-mode 0660 --socket-group "$GROUP"
wait_listening
expect_perms "660 $GROUP"
expect_member_connects
expect_outsider_refused
[ "$(stat -c '%a %G' "$CTL")" = "600 root" ] ||
  fail "control socket $CTL is $(stat -c '%a %G' "$CTL"), expected 600 root"
stop_server
expect_clean_exit "--socket-mode 0660 --socket-group $GROUP"
log "--socket-mode 0660 --socket-group $GROUP: member connects, outsider refused, control socket 600"

# A numeric gid, and --socket-group alone (mode 0660).
start_server "$origin" --socket-group "$GID"
wait_listening
expect_perms "660 $GROUP"
expect_member_connects
stop_server
# A mode for the owner only keeps the group out as well.
start_server "$origin" --socket-mode 600 --socket-group "$GROUP"
wait_listening
expect_perms "600 $GROUP"
as_nobody --in-group nbdinfo --size "$URI" >/dev/null 2>&1 &&
  fail "a member of $GROUP connected to a 0600 socket"
stop_server
log "--socket-group $GID alone gives 660; --socket-mode 600 keeps the group out"

# ---- 3. Refused settings: exit 2 with the reason, no socket left behind.
# expect_refused PATTERN ARGS...: serve ARGS exits 2, stderr matches PATTERN.
expect_refused() {
  local pattern=$1 rc
  shift
  timeout 30 "$RBDCACHE" serve --origin "file:$origin" "$@" </dev/null >"$T/out" 2>"$T/err"
  rc=$?
  [ "$rc" = 2 ] || fail "serve $*: exit $rc, expected 2: $(cat "$T/err")"
  grep -qiE -- "$pattern" "$T/err" || fail "serve $*: stderr does not match /$pattern/: $(cat "$T/err")"
}
S="$T/refused.sock"
expect_refused 'world-writable' --socket "$S" --socket-mode 0666
expect_refused 'world-writable' --socket "$S" --socket-mode 0002
expect_refused 'at most 0777' --socket "$S" --socket-mode 01660
expect_refused 'at most 0777' --socket "$S" --socket-mode rw-rw----
expect_refused 'at most 0777' --socket "$S" --socket-mode 0968
expect_refused "no group 'no-such-group-rbdcache'" --socket "$S" --socket-group no-such-group-rbdcache
expect_refused 'requires --socket' --listen 0 --socket-mode 0660
expect_refused 'requires --socket' --listen 0 --socket-group "$GROUP"
[ ! -e "$S" ] || fail "a refused start left $S behind"
log "world-writable modes, bad modes, unknown groups and settings without --socket: exit 2"

# ---- 4. The same settings from a --config file.
cat >"$T/vm.conf" <<EOF
origin = "file:$origin"
socket-mode = "0660"
socket-group = "$GROUP"
EOF
start_server "$origin" --config "$T/vm.conf"
wait_listening
expect_perms "660 $GROUP"
expect_member_connects
expect_outsider_refused
stop_server
expect_clean_exit "socket-mode and socket-group from --config"
# A bare (unquoted) mode reads the same.
sed -i 's/^socket-mode = .*/socket-mode = 0640/' "$T/vm.conf"
start_server "$origin" --config "$T/vm.conf"
wait_listening
expect_perms "640 $GROUP"
stop_server
# The command line wins over the file.
start_server "$origin" --config "$T/vm.conf" --socket-mode 0600
wait_listening
expect_perms "600 $GROUP"
stop_server
printf 'origin = "file:%s"\nsocket = "%s"\nsocket-mode = "0666"\n' "$origin" "$S" >"$T/bad.conf"
expect_refused 'world-writable' --config "$T/bad.conf"
printf 'origin = "file:%s"\nsocket = "%s"\nsocket-group = "no-such-group-rbdcache"\n' "$origin" "$S" >"$T/bad.conf"
expect_refused "no group" --config "$T/bad.conf"
[ ! -e "$S" ] || fail "a refused start left $S behind"
log "socket-mode and socket-group from --config: applied, command line wins, bad values exit 2"

log "PASS"
