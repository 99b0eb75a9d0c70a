#!/usr/bin/env bash
# Build (once) the guest image for the kernel system tests: a Debian trixie root file system with a
# real kernel, nfsd, the NFS client, tlshd and kTLS, as an ext4 image plus the kernel and initrd to boot
# it with. Cached under target/kernel-vm/<key>/, where the key is a hash of this script (which holds the
# package list), so a rerun costs nothing. Prints the cache directory on stdout (last line).
#
# Needs root (debootstrap, chroot) and the Debian archive; installs debootstrap, e2fsprogs and
# qemu-system-x86 with apt-get when they are missing. DEBIAN_MIRROR overrides the mirror, which is
# otherwise the first Debian URL in this host's apt sources.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
suite=trixie

# KERNEL_VM_KERNEL: `stable` (default: trixie's own, 6.12) or `backports` (trixie-backports', newer:
# kTLS there can change keys, which 6.12 cannot). Each has its own image.
kernel=${KERNEL_VM_KERNEL:-stable}
case $kernel in
stable | backports) ;;
*) echo "build-image: KERNEL_VM_KERNEL=$kernel: want stable or backports" >&2; exit 2 ;;
esac

# Everything the guest needs. Changing this list (or anything else in this file) changes the key.
packages=(
    linux-image-amd64 initramfs-tools kmod
    nfs-kernel-server nfs-common rpcbind keyutils ktls-utils
    iproute2 procps openssl python3 util-linux e2fsprogs
)

log() { echo "build-image: $*" >&2; }

script_key=$(sha256sum "$0" | cut -c1-16)
key=$script_key-$kernel
cache="$repo/target/kernel-vm/$key"
if [[ -f "$cache/done" ]]; then
    log "cached image $cache"
    echo "$cache"
    exit 0
fi

[[ $(id -u) == 0 ]] || { log "needs root (debootstrap, chroot)"; exit 1; }

missing=()
command -v debootstrap >/dev/null || missing+=(debootstrap)
command -v mkfs.ext4 >/dev/null && command -v debugfs >/dev/null || missing+=(e2fsprogs)
command -v qemu-system-x86_64 >/dev/null || missing+=(qemu-system-x86)
if ((${#missing[@]})); then
    log "installing host tools: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

mirror=${DEBIAN_MIRROR:-$(grep -rhoE 'https?://[^ ]+/debian/?( |$)' /etc/apt/sources.list /etc/apt/sources.list.d/ 2>/dev/null | head -1 | tr -d ' ' || true)}
mirror=${mirror:-http://deb.debian.org/debian}

mkdir -p "$repo/target/kernel-vm"
work=$(mktemp -d "$repo/target/kernel-vm/build.XXXXXX")
root="$work/root"
cleanup() {
    # debootstrap and chroot leave these mounted when interrupted
    for m in proc sys dev/pts dev; do umount -l "$root/$m" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT

started=$SECONDS
log "debootstrap $suite from $mirror (${#packages[@]} packages and their dependencies)"
include=$(IFS=,; echo "${packages[*]}")
if ! debootstrap --variant=minbase --include="$include" "$suite" "$root" "$mirror" >"$work/debootstrap.log" 2>&1; then
    tail -30 "$work/debootstrap.log" >&2
    [[ -f "$root/debootstrap/debootstrap.log" ]] && tail -30 "$root/debootstrap/debootstrap.log" >&2
    log "debootstrap failed"
    exit 1
fi
log "debootstrap done in $((SECONDS - started)) s"

if [[ $kernel == backports ]]; then
    log "kernel from $suite-backports"
    echo "deb $mirror $suite-backports main" >"$root/etc/apt/sources.list.d/backports.list"
    mount -t proc proc "$root/proc"
    if ! chroot "$root" sh -c "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
            -t $suite-backports linux-image-amd64 && DEBIAN_FRONTEND=noninteractive apt-get purge -y -qq \
            linux-image-\$(ls /lib/modules | sort -V | head -1)" >"$work/backports.log" 2>&1; then
        umount "$root/proc"
        tail -30 "$work/backports.log" >&2
        log "the backports kernel could not be installed"
        exit 1
    fi
    umount "$root/proc"
    rm -f "$root/etc/apt/sources.list.d/backports.list"
fi

# A small initrd (it is unpacked under software emulation at every boot): only what finds /dev/vda.
cat >"$root/etc/initramfs-tools/conf.d/kernel-vm.conf" <<'EOF'
MODULES=list
COMPRESS=gzip
EOF
printf '%s\n' virtio_pci virtio_blk ext4 >"$root/etc/initramfs-tools/modules"
mount -t proc proc "$root/proc"
chroot "$root" update-initramfs -u -k all >"$work/initramfs.log" 2>&1 || { cat "$work/initramfs.log" >&2; exit 1; }
umount "$root/proc"

echo kernel-vm >"$root/etc/hostname"
printf '127.0.0.1 localhost\n::1 localhost\n' >"$root/etc/hosts"
# nfs-utils reads the client's and server's settings here; NFSv4 only, no rpc.statd/lockd needed.
cat >"$root/etc/nfs.conf.d/kernel-vm.conf" <<'EOF'
[nfsd]
vers3=n
EOF
: >"$root/etc/exports"

# The guest's PID 1: mount the test disk (vdb) and hand over to the driver on it, so changing the
# scenarios never rebuilds this image. Power off if the driver is missing or returns.
cat >"$root/sbin/kernel-vm-init" <<'EOF'
#!/bin/sh
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mkdir -p /mnt/test
if mount -t ext4 /dev/vdb /mnt/test && [ -x /mnt/test/guest.sh ]; then
    /mnt/test/guest.sh
else
    echo "kernel-vm-init: no /mnt/test/guest.sh on /dev/vdb"
fi
sync
umount /mnt/test 2>/dev/null
echo o >/proc/sysrq-trigger
sleep 30
EOF
chmod 755 "$root/sbin/kernel-vm-init"

rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* "$root"/usr/share/doc/* "$root"/usr/share/man/*

mkdir -p "$work/out"
cp "$root"/boot/vmlinuz-* "$work/out/vmlinuz"
cp "$root"/boot/initrd.img-* "$work/out/initrd.img"
ls "$root/lib/modules" >"$work/out/kernel-version"
# The root file system plus room for the exports' files (the guest writes to a throw-away overlay).
used_mib=$(du -sm "$root" | cut -f1)
mkfs.ext4 -q -F -L kernel-vm -d "$root" "$work/out/rootfs.img" "$((used_mib + 1536))M"
date -u +%FT%TZ >"$work/out/done"

rm -rf "$cache"
mv "$work/out" "$cache"
# Older images are keyed by an older script: drop them.
find "$repo/target/kernel-vm" -mindepth 1 -maxdepth 1 -type d ! -name "$script_key-*" ! -name 'build.*' ! -name 'run.*' -exec rm -rf {} +
log "image built in $((SECONDS - started)) s: $cache (kernel $(cat "$cache/kernel-version"))"
echo "$cache"
