#!/usr/bin/env bash
# Builds the commissioning environment: the Debian kernel and a busybox initramfs that commissions a machine.
# Debian packages only (linux-image-amd64, busybox-static, kmod for depmod/modprobe, cpio, tcpdump), no network.
# Needs no root (it never installs anything; it reads /boot, /lib/modules and apt's cache).
#
#   scripts/build-ephemeral.sh [OUT_DIR]   OUT_DIR defaults to $METALBUS_EPHEMERAL_DIR, else
#                                          <repository>/.metalbus/boot/images/amd64/ephemeral: under the default
#                                          state directory's boot root (<state_dir>/boot, filled by
#                                          scripts/boot-files.sh, served by rack-tftp), so the boot resources
#                                          name images/amd64/ephemeral/vmlinuz and images/amd64/ephemeral/initrd.img
#                                          (for another state dir: build-ephemeral.sh <state_dir>/boot/images/…)
#   KERNEL_VERSION=6.1.0-56-amd64 ...      another kernel than the newest /boot/vmlinuz-*: installed, or a
#                                          linux-image-<version>_*.deb in /var/cache/apt/archives (unpacked with
#                                          dpkg-deb -x, then depmod -b: the .deb carries no modules.dep)
#
# Writes OUT_DIR/vmlinuz, OUT_DIR/initrd.img and OUT_DIR/inputs.sha256 (the stamp). Idempotent: the stamp is the
# hash of the kernel version, the kernel image, the busybox and tcpdump binaries and this script itself (the /init
# is written by this script); when it matches, nothing is rebuilt and nothing is touched. Prints OUT_DIR.
# tcpdump (with the shared libraries ldd lists) is how the commissioning runner hears LLDP neighbours; without it
# (package not installed) the image is built without, with a warning, and reports no neighbours.
#
# What the initramfs's /init does (every step logged on the console, prefixed "metalbus-ephemeral:"):
#   1. mounts /proc, /sys, /dev (devtmpfs), /run and /tmp;
#   2. loads the NIC and disk modules: e1000, e1000e, the virtio chain (virtio_ring, virtio,
#      virtio_pci_modern_dev, virtio_pci_legacy_dev, virtio_pci, failover, net_failover, virtio_net), virtio_blk,
#      virtio_scsi, ahci/libata/sd_mod, nvme;
#   3. picks the boot interface: the one whose MAC is BOOTIF=01-<mac> on the command line (pxelinux IPAPPEND 2,
#      our iPXE and GRUB configs add it), else the first Ethernet NIC; brings it up and waits for carrier
#      (bounded, e1000 takes about 2 s);
#   4. runs busybox udhcpc on it (a small script sets address, route and /etc/resolv.conf); then, when the
#      command line names metalbus.syslog=<host>:<port> (the rack's syslog relay), starts busybox syslogd -R
#      there and klogd, so the kernel's and this script's lines reach the region as the machine's syslog;
#   5. reads metalbus.metadata_url, metalbus.consumer_key, metalbus.token_key, metalbus.token_secret from
#      /proc/cmdline and fetches <metadata_url>latest/user-data with an OAuth 1.0a PLAINTEXT Authorization header
#      (busybox wget --header; never -T, which segfaults in busybox 1.35 inside the guest);
#   6. runs the user-data with sh (the region's commissioning_script.sh: inventory, results, signal OK);
#   7. powers off (poweroff -f), whatever happened — except when the metadata service never answered (its rack
#      died, say: no user-data, or the runner exited 75): then it reboots (reboot -f) and the firmware boots from
#      the network again, through a rack that answers. metalbus.ephemeral_debug=1 drops to a shell first.
set -euo pipefail
repository="$(cd "$(dirname "$0")/.." && pwd)"
out_dir="${1:-${METALBUS_EPHEMERAL_DIR:-$repository/.metalbus/boot/images/amd64/ephemeral}}"
busybox=/bin/busybox
tcpdump="$(command -v tcpdump || true)"
modules_to_load=(
  e1000 e1000e
  virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci failover net_failover virtio_net
  virtio_blk virtio_scsi scsi_mod sd_mod libata libahci ahci nvme
)

fail() {
  echo "build-ephemeral: $*" >&2
  exit 1
}

