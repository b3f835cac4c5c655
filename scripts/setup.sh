#!/usr/bin/env bash
# Set up everything the balancer needs on Debian 12, as root (or with sudo).
#   scripts/setup.sh          the service and the demo (Python, libvirt client library)
#   scripts/setup.sh --test   also what the full test suite runs against: libvirtd + QEMU/KVM
#                             (the local lab), PostgreSQL, victoria-metrics (InfluxDB write API),
#                             chromium (dashboard browser test)
# Idempotent: a second run installs nothing new. The Python environment is ./.venv.
set -euo pipefail
cd "$(dirname "$0")/.."

want_test=0
[ "${1:-}" = "--test" ] && want_test=1

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null || { echo "setup: run as root or install sudo" >&2; exit 1; }
  SUDO="sudo"
fi

base_pkgs=(python3 python3-venv python3-dev gcc pkg-config libvirt-dev)
test_pkgs=(libvirt-daemon-system libvirt-clients qemu-system-x86 qemu-utils
           postgresql victoria-metrics chromium iproute2 procps util-linux
           linux-image-cloud-amd64 busybox-static tgt qemu-block-extra gnutls-bin
           openssh-server dmidecode)
pkgs=("${base_pkgs[@]}")
[ "$want_test" = 1 ] && pkgs+=("${test_pkgs[@]}")

missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  $SUDO apt-get update -q
  # no services are started by the packages here: there may be no init system, and the
  # tests start their own libvirtd/PostgreSQL/victoria-metrics instances
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
    "${missing[@]}"
fi

PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
extras=""
[ "$want_test" = 1 ] && extras="[dev]"
.venv/bin/python -m pip install -q -e ".${extras}"
echo "setup: ready ($(.venv/bin/balancer version))"
