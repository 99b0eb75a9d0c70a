#!/usr/bin/env bash
# CPU per GiB of both proxies with kTLS (the kernel seals and opens, splice(2) moves) against rustls'
# record layer (--ktls off), measured in the kernel VM of tests/kernel/ (this host has no `tls`
# module). qemu's TCG emulates the CPU, so absolute figures are not the host's; the ratio is the point.
#   sudo bash benches/ktls-vm.sh            # 256 MiB each way, each path
# The figures are on the bench's line in tests/kernel's summary (target/kernel-vm/last-run/results/summary).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
exec "$root/tests/kernel/run.sh" bench_ktls_cpu_per_gib