newest_kernel_version() {
  local newest
  newest="$(find /boot -maxdepth 1 -name 'vmlinuz-*' -printf '%f\n' | sort -V | tail -n 1)"
  [ -n "$newest" ] || fail "no /boot/vmlinuz-*: install the Debian package linux-image-amd64 (scripts/setup.sh does)"
  echo "${newest#vmlinuz-}"
}

kernel_version="${KERNEL_VERSION:-$(newest_kernel_version)}"
[ -x "$busybox" ] || fail "no $busybox: install the Debian package busybox-static (scripts/setup.sh does)"
for tool in depmod modprobe cpio gzip sha256sum dpkg-deb; do
  command -v "$tool" >/dev/null || fail "missing $tool (Debian packages kmod, cpio, gzip, coreutils, dpkg)"
done
staging="$(mktemp -d)"
trap 'rm -rf "$staging"' EXIT

# The kernel and its modules come from the installed package; a kernel that is not installed comes from its .deb
# in apt's cache, unpacked here (the .deb has no modules.dep: depmod makes it).
kernel_tree=""
if [ ! -d "/lib/modules/$kernel_version/kernel" ]; then
  deb="$(find /var/cache/apt/archives -maxdepth 1 -name "linux-image-${kernel_version}_*.deb" | sort -V | tail -n 1)"
  [ -n "$deb" ] || fail "kernel $kernel_version is neither installed nor in /var/cache/apt/archives (apt-get install linux-image-amd64)"
  kernel_tree="$staging/kernel-package"
  dpkg-deb -x "$deb" "$kernel_tree"
  depmod -b "$kernel_tree" "$kernel_version"
fi
kernel_image="$kernel_tree/boot/vmlinuz-$kernel_version"
modules_dir="$kernel_tree/lib/modules/$kernel_version"
[ -r "$kernel_image" ] || fail "cannot read $kernel_image (install linux-image-amd64)"
[ -d "$modules_dir/kernel" ] || fail "no $modules_dir/kernel (install linux-image-$kernel_version)"

stamp="$(
  {
    echo "kernel $kernel_version"
    sha256sum "$kernel_image" "$busybox" ${tcpdump:+"$tcpdump"} "$0" | cut -d' ' -f1
  } | sha256sum | cut -d' ' -f1
)"
if [ -f "$out_dir/inputs.sha256" ] && [ "$(cat "$out_dir/inputs.sha256")" = "$stamp" ] \
  && [ -s "$out_dir/vmlinuz" ] && [ -s "$out_dir/initrd.img" ]; then
  echo "$out_dir"
  exit 0
fi

root="$staging/root"
mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,dev,proc,sys,run,tmp,etc,root,var/log}
mkdir -p "$root/usr/share/udhcpc"

# -- busybox and its applets -----------------------------------------------------------------------------------
cp "$busybox" "$root/bin/busybox"
for applet in $("$busybox" --list-full); do
  [ "$applet" = bin/busybox ] && continue
  mkdir -p "$root/$(dirname "$applet")"
  ln -sf /bin/busybox "$root/$applet"
done

# -- tcpdump and the shared libraries it loads (LLDP); the root user it may run as ---------------------------------
copy_with_libraries() { # a dynamically linked binary into the same path under $root, with what ldd says it loads
  local library
  mkdir -p "$root$(dirname "$1")"
  cp -L "$1" "$root$1"
  for library in $(ldd "$1" | grep -o '/[^ ]*'); do
    mkdir -p "$root$(dirname "$library")"
    cp -Ln "$library" "$root$library"
  done
}
if [ -n "$tcpdump" ]; then
  copy_with_libraries "$tcpdump"
else
  echo "build-ephemeral: warning: no tcpdump (Debian package tcpdump): the image will report no LLDP neighbours" >&2
fi
echo 'root:x:0:0:root:/root:/bin/sh' >"$root/etc/passwd"
echo 'root:x:0:' >"$root/etc/group"

