# shellcheck shell=bash
# What every test guest needs from this machine, shared by run-in-vm.sh (the
# 9p guest) and guest/mkinitramfs.sh (the self-contained guest): Debian's
# kernel, its modules with their dependencies, an initramfs packed from a
# root directory and kept in a cache directory, and the accelerator
# verdict. Source it; nothing here exits.
#
#   vm_find_kernel MODULE       sets VM_KERNEL, VM_KVER: the newest
#                               /boot/vmlinuz-* that has MODULE as a module
#   vm_mod_closure MODULE...    appends the modules' files to VM_MODULES,
#                               dependencies first, each once
#                               (modinfo -k VM_KVER -F depends)
#   vm_copy_modules ROOT        copies VM_MODULES into ROOT/lib/modules and
#                               lists their names, in load order, in
#                               ROOT/modules (the guest's /init insmods them)
#   vm_pack ROOT OUT            packs ROOT into the gzip'd cpio OUT
#   vm_initramfs DIR NAME BUILD INPUT...
#                               sets VM_INITRD to DIR/NAME-KEY.cpio.gz, KEY a
#                               hash of VM_KVER, the INPUT files and
#                               VM_MODULES; when it does not exist yet, runs
#                               `BUILD ROOT` to fill a fresh directory ROOT,
#                               then packs it. Call with DIR/lock held.
#   vm_lock DIR                 takes DIR/lock (fd 9) until vm_unlock: the
#                               tests of one build share DIR
#   vm_accel DIR PROBE          sets VM_ACCEL to tcg or kvm:
#                               RBDCACHE_VM_ACCEL if set, else the verdict
#                               cached in DIR/accel, else kvm only if
#                               `PROBE` (a command that boots a guest with
#                               -accel kvm and a short timeout) succeeds; the
#                               verdict is cached. /dev/kvm exists on these
#                               machines but has hung guests at boot.

VM_MODULES=()
declare -A _vm_mod_seen=()

vm_find_kernel() {
  local module=$1 k v
  VM_KERNEL='' VM_KVER=''
  for k in $(ls /boot/vmlinuz-* 2>/dev/null | sort -V -r); do
    v=${k#/boot/vmlinuz-}
    if modinfo -k "$v" -F filename "$module" >/dev/null 2>&1; then
      VM_KERNEL=$k VM_KVER=$v
      return 0
    fi
  done
  return 1
}

vm_mod_closure() {
  local m d f
  for m in "$@"; do
    m=${m//-/_}
    [ -n "${_vm_mod_seen[$m]:-}" ] && continue
    _vm_mod_seen[$m]=1
    d=$(modinfo -k "$VM_KVER" -F depends "$m") || return 1
    for d in ${d//,/ }; do vm_mod_closure "$d" || return 1; done
    f=$(modinfo -k "$VM_KVER" -F filename "$m") || return 1
    VM_MODULES+=("$f")
  done
}

vm_copy_modules() {
  local root=$1 f
  mkdir -p "$root/lib/modules" || return 1
  : >"$root/modules"
  for f in "${VM_MODULES[@]}"; do
    [ -f "$f" ] || { echo "module file $f missing" >&2; return 1; }
    cp "$f" "$root/lib/modules/" || return 1
    basename "$f" >>"$root/modules"
  done
}

vm_pack() {
  local root=$1 out=$2
  (cd "$root" && find . | cpio -o -H newc --quiet | gzip -1) >"$out.tmp" && mv "$out.tmp" "$out"
}

vm_initramfs() {
  local dir=$1 name=$2 build=$3 key root rc
  shift 3
  key=$( { echo "$VM_KVER"; sha256sum "$@" "${VM_MODULES[@]}"; } | sha256sum | cut -c1-16) || return 1
  VM_INITRD="$dir/$name-$key.cpio.gz"
  [ -s "$VM_INITRD" ] && return 0
  root=$(mktemp -d "$dir/root.XXXXXX") || return 1
  "$build" "$root" && vm_pack "$root" "$VM_INITRD"
  rc=$?
  rm -rf "$root"
  return $rc
}

vm_lock() {
  mkdir -p "$1" || return 1
  exec 9>"$1/lock"
  flock 9
}
vm_unlock() { flock -u 9; }

vm_accel() {
  local dir=$1 probe=$2
  VM_ACCEL=${RBDCACHE_VM_ACCEL:-}
  [ -n "$VM_ACCEL" ] && return 0
  if [ -s "$dir/accel" ]; then
    VM_ACCEL=$(cat "$dir/accel")
    return 0
  fi
  VM_ACCEL=tcg
  if [ -r /dev/kvm ] && [ -w /dev/kvm ] && "$probe"; then
    VM_ACCEL=kvm
  fi
  echo "$VM_ACCEL" >"$dir/accel"
  echo "vm: accelerator: $VM_ACCEL (cached in $dir/accel)" >&2
}
