#!/usr/bin/env bash
# CPU (user+sys clock ticks) that nfs-tls-proxy's client and server spend per GiB moved by iperf3,
# each direction. Steadier than throughput on a noisy VM for A/B-testing a change:
#   cargo build --release -p nfs-tls-proxy && bash benches/cpu-per-gib.sh [extra proxy flags]
# Needs iperf3. Uses the public demo PKI (certs-example/) copied to a temporary directory.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
bin="${NFS_TLS_PROXY_BIN:-$root/target/release/nfs-tls-proxy}"
dir="$(mktemp -d)"
cp "$root"/certs-example/*.pem "$dir"/ && chmod 600 "$dir"/*-key.pem "$dir"/*-stunnel.pem
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
ip=$(port) sp=$(port) cp=$(port)
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$dir"; }
trap cleanup EXIT
iperf3 -s -p "$ip" >/dev/null 2>&1 & pids+=($!)
"$bin" server --listen "127.0.0.1:$sp" --backend "127.0.0.1:$ip" --cert "$dir/f3s-storage-ha-cert.pem" \
    --key "$dir/f3s-storage-ha-key.pem" --ca "$dir/ca-cert.pem" --log-level warn "$@" 2>/dev/null & pids+=($!)
server=$!
"$bin" client --listen "127.0.0.1:$cp" --server "127.0.0.1:$sp" --server-name f3s-storage-ha \
    --cert "$dir/r0-stunnel.pem" --ca "$dir/ca-cert.pem" --log-level warn "$@" 2>/dev/null & pids+=($!)
client=$!
for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$cp") 2>/dev/null && break; sleep 0.05; done
cpu() { awk '{s += $14 + $15} END {print s}' "/proc/$server/stat" "/proc/$client/stat"; }
for dir_flag in "" "-R"; do
    before=$(cpu)
    rate=$(iperf3 -c 127.0.0.1 -p "$cp" -n 4G $dir_flag | awk '/receiver/ {print $7, $8}')
    after=$(cpu)
    echo "$([ -z "$dir_flag" ] && echo up || echo down): $rate, cpu_ticks_per_GiB=$(( (after - before) / 4 ))"
done
