# shellcheck shell=bash
# A minimal guest initramfs, built at test time from Debian packages:
# busybox-static's /bin/busybox, an /init script, and kernel modules with
# their dependencies (modinfo -F depends), loaded by /init in the order
# listed in /modules. Source it, then:
#
#   build_initramfs OUT KVER INIT MODULE... [-- FILE...]
#
# writes OUT (a gzipped newc cpio) for kernel version KVER; each FILE is
# copied to the initramfs's root under its own base name. Returns non-zero,
# with a message on stderr, when a module or a file is missing.
#
# (tests/vm/run-in-vm.sh builds its 9p initramfs the same way; the two
# should share one builder.)

# _initramfs_closure KVER MOD...: prints the modules' files, dependencies
# first, each once. Uses the array _initramfs_seen of the caller.
_initramfs_closure() {
  local kver=$1 m d f
  shift
  for m in "$@"; do
    m=${m//-/_}
    [ -n "${_initramfs_seen[$m]:-}" ] && continue
    _initramfs_seen[$m]=1
    d=$(modinfo -k "$kver" -F depends "$m") || return 1
    # shellcheck disable=SC2086  # the comma-separated list, split into words
    [ -z "$d" ] || _initramfs_closure "$kver" ${d//,/ } || return 1
    f=$(modinfo -k "$kver" -F filename "$m") || return 1
    [ -f "$f" ] || { echo "build_initramfs: module file $f missing" >&2; return 1; }
    echo "$f"
  done
}

build_initramfs() {
  local out=$1 kver=$2 init=$3 root f rc
  shift 3
  local mods=() files=()
  while [ $# -gt 0 ] && [ "$1" != -- ]; do mods+=("$1"); shift; done
  [ $# -gt 0 ] && shift
  files=("$@")
  local -A _initramfs_seen=()
  local closure
  closure=$(_initramfs_closure "$kver" "${mods[@]}") ||
    { echo "build_initramfs: cannot resolve ${mods[*]} for $kver" >&2; return 1; }
  root=$(mktemp -d "${TMPDIR:-/tmp}/initramfs.XXXXXX") || return 1
  mkdir -p "$root/bin" "$root/lib/modules" "$root/dev" "$root/proc" "$root/sys" &&
    cp /bin/busybox "$root/bin/busybox" && cp "$init" "$root/init" && chmod 755 "$root/init" &&
    : >"$root/modules" || { rm -rf "$root"; return 1; }
  for f in $closure; do
    cp "$f" "$root/lib/modules/" && basename "$f" >>"$root/modules" || { rm -rf "$root"; return 1; }
  done
  for f in "${files[@]}"; do
    cp "$f" "$root/" || { rm -rf "$root"; return 1; }
  done
  (cd "$root" && find . | cpio -o -H newc --quiet | gzip -1) >"$out"
  rc=$?
  rm -rf "$root"
  return $rc
}
