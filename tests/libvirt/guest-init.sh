#!/bin/busybox sh
# shellcheck shell=dash
# /init of the libvirt test's guest (test-libvirt-domain.sh builds the
# initramfs). /params sets READ_MIB (offsets, in MiB, to read), WRITE_MIB
# (where to write /pattern) and LEN_MIB (the length of each region). The
# guest loads the virtio modules listed in /modules, then on /dev/vda, the
# rbdcache disk, with O_DIRECT:
#   - reads each READ_MIB region and prints its sha256;
#   - writes /pattern at WRITE_MIB, fsyncs (a flush reaches rbdcache), reads
#     it back and prints its sha256;
# and powers off. Result lines start with "rbdcache-guest:", one per fact,
# ending with "rbdcache-guest: done" (or "rbdcache-guest: FAIL ...").
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev

say() { echo "rbdcache-guest: $*"; }
halt_guest() {
  sync
  poweroff -f
  sleep 5
  echo o >/proc/sysrq-trigger
}
die() { say "FAIL $*"; halt_guest; }

# shellcheck disable=SC1091  # written by the test into the initramfs
. /params
while read -r mod; do
  [ -n "$mod" ] || continue
  insmod "/lib/modules/$mod" || die "insmod $mod"
done </modules
i=0
while [ ! -b /dev/vda ]; do
  i=$((i + 1))
  [ $i -le 100 ] || die "no /dev/vda after 10 s"
  sleep 0.1
done
say "disk $(cat /sys/block/vda/size) sectors"

sum_of() {  # sum_of MIB: the sha256 of LEN_MIB MiB of /dev/vda at MIB MiB
  dd if=/dev/vda bs=1M skip="$1" count="$LEN_MIB" iflag=direct 2>/dev/null | sha256sum | cut -d' ' -f1
}
for off in $READ_MIB; do
  say "read $off $(sum_of "$off")"
done
dd if=/pattern of=/dev/vda bs=1M seek="$WRITE_MIB" oflag=direct conv=fsync,notrunc 2>/dev/null ||
  die "writing /pattern at $WRITE_MIB MiB"
say "wrote $WRITE_MIB $(sum_of "$WRITE_MIB")"
say "done"
halt_guest
