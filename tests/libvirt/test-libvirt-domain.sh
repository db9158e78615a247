#!/usr/bin/env bash
# A libvirt guest runs on rbdcache: libvirtd as Debian packages it starts a
# <domain type='qemu'> (TCG) whose disk is exactly
# docs/examples/libvirt-disk.xml (only its socket path changed), served by
# `rbdcache serve --config docs/examples/rbdcache-vm.conf` over a file
# origin with a writeback cache (host-specific paths overridden on the
# command line). Checked:
#   - the NBD socket is 0660 root:libvirt-qemu, as the example config sets
#     it; libvirt-qemu connects, a user outside the group is refused;
#   - QEMU runs as libvirt-qemu (not root) and holds a connection to that
#     socket (its peer is an accepted connection of rbdcache's socket);
#   - the guest (a busybox initramfs, guest-init.sh) reads, with O_DIRECT,
#     a pattern the test wrote through the export beforehand (served from
#     the cache) and one the origin held before serve started (a miss), and
#     prints their sha256 on its serial console (<serial type='file'>);
#   - the guest writes a pattern, fsyncs and reads it back; after the guest
#     has powered off, the export holds exactly that pattern, the cache
#     holds it dirty, and after `rbdcache flush --wait` the origin file
#     holds every pattern.
# The domain is destroyed and undefined, and a libvirtd/virtlogd this test
# started is stopped, whatever the outcome. An already running libvirtd
# (qemu:///system) is used and left running.
source "$(dirname "$0")/../cache_integration/lib-cache.sh" "$@"
source "$(dirname "$0")/lib-initramfs.sh"
require virsh libvirtd virtlogd qemu-system-x86_64 qemu-io nbdcopy nbdinfo ss setpriv \
  cpio gzip modinfo sha256sum getent timeout pgrep
