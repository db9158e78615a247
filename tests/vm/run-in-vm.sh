#!/usr/bin/env bash
# Runs a command inside a Debian-kernel guest and returns its exit status and
# output. The guest sees this machine's root read-only and chroots into it,
# so the command runs the project's own build and Debian's tools, but under
# Debian's kernel (linux-image-amd64), with its modules (nbd, ext4, ...).
#
#   run-in-vm.sh [OPTIONS] [--] COMMAND [ARGS...]
#
# Options:
#   --timeout SECONDS   hard bound on the guest's whole life, boot included
#                       (default 300); when it passes the guest is killed and
#                       the run fails
#   --cache-dir DIR     where the initramfs (and the accelerator probe's
#                       verdict) are kept between runs (default
#                       ${TMPDIR:-/tmp}/rbdcache-vm); tests of one build share it
#   --mem MIB           guest RAM (default 1536)
#   --smp N             guest vCPUs (default 2)
#   --scratch SIZE      size of the guest's /tmp disk (default 4G, sparse)
#   --env NAME          pass the variable NAME through (repeatable)
#
# Inside the guest COMMAND runs with bash in the working directory it was
# started from, as root, with RBDCACHE_IN_VM=1, a fresh /tmp (ext4 on a
# scratch virtio disk), its own /proc, /sys, /dev and /run, and every
# module of the Debian kernel available to modprobe. Its stdout and stderr
# are printed here once the guest has stopped; the exit status is the
# command's own (77 stays a skip). Exit 77 here too when the guest cannot be
# started at all (no Debian kernel, no qemu-system-x86_64, no busybox-static).
#
# How: /init (init.sh) is a busybox script in an initramfs built (lib-vm.sh) from the
# Debian packages at test time: busybox-static's /bin/busybox, the 9p and
# virtio modules of the newest /boot/vmlinuz-* with its dependencies
# (modinfo -F depends). QEMU shares / read-only over 9p (tag "host") and a
# fresh result directory read-write (tag "out"): the command file goes in,
# the log and exit status come out. The guest's serial console is kept in
# the result directory and printed when the run fails.
#
# Acceleration: TCG (-accel tcg) unless a quick probe boot under KVM works
# (/dev/kvm exists here but has hung guests); the verdict is cached next to
# the initramfs. RBDCACHE_VM_ACCEL=tcg|kvm forces one.
set -u
set -o pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
TIMEOUT=300
CACHE_DIR=${TMPDIR:-/tmp}/rbdcache-vm
MEM=1536
SMP=2
SCRATCH=4G
PASS_ENV=()

usage() { sed -n '2,36p' "$0"; exit 2; }
while [ $# -gt 0 ]; do
  case $1 in
    --timeout) TIMEOUT=$2; shift ;;
    --cache-dir) CACHE_DIR=$2; shift ;;
    --mem) MEM=$2; shift ;;
    --smp) SMP=$2; shift ;;
    --scratch) SCRATCH=$2; shift ;;
    --env) PASS_ENV+=("$2"); shift ;;
    -h|--help) usage ;;
    --) shift; break ;;
    -*) echo "run-in-vm.sh: unknown option $1" >&2; exit 2 ;;
    *) break ;;
  esac
  shift
