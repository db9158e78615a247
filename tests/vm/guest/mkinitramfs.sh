#!/usr/bin/env bash
# Builds the self-contained test guest's initramfs and prints its path:
# busybox-static, the static blockcheck program, guest/init.sh as /init,
# and the modules of Debian's kernel that a virtio-blk disk needs (with
# their dependencies). No 9p and nothing of the host's root, so that the
# guest can be live-migrated.
#
#   guest/mkinitramfs.sh CACHE-DIR BLOCKCHECK
#
# Prints two lines: the kernel (/boot/vmlinuz-*) and the initramfs, kept in
# CACHE-DIR as guest-KEY.cpio.gz (KEY: a hash of the inputs), so that the
# tests of one build share it. Exit 77 when something it needs is missing.
set -u
set -o pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=../lib-vm.sh
source "$HERE/../lib-vm.sh"

[ $# -eq 2 ] || { sed -n '2,12p' "$0" >&2; exit 2; }
CACHE_DIR=$1 BLOCKCHECK=$2
BUSYBOX=/bin/busybox
missing() { echo "mkinitramfs: $*" >&2; exit 77; }

for t in cpio gzip flock modinfo sha256sum; do
  command -v "$t" >/dev/null || missing "$t missing"
done
[ -x $BUSYBOX ] && ! ldd $BUSYBOX >/dev/null 2>&1 || missing "no static /bin/busybox (apt install busybox-static)"
[ -x "$BLOCKCHECK" ] || missing "no blockcheck program at $BLOCKCHECK"
vm_find_kernel virtio_blk || missing "no /boot/vmlinuz-* with a virtio_blk module (apt install linux-image-amd64)"
vm_mod_closure virtio_pci virtio_blk || missing "cannot resolve the guest's modules for $VM_KVER"

build_root() {  # build_root ROOT
  local root=$1
  mkdir -p "$root/bin" "$root/dev" || return 1
  cp $BUSYBOX "$root/bin/busybox" && cp "$BLOCKCHECK" "$root/bin/blockcheck" &&
    cp "$HERE/init.sh" "$root/init" && chmod 755 "$root/init" && vm_copy_modules "$root"
}

vm_lock "$CACHE_DIR" || exit 1
vm_initramfs "$CACHE_DIR" guest build_root $BUSYBOX "$BLOCKCHECK" "$HERE/init.sh" ||
  { echo "mkinitramfs: building the initramfs failed" >&2; exit 1; }
vm_unlock
echo "$VM_KERNEL"
echo "$VM_INITRD"
