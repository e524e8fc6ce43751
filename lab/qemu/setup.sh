#!/bin/sh
# Installs and builds what the QEMU lab needs (docs/qemu.md). Idempotent; run as root.
#
#   1. system packages: qemu-system-x86 >= 8 (from bookworm-backports on Debian 12,
#      whose own 7.2 corrupts guests migrated under memory load) and busybox-static;
#   2. a Debian kernel (linux-image-<version>-amd64, fetched with `apt-get download`,
#      unpacked with `dpkg-deb -x`): vmlinuz and the virtio-net modules;
#   3. the guest programs (lab/qemu/guest/*.c, compiled with gcc -static);
#   4. the guest initramfs (static busybox, /init, modules, programs).
#
# Everything built lands in $MB_QEMU_CACHE (default /var/cache/migration-blackout/qemu
# as root, else $XDG_CACHE_HOME/migration-blackout/qemu), and $MB_QEMU_CACHE/artefacts.env
# names it. A second run with nothing to do takes well under a second.
#
# Environment: MB_QEMU_CACHE (cache folder), MB_QEMU_KERNEL_PACKAGE (e.g.
# linux-image-6.1.0-37-amd64; default: what linux-image-amd64 depends on),
# MB_DEBIAN_MIRROR (for the backports source added on Debian 12; default
# http://deb.debian.org/debian), MB_QEMU_NO_APT=1 (never call apt: fail instead).
set -eu

here=$(cd "$(dirname "$0")" && pwd)
say() { echo "qemu-setup: $*"; }
die() { echo "qemu-setup: error: $*" >&2; exit 1; }

if [ -n "${MB_QEMU_CACHE:-}" ]; then
    cache=$MB_QEMU_CACHE
elif [ "$(id -u)" = 0 ]; then
    cache=/var/cache/migration-blackout/qemu
else
    cache=${XDG_CACHE_HOME:-$HOME/.cache}/migration-blackout/qemu
fi
MIN_QEMU_MAJOR=8
BACKPORTS_SOURCE=/etc/apt/sources.list.d/migration-blackout-backports.sources

installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }

qemu_major() {
    command -v qemu-system-x86_64 >/dev/null 2>&1 || { echo 0; return; }
    qemu-system-x86_64 --version | sed -n 's/^QEMU emulator version \([0-9]*\)\..*/\1/p'
}

apt_updated=0
apt_update() {
    if [ "$apt_updated" = 0 ]; then
        apt-get update -qq
        apt_updated=1
    fi
}

need_apt() {
    [ "${MB_QEMU_NO_APT:-0}" = 1 ] && die "$1 (MB_QEMU_NO_APT=1: not calling apt)"
    [ "$(id -u)" = 0 ] || die "$1; run this script as root to install it"
    command -v apt-get >/dev/null 2>&1 || die "$1, and there is no apt-get to install it"
}

# -- 1. system packages ---------------------------------------------------------
. /etc/os-release
if [ "$(qemu_major)" -lt "$MIN_QEMU_MAJOR" ]; then
    need_apt "QEMU >= $MIN_QEMU_MAJOR is not installed (found: $(qemu_major))"
    target=""
    if [ "${VERSION_CODENAME:-}" = bookworm ]; then
        if ! grep -rqs '^[^#]*bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/; then
            say "adding bookworm-backports ($BACKPORTS_SOURCE)"
            cat > "$BACKPORTS_SOURCE" <<SRC