[ "$(id -u)" = 0 ] || skip "needs root (libvirt's system instance)"
QEMU_USER=libvirt-qemu
getent passwd "$QEMU_USER" >/dev/null || skip "no user $QEMU_USER (apt install libvirt-daemon-system)"
QEMU_UID=$(id -u "$QEMU_USER")
QEMU_GID=$(getent group "$QEMU_USER" | cut -d: -f3)
[ -n "$QEMU_GID" ] || skip "no group $QEMU_USER (apt install libvirt-daemon-system)"
[ -x /bin/busybox ] && ! ldd /bin/busybox >/dev/null 2>&1 || skip "no static /bin/busybox (apt install busybox-static)"
KERNEL="" KVER=""
for k in $(ls /boot/vmlinuz-* 2>/dev/null | sort -V -r); do
  v=${k#/boot/vmlinuz-}
  if modinfo -k "$v" -F filename virtio_blk >/dev/null 2>&1; then KERNEL=$k KVER=$v; break; fi
done
[ -n "$KERNEL" ] || skip "no /boot/vmlinuz-* with a virtio_blk module (apt install linux-image-amd64)"

TOP="$(cd "$(dirname "$0")/../.." && pwd)"
EXAMPLE_CONF="$TOP/docs/examples/rbdcache-vm.conf"
EXAMPLE_DISK="$TOP/docs/examples/libvirt-disk.xml"
GUEST_INIT="$TOP/tests/libvirt/guest-init.sh"
# Seconds for the guest's whole life, boot included (TCG boots in ~5 s).
GUEST_TIMEOUT=${GUEST_TIMEOUT:-90}
DOMAIN="rbdcache-test-$$"
VIRSH=(timeout 60 virsh -q -c qemu:///system)

# ---- libvirt: use a running libvirtd, else start one (and virtlogd).
STARTED_PIDFILES=()
libvirt_cleanup() {
  local rc=$? f pid i n qlog="/var/log/libvirt/qemu/$DOMAIN.log"
  if [ -n "${DOMAIN_DEFINED:-}" ]; then
    if [ "$rc" != 0 ] && [ -s "$qlog" ]; then
      { echo "--- $qlog (last 20 lines) ---"; tail -n 20 "$qlog"; } >&2
    fi
    "${VIRSH[@]}" destroy "$DOMAIN" >/dev/null 2>&1
    "${VIRSH[@]}" undefine "$DOMAIN" >/dev/null 2>&1 || log "cannot undefine $DOMAIN"
    rm -f "$qlog"*
  fi
  # The last started first: libvirtd before virtlogd.
  for ((i = ${#STARTED_PIDFILES[@]} - 1; i >= 0; i--)); do
    f=${STARTED_PIDFILES[i]}
    pid=$(cat "$f" 2>/dev/null) || continue
    kill -TERM "$pid" 2>/dev/null
    for ((n = 0; n < 100; n++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null
  done
  (exit "$rc")
  _cleanup
}
trap libvirt_cleanup EXIT

# start_daemon NAME ARGS...: NAME -d with a pid file in $T; waits for it.
start_daemon() {
  local name=$1 i
  shift
  LIBVIRT_LOG_OUTPUTS="3:file:$T/$name.log" "$name" -d -p "$T/$name.pid" "$@" ||
    fail "$name -d failed"
  STARTED_PIDFILES+=("$T/$name.pid")
  for ((i = 0; i < 100; i++)); do [ -s "$T/$name.pid" ] && return 0; sleep 0.1; done
  fail "$name wrote no pid file"
}
if "${VIRSH[@]}" version >/dev/null 2>&1; then
  log "using the running libvirtd"
else
  if [ ! -S /run/libvirt/virtlogd-sock ] || ! pgrep -x virtlogd >/dev/null; then
    start_daemon virtlogd
  fi
  start_daemon libvirtd
  for ((i = 0; i < 100; i++)); do "${VIRSH[@]}" version >/dev/null 2>&1 && break; sleep 0.1; done
  "${VIRSH[@]}" version >/dev/null 2>&1 || fail "libvirtd does not answer on qemu:///system"
  log "started libvirtd $(libvirtd --version | awk '{print $NF}')"
fi

# ---- The disk: a file origin behind a writeback cache, served with the
# example config. QEMU (as libvirt-qemu) must reach the socket: $T is 0700
# from mktemp, so open it for traversal; the socket's directory is 0755
# like the unit's /run/rbdcache.
chmod 0711 "$T"
mkdir -m 0755 "$T/run" "$T/guest"
SOCK="$T/run/vm1.sock"
CTL="$T/run/vm1.ctl"
URI="nbd+unix:///?socket=$SOCK"
SIZE=$((32 * 1048576))
MIB=1048576
# Regions (MiB offsets, 1 MiB each): R written through the export before
# the guest starts, O in the origin before serve starts, W by the guest.
R_MIB=1 O_MIB=16 W_MIB=8
make_origin "$T/origin.img" "$SIZE" zero
head -c $MIB /dev/urandom >"$T/r.bin"
head -c $MIB /dev/urandom >"$T/o.bin"
head -c $MIB /dev/urandom >"$T/pattern"
dd if="$T/o.bin" of="$T/origin.img" bs=1M seek=$O_MIB conv=notrunc status=none || fail "writing O"
sum() { sha256sum "$1" | cut -d' ' -f1; }
# region_sum FILE MIB: the sha256 of 1 MiB of FILE at MIB MiB.
region_sum() { dd if="$1" bs=1M skip="$2" count=1 status=none | sha256sum | cut -d' ' -f1; }
make_cache vm1 64M 16M
SERVER_LOG="$T/server.log"
"$RBDCACHE" serve --config "$EXAMPLE_CONF" --origin "file:$T/origin.img" \
  --cache-dev "$CACHE_DEV" --meta-dev "$META_DEV" --socket "$SOCK" --control "$CTL" \
  </dev/null >"$SERVER_LOG" 2>&1 &
SERVER_PID=$!
track_pid "$SERVER_PID"
wait_for_socket "$SOCK" "$SERVER_PID"
for ((i = 0; ; i++)); do
  [ "$(nbdinfo --size "$URI" 2>/dev/null)" = "$SIZE" ] && break
  server_alive || fail "the server exited"
  ((i < 100)) || fail "the server does not serve $SIZE bytes on $SOCK"
  sleep 0.1
done
get_stats
[ "$(stat_field mode)" = writeback ] || fail "the example config does not give a writeback cache: $STATS"
perms=$(stat -c '%a %U:%G' "$SOCK")
[ "$perms" = "660 root:$QEMU_USER" ] || fail "the NBD socket is '$perms', expected '660 root:$QEMU_USER'"
as_user() {  # as_user USER [GROUPS] CMD...: CMD as USER with only GROUPS
  local u=$1 g=$2
  shift 2
  timeout 30 setpriv --reuid="$u" --regid="$(id -g "$u")" --groups="$g" "$@"
}
as_user "$QEMU_USER" "$QEMU_GID" nbdinfo --size "$URI" >"$T/as-qemu.out" 2>&1 ||
  fail "$QEMU_USER cannot connect to the socket: $(cat "$T/as-qemu.out")"
as_user nobody "$(id -g nobody)" nbdinfo --size "$URI" >"$T/as-nobody.out" 2>&1 &&
  fail "nobody, outside group $QEMU_USER, connected to the socket"
grep -qi 'permission denied' "$T/as-nobody.out" || fail "nobody refused, but not for permission: $(cat "$T/as-nobody.out")"
log "socket $perms: $QEMU_USER connects, nobody is refused"
qemu_io "$URI" -c "write -s $T/r.bin $((R_MIB * MIB)) $MIB"

# ---- The guest.
printf 'READ_MIB="%s %s"\nWRITE_MIB=%s\nLEN_MIB=1\n' $R_MIB $O_MIB $W_MIB >"$T/params"
cp "$KERNEL" "$T/guest/vmlinuz"
build_initramfs "$T/guest/initrd.img" "$KVER" "$GUEST_INIT" virtio_pci virtio_blk -- \
  "$T/params" "$T/pattern" || fail "building the initramfs failed"
CONSOLE="$T/guest/console.log"
: >"$CONSOLE"
# The disk exactly as the example has it, but for the socket.
disk_xml=$(grep -v '^\s*$' "$EXAMPLE_DISK" | sed -e '/<!--/,/-->/d' \
  -e "s|socket='/run/rbdcache/vm1.sock'|socket='$SOCK'|")
grep -q "socket='$SOCK'" <<<"$disk_xml" || fail "no socket='/run/rbdcache/vm1.sock' in $EXAMPLE_DISK"
cat >"$T/domain.xml" <<XML
<domain type='qemu'>
  <name>$DOMAIN</name>
  <memory unit='MiB'>256</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='q35'>hvm</type>
    <kernel>$T/guest/vmlinuz</kernel>
    <initrd>$T/guest/initrd.img</initrd>
    <cmdline>console=ttyS0 panic=-1 quiet loglevel=1 mitigations=off</cmdline>
  </os>
  <features><acpi/></features>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>destroy</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <emulator>$(command -v qemu-system-x86_64)</emulator>
$disk_xml
    <serial type='file'>
      <source path='$CONSOLE'/>
      <target port='0'/>
    </serial>
    <memballoon model='none'/>
  </devices>
</domain>
XML
"${VIRSH[@]}" define "$T/domain.xml" >"$T/define.out" 2>&1 || { cat "$T/define.out" >&2; fail "virsh define"; }
DOMAIN_DEFINED=1
boot_start=$SECONDS
"${VIRSH[@]}" start "$DOMAIN" >"$T/start.out" 2>&1 || { cat "$T/start.out" >&2; fail "virsh start"; }

# ---- QEMU runs as libvirt-qemu and is connected to rbdcache's socket.
QPID=$(cat "/run/libvirt/qemu/$DOMAIN.pid" 2>/dev/null) || fail "no pid file for $DOMAIN"
ids=$(awk '/^Uid:/ {u=$2" "$3" "$4" "$5} /^Gid:/ {g=$2} /^Groups:/ {$1=""; s=$0} END {print u "|" g "|" s}' \
  "/proc/$QPID/status") || fail "QEMU (pid $QPID) exited at once"
[ "${ids%%|*}" = "$QEMU_UID $QEMU_UID $QEMU_UID $QEMU_UID" ] ||
  fail "QEMU runs as uids '${ids%%|*}', not $QEMU_USER ($QEMU_UID)"
gids=$(cut -d'|' -f2- <<<"$ids" | tr '|' ' ' | xargs)
[[ " $gids " == *" $QEMU_GID "* ]] || fail "QEMU's gid and groups ($gids) lack $QEMU_USER ($QEMU_GID)"
# Accepted connections of $SOCK (local address = the path), by peer inode.
peers=$(ss -x -n -H state connected | awk -v p="$SOCK" '$5 == p {print $8}')
[ -n "$peers" ] || fail "no connection to $SOCK: $(ss -x -n -H state connected)"
qemu_socks=$(ls -l "/proc/$QPID/fd" 2>/dev/null | sed -n 's/.*socket:\[\([0-9]*\)\].*/\1/p')
connected=""
for p in $peers; do grep -qx "$p" <<<"$qemu_socks" && connected=$p; done
[ -n "$connected" ] || fail "QEMU (pid $QPID) holds none of the connections to $SOCK (peers: $peers)"
log "QEMU pid $QPID runs as $QEMU_USER (uid $QEMU_UID; gid and groups $gids) and is connected to $SOCK"

# ---- Wait for the guest to power off.
while :; do
  state=$("${VIRSH[@]}" domstate "$DOMAIN" 2>&1)
  [ "$state" = "shut off" ] && break
  if ((SECONDS - boot_start > GUEST_TIMEOUT)); then
    tail -n 40 "$CONSOLE" >&2
    fail "the guest did not power off within ${GUEST_TIMEOUT}s (state: $state)"
  fi
  sleep 0.5
done
log "the guest ran and powered off in $((SECONDS - boot_start))s"
tr -d '\r' <"$CONSOLE" | grep '^rbdcache-guest: ' >&2
guest() {  # guest WORDS...: the console line "rbdcache-guest: WORDS ..." (last field)
  tr -d '\r' <"$CONSOLE" | awk -v w="rbdcache-guest: $*" 'index($0, w " ") == 1 {print $NF}' | tail -n 1
}
if grep -q 'rbdcache-guest: FAIL' "$CONSOLE" || ! grep -q 'rbdcache-guest: done' "$CONSOLE"; then
  tail -n 40 "$CONSOLE" >&2
  fail "the guest did not finish its I/O"
fi
[ "$(guest read $R_MIB)" = "$(sum "$T/r.bin")" ] ||
  fail "the guest read '$(guest read $R_MIB)' at $R_MIB MiB, not what the test wrote there through rbdcache"
[ "$(guest read $O_MIB)" = "$(sum "$T/o.bin")" ] ||
  fail "the guest read '$(guest read $O_MIB)' at $O_MIB MiB, not what the origin held"
[ "$(guest wrote $W_MIB)" = "$(sum "$T/pattern")" ] ||
  fail "the guest read back '$(guest wrote $W_MIB)' after writing its pattern"
log "the guest read both patterns and read back its own"

# ---- What the guest wrote is in the cache, then in the origin.
nbdcopy "$URI" "$T/after.img" || fail "nbdcopy of the export"
for r in "R:$R_MIB:r.bin" "O:$O_MIB:o.bin" "W:$W_MIB:pattern"; do
  IFS=: read -r name off file <<<"$r"
  [ "$(region_sum "$T/after.img" "$off")" = "$(sum "$T/$file")" ] ||
    fail "the export does not hold pattern $name at $off MiB after the guest stopped"
done
get_stats
dirty=$(stat_field dirty_bytes)
((dirty >= 2 * MIB)) || fail "the cache holds $dirty dirty bytes, expected the 2 MiB written through it: $STATS"
timeout 60 "$RBDCACHE" flush --wait --control "$CTL" >"$T/flush.out" 2>&1 ||
  { cat "$T/flush.out" >&2; fail "rbdcache flush --wait"; }
stop_server
expect_clean_exit "the server after the guest"
for r in "R:$R_MIB:r.bin" "O:$O_MIB:o.bin" "W:$W_MIB:pattern"; do
  IFS=: read -r name off file <<<"$r"
  [ "$(region_sum "$T/origin.img" "$off")" = "$(sum "$T/$file")" ] ||
    fail "the origin does not hold pattern $name at $off MiB after the flush"
done
log "the export showed the guest's write, the cache held it dirty, the flush put it in the origin"
log "PASS"
