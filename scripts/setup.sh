#!/usr/bin/env bash
# Installs everything metalbus needs on a fresh Debian 12 machine: Debian packages, a virtualenv in .venv,
# and the project itself (editable). Pass --test to add the test and lint tools. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

with_test=0
[ "${1:-}" = "--test" ] && with_test=1

# What the stack runs on (PostgreSQL), what a rack serves to booting machines (bootloaders from Debian), and what
# `metalbus demo` boots: the commissioning environment (kernel, busybox) and the lab (qemu, iPXE ROMs, OVMF, BMCs).
debian_packages=(postgresql ca-certificates iproute2 curl pxelinux syslinux-common grub-efi-amd64-bin
  grub-common shim-signed ipxe linux-image-amd64 busybox-static tcpdump qemu-system-x86 ipxe-qemu ovmf openipmi ipmitool)
# What the tests talk to besides: real DHCP/TFTP/DNS clients, packet loss, cloud-init's datasource, a Debian repo,
# and an upstream resolver for the rack's DNS forwarding (dnsmasq-base: the binary without a system service).
test_packages=(isc-dhcp-client udhcpc isc-dhcp-relay tftp-hpa atftp nftables cloud-init dpkg-dev bind9-dnsutils
  dnsmasq-base)
python=${PYTHON:-python3}

[ "$with_test" = 1 ] && debian_packages+=("${test_packages[@]}")

need_apt=0
for package in "${debian_packages[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || need_apt=1
done
if ! "$python" -c 'import venv, ensurepip' 2>/dev/null; then
  debian_packages+=(python3-venv)
  need_apt=1
fi
if [ "$need_apt" = 1 ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "setup: need root to apt-get install ${debian_packages[*]}" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # policy-rc.d keeps Debian's postinst from starting a system PostgreSQL on 5432: metalbus runs its own.
  # The trap removes it however apt-get ends, so no later daemon start on this host is blocked.
  remove_policy() {
    [ "$(readlink /usr/sbin/policy-rc.d 2>/dev/null)" = policy-rc.d.metalbus ] && rm -f /usr/sbin/policy-rc.d
    rm -f /usr/sbin/policy-rc.d.metalbus
  }
  trap remove_policy EXIT
  printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d.metalbus
  chmod +x /usr/sbin/policy-rc.d.metalbus
  [ -e /usr/sbin/policy-rc.d ] || ln -s policy-rc.d.metalbus /usr/sbin/policy-rc.d
  # cloud-init is here for its MAAS datasource code, which the tests run against a rack; the marker file keeps
  # it from ever configuring this host (a systemd host would otherwise run it at the next boot).
  mkdir -p /etc/cloud && touch /etc/cloud/cloud-init.disabled
  apt-get install -y -qq --no-install-recommends "${debian_packages[@]}" >/dev/null
  remove_policy
  trap - EXIT
fi

# A venv made before python3-venv was installed has no pip: make it again.
if ! .venv/bin/python -m pip --version >/dev/null 2>&1; then
  rm -rf .venv
  "$python" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
if [ "$with_test" = 1 ]; then
  .venv/bin/python -m pip install -q -e '.[test]'
else
  .venv/bin/python -m pip install -q -e .
fi
echo "setup: ready (.venv/bin/metalbus)"
