#!/usr/bin/env bash
# Populates a rack's boot root (served by rack-tftp over TFTP and HTTP port 5248) with the bootloaders of the
# Debian packages that scripts/setup.sh installs. No network; safe to run again (a file is replaced, atomically,
# only when its bytes changed, so a rerun leaves the tree and its mtimes untouched).
#
#   scripts/boot-files.sh [BOOT_ROOT]        BOOT_ROOT defaults to $METALBUS_BOOT_ROOT, else <repository>/.metalbus/boot
#
# What it writes (sources in brackets):
#   pxelinux.0 lpxelinux.0                 BIOS PXE loaders [pxelinux: /usr/lib/PXELINUX]
#   ldlinux.c32 + modules                  what pxelinux loads next [syslinux-common: /usr/lib/syslinux/modules/bios]
#   bootx64.efi                            shim [shim-signed: /usr/lib/shim/shimx64.efi.signed]
#   grubx64.efi                            the name shim chain-loads from its own directory ("\grubx64.efi" in
#                                          shim): grub's network image grub/x86_64-efi/core.efi, prefix /grub
#   grub/x86_64-efi/*.mod …                grub's modules [grub-efi-amd64-bin via grub-mknetdir --subdir=grub]
#   undionly.kpxe ipxe.efi snponly.efi     iPXE [ipxe: /usr/lib/ipxe]
#   images/                                boot resources (kernels, initrds, squashfs) come from another process;
#   images/bootx64.efi images/grubx64.efi  except these two: rack-dhcp sends UEFI HTTP clients to
#                                          http://<rack>:5248/images/bootx64.efi, and shim then asks for
#                                          grubx64.efi next to it.
#
# Secure Boot: this grub is unsigned (built here by grub-mknetdir), so a machine with Secure Boot on stops after
# shim. Debian signs a network grub too: package grub-efi-amd64-signed, file
# /usr/lib/grub/x86_64-efi-signed/grubnetx64.efi.signed (all modules built in). It is not installed by setup.sh;
# using it means copying it to grubx64.efi instead of core.efi. Left for the Secure Boot work: the lab's OVMF
# boots with Secure Boot off.
set -euo pipefail
repository="$(cd "$(dirname "$0")/.." && pwd)"
boot_root="${1:-${METALBUS_BOOT_ROOT:-$repository/.metalbus/boot}}"

pxelinux_dir=/usr/lib/PXELINUX
syslinux_modules_dir=/usr/lib/syslinux/modules/bios
shim=/usr/lib/shim/shimx64.efi.signed
grub_platform_dir=/usr/lib/grub/x86_64-efi
ipxe_dir=/usr/lib/ipxe
# ldlinux.c32 is pxelinux's second stage; the rest are the COM32 modules its configs use (menus, chain-loading
# the local disk, 64-bit CPU checks) and the libraries they link against.
syslinux_modules=(ldlinux.c32 libcom32.c32 libutil.c32 menu.c32 vesamenu.c32 chain.c32 ifcpu64.c32 reboot.c32)

fail() {
  echo "boot-files: $*" >&2
  exit 1
}

require() { # require FILE PACKAGE
  [ -e "$1" ] || fail "missing $1: install the Debian package $2 (scripts/setup.sh does)"
}

install_file() { # install_file SOURCE DESTINATION: copy (following symlinks) unless the bytes are already there
  local source="$1" destination="$2"
  if [ -f "$destination" ] && cmp -s "$source" "$destination"; then
    return 0
  fi
  mkdir -p "$(dirname "$destination")"
  cp -L "$source" "$destination.tmp.$$"
  chmod 0644 "$destination.tmp.$$"
  mv -f "$destination.tmp.$$" "$destination"
  echo "boot-files: wrote ${destination#"$boot_root"/}"
}

install_tree() { # install_tree SOURCE_DIRECTORY DESTINATION_DIRECTORY
  local source_dir="$1" destination_dir="$2" relative
  while IFS= read -r -d '' relative; do
    install_file "$source_dir/$relative" "$destination_dir/$relative"
  done < <(cd "$source_dir" && find . -type f -printf '%P\0' | sort -z)
}

for file in pxelinux.0 lpxelinux.0; do require "$pxelinux_dir/$file" pxelinux; done
for module in "${syslinux_modules[@]}"; do require "$syslinux_modules_dir/$module" syslinux-common; done
require "$shim" shim-signed
require "$grub_platform_dir/efinet.mod" grub-efi-amd64-bin
command -v grub-mknetdir >/dev/null || fail "missing grub-mknetdir: install the Debian package grub-common"
for file in undionly.kpxe ipxe.efi snponly.efi; do require "$ipxe_dir/$file" ipxe; done

mkdir -p "$boot_root/images"
boot_root="$(cd "$boot_root" && pwd)"

for file in pxelinux.0 lpxelinux.0; do install_file "$pxelinux_dir/$file" "$boot_root/$file"; done
for module in "${syslinux_modules[@]}"; do install_file "$syslinux_modules_dir/$module" "$boot_root/$module"; done

grub_build="$(mktemp -d)"
trap 'rm -rf "$grub_build"' EXIT
grub-mknetdir --net-directory="$grub_build" --subdir=grub --directory="$grub_platform_dir" \
  --locales= --fonts= --themes= >/dev/null 2>&1 || fail "grub-mknetdir failed"
install_tree "$grub_build/grub" "$boot_root/grub"

for directory in "$boot_root" "$boot_root/images"; do
  install_file "$shim" "$directory/bootx64.efi"
  install_file "$grub_build/grub/x86_64-efi/core.efi" "$directory/grubx64.efi"
done

for file in undionly.kpxe ipxe.efi snponly.efi; do install_file "$ipxe_dir/$file" "$boot_root/$file"; done

echo "boot-files: boot root ready in $boot_root"
