#!/bin/busybox sh
# /init of the test guest's initramfs (tests/vm/run-in-vm.sh builds it).
#
# Loads the modules listed in /modules (in dependency order), mounts the
# host's root read-only from the 9p tag "host" and the writable result
# directory from the tag "out", gives the host root its own /proc, /sys,
# /dev, /run and a /tmp on the scratch disk /dev/vda (ext4, made here), then
# runs /run/vm/cmd with bash inside that chroot. The command's output goes to
# out/log and its exit status to out/rc. The guest then powers off.
/bin/busybox mkdir -p /proc /sys /dev /host /bin /sbin /usr/bin /usr/sbin
/bin/busybox --install -s
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev

say() { echo "rbdcache-vm: $*" >/dev/console; }
halt_guest() {
  sync
  poweroff -f
  sleep 5
  echo o >/proc/sysrq-trigger
}

while read -r mod; do
  [ -n "$mod" ] || continue
  insmod "/lib/modules/$mod" || say "insmod $mod failed"
done </modules

P9="trans=virtio,version=9p2000.L,msize=262144"
if ! mount -t 9p -o "$P9,ro,cache=loose" host /host; then
  say "cannot mount the host's root over 9p"
  halt_guest
fi
mount -t proc proc /host/proc
mount -t sysfs sysfs /host/sys
mount -t devtmpfs devtmpfs /host/dev
mkdir -p /host/dev/pts /host/dev/shm
mount -t devpts devpts /host/dev/pts
mount -t tmpfs tmpfs /host/dev/shm
mount -t tmpfs -o mode=0755 tmpfs /host/run
mkdir -p /host/run/vm /host/run/lock
if ! mount -t 9p -o "$P9" out /host/run/vm; then
  say "cannot mount the result directory over 9p"
  halt_guest
fi
OUT=/host/run/vm

# /tmp: a real file system (O_DIRECT works, unlike on this kernel's tmpfs).
chroot /host /sbin/modprobe -a virtio_blk ext4 >>"$OUT/setup.log" 2>&1
for i in 1 2 3 4 5 6 7 8 9 10; do [ -b /host/dev/vda ] && break; sleep 0.2; done
# The host's /tmp and /var/tmp stay reachable under /keep: a checkout or
# build directory there (listed in $OUT/binds) is bound back into the new
# /tmp and /var/tmp at the same path.
mkdir -p /keep/tmp /keep/var-tmp
mount -o bind /host/tmp /keep/tmp
mount -o bind /host/var/tmp /keep/var-tmp
if ! chroot /host /sbin/mkfs.ext4 -q -F -E nodiscard /dev/vda >>"$OUT/setup.log" 2>&1 ||
   ! mount -t ext4 /host/dev/vda /host/tmp; then
  say "cannot make /tmp on /dev/vda (see setup.log)"
  echo 1 >"$OUT/rc"
  halt_guest
fi
chmod 1777 /host/tmp
mount -t tmpfs tmpfs /host/var/tmp 2>/dev/null
if [ -f "$OUT/binds" ]; then
  while read -r dir; do
    case "$dir" in
      /tmp/?*) rel=${dir#/tmp/}; from=/keep/tmp/$rel; to=/host/tmp/$rel ;;
      /var/tmp/?*) rel=${dir#/var/tmp/}; from=/keep/var-tmp/$rel; to=/host/var/tmp/$rel ;;
      *) continue ;;
    esac
    mkdir -p "$to" && mount -o bind "$from" "$to" || say "cannot bind $dir into the guest"
  done <"$OUT/binds"
fi
hostname rbdcache-vm

say "running the test"
chroot /host /bin/bash /run/vm/cmd </dev/null >"$OUT/log" 2>&1
echo $? >"$OUT/rc.tmp"
mv "$OUT/rc.tmp" "$OUT/rc"
say "test exited with status $(cat "$OUT/rc")"
umount /host/tmp 2>/dev/null
halt_guest
