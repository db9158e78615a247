# shellcheck shell=bash
# The self-contained test guest (guest/), seen from the host: QEMU guests
# whose virtio-blk disk is an NBD export on a unix socket, running the
# blockcheck workload, with a serial console in a file and a QMP socket.
# Source it after tests/integration/lib.sh (directly or through lib-cache.sh):
# it uses T, fail, log, skip and track_pid.
#
# Environment (tests/vm/meson.build sets both):
#   BLOCKCHECK          the static blockcheck program
#   RBDCACHE_VM_CACHE   where the initramfs and the accelerator verdict are
#                       kept (run-in-vm.sh's --cache-dir)
#
#   guest_setup                  builds the initramfs, picks the accelerator
#                                (skips the test when the guest cannot run)
#   guest_start NAME SOCK APPEND [QEMU-ARGS...]
#                                starts guest NAME (1 vCPU, 256 MiB) with the
#                                export at SOCK as /dev/vda and APPEND on the
#                                kernel command line (bc.mode=..., see
#                                guest/init.sh); console $T/NAME.console,
#                                QMP $T/NAME.qmp
#   guest_wait NAME REGEX SECONDS [COUNT]
#                                waits until NAME's console has COUNT (1)
#                                lines matching REGEX (grep -E); fails when
#                                the guest stops first, prints a line that
#                                matches GUEST_FAIL_RE (default: blockcheck's
#                                FAIL), or the time is up
#   guest_count NAME REGEX       how many console lines match
#   guest_last_synced NAME       N of the last "blockcheck: SYNCED seq=N"
#   guest_qmp NAME ARGS...       qmp.py on NAME's QMP socket
#   guest_stop NAME [SIGNAL]     stops NAME's QEMU (default: QMP quit) and
#                                reaps it
#   guest_exited NAME SECONDS    waits for NAME to power off by itself

_lib_guest_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=lib-vm.sh
source "$_lib_guest_dir/lib-vm.sh"
QMP_PY="$_lib_guest_dir/qmp.py"
declare -A GUEST_PIDS=()
GUEST_MEM=256
GUEST_FAIL_RE='blockcheck: FAIL|guest: no /dev/vda'

_guest_qemu() {  # _guest_qemu ACCEL NAME APPEND [QEMU-ARGS...]: runs QEMU in the foreground
  local accel=$1 name=$2 append=$3 cpu=max
  shift 3
  [ "$accel" = kvm ] && cpu=host
  exec qemu-system-x86_64 -nodefaults -no-user-config -display none -no-reboot \
    -machine q35 -accel "$accel" -cpu "$cpu" -smp 1 -m "$GUEST_MEM" \
    -kernel "$GUEST_KERNEL" -initrd "$GUEST_INITRD" \
    -append "console=ttyS0 panic=-1 loglevel=4 mitigations=off $append" \
    -serial "file:$T/$name.console" \
    -qmp "unix:$T/$name.qmp,server=on,wait=off" "$@" </dev/null >"$T/$name-qemu.out" 2>&1
}

# A KVM guest that boots and prints "guest: idle" within 30 s.
_guest_probe_kvm() {
  local pid i
  (_guest_qemu kvm probe '') &
  pid=$!
  for ((i = 0; i < 300; i++)); do
    grep -q "guest: idle" "$T/probe.console" 2>/dev/null && break
    _has_exited "$pid" && break
    sleep 0.1
  done
  kill -KILL "$pid" 2>/dev/null
  wait "$pid" 2>/dev/null
  grep -q "guest: idle" "$T/probe.console" 2>/dev/null
}