# Added by migration-blackout lab/qemu/setup.sh: QEMU >= 8 for the QEMU lab.
Types: deb
URIs: ${MB_DEBIAN_MIRROR:-http://deb.debian.org/debian}
Suites: bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
        fi
        target="-t bookworm-backports"
    fi
    apt_update
    say "installing qemu-system-x86 ${target:+($target)}"
    # shellcheck disable=SC2086
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $target \
        qemu-system-x86 >/dev/null
    [ "$(qemu_major)" -ge "$MIN_QEMU_MAJOR" ] \
        || die "qemu-system-x86_64 is $(qemu_major).x after installing; need >= $MIN_QEMU_MAJOR"
fi
if ! installed busybox-static; then
    need_apt "busybox-static is not installed"
    apt_update
    say "installing busybox-static"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends busybox-static \
        >/dev/null
fi
for tool in gcc dpkg-deb; do
    if ! command -v "$tool" >/dev/null 2>&1; then
        need_apt "$tool is missing"
        apt_update
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends gcc libc6-dev \
            dpkg >/dev/null
    fi
done
if [ ! -f /usr/lib/x86_64-linux-gnu/libc.a ]; then
    need_apt "libc6-dev (for gcc -static) is missing"
    apt_update
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends libc6-dev >/dev/null
fi

# -- 2. kernel ------------------------------------------------------------------
MODULES="virtio_ring virtio virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci failover
net_failover virtio_net qemu_fw_cfg"
mkdir -p "$cache/kernel"
kernel_package=${MB_QEMU_KERNEL_PACKAGE:-}
if [ -z "$kernel_package" ] && [ -f "$cache/kernel/current" ]; then
    kernel_package=$(cat "$cache/kernel/current")
fi
if [ -z "$kernel_package" ]; then
    resolve() { apt-cache depends linux-image-amd64 2>/dev/null \
        | sed -n 's/^ *Depends: \(linux-image-[0-9].*-amd64\)$/\1/p' | head -n1; }
    kernel_package=$(resolve)
    if [ -z "$kernel_package" ]; then
        need_apt "cannot tell which kernel linux-image-amd64 stands for"
        apt_update
        kernel_package=$(resolve)
    fi
    [ -n "$kernel_package" ] || die "apt knows no linux-image-amd64; set MB_QEMU_KERNEL_PACKAGE"
fi
kernel_dir=$cache/kernel/$kernel_package
if [ ! -f "$kernel_dir/.complete" ]; then
    command -v apt-get >/dev/null 2>&1 || die "no apt-get to download $kernel_package"
    say "downloading $kernel_package"
    work=$(mktemp -d)
    trap 'rm -rf "$work"' EXIT
    chmod 0755 "$work"
    id _apt >/dev/null 2>&1 && chown _apt "$work"  # lets apt download without a sandbox warning
    (cd "$work" && apt-get download -qq "$kernel_package") \
        || { apt_update; (cd "$work" && apt-get download -qq "$kernel_package"); } \
        || die "apt-get download $kernel_package failed"
    deb=$(ls "$work"/*.deb)
    mkdir -p "$work/x"
    # Only vmlinuz and the modules the guest needs (dpkg-deb -x of all of it takes 4 s).
    dpkg-deb --fsys-tarfile "$deb" | tar -x -C "$work/x" --wildcards \
        './boot/vmlinuz-*' './lib/modules/*/kernel/drivers/virtio/*' \
        './lib/modules/*/kernel/drivers/net/*failover*' './lib/modules/*/kernel/net/core/failover*' \
        './lib/modules/*/kernel/drivers/net/virtio_net*' \
        './lib/modules/*/kernel/drivers/firmware/qemu_fw_cfg*' \
        || die "unpacking $deb failed"
    rm -rf "$kernel_dir"
    mkdir -p "$kernel_dir/modules"
    cp "$work"/x/boot/vmlinuz-* "$kernel_dir/vmlinuz"
    for module in $MODULES; do
        found=$(find "$work/x/lib/modules" -name "$module.ko*" | head -n1)
        [ -n "$found" ] || die "$kernel_package has no module $module"
        case "$found" in
            *.ko) cp "$found" "$kernel_dir/modules/$module.ko" ;;
            *.ko.xz) xz -dc "$found" > "$kernel_dir/modules/$module.ko" ;;
            *.ko.zst) zstd -qdc "$found" > "$kernel_dir/modules/$module.ko" ;;
            *) die "cannot unpack $found" ;;
        esac
    done
    touch "$kernel_dir/.complete"
    rm -rf "$work"
    trap - EXIT
