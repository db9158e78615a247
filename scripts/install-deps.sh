#!/usr/bin/env bash
# Installs the Debian 12 packages rbdcache needs, with apt-get.
#
#   scripts/install-deps.sh            build + test dependencies
#   scripts/install-deps.sh --build    only what building needs
#
# Packages already installed are not reinstalled; apt-get update runs only
# when something is missing. Uses sudo when not run as root.
set -euo pipefail

BUILD_PKGS=(
  g++ meson ninja-build pkg-config
  liburing-dev libfmt-dev libcli11-dev nlohmann-json3-dev libisal-dev
  librbd-dev librados-dev libsystemd-dev libnl-3-dev libnl-genl-3-dev
)
TEST_PKGS=(
  libgtest-dev libgmock-dev libbenchmark-dev
  clang libclang-rt-14-dev
  libnbd-bin libnbd-dev qemu-utils fio nbdkit
  python3 util-linux bsdutils procps curl systemd
  ceph-mon ceph-osd ceph-common
  qemu-system-x86 linux-image-amd64 busybox-static kmod cpio e2fsprogs
  jq gnuplot-nox qemu-block-extra
  libvirt-daemon-system libvirt-daemon-driver-qemu libvirt-clients iproute2
)

pkgs=("${BUILD_PKGS[@]}")
case "${1:-}" in
  --build) ;;
  ""|--test) pkgs+=("${TEST_PKGS[@]}") ;;
  -h|--help) sed -n '2,9p' "$0"; exit 0 ;;
  *) echo "install-deps.sh: unknown option '$1' (see --help)" >&2; exit 2 ;;
esac

missing=()
for p in "${pkgs[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null; then
    SUDO="sudo"
  else
    echo "install-deps.sh: need root (or sudo) to install: ${missing[*]}" >&2
    exit 1
  fi
fi
echo "install-deps.sh: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q
$SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
