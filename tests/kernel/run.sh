#!/usr/bin/env bash
# The kernel system tests, start to end: build the guest image (cached), build the binaries under
# test, boot the VM, print the summary. Usage: `tests/kernel/run.sh [SCENARIO...]` (default: all).
# Exits non-zero on any FAIL. Without root or qemu it skips loudly, or fails when CI is set.
#
# NFS_TLS_PROXY / CA_TOOL point at prebuilt binaries (then nothing is built); KERNEL_VM_TIMEOUT bounds
# the VM (seconds, default 1500); DEBIAN_MIRROR overrides the mirror for the image.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
started=$SECONDS

skip_or_fail() {
    if [[ -n ${CI-} ]]; then
        echo "kernel tests: FAIL: $*" >&2
        exit 1
    fi
    echo "kernel tests: SKIPPED: $* (set CI=1 to make this a failure)" >&2
    exit 0
}

[[ $(id -u) == 0 ]] || skip_or_fail "needs root (debootstrap, chroot)"
if ! command -v qemu-system-x86_64 >/dev/null; then
    echo "kernel tests: installing qemu-system-x86" >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends qemu-system-x86 >/dev/null 2>&1 || true
fi
command -v qemu-system-x86_64 >/dev/null || skip_or_fail "qemu-system-x86_64 is missing (apt-get install qemu-system-x86)"

echo "== kernel tests: guest image"
image=$("$here/build-image.sh" | tail -1)

if [[ -z ${NFS_TLS_PROXY-} ]]; then
    echo "== kernel tests: cargo build --release"
    (cd "$repo" && cargo build --release --locked -p nfs-tls-proxy -p ca-tool)
fi

echo "== kernel tests: boot"
status=0
"$here/boot.sh" "$image" "$@" || status=$?
echo "== kernel tests: total $((SECONDS - started)) s (image, build, boot and scenarios)"
exit "$status"