# -- kernel modules and their dependencies ---------------------------------------------------------------------
copy_module_with_dependencies() { # module name; built into the kernel: nothing to copy; absent: a warning
  local line path dependencies
  if ! dependencies="$(modprobe --show-depends --dirname "${kernel_tree:-/}" --set-version "$kernel_version" "$1" 2>/dev/null)"; then
    echo "build-ephemeral: warning: kernel $kernel_version has no module $1: left out" >&2
    return 0
  fi
  while read -r line; do
    case $line in
      insmod\ *)
        path="${line#insmod }"
        path="${path%% *}"
        path="${path#"$kernel_tree"}"
        mkdir -p "$root$(dirname "$path")"
        cp -n "$kernel_tree$path" "$root$path"
        ;;
    esac
  done <<<"$dependencies"
}
for module in "${modules_to_load[@]}"; do
  copy_module_with_dependencies "$module"
done
cp "$modules_dir"/modules.{order,builtin,builtin.modinfo} "$root/lib/modules/$kernel_version/" 2>/dev/null || true
depmod -b "$root" "$kernel_version"

# -- the DHCP client's script and /init -------------------------------------------------------------------------
cat >"$root/usr/share/udhcpc/default.script" <<'UDHCPC'
#!/bin/sh
# busybox udhcpc calls this with deconfig, bound, renew, leasefail or nak; the lease is in the environment.
case "$1" in
  deconfig)
    ip -4 addr flush dev "$interface"
    ip link set "$interface" up
    ;;
  bound | renew)
    ip -4 addr flush dev "$interface"
    ip addr add "$ip/${mask:-24}" dev "$interface"
    for gateway in ${router:-}; do
      ip route replace default via "$gateway" dev "$interface"
      break
    done
    : >/etc/resolv.conf
    for server in ${dns:-}; do echo "nameserver $server" >>/etc/resolv.conf; done
    echo "metalbus-ephemeral: leased $ip/${mask:-24} on $interface (router ${router:-none}, dns ${dns:-none})"
    ;;
esac
exit 0
UDHCPC
chmod 0755 "$root/usr/share/udhcpc/default.script"

cat >"$root/init" <<INIT
#!/bin/sh
# metalbus commissioning environment: network up, fetch the user-data, run it, power off.
KERNEL_VERSION=$kernel_version
MODULES="${modules_to_load[*]}"
INIT
cat >>"$root/init" <<'INIT'
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
SYSLOG=""
say() {
    echo "metalbus-ephemeral: $*"
    [ -z "$SYSLOG" ] || logger -t metalbus-ephemeral -- "$*"
}

parameter() { # the value of NAME=... on the kernel command line
    for word in $(cat /proc/cmdline); do
        case $word in "$1="*) echo "${word#*=}"; return 0 ;; esac
    done
    return 1
}

mount_filesystems() {
    mount -t proc proc /proc
    mount -t sysfs sysfs /sys
    mount -t devtmpfs devtmpfs /dev 2>/dev/null || mount -t tmpfs tmpfs /dev
    mkdir -p /dev/pts /dev/shm
    mount -t tmpfs tmpfs /run
    mount -t tmpfs tmpfs /tmp
    [ -e /dev/console ] || mknod /dev/console c 5 1
    [ -e /dev/null ] || mknod /dev/null c 1 3
}

load_modules() {
    for module in $MODULES; do
        modprobe -q "$module" 2>/dev/null || true
    done
    mdev -s 2>/dev/null || true
}

boot_interface() { # the interface whose MAC is BOOTIF's, else the first one with a device behind it
    wanted=$(parameter BOOTIF | sed 's/^01-//; s/-/:/g' | tr 'A-F' 'a-f')
    fallback=""
    for attempt in 1 2 3 4 5 6 7 8 9 10; do
        for path in /sys/class/net/*; do
            [ -e "$path/device" ] || continue
            [ -n "$fallback" ] || fallback=${path##*/}
            if [ -n "$wanted" ] && [ "$(cat "$path/address")" = "$wanted" ]; then
                echo "${path##*/}"
                return 0
            fi
        done
        [ -z "$fallback" ] || break
        sleep 0.5
    done
    [ -n "$fallback" ] && echo "$fallback"
}

wait_for_carrier() { # up to 10 s
    ip link set "$1" up
    for attempt in $(seq 1 50); do
        [ "$(cat "/sys/class/net/$1/carrier" 2>/dev/null)" = 1 ] && return 0
        sleep 0.2
    done
    return 1
}

