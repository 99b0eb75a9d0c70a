#!/usr/bin/env bash
# Boot the test VM once and report: usage `boot.sh IMAGE_DIR [SCENARIO...]` (IMAGE_DIR from
# build-image.sh; no scenario names = all of them).
#
# A second small ext4 disk carries in the binaries under test, a fresh PKI made with our ca-tool and the
# guest scripts, and carries out the results, read back with debugfs without mounting anything. The VM
# has no network device; it powers itself off after the last scenario and is killed after
# KERNEL_VM_TIMEOUT seconds (default 1500) in any case. Prints the guest's PASS/FAIL lines as they come
# and exits non-zero on any FAIL or missing result. The last run's logs stay in target/kernel-vm/last-run.
#
# Binaries: NFS_TLS_PROXY and CA_TOOL, default target/release/{nfs-tls-proxy,ca-tool}.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
image=${1:?usage: boot.sh IMAGE_DIR [SCENARIO...]}
shift
release=${CARGO_TARGET_DIR:-$repo/target}/release
proxy=${NFS_TLS_PROXY:-$release/nfs-tls-proxy}
ca_tool=${CA_TOOL:-$release/ca-tool}
vm_timeout=${KERNEL_VM_TIMEOUT:-1500}

for f in "$image/vmlinuz" "$image/initrd.img" "$image/rootfs.img" "$proxy" "$ca_tool"; do
    [[ -f $f ]] || { echo "boot: missing $f" >&2; exit 1; }
done

run=$(mktemp -d "$repo/target/kernel-vm/run.XXXXXX")
qemu_pid=
cleanup() {
    if [[ -n $qemu_pid ]] && kill -0 "$qemu_pid" 2>/dev/null; then
        kill "$qemu_pid" 2>/dev/null
        sleep 1
        kill -KILL "$qemu_pid" 2>/dev/null || true
    fi
    rm -rf "$run"
}
trap cleanup EXIT

# ---- the test disk: binaries, PKI, scripts, an empty results directory
stage=$run/stage
mkdir -p "$stage/bin" "$stage/pki" "$stage/results"
cp "$proxy" "$stage/bin/nfs-tls-proxy"
cp "$ca_tool" "$stage/bin/ca-tool"
cp "$here/guest.sh" "$here/ioload.py" "$here/echo.py" "$here/tlspeer.py" "$stage/"
printf '%s\n' "$*" >"$stage/only"

pki=$stage/pki
"$ca_tool" init --dir "$pki" --cn "kernel-tests CA" >/dev/null
# storage: our server (the VIP is in it as the f3s name is); nfsd: kernel nfsd's own, for tlshd.
"$ca_tool" issue --dir "$pki" --server --ip 127.0.0.1 --ip 192.0.2.138 storage >/dev/null
"$ca_tool" issue --dir "$pki" --server --ip 127.0.0.2 nfsd >/dev/null
# r0: our client; earth: the kernel client via tlshd; intruder: valid, but on no allow-list.
for name in r0 earth intruder; do "$ca_tool" issue --dir "$pki" "$name" >/dev/null; done
chmod 600 "$pki"/*-key.pem

# No journal: what the guest synced is on disk even if the VM is killed, and debugfs reads it as is.
mkfs.ext4 -q -F -O ^has_journal -L kernel-tests -d "$stage" "$run/test.img" 512M >/dev/null

# ---- boot
echo "boot: kernel $(cat "$image/kernel-version"), proxy $proxy, timeout ${vm_timeout}s"
# boot_vm: one run of the VM, the console in $run/console.log; sets timed_out.
boot_vm() {
    qemu-system-x86_64 -accel tcg,thread=multi -cpu max -smp 2 -m 3G -nographic -no-reboot -nic none \
        -kernel "$image/vmlinuz" -initrd "$image/initrd.img" \
        -drive "file=$image/rootfs.img,if=virtio,format=raw,snapshot=on" \
        -drive "file=$run/test.img,if=virtio,format=raw" \
        -append "root=/dev/vda rw rootfstype=ext4 console=ttyS0 quiet loglevel=4 panic=-1 init=/sbin/kernel-vm-init" \
        </dev/null >"$run/console.log" 2>&1 &
    qemu_pid=$!

    # Show the guest's own lines while it runs; stop the VM at the deadline.
    tail -n +1 -F --pid="$qemu_pid" "$run/console.log" 2>/dev/null |
        sed -u -e 's/\r//g' -e 's/\x1b[[c?0-9;]*[a-zA-Z]\?//g' |
        grep --line-buffered -E '^(guest:|PASS|FAIL|kernel-vm-init|Kernel panic)' &
    tail_pid=$!
    deadline=$((SECONDS + vm_timeout))
    while kill -0 "$qemu_pid" 2>/dev/null && ((SECONDS < deadline)); do sleep 1; done
    timed_out=
    if kill -0 "$qemu_pid" 2>/dev/null; then
        timed_out=1
        echo "boot: the VM ran past ${vm_timeout}s: killed"
        kill "$qemu_pid"
    fi
    wait "$qemu_pid" 2>/dev/null || true
    qemu_pid=
    wait "$tail_pid" 2>/dev/null || true
}

started=$SECONDS
# qemu's multi-threaded TCG now and then runs a stale translation of kernel text that the kernel is
# patching at boot (an Oops "int3" in sched_clock_cpu during early init, before any of our code: seen
# once, in a fresh-clone CI run on 2026-12-07, after dozens of clean boots). Such a boot never reached the test disk, which is still as written: boot again, at most
# twice more. A panic after the guest started is a result and is never retried.
for attempt in 1 2 3; do
    boot_vm
    if [[ -z $timed_out ]] && ! grep -q '^guest:' <(sed -e 's/\r//g' "$run/console.log") &&
        grep -q 'Kernel panic' "$run/console.log" && ((attempt < 3)); then
        echo "boot: the kernel panicked before the guest started (attempt $attempt; qemu TCG, not the tests); booting again:"
        grep -m1 -E 'Oops|BUG|RIP' "$run/console.log" | sed -e 's/\r//g' -e 's/^/    /'
        cp "$run/console.log" "$run/console-attempt-$attempt.log"
        continue
    fi
    break
done
echo "boot: the VM ran $((SECONDS - started)) s"

# ---- results
last=$repo/target/kernel-vm/last-run
rm -rf "$last"
mkdir -p "$last"
debugfs -R "rdump /results $last" "$run/test.img" >/dev/null 2>&1 || true
cp "$run/console.log" "$last/vm-console.log"
results=$last/results
summary=$results/summary
status=0
if [[ ! -f $summary ]] || ! grep -q '^guest: done' "$summary"; then
    echo "FAIL the guest did not finish${timed_out:+ (timed out)}; console tail:"
    tail -n 25 "$last/vm-console.log" | sed -e 's/\r//g' -e 's/\x1b[[c?0-9;]*[a-zA-Z]\?//g' -e 's/^/    /'
    status=1
fi
# Every planned scenario must have a line; one with none was cut off by a crash or the deadline.
if [[ -f $results/plan ]]; then
    while read -r name; do
        grep -qE "^(PASS|FAIL) $name[ :]" "$summary" 2>/dev/null || { echo "FAIL $name: no result"; status=1; }
    done <"$results/plan"
fi
if [[ -f $summary ]]; then
    echo "== kernel tests: summary"
    grep -E '^(PASS|FAIL|guest: scenarios)' "$summary"
    grep -q '^FAIL' "$summary" && status=1
fi
echo "boot: logs in $last/results/<scenario>/ and $last/vm-console.log"
exit "$status"
