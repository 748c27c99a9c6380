#!/usr/bin/env bash
# Installs what the benches compare metalbus with, beyond scripts/setup.sh: Kea DHCPv4 (and perfdhcp, which
# Debian ships in kea-admin), ISC dhcpd, dnsmasq and tftpd-hpa. The benches run each server themselves (in a
# namespace or on a high port), so no system service of these packages may start or keep running. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

debian_packages=(kea-dhcp4-server kea-admin isc-dhcp-server dnsmasq tftpd-hpa dnsperf)
# Where these packages' daemons write their pid when their init scripts start them.
daemon_pid_files=(/run/kea/kea-dhcp4.kea-dhcp4.pid /run/kea/kea-ctrl-agent.kea-ctrl-agent.pid /run/dhcpd.pid
  /var/run/dhcpd.pid /run/dnsmasq/dnsmasq.pid /run/tftpd-hpa.pid /var/run/tftpd-hpa.pid)

need_apt=0
for package in "${debian_packages[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || need_apt=1
done
if [ "$need_apt" = 0 ]; then
  echo "setup-bench: ready (${debian_packages[*]} already installed)"
  exit 0
fi
if [ "$(id -u)" != 0 ]; then
  echo "setup-bench: need root to apt-get install ${debian_packages[*]}" >&2
  exit 1
fi

# A daemon already running before the install is not ours to stop: remember which pid files existed.
declare -A present_before=()
for pid_file in "${daemon_pid_files[@]}"; do
  [ -e "$pid_file" ] && present_before[$pid_file]=1
done

export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# policy-rc.d keeps Debian's postinst from starting a system Kea, dhcpd or dnsmasq: the bench runs its own.
# The trap removes it however apt-get ends, so no later daemon start on this host is blocked.
remove_policy() {
  [ "$(readlink /usr/sbin/policy-rc.d 2>/dev/null)" = policy-rc.d.metalbus ] && rm -f /usr/sbin/policy-rc.d
  rm -f /usr/sbin/policy-rc.d.metalbus
}
trap remove_policy EXIT
printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d.metalbus
chmod +x /usr/sbin/policy-rc.d.metalbus
[ -e /usr/sbin/policy-rc.d ] || ln -s policy-rc.d.metalbus /usr/sbin/policy-rc.d
apt-get install -y -qq --no-install-recommends "${debian_packages[@]}" >/dev/null
remove_policy
trap - EXIT

# Should a postinst have started a daemon anyway (a systemd host ignores policy-rc.d for some paths), stop the
# one the install started: by the pid its new pid file names, never by process name.
for pid_file in "${daemon_pid_files[@]}"; do
  [ -e "$pid_file" ] && [ -z "${present_before[$pid_file]:-}" ] || continue
  pid=$(tr -dc 0-9 < "$pid_file")
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
    echo "setup-bench: stopping $(cat /proc/"$pid"/comm 2>/dev/null || echo pid) $pid started by the install"
    kill "$pid" || true
  fi
done
command -v perfdhcp >/dev/null || { echo "setup-bench: perfdhcp missing after install" >&2; exit 1; }
echo "setup-bench: ready (${debian_packages[*]}; perfdhcp at $(command -v perfdhcp))"