done
[ $# -gt 0 ] || usage

vm_log() { printf 'run-in-vm: %s\n' "$*" >&2; }
vm_skip() { vm_log "SKIP: $*"; exit 77; }

[ "$(id -u)" -eq 0 ] || vm_skip "needs root (9p passthrough of / and modules)"
command -v qemu-system-x86_64 >/dev/null || vm_skip "qemu-system-x86_64 missing (apt install qemu-system-x86)"
for t in cpio gzip flock modinfo sha256sum; do
  command -v "$t" >/dev/null || vm_skip "$t missing"
done
BUSYBOX=/bin/busybox
[ -x $BUSYBOX ] && ! ldd $BUSYBOX >/dev/null 2>&1 || vm_skip "no static /bin/busybox (apt install busybox-static)"

# shellcheck source=lib-vm.sh
source "$HERE/lib-vm.sh"
# The newest Debian kernel with the nbd module.
vm_find_kernel nbd || vm_skip "no /boot/vmlinuz-* with an nbd module (apt install linux-image-amd64)"
KERNEL=$VM_KERNEL KVER=$VM_KVER

# --- The initramfs, built once per cache directory and inputs ---

build_root() {  # build_root ROOT: busybox, init.sh as /init, the modules
  local root=$1
  mkdir -p "$root/bin" "$root/dev" || return 1
  cp $BUSYBOX "$root/bin/busybox" && cp "$HERE/init.sh" "$root/init" && chmod 755 "$root/init" &&
    vm_copy_modules "$root"
}

vm_mod_closure virtio_pci 9pnet_virtio 9p || vm_skip "cannot resolve the initramfs modules for $KVER"
vm_lock "$CACHE_DIR" || exit 1
vm_initramfs "$CACHE_DIR" initramfs build_root $BUSYBOX "$HERE/init.sh" ||
  { vm_log "building the initramfs failed"; exit 1; }
INITRD=$VM_INITRD

# --- One boot ---

# boot ACCEL LIMIT DIR: boots the guest with the command file DIR/cmd; DIR
# gets log, rc and console. Returns qemu's status (124 on timeout).
boot() {
  local accel=$1 limit=$2 dir=$3 cpu=max
  truncate -s "$SCRATCH" "$dir/scratch.img" || return 1
  [ "$accel" = kvm ] && cpu=host
  timeout -k 5 "$limit" qemu-system-x86_64 \
    -nodefaults -no-user-config -display none -no-reboot \
    -machine q35 -accel "$accel" -cpu "$cpu" -smp "$SMP" -m "$MEM" \
    -kernel "$KERNEL" -initrd "$INITRD" \
    -append "console=ttyS0 panic=-1 loglevel=4 mitigations=off" \
    -serial "file:$dir/console" \
    -virtfs "local,path=/,mount_tag=host,security_model=none,readonly=on,multidevs=remap" \
    -virtfs "local,path=$dir,mount_tag=out,security_model=none" \
    -drive "file=$dir/scratch.img,if=virtio,format=raw,cache=unsafe,discard=unmap" \
    </dev/null >"$dir/qemu.out" 2>&1
  local rc=$?
  rm -f "$dir/scratch.img"
  return $rc
}

# The accelerator: KVM only when a probe guest boots and runs a command with
# it in a short time.
probe_kvm() {
  local probe rc=1
  probe=$(mktemp -d "$CACHE_DIR/probe.XXXXXX") || return 1
  echo 'echo kvm-works' >"$probe/cmd"
  if boot kvm 30 "$probe" && [ "$(cat "$probe/rc" 2>/dev/null)" = 0 ] && grep -q kvm-works "$probe/log"; then
    rc=0
  fi
  rm -rf "$probe"
  return $rc
}
vm_accel "$CACHE_DIR" probe_kvm
accel=$VM_ACCEL
vm_unlock

RUN=$(mktemp -d "$CACHE_DIR/run.XXXXXX")
trap 'rm -rf "$RUN"' EXIT
{
  echo 'export RBDCACHE_IN_VM=1 HOME=/tmp TMPDIR=/tmp'
  echo 'export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'
  for n in "${PASS_ENV[@]}"; do
    [ -n "${!n+x}" ] && printf 'export %s=%q\n' "$n" "${!n}"
  done
  printf 'cd %q || exit 1\n' "$PWD"
  printf '%q ' "$@"
  echo
} >"$RUN/cmd"
# Directories under /tmp or /var/tmp that the guest's own /tmp and /var/tmp
# would hide: the checkout and the working directory (init.sh binds them).
{
  realpath "$(dirname "$0")/../.."
  echo "$PWD"
} >"$RUN/binds"

start=$SECONDS
boot "$accel" "$TIMEOUT" "$RUN"
qemu_rc=$?
elapsed=$((SECONDS - start))
[ -f "$RUN/log" ] && cat "$RUN/log"
if [ ! -f "$RUN/rc" ]; then
  if [ $qemu_rc -eq 124 ]; then
    vm_log "FAIL: the guest did not finish within ${TIMEOUT}s ($accel)"
  else
    vm_log "FAIL: the guest stopped without an exit status (qemu exit $qemu_rc, ${elapsed}s, $accel)"
  fi
  for f in qemu.out setup.log console; do
    [ -s "$RUN/$f" ] && { echo "--- $f (last 60 lines) ---"; tail -n 60 "$RUN/$f"; } >&2
  done
  exit 1
fi
rc=$(cat "$RUN/rc")
vm_log "guest command exited $rc after ${elapsed}s ($accel, $SMP vCPUs, ${MEM} MiB)"
if [ "$rc" != 0 ] && [ "$rc" != 77 ]; then
  { echo "--- guest console (last 40 lines) ---"; tail -n 40 "$RUN/console"; } >&2
fi
exit "$rc"
