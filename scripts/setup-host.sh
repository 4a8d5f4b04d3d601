#!/usr/bin/env bash
# Brings a fresh Debian 12 machine (as root) to what diskplane's suite needs:
# Debian packages, then a venv with an editable install. Idempotent and quick
# when everything is already there: apt runs only for missing packages, pip
# only when pyproject.toml changed since the last install.
#
# usage: scripts/setup-host.sh test|run
set -euo pipefail

mode="${1:-test}"
here="$(cd "$(dirname "$0")/.." && pwd)"
venv="${VENV:-$here/.venv}"

runtime_pkgs=(qemu-system-x86 qemu-utils busybox-static linux-image-amd64 syslinux
  syslinux-common mtools dosfstools fdisk cpio docker-registry skopeo zstd xz-utils bzip2
  openssl ca-certificates)
test_pkgs=(apache2-utils nbdkit curl etcd-server xfsprogs
  libvirt-daemon-system libvirt-clients libvirt-dev pkg-config gcc python3-dev)

pkgs=("${runtime_pkgs[@]}")
if [[ "$mode" == "test" ]]; then pkgs+=("${test_pkgs[@]}"); fi

missing=()
for p in "${pkgs[@]}"; do
  [[ "$p" == *- ]] && continue
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done
if ((${#missing[@]})); then
  if [[ $EUID -ne 0 ]]; then
    echo "setup: missing Debian packages: ${missing[*]}; run as root or install them" >&2
    exit 1
  fi
  echo "setup: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q >/dev/null
  apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
fi

py="${PYTHON:-python3}"
stamp="$venv/.diskplane-$mode-$(sha256sum "$here/pyproject.toml" | cut -c1-16)"
if [[ ! -f "$stamp" ]]; then
  [[ -x "$venv/bin/python" ]] || "$py" -m venv "$venv"
  "$venv/bin/pip" install -q --upgrade pip >/dev/null
  extras=""
  [[ "$mode" == "test" ]] && extras="[test]"
  "$venv/bin/pip" install -q -e "$here$extras"
  rm -f "$venv"/.diskplane-"$mode"-*
  touch "$stamp"
fi

# The suite's real Kubernetes API server: built once from Debian's source package
# and cached outside the repo (about 6 minutes on a fresh 2-core machine).
if [[ "$mode" == "test" ]]; then
  "$here/scripts/build-kube.sh"
fi