guest_setup() {
  require qemu-system-x86_64 python3 timeout
  [ -n "${BLOCKCHECK:-}" ] || skip "BLOCKCHECK is not set (the static blockcheck program, tests/vm/meson.build)"
  local cache=${RBDCACHE_VM_CACHE:-${TMPDIR:-/tmp}/rbdcache-vm} out rc
  out=$(bash "$_lib_guest_dir/guest/mkinitramfs.sh" "$cache" "$BLOCKCHECK" 2>"$T/mkinitramfs.err")
  rc=$?
  [ $rc -eq 77 ] && skip "$(cat "$T/mkinitramfs.err")"
  [ $rc -eq 0 ] || fail "building the guest's initramfs failed: $(cat "$T/mkinitramfs.err")"
  GUEST_KERNEL=$(sed -n 1p <<<"$out") GUEST_INITRD=$(sed -n 2p <<<"$out")
  vm_lock "$cache" || fail "cannot lock $cache"
  vm_accel "$cache" _guest_probe_kvm
  vm_unlock
  GUEST_ACCEL=$VM_ACCEL
  log "guest: $GUEST_KERNEL, $GUEST_INITRD, $GUEST_ACCEL"
}

guest_start() {
  local name=$1 sock=$2 append=$3
  shift 3
  rm -f "$T/$name.console" "$T/$name.qmp"
  _guest_qemu "$GUEST_ACCEL" "$name" "$append" \
    -blockdev "driver=nbd,server.type=unix,server.path=$sock,node-name=disk0" \
    -device virtio-blk-pci,drive=disk0,id=vda "$@" &
  GUEST_PIDS[$name]=$!
  track_pid "${GUEST_PIDS[$name]}"
  local i
  for ((i = 0; i < 100; i++)); do
    [ -S "$T/$name.qmp" ] && return 0
    kill -0 "${GUEST_PIDS[$name]}" 2>/dev/null || fail "guest $name did not start: $(cat "$T/$name-qemu.out")"
    sleep 0.1
  done
  fail "guest $name: no QMP socket after 10 s"
}

# The last lines of NAME's console, without the SYNCED lines.
_guest_tail() { grep -v 'blockcheck: SYNCED' "$T/$1.console" 2>/dev/null | tail -n 12; }

guest_count() {  # 0 too before the console file exists
  local n
  n=$(grep -cE "$2" "$T/$1.console" 2>/dev/null)
  echo "${n:-0}"
}

guest_wait() {
  local name=$1 re=$2 limit=$3 count=${4:-1} start=$SECONDS
  while [ "$(guest_count "$name" "$re")" -lt "$count" ]; do
    if grep -qE "$GUEST_FAIL_RE" "$T/$name.console" 2>/dev/null; then
      fail "guest $name failed: $(grep -E 'blockcheck: (FAIL|VERIFY.*(FAIL|block)|block )' "$T/$name.console" | head -n 8)"
    fi
    _has_exited "${GUEST_PIDS[$name]}" &&
      fail "guest $name stopped before '$re' (x$count): $(cat "$T/$name-qemu.out"; _guest_tail "$name")"
    [ $((SECONDS - start)) -lt "$limit" ] || fail "guest $name: no '$re' (x$count) within ${limit}s: $(_guest_tail "$name")"
    sleep 0.2
  done
}

guest_last_synced() {
  grep -oE 'blockcheck: SYNCED seq=[0-9]+' "$T/$1.console" 2>/dev/null | tail -n 1 | sed 's/.*seq=//'
}

guest_qmp() {
  local name=$1
  shift
  python3 "$QMP_PY" "$T/$name.qmp" "$@"
}

guest_stop() {
  local name=$1 sig=${2:-} pid=${GUEST_PIDS[$1]}
  if [ -n "$sig" ]; then
    kill "-$sig" "$pid" 2>/dev/null
  else
    guest_qmp "$name" quit >/dev/null 2>&1
  fi
  stop_server "$pid" TERM
}

guest_exited() {
  local name=$1 limit=$2 start=$SECONDS
  until _has_exited "${GUEST_PIDS[$name]}"; do
    [ $((SECONDS - start)) -lt "$limit" ] || fail "guest $name did not power off within ${limit}s"
    sleep 0.2
  done
  wait "${GUEST_PIDS[$name]}" 2>/dev/null
}