fi
echo "$kernel_package" > "$cache/kernel/current"

# -- 3. guest programs ----------------------------------------------------------
mkdir -p "$cache/bin"
src=$here/guest/mb-guestd.c
src_hash=$(sha256sum "$src" | cut -c1-16)
guestd=$cache/bin/mb-guestd-$src_hash
if [ ! -x "$guestd" ]; then
    say "compiling mb-guestd"
    gcc -static -O2 -pthread -Wall -o "$guestd.tmp" "$src" || die "gcc failed on $src"
    mv "$guestd.tmp" "$guestd"
fi

# -- 4. initramfs ---------------------------------------------------------------
busybox=/bin/busybox
[ -x "$busybox" ] && "$busybox" --help 2>&1 | head -n1 | grep -q BusyBox \
    || die "$busybox (busybox-static) is missing"
inputs=$( (cat "$here/guest/init" "$guestd" "$busybox" "$kernel_dir"/modules/*.ko; \
    echo "$MODULES") | sha256sum | cut -c1-16)
initramfs=$cache/initramfs-$inputs.cpio.gz
if [ ! -f "$initramfs" ]; then
    say "building the guest initramfs"
    root=$(mktemp -d)
    trap 'rm -rf "$root"' EXIT
    mkdir -p "$root/bin" "$root/sbin" "$root/usr/bin" "$root/usr/sbin" "$root/proc" \
        "$root/sys" "$root/dev" "$root/run" "$root/tmp" "$root/lib/modules"
    cp "$busybox" "$root/bin/busybox"
    for link in $("$busybox" --list-full); do
        [ "$link" = bin/busybox ] || ln -sf /bin/busybox "$root/$link"
    done
    cp "$here/guest/init" "$root/init"
    chmod 0755 "$root/init"
    cp "$guestd" "$root/bin/mb-guestd"
    cp "$kernel_dir"/modules/*.ko "$root/lib/modules/"
    (cd "$root" && find . | "$busybox" cpio -o -H newc 2>/dev/null) | gzip -6 > "$initramfs.tmp"
    mv "$initramfs.tmp" "$initramfs"
    rm -rf "$root"
    trap - EXIT
    # Builds from other guest sources stay: another checkout of the project
    # (a branch with another mb-guestd) may start its lab from them.
fi

# -- what the lab reads -----------------------------------------------------------
firmware=$(qemu-system-x86_64 -L help | tr '\n' ':' | sed 's/:$//')
qemu_version=$(qemu-system-x86_64 --version | sed -n 's/^QEMU emulator version \([^ ]*\).*/\1/p')
# One manifest per version of the guest's sources (mb-guestd.c and init, in
# that order: lab/qemu/artefacts.py computes the same), so checkouts with
# different guests share this cache without starting each other's guest.
sources=$(cat "$here/guest/mb-guestd.c" "$here/guest/init" | sha256sum | cut -c1-16)
manifest=$cache/artefacts-$sources.json
cat > "$manifest.tmp" <<JSON
{
  "schema_version": 1,
  "qemu_binary": "$(command -v qemu-system-x86_64)",
  "qemu_version": "$qemu_version",
  "firmware_dirs": "$firmware",
  "kernel_package": "$kernel_package",
  "kernel": "$kernel_dir/vmlinuz",
  "initramfs": "$initramfs",
  "guestd": "$guestd"
}
JSON
if cmp -s "$manifest.tmp" "$manifest"; then
    rm -f "$manifest.tmp"
else
    mv "$manifest.tmp" "$manifest"
fi
say "ready: $manifest (QEMU $qemu_version, $kernel_package)"
