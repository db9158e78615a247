#!/bin/busybox sh
# shellcheck shell=dash
# /init of the self-contained test guest (guest/mkinitramfs.sh builds it):
# no 9p, nothing of the host, so that the guest can be live-migrated.
#
# Loads the modules listed in /modules (virtio_pci, virtio_blk, ...), waits
# for /dev/vda, then runs blockcheck as the kernel command line says, with
# its output on the serial console:
#   bc.mode=write|verify   blockcheck's mode (none: print "guest: idle")
#   bc.args=A,B,...        its arguments (run=ID,batch=16,...), comma-separated
#   bc.sha256=1            then print "guest: sha256 HEX" of all of /dev/vda
# and ends with "guest: exit STATUS" before it powers off.
/bin/busybox mkdir -p /proc /sys /dev /bin /sbin /usr/bin /usr/sbin
/bin/busybox --install -s
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
exec </dev/console >/dev/console 2>&1

halt_guest() {
  poweroff -f
  sleep 5
  echo o >/proc/sysrq-trigger
}

while read -r mod; do
  [ -n "$mod" ] || continue
  insmod "/lib/modules/$mod" || echo "guest: insmod $mod failed"
done </modules

mode='' args='' sha=''
for word in $(cat /proc/cmdline); do
  case $word in
    bc.mode=*) mode=${word#bc.mode=} ;;
    bc.args=*) args=$(echo "${word#bc.args=}" | tr ',' ' ') ;;
    bc.sha256=1) sha=1 ;;
  esac
done

if [ -z "$mode" ]; then
  echo "guest: idle"
  echo "guest: exit 0"
  halt_guest
fi
for _ in $(seq 50); do [ -b /dev/vda ] && break; sleep 0.1; done
if [ ! -b /dev/vda ]; then
  echo "guest: no /dev/vda"
  echo "guest: exit 1"
  halt_guest
fi
echo "guest: running blockcheck $mode /dev/vda $args"
# shellcheck disable=SC2086
/bin/blockcheck "$mode" /dev/vda $args
rc=$?
if [ -n "$sha" ]; then
  echo 3 >/proc/sys/vm/drop_caches
  echo "guest: sha256 $(sha256sum </dev/vda | cut -d' ' -f1)"
fi
echo "guest: exit $rc"
halt_guest
