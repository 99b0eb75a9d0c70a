#!/usr/bin/env bash
# Regenerates the demo PKI in this directory with ca-tool. PUBLIC DEMO MATERIAL: never use these keys.
#   bash certs-example/generate.sh      (from the repository root)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cd "$here/.."
cargo build --quiet --release -p ca-tool
ca=target/release/ca-tool
dir=$here
rm -f "$dir"/*.pem "$dir"/index.toml
$ca init --dir "$dir" --cn "f3s demo CA" --days 36500
$ca issue f3s-storage-ha --dir "$dir" --server --days 36500 \
    --dns f0 --dns f1 --dns localhost --ip 192.168.1.138 --ip 127.0.0.1
for client in r0 r1 r2 earth; do
    $ca issue "$client" --dir "$dir" --days 36500 --combined
done
$ca crl --dir "$dir" --days 36500
$ca list --dir "$dir"