start_syslog() { # metalbus.syslog=<host>:<port>: the kernel's and our lines to the rack's relay (UDP)
    destination=$(parameter metalbus.syslog) || return 0
    syslogd -R "$destination" -L -O /tmp/messages || { say "syslogd did not start"; return 0; }
    klogd  # the kernel's ring buffer (the whole boot so far) into syslogd
    SYSLOG=$destination
    say "logging to $destination"
}

authorization() { # OAuth 1.0a PLAINTEXT
    now=$(date +%s)
    printf 'OAuth oauth_version="1.0", oauth_signature_method="PLAINTEXT", oauth_consumer_key="%s", ' \
        "$(parameter metalbus.consumer_key)"
    printf 'oauth_token="%s", oauth_signature="%%26%s", oauth_nonce="init-%s-%s", oauth_timestamp="%s"' \
        "$(parameter metalbus.token_key)" "$(parameter metalbus.token_secret)" "$$" "$now" "$now"
}

RACK_SILENT=75  # the metadata service never answered (the user-data runner says the same with its exit status)

fetch_user_data() { # to $1; a few attempts (the rack may need a moment to answer); refused: 1, silent: 75
    url="$(parameter metalbus.metadata_url)latest/user-data"
    for attempt in 1 2 3 4 5; do
        if wget -q -O "$1" --header "Authorization: $(authorization)" "$url" 2>/tmp/wget.err; then
            say "user-data read from $url ($(wc -c <"$1") bytes)"
            return 0
        fi
        say "could not read $url (attempt $attempt): $(cat /tmp/wget.err)"
        sleep "$attempt"
    done
    grep -q "server returned error" /tmp/wget.err && return 1
    return "$RACK_SILENT"
}

commission() {
    interface=$(boot_interface)
    [ -n "$interface" ] || { say "no network interface"; return 1; }
    say "boot interface $interface ($(cat "/sys/class/net/$interface/address"))"
    wait_for_carrier "$interface" || say "no carrier on $interface after 10 s, trying DHCP anyway"
    udhcpc -i "$interface" -f -q -n -t 10 -T 2 -s /usr/share/udhcpc/default.script || {
        say "no DHCP lease on $interface"; return 1; }
    start_syslog
    parameter metalbus.metadata_url >/dev/null || { say "no metalbus.metadata_url on the command line"; return 1; }
    fetch_user_data /tmp/user-data || return $?
    say "running the user-data"
    sh /tmp/user-data
    status=$?
    say "user-data exited with $status"
    return "$status"
}

mount_filesystems
say "started (kernel $(uname -r), $(parameter metalbus.purpose || echo 'no purpose'))"
load_modules
commission
status=$?
say "commissioning finished with status $status"
if parameter metalbus.ephemeral_debug >/dev/null; then
    say "metalbus.ephemeral_debug: a shell instead of powering off"
    sh </dev/console >/dev/console 2>&1
fi
if [ "$status" -eq "$RACK_SILENT" ]; then
    say "the metadata service did not answer: rebooting (the firmware boots from the network, a rack answers)"
    [ -z "$SYSLOG" ] || sleep 1  # let syslogd send the last lines
    sync
    reboot -f
fi
say "powering off"
[ -z "$SYSLOG" ] || sleep 1  # let syslogd send the last lines
sync
poweroff -f
INIT
chmod 0755 "$root/init"

# -- the archive, the kernel, the stamp (each replaced atomically) ------------------------------------------------
mkdir -p "$out_dir"
(cd "$root" && find . -mindepth 1 | LC_ALL=C sort | cpio --quiet -o -H newc -R 0:0) | gzip -9 >"$staging/initrd.img"
cp "$staging/initrd.img" "$out_dir/.initrd.img.tmp"
cp "$kernel_image" "$out_dir/.vmlinuz.tmp"
mv -f "$out_dir/.initrd.img.tmp" "$out_dir/initrd.img"
mv -f "$out_dir/.vmlinuz.tmp" "$out_dir/vmlinuz"
echo "$stamp" >"$out_dir/inputs.sha256.tmp"
mv -f "$out_dir/inputs.sha256.tmp" "$out_dir/inputs.sha256"
echo "$out_dir"
