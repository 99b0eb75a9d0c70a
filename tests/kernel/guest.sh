#!/bin/bash
# Guest driver of the kernel system tests. Runs inside the VM as the init's child (see build-image.sh):
# brings up the system (loopback, nfsd on 127.0.0.2:2049, tlshd), then runs each scenario in its own
# process under a time limit, one `PASS name (Ns)` or `FAIL name: why (Ns)` line each, into
# results/summary on the test disk, which boot.sh reads back after power-off.
#
# Addresses: nfsd listens on 127.0.0.2:2049 only, so our client can own 127.0.0.1:2049. Server
# proxies listen on 127.0.0.1:23xx (192.0.2.138 for the VIP), client proxies on 127.0.0.1:24xx.
# Exports live on the root disk, which is a throw-away overlay (qemu snapshot=on).
set -uo pipefail

T=$(cd "$(dirname "$0")" && pwd)
PROXY=$T/bin/nfs-tls-proxy
PKI=$T/pki
OUT=$T/results
RUN=/run/kernel-tests
NFSD=127.0.0.2:2049
MNT=/mnt/nfs
VIP=192.0.2.138

# name and time limit (s), in the order they run
SCENARIOS=(
    "kernel_mount_through_both_proxies_serves_files 420"
    "client_2049_listener_serves_mount_without_port_option 150"
    "secure_export_refuses_any_port_and_serves_reserved_port 240"
    "server_proxy_restart_under_reader_and_writer_corrupts_nothing 300"
    "client_proxy_restart_under_reader_and_writer_corrupts_nothing 300"
    "kernel_mtls_mount_straight_to_our_server 240"
    "kernel_mtls_client_not_on_allow_list_is_refused 150"
    "kernel_tls_client_without_certificate_is_refused 150"
    "our_rpc_tls_client_mounts_nfsd_mtls_export 240"
    "server_follows_vip_moved_away_and_back_under_kernel_mount 300"
    "kernel_mtls_tunnel_crosses_key_limit_without_io_error 420"
    "our_rpc_tls_client_tunnel_to_nfsd_crosses_key_limit_without_io_error 420"
    "ktls_carries_each_aead_and_tls_version_both_ways 300"
    "ktls_meets_a_peers_key_update 150"
    "ktls_faults_reach_both_ends_as_with_rustls 150"
)
# Measurements, not tests: run only when named (benches/ktls-vm.sh).
BENCHES=(
    "bench_ktls_cpu_per_gib 1200"
)

# ---------------------------------------------------------------- helpers used by scenarios

# The current scenario's directory for logs (set by run_scenario / --scenario).
SC_OUT=$OUT

SCENARIO_T0=$(date +%s.%N)
step() { echo "step: $* (at $(since "$SCENARIO_T0") s)"; }
# FAIL_EVIDENCE: a function whose output a scenario wants on its FAIL line.
FAIL_EVIDENCE=
fail() {
    echo "why: $*${FAIL_EVIDENCE:+; $($FAIL_EVIDENCE)}"
    exit 1
}
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

# wait_for SECONDS WHAT CMD...: poll CMD every 0.2 s until it succeeds, fail after SECONDS.
wait_for() {
    local limit=$1 what=$2 deadline=$((SECONDS + $1))
    shift 2
    until "$@" >/dev/null 2>&1; do
        ((SECONDS < deadline)) || fail "waited ${limit}s for $what"
        sleep 0.2
    done
}

listening() { ss -Hltn "src $1" | grep -q .; }
not_listening() { ! listening "$1"; }
in_log() { grep -q -- "$2" "$SC_OUT/$1.log"; }

# start_proxy NAME server|client ARGS...: start the proxy under test in the background with its log
# in the scenario's directory and its PID in $RUN/NAME.pid; wait until each --listen address is bound
# (or, for a VIP, until it stands by). A proxy that exits fails the scenario with its last log line.
start_proxy() {
    local name=$1 mode=$2
    shift 2
    local pki_args=(--ca "$PKI/ca-cert.pem")
    if [[ $mode == server ]]; then
        pki_args+=(--cert "$PKI/storage-cert.pem" --key "$PKI/storage-key.pem")
    else
        pki_args+=(--cert "$PKI/r0-cert.pem" --key "$PKI/r0-key.pem")
    fi
    "$PROXY" "$mode" "${pki_args[@]}" --handshake-timeout 20s --log-level info "$@" >>"$SC_OUT/$name.log" 2>&1 &
    local pid=$!
    echo "$pid" >"$RUN/$name.pid"
    echo "$pid" >>"$RUN/pids"
    local args=("$@") i deadline=$((SECONDS + 20))
    for ((i = 0; i < ${#args[@]}; i++)); do
        [[ ${args[i]} == --listen ]] || continue
        local addr=${args[i + 1]}
        until listening "$addr" || grep -q "standing by.*$addr" "$SC_OUT/$name.log"; do
            kill -0 "$pid" 2>/dev/null || fail "$name exited at start: $(grep -m1 -E 'error|ERROR' "$SC_OUT/$name.log" || tail -1 "$SC_OUT/$name.log")"
            ((SECONDS < deadline)) || fail "$name did not bind $addr within 20s"
            sleep 0.2
        done
    done
}

# stop_proxy NAME [SIGNAL]: kill it (default KILL: a crash) and wait until it is gone.
stop_proxy() {
    local pid
    pid=$(cat "$RUN/$1.pid")
    kill "-${2:-KILL}" "$pid" 2>/dev/null
    wait_for 10 "$1 to exit" bash -c "! kill -0 $pid"
    wait "$pid" 2>/dev/null
    return 0
}

# The server proxy and the client proxy of the f3s path: kernel -> client 127.0.0.1:2424 -> server
# 127.0.0.1:2323 -> nfsd. Extra server flags go in SERVER_FLAGS, extra client flags in CLIENT_FLAGS.
SERVER_FLAGS=()
CLIENT_FLAGS=()
start_server_proxy() {
    start_proxy server server --listen 127.0.0.1:2323 --backend "$NFSD" --allow-cn r0 \
        --metrics 127.0.0.1:9469 ${SERVER_FLAGS[@]+"${SERVER_FLAGS[@]}"}
}
start_client_proxy() {
    start_proxy client client --listen 127.0.0.1:2424 --server 127.0.0.1:2323 --server-name storage \
        ${CLIENT_FLAGS[@]+"${CLIENT_FLAGS[@]}"}
}

# export_only "PATH OPTIONS"...: these exports and no others.
export_only() {
    local e
    : >/etc/exports
    for e in "$@"; do
        mkdir -p "${e%% *}"
        echo "${e%% *} 127.0.0.0/8(${e#* })" >>/etc/exports
    done
    exportfs -ra || fail "exportfs -ra"
}

# nfs_mount OPTIONS SOURCE: mount on $MNT, bounded in time; returns mount's status.
nfs_mount() {
    mkdir -p "$MNT"
    timeout -k 5 90 mount -t nfs4 -o "retry=0,$1" "$2" "$MNT" >>"$SC_OUT/mount.log" 2>&1
}
mount_or_fail() { nfs_mount "$@" || fail "mount -o $1 $2: $(tail -1 "$SC_OUT/mount.log")"; }
unmount() { timeout -k 5 60 umount "$MNT" || fail "umount $MNT"; }

# metric PREFIX: the sum of the server proxy's /metrics lines that start with PREFIX (0 when none).
metric() {
    local body
    body=$(timeout 10 bash -c 'exec 3<>/dev/tcp/127.0.0.1/9469 && printf "GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n" >&3 && cat <&3') || true
    echo "$body" | awk -v m="$1" 'index($0, m) == 1 { v += $NF } END { printf "%d", v }'
}

sha() { sha256sum "$1" | cut -c1-64; }
drop_caches() { sync && echo 3 >/proc/sys/vm/drop_caches; }

# check_round_trip SRC NAME EXPORT: SRC written through $MNT as NAME, compared at EXPORT/NAME, read back
# through the mount with all caches dropped.
check_round_trip() {
    local src=$1 name=$2 export=$3 want
    want=$(sha "$src")
    step "write $(du -h "$src" | cut -f1) as $name"
    cp "$src" "$MNT/$name" && sync || fail "writing $name through the mount: I/O error"
    [[ $(sha "$export/$name") == "$want" ]] || fail "$name at the export differs from what was written"
    drop_caches
    step "read $name back"
    local got
    got=$(sha "$MNT/$name") || fail "reading $name through the mount: I/O error"
    [[ $got == "$want" ]] || fail "$name read back through the mount differs"
}

# tlshd, the kernel's TLS handshake agent (client side: the kernel NFS client; server side: nfsd).
# use_tlshd CLIENT_NAME: restart it with that client certificate (nfsd's server certificate always).
use_tlshd() {
    if [[ -f $RUN/tlshd.pid ]]; then
        kill "$(cat "$RUN/tlshd.pid")" 2>/dev/null
        sleep 0.5
    fi
    cat >"$RUN/tlshd.conf" <<EOF
[debug]
loglevel=1
tls=0
nl=0

[authenticate.client]
x509.truststore=$PKI/ca-cert.pem
x509.certificate=$PKI/$1-cert.pem
x509.private_key=$PKI/$1-key.pem

[authenticate.server]
x509.truststore=$PKI/ca-cert.pem
x509.certificate=$PKI/nfsd-cert.pem
x509.private_key=$PKI/nfsd-key.pem
EOF
    tlshd -s -c "$RUN/tlshd.conf" >>"$SC_OUT/tlshd.log" 2>&1 &
    echo $! >"$RUN/tlshd.pid"
    echo $! >>"$RUN/pids"
    sleep 0.5
    kill -0 "$(cat "$RUN/tlshd.pid")" 2>/dev/null || fail "tlshd did not start: $(tail -1 "$SC_OUT/tlshd.log")"
}

# ---------------------------------------------------------------- scenarios

# The f3s path: kernel NFS client -> our client (port option) -> our server -> kernel nfsd, with
# every file operation checked at the export itself and the data seen passing through the tunnel.
kernel_mount_through_both_proxies_serves_files() {
    local x=/srv/nfs/f3s
    export_only "$x rw,insecure,no_subtree_check,no_root_squash"
    start_server_proxy
    start_client_proxy
    mount_or_fail port=2424 127.0.0.1:$x

    head -c 64M /dev/urandom >/tmp/big
    check_round_trip /tmp/big big $x

    step "400 small files"
    mkdir -p /tmp/small
    local i
    for ((i = 0; i < 400; i++)); do echo "small file $i $RANDOM" >/tmp/small/f$i; done
    cp -r /tmp/small "$MNT/small" || fail "copying 400 files: I/O error"
    diff -r /tmp/small $x/small >/dev/null || fail "the 400 files at the export differ"

    step "mkdir, rename, chmod, hard and symbolic links, truncate"
    mkdir -p "$MNT/d/e" &&
        mv "$MNT/small/f1" "$MNT/d/e/g" &&
        chmod 640 "$MNT/d/e/g" &&
        ln "$MNT/d/e/g" "$MNT/d/hard" &&
        ln -s e/g "$MNT/d/sym" &&
        truncate -s 10 "$MNT/small/f2" &&
        truncate -s 1M "$MNT/small/f3" || fail "a metadata operation through the mount failed"
    [[ ! -e $x/small/f1 && $(stat -c '%a %h' $x/d/e/g) == "640 2" && $(readlink $x/d/sym) == e/g ]] ||
        fail "rename/chmod/link not as expected at the export: $(stat -c '%n %a %h' $x/d/e/g 2>&1)"
    [[ $(stat -c %s $x/small/f2) == 10 && $(stat -c %s $x/small/f3) == 1048576 ]] ||
        fail "truncate not as expected at the export"

    step "ls -R and stat of every entry, mount vs export"
    diff <(cd "$MNT" && ls -R) <(cd $x && ls -R) >/dev/null || fail "ls -R through the mount differs from the export"
    diff <(cd "$MNT" && find . -printf '%p %y %s %m %n %l\n' | sort) \
        <(cd $x && find . -printf '%p %y %s %m %n %l\n' | sort) >"$SC_OUT/find.diff" ||
        fail "names, sizes, modes or links differ between mount and export (find.diff)"

    step "rm -rf"
    rm -rf "${MNT:?}"/* || fail "rm -rf through the mount failed"
    [[ -z $(ls -A $x) ]] || fail "the export is not empty after rm -rf: $(ls -A $x | head -3)"
    unmount

    step "the data went through the tunnel"
    local total
    total=$(metric 'nfs_tls_proxy_bytes_total')
    ((total >= 128 * 1024 * 1024)) || fail "the server proxy counted only $total bytes for 64 MiB each way"
    echo "detail: tunnel bytes $total"
}

# The client's 127.0.0.1:2049 listener: `mount 127.0.0.1:/path` with no port option reaches nfsd.
client_2049_listener_serves_mount_without_port_option() {
    local x=/srv/nfs/plain
    export_only "$x rw,insecure,no_subtree_check,no_root_squash"
    start_server_proxy
    CLIENT_FLAGS=(--listen 127.0.0.1:2049)
    start_client_proxy
    mount_or_fail vers=4.2 127.0.0.1:$x
    grep " $MNT " /proc/mounts | grep -q 'port=' && fail "mounted with a port option: $(grep " $MNT " /proc/mounts)"
    head -c 4M /dev/urandom >/tmp/f
    check_round_trip /tmp/f f $x
    unmount
    wait_for 10 "the tunnel closed line at the server" in_log server 'tunnel closed'
}

# A `secure` export (the default) wants a source port below 1024: refused through a server proxy
# dialling from any port, served with --backend-source-port reserved.
secure_export_refuses_any_port_and_serves_reserved_port() {
    local x=/srv/nfs/secure
    export_only "$x rw,secure,no_subtree_check,no_root_squash"
    start_server_proxy
    start_client_proxy
    step "mount with the server dialling from any port"
    if nfs_mount port=2424 127.0.0.1:$x; then
        unmount
        fail "the secure export was mounted through a server dialling from an unreserved port"
    fi
    echo "detail: refused: $(tail -1 "$SC_OUT/mount.log")"
    stop_proxy server TERM
    SERVER_FLAGS=(--backend-source-port reserved)
    start_server_proxy
    step "mount with --backend-source-port reserved"
    mount_or_fail port=2424 127.0.0.1:$x
    head -c 4M /dev/urandom >/tmp/f
    check_round_trip /tmp/f f $x
    unmount
}

# proxy_restart_under_load server|client: a paced O_DIRECT writer and reader on a hard mount while
# that proxy is killed (SIGKILL) and started again 3 s later; no byte may differ, the gap is printed.
proxy_restart_under_load() {
    local which=$1 x=/srv/nfs/restart
    export_only "$x rw,insecure,no_subtree_check,no_root_squash"
    start_server_proxy
    start_client_proxy
    mount_or_fail hard,port=2424 127.0.0.1:$x
    head -c 32M /dev/urandom >/tmp/w.src
    head -c 32M /dev/urandom >$x/r
    rm -f /tmp/stop
    python3 "$T/ioload.py" write /tmp/w.src "$MNT/w" /tmp/stop /tmp/w.progress >"$SC_OUT/writer.out" 2>&1 &
    local writer=$!
    echo $writer >>"$RUN/pids"
    python3 "$T/ioload.py" read "$MNT/r" $x/r /tmp/stop /tmp/r.progress >"$SC_OUT/reader.out" 2>&1 &
    local reader=$!
    echo $reader >>"$RUN/pids"
    wait_for 30 "writer and reader under way" bash -c '(( $(cat /tmp/w.progress) >= 4 && $(cat /tmp/r.progress) >= 4 ))'

    step "kill the $which proxy, start it again after 3 s"
    local w0 r0
    stop_proxy "$which" KILL
    sleep 3
    "start_${which}_proxy"
    w0=$(cat /tmp/w.progress) r0=$(cat /tmp/r.progress)
    wait_for 120 "writer and reader to move on after the restart" \
        bash -c "(( \$(cat /tmp/w.progress) > $w0 + 2 && \$(cat /tmp/r.progress) > $r0 + 2 ))"
    touch /tmp/stop
    step "let writer and reader finish"
    wait_for 120 "writer and reader to finish" bash -c "! kill -0 $writer 2>/dev/null && ! kill -0 $reader 2>/dev/null"
    wait "$writer" || fail "writer: $(cat "$SC_OUT/writer.out")"
    wait "$reader" || fail "reader: $(cat "$SC_OUT/reader.out")"
    [[ $(sha $x/w) == $(sha /tmp/w.src) ]] || fail "the file written across the restart differs at the export"
    unmount
    local gap_w gap_r
    gap_w=$(grep -o 'max_gap_s=[0-9.]*' "$SC_OUT/writer.out" | cut -d= -f2)
    gap_r=$(grep -o 'max_gap_s=[0-9.]*' "$SC_OUT/reader.out" | cut -d= -f2)
    echo "detail: longest stall with the $which proxy down 3 s: writer ${gap_w} s, reader ${gap_r} s"
}
server_proxy_restart_under_reader_and_writer_corrupts_nothing() { proxy_restart_under_load server; }
client_proxy_restart_under_reader_and_writer_corrupts_nothing() { proxy_restart_under_load client; }

# RFC 9289, server side: the kernel client (tlshd, xprtsec=mtls) straight to our server, which answers
# the AUTH_TLS probe itself. start_rpc_tls_server PORT [FLAGS]: on 127.0.0.1:PORT, admits only "earth".
# Each scenario has its own port: the kernel keeps an NFS client for a server address a while after
# umount and may reconnect it (with its own xprtsec) during the next scenario's mount.
start_rpc_tls_server() {
    local port=$1
    shift
    start_proxy server server --listen 127.0.0.1:"$port" --backend "$NFSD" --allow-cn earth "$@"
}

kernel_mtls_mount_straight_to_our_server() {
    local x=/srv/nfs/mtls
    export_only "$x rw,insecure,no_subtree_check,no_root_squash"
    use_tlshd earth
    start_rpc_tls_server 2325
    mount_or_fail xprtsec=mtls,port=2325 127.0.0.1:$x
    head -c 16M /dev/urandom >/tmp/f
    check_round_trip /tmp/f f $x
    unmount
    wait_for 10 "the tunnel closed line" in_log server 'tunnel closed'
    grep 'tunnel closed' "$SC_OUT/server.log" | grep -q 'transport="\?rpc-tls' ||
        fail "the tunnel was not an rpc-tls one: $(grep 'tunnel closed' "$SC_OUT/server.log" | tail -1)"
    grep 'tunnel closed' "$SC_OUT/server.log" | grep -q 'identity="\?earth' || fail "identity earth not logged"
}

# refused_mtls_mount XPRTSEC TLSHD_CLIENT REASON PORT: the mount fails, the server logs REASON, opens nothing.
refused_mtls_mount() {
    local x=/srv/nfs/mtls
    export_only "$x rw,insecure,no_subtree_check,no_root_squash"
    use_tlshd "$2"
    start_rpc_tls_server "$4"
    local t=$(now)
    if nfs_mount "xprtsec=$1,port=$4" 127.0.0.1:$x; then
        unmount
        fail "mounted with xprtsec=$1 as $2"
    fi
    # The kernel must have taken our alert as the refusal it is, not waited out a reset connection
    # (then the mount only ends by the timeout above, with no word from the server).
    grep -q 'access denied by server' "$SC_OUT/mount.log" ||
        fail "the mount did not fail with 'access denied' after $(since "$t") s: $(tail -1 "$SC_OUT/mount.log")"
    wait_for 10 "reason $3 in the server's log" in_log server "$3"
    grep -q 'tunnel opened' "$SC_OUT/server.log" && fail "a tunnel was opened"
    echo "detail: mount refused in $(since "$t") s; $(grep -m1 'connection refused' "$SC_OUT/server.log" | sed 's/.*connection refused/connection refused/')"
}
kernel_mtls_client_not_on_allow_list_is_refused() { refused_mtls_mount mtls intruder name-not-allowed 2335; }
kernel_tls_client_without_certificate_is_refused() { refused_mtls_mount tls earth no-certificate 2345; }

# RFC 9289, client side: our client with --upstream-protocol rpc-tls straight to kernel nfsd, whose
# export accepts only mutual TLS (nfsd's handshakes go through tlshd with the "nfsd" certificate).
start_rpc_tls_client() {
    start_proxy client client --listen 127.0.0.1:2426 --server "$NFSD" --server-name nfsd \
        --upstream-protocol rpc-tls "$@"
}

our_rpc_tls_client_mounts_nfsd_mtls_export() {
    local x=/srv/nfs/nfsd-mtls
    export_only "$x rw,insecure,no_subtree_check,no_root_squash,xprtsec=mtls"
    use_tlshd earth
    step "the export refuses the kernel client without TLS"
    if nfs_mount defaults 127.0.0.2:$x; then
        unmount
        fail "the xprtsec=mtls export was mounted without TLS"
    fi
    start_rpc_tls_client
    mount_or_fail port=2426 127.0.0.1:$x
    head -c 16M /dev/urandom >/tmp/f
    check_round_trip /tmp/f f $x
    unmount
    wait_for 10 "the tunnel closed line" in_log client 'tunnel closed'
    grep 'tunnel closed' "$SC_OUT/client.log" | grep -q 'identity="\?nfsd.*transport="\?rpc-tls' ||
        fail "not an rpc-tls tunnel to nfsd: $(grep 'tunnel closed' "$SC_OUT/client.log" | tail -1)"
}

# VIP following: the server listens on 192.0.2.138, an address on a dummy interface; it binds when the
# address appears, closes listener and tunnels when it goes, and the hard mount resumes when it is back.
server_follows_vip_moved_away_and_back_under_kernel_mount() {
    local x=/srv/nfs/vip
    export_only "$x rw,insecure,no_subtree_check,no_root_squash"
    ip link del vip0 2>/dev/null
    ip link add vip0 type dummy && ip link set vip0 up || fail "cannot create dummy interface vip0"
    start_proxy server server --listen $VIP:2327 --backend "$NFSD" --allow-cn r0
    not_listening $VIP:2327 || fail "bound $VIP before owning it"
    step "address added"
    ip addr add $VIP/32 dev vip0
    wait_for 10 "the server to bind $VIP:2327" listening $VIP:2327
    start_proxy client client --listen 127.0.0.1:2427 --server $VIP:2327 --server-name storage
    mount_or_fail hard,port=2427 127.0.0.1:$x
    head -c 4M /dev/urandom >/tmp/f
    check_round_trip /tmp/f f $x

    step "address moved away"
    local t0
    t0=$(now)
    ip addr del $VIP/32 dev vip0
    wait_for 10 "address lost in the server's log" in_log server 'address lost'
    wait_for 10 "the listener on $VIP to close" not_listening $VIP:2327
    grep 'address lost' "$SC_OUT/server.log" | grep -q 'tunnels_cut=[1-9]' ||
        fail "no tunnel cut when the address was lost: $(grep 'address lost' "$SC_OUT/server.log")"
    head -c 4M /dev/urandom >/tmp/g
    (cp /tmp/g "$MNT/g" && sync && echo done >/tmp/g.done) &
    local writer=$!
    sleep 3
    [[ -e /tmp/g.done ]] && fail "a write completed while no host owned the address"

    step "address back"
    ip addr add $VIP/32 dev vip0
    wait_for 10 "the server to bind $VIP:2327 again" listening $VIP:2327
    wait_for 120 "the write to complete after the address came back" test -e /tmp/g.done
    wait "$writer"
    echo "detail: write resumed $(since "$t0") s after the address was removed (3 s of it away)"
    [[ $(sha $x/g) == $(sha /tmp/g) ]] || fail "the file written across the move differs at the export"
    unmount
    ip link del vip0
}

# A long tunnel to a kernel RFC 9289 peer crossing the key's record limit, lowered to 1024 records
# with the hidden --key-update-every. Today's failure is quiet for cp (the page cache retries), so the
# kernel is asked directly: no RPC error in dmesg, no kTLS decrypt error, an O_DIRECT read right.
kernel_mtls_tunnel_crosses_key_limit_without_io_error() {
    local x=/srv/nfs/keylimit
    export_only "$x rw,insecure,no_subtree_check,no_root_squash"
    use_tlshd earth
    need_key_update_flag server
    start_rpc_tls_server 2355 --key-update-every 1024
    mount_or_fail xprtsec=mtls,port=2355 127.0.0.1:$x
    copy_across_key_limit $x server
}

# The same towards nfsd: our client (--upstream-protocol rpc-tls) sends, nfsd's kTLS receives.
our_rpc_tls_client_tunnel_to_nfsd_crosses_key_limit_without_io_error() {
    local x=/srv/nfs/nfsd-keylimit
    export_only "$x rw,insecure,no_subtree_check,no_root_squash,xprtsec=mtls"
    use_tlshd earth
    need_key_update_flag client
    start_rpc_tls_client --key-update-every 1024
    mount_or_fail port=2426 127.0.0.1:$x
    copy_across_key_limit $x client
}

need_key_update_flag() {
    "$PROXY" "$1" --key-update-every 1024 --help >/dev/null 2>&1 ||
        fail "unknown flag --key-update-every: this build cannot lower the key limit ($("$PROXY" "$1" --key-update-every 1024 2>&1 | head -1))"
}

# tls_stat NAME: a counter of the kernel's kTLS (0 when this kernel has no such counter).
tls_stat() { awk -v k="$1" '$1 == k { v = $2 } END { print v + 0 }' /proc/net/tls_stat; }

# copy_across_key_limit EXPORT PROXY: 64 MiB in, out (page cache and O_DIRECT) and copied within the
# mount, mounted on $MNT through PROXY. Any failure carries the kernel's own error counts.
copy_across_key_limit() {
    local x=$1 want problems=()
    KEY_LIMIT_PROXY=$2
    KEY_LIMIT_DECRYPT0=$(tls_stat TlsDecryptError)
    FAIL_EVIDENCE=key_limit_evidence
    head -c 64M /dev/urandom >/tmp/big
    want=$(sha /tmp/big)
    check_round_trip /tmp/big big "$x"
    step "read it with O_DIRECT (no page cache to retry behind the application's back)"
    drop_caches
    [[ $(dd if="$MNT/big" iflag=direct bs=1M status=none 2>/tmp/dd.err | sha256sum | cut -c1-64) == "$want" ]] ||
        problems+=("O_DIRECT read: $(head -1 /tmp/dd.err | grep . || echo 'wrong bytes')")
    step "copy it within the mount"
    drop_caches
    { cp "$MNT/big" "$MNT/big2" && sync; } 2>/tmp/cp.err || problems+=("copy within the mount: $(head -1 /tmp/cp.err)")
    [[ $(sha "$x/big2") == "$want" ]] || problems+=("the copy at the export differs")
    unmount
    local evidence
    evidence=$(key_limit_evidence)
    echo "detail: $evidence"
    ((${#problems[@]} == 0)) || fail "$(printf '%s; ' "${problems[@]}" | sed 's/; $//')"
    [[ $evidence == "kernel: 0 RPC errors, TlsDecryptError +0;"* ]] || fail "the kernel saw errors"
}

# What the kernel and the proxy saw since the scenario began: RPC errors in dmesg, kTLS decrypt errors,
# tunnels that ended with an error.
key_limit_evidence() {
    local log=$SC_OUT/$KEY_LIMIT_PROXY.log rpc_errors first_rpc_error decrypt tunnels broken first_broken
    rpc_errors=$(kernel_log_since_start | grep -c 'RPC call returned error')
    first_rpc_error=$(kernel_log_since_start | grep -m1 -o 'RPC call returned error [0-9-]*')
    decrypt=$(($(tls_stat TlsDecryptError) - KEY_LIMIT_DECRYPT0))
    tunnels=$(grep -c 'tunnel closed' "$log")
    broken=$(grep 'tunnel closed' "$log" | grep -c 'end="\?error')
    first_broken=$(grep 'tunnel closed' "$log" | grep -m1 -o 'end="\?error.*')
    echo "kernel: $rpc_errors RPC errors${first_rpc_error:+ ($first_rpc_error)}, TlsDecryptError +$decrypt;" \
        "$tunnels tunnels, $broken ended with an error${first_broken:+ ($first_broken)}"
}

# The kernel's log since this scenario started (run_scenario writes a marker to /dev/kmsg).
kernel_log_since_start() { dmesg | sed -n "/kernel-tests: start $SC_NAME\$/,\$p"; }

# ---------------------------------------------------------------- kTLS (issue 18)

# Both proxies hand their records to the kernel (--ktls auto, the default): for each AEAD under
# TLS 1.3 and TLS 1.2, 16 MiB each way through client -> server -> an echo backend, and the
# half-close back (the sender's FIN becomes our close_notify, the backend's FIN the other one).
# Both proxies log path="ktls" and the suite, both tunnels end "closed", the kernel's counters of
# kTLS sessions grew by two per tunnel each way. Then a client with --ktls off next to a kTLS server.
ktls_carries_each_aead_and_tls_version_both_ways() {
    python3 "$T/echo.py" serve 7001 >>"$SC_OUT/echo.log" 2>&1 &
    echo $! >>"$RUN/pids"
    wait_for 10 "the echo backend" listening 127.0.0.1:7001
    local v12=TLS_ECDHE_ECDSA_WITH i=0 suite server_suites client_flags version out tx0 rx0 seen=()
    local runs=(
        "TLS13_AES_128_GCM_SHA256 TLSv1_3"
        "TLS13_AES_256_GCM_SHA384 TLSv1_3"
        "TLS13_CHACHA20_POLY1305_SHA256 TLSv1_3"
        "${v12}_AES_128_GCM_SHA256 TLSv1_2"
        "${v12}_AES_256_GCM_SHA384 TLSv1_2"
        "${v12}_CHACHA20_POLY1305_SHA256 TLSv1_2"
        "TLS13_AES_256_GCM_SHA384 TLSv1_3 --ktls off"
    )
    for run in "${runs[@]}"; do
        read -r suite version client_flags <<<"$run"
        i=$((i + 1))
        # The server always keeps one TLS 1.3 suite: its RFC 9289 configuration is TLS 1.3 only.
        server_suites=$suite
        [[ $version == TLSv1_2 ]] && server_suites="$suite,TLS13_AES_128_GCM_SHA256"
        step "$suite ${client_flags:-}"
        start_proxy "s$i" server --listen 127.0.0.1:$((2360 + i)) --backend 127.0.0.1:7001 --allow-cn r0 \
            --min-tls 1.2 --tls-suite "$server_suites"
        # shellcheck disable=SC2086 # client_flags is a list of words
        start_proxy "c$i" client --listen 127.0.0.1:$((2460 + i)) --server 127.0.0.1:$((2360 + i)) \
            --server-name storage --min-tls 1.2 --tls-suite "$suite" $client_flags
        # After both started: each checks its kernel once at start, on sockets of its own.
        tx0=$(tls_stat TlsTxSw)
        rx0=$(tls_stat TlsRxSw)
        out=$(timeout 120 python3 "$T/echo.py" send $((2460 + i)) $((16 << 20)) 2>&1)
        [[ $out == ok* ]] || fail "$suite: echo through the tunnel: $out"
        wait_for 10 "s$i's tunnel to close" in_log "s$i" 'tunnel closed'
        wait_for 10 "c$i's tunnel to close" in_log "c$i" 'tunnel closed'
        in_log "s$i" "tls=$version/$suite" || fail "$suite: s$i negotiated $(grep -o 'tls=[^ ]*' "$SC_OUT/s$i.log" | head -1)"
        in_log "s$i" 'tunnel opened.*path="ktls"' || fail "$suite: the server did not use kTLS: $(grep -m1 'kTLS' "$SC_OUT/s$i.log")"
        if [[ $client_flags == *off* ]]; then
            in_log "c$i" 'tunnel opened.*path="rustls"' || fail "--ktls off: the client did not keep rustls"
        else
            in_log "c$i" 'tunnel opened.*path="ktls"' || fail "$suite: the client did not use kTLS: $(grep -m1 'kTLS' "$SC_OUT/c$i.log")"
        fi
        for p in "s$i" "c$i"; do
            in_log "$p" 'tunnel closed.*end=closed' || fail "$suite: $p's tunnel did not end cleanly: $(grep 'tunnel closed' "$SC_OUT/$p.log")"
        done
        local sessions=2
        [[ $client_flags == *off* ]] && sessions=1
        (($(tls_stat TlsTxSw) - tx0 == sessions && $(tls_stat TlsRxSw) - rx0 == sessions)) ||
            fail "$suite: kernel TLS sessions TX +$(($(tls_stat TlsTxSw) - tx0)) RX +$(($(tls_stat TlsRxSw) - rx0)), want +$sessions each"
        seen+=("$version/${suite#TLS*_WITH_}")
        stop_proxy "s$i" TERM
        stop_proxy "c$i" TERM
    done
    echo "detail: 16 MiB each way, kTLS on both proxies: ${seen[*]}"
}

# A peer that changes keys (rustls with the hidden --key-update-every, on the rustls path) in front of
# a kTLS proxy, each way round. A kernel that can rekey (Linux 6.14+) takes the new key and the echo
# completes; one that cannot ends the tunnel with a reset and says why, and no wrong byte is delivered.
ktls_meets_a_peers_key_update() {
    python3 "$T/echo.py" serve 7002 >>"$SC_OUT/echo.log" 2>&1 &
    echo $! >>"$RUN/pids"
    wait_for 10 "the echo backend" listening 127.0.0.1:7002
    local out outcomes=() side ktls_proxy port
    for side in server client; do
        if [[ $side == server ]]; then
            port=2471
            start_proxy "s-$side" server --listen 127.0.0.1:2371 --backend 127.0.0.1:7002 --allow-cn r0
            start_proxy "c-$side" client --listen 127.0.0.1:2471 --server 127.0.0.1:2371 --server-name storage \
                --ktls off --key-update-every 64
            ktls_proxy=s-$side
        else
            port=2472
            start_proxy "s-$side" server --listen 127.0.0.1:2372 --backend 127.0.0.1:7002 --allow-cn r0 \
                --ktls off --key-update-every 64
            start_proxy "c-$side" client --listen 127.0.0.1:2472 --server 127.0.0.1:2372 --server-name storage
            ktls_proxy=c-$side
        fi
        step "key update towards the $side (kTLS)"
        # Kernels that can change keys (6.14 and later) count it; 6.12 has no such counters.
        local rx0 tx0
        rx0=$(tls_stat TlsRxRekeyOk)
        tx0=$(tls_stat TlsTxRekeyOk)
        out=$(timeout 120 python3 "$T/echo.py" send "$port" $((8 << 20)) 2>&1)
        wait_for 10 "$ktls_proxy's tunnel to close" in_log "$ktls_proxy" 'tunnel closed'
        in_log "$ktls_proxy" 'tunnel opened.*path="ktls"' || fail "$ktls_proxy did not use kTLS"
        if [[ $out == ok* ]]; then
            in_log "$ktls_proxy" 'tunnel closed.*end=closed' || fail "the echo completed but $ktls_proxy's tunnel did not end cleanly"
            local rx=$(($(tls_stat TlsRxRekeyOk) - rx0)) tx=$(($(tls_stat TlsTxRekeyOk) - tx0))
            # The peer rekeys every 64 records and asks for ours: the kernel must have done both.
            ((rx > 0 && tx > 0)) || fail "$side: the echo completed but the kernel counted rekeys RX +$rx TX +$tx"
            outcomes+=("$side: rekeyed (kernel rekeys RX +$rx TX +$tx), 8 MiB echoed")
        else
            in_log "$ktls_proxy" 'cannot follow' ||
                fail "$side: the echo failed ($out) without the kernel-cannot-rekey reason: $(grep 'tunnel closed' "$SC_OUT/$ktls_proxy.log")"
            # A short stream is the reset; what did arrive must be what was sent.
            [[ $out == *"prefix_ok=True"* ]] || fail "$side: wrong bytes delivered: $out"
            outcomes+=("$side: ended (kernel $(uname -r) cannot rekey)")
        fi
        stop_proxy "s-$side" TERM
        stop_proxy "c-$side" TERM
    done
    echo "detail: ${outcomes[*]}"
}

# A TLS client that cuts or corrupts its own records (tlspeer.py: OpenSSL through memory BIOs) in front
# of a kTLS server and of a rustls one (--ktls off): each case must look the same from both ends. An
# orderly close: the echo and our close_notify, the backend sees a FIN. A record cut short by a FIN,
# a record with a flipped byte, a record header of no TLS version: the backend sees the data before
# it and then a reset, never a clean end; the client gets bad_record_mac for the corrupt record and
# the same alert from both paths for the bad header.
ktls_faults_reach_both_ends_as_with_rustls() {
    local backend_log=$SC_OUT/backend-ends.log case path port=2390 got=() want
    python3 "$T/echo.py" serve 7003 "$backend_log" >>"$SC_OUT/echo.log" 2>&1 &
    echo $! >>"$RUN/pids"
    wait_for 10 "the echo backend" listening 127.0.0.1:7003
    for path in ktls rustls; do
        port=$((port + 1))
        local flags=()
        [[ $path == rustls ]] && flags=(--ktls off)
        start_proxy "s-$path" server --listen 127.0.0.1:$port --backend 127.0.0.1:7003 --allow-cn r0 "${flags[@]}"
        for case in close truncate badmac badheader; do
            : >"$backend_log"
            step "$path: $case"
            local peer
            peer=$(timeout 60 python3 "$T/tlspeer.py" $port "$PKI/r0-cert.pem" "$PKI/r0-key.pem" "$PKI/ca-cert.pem" $case 2>&1)
            wait_for 10 "the backend to see the end ($path $case)" test -s "$backend_log"
            got+=("$path $case: client $peer, backend $(cat "$backend_log")")
        done
        wait_for 10 "s-$path's tunnels to close" bash -c "(( \$(grep -c 'tunnel closed' '$SC_OUT/s-$path.log') == 4 ))"
        in_log "s-$path" "tunnel opened.*path=\"$path\"" || fail "s-$path ran $(grep -o 'path=[^ ]*' "$SC_OUT/s-$path.log" | head -1)"
        stop_proxy "s-$path" TERM
    done
    printf '%s\n' "${got[@]}" >"$SC_OUT/outcomes"
    for case in close truncate badmac badheader; do
        want=$(grep "^rustls $case:" "$SC_OUT/outcomes" | cut -d: -f2-)
        [[ $(grep "^ktls $case:" "$SC_OUT/outcomes" | cut -d: -f2-) == "$want" ]] ||
            fail "$case: kTLS: $(grep "^ktls $case:" "$SC_OUT/outcomes" | cut -d: -f2-), rustls:$want"
    done
    grep -q '^rustls close: client echo=hello end=close_notify, backend data=5 end=eof$' "$SC_OUT/outcomes" || fail "close: $(grep '^rustls close' "$SC_OUT/outcomes")"
    grep -q '^rustls truncate: .*backend data=5 end=reset$' "$SC_OUT/outcomes" || fail "truncate: $(grep '^rustls truncate' "$SC_OUT/outcomes")"
    grep -q '^rustls badmac: client echo= end=alert:SSLV3_ALERT_BAD_RECORD_MAC, backend data=5 end=reset$' "$SC_OUT/outcomes" ||
        fail "badmac: $(grep '^rustls badmac' "$SC_OUT/outcomes")"
    grep -q '^rustls badheader: client echo= end=alert:.*, backend data=5 end=reset$' "$SC_OUT/outcomes" ||
        fail "badheader: $(grep '^rustls badheader' "$SC_OUT/outcomes")"
    echo "detail: $(sed 's/^rustls //; /^ktls /d' "$SC_OUT/outcomes" | paste -sd ';' | sed 's/;/; /g') (the same with kTLS)"
}

# CPU (user + system clock ticks) of the client and server proxies per GiB carried, each direction,
# with the kernel sealing and opening the records (kTLS, splice) and with rustls (--ktls off on
# both). The load: dd over bash's /dev/tcp into the client, a sink or source behind the server.
bench_ktls_cpu_per_gib() {
    local mib=256 path dir suite flags ticks0 t0 port=0 results=()
    python3 "$T/echo.py" sink 7101 >>"$SC_OUT/echo.log" 2>&1 &
    echo $! >>"$RUN/pids"
    python3 "$T/echo.py" source 7102 $((mib << 20)) >>"$SC_OUT/echo.log" 2>&1 &
    echo $! >>"$RUN/pids"
    wait_for 10 "the sink" listening 127.0.0.1:7101
    wait_for 10 "the source" listening 127.0.0.1:7102
    for suite in TLS13_AES_256_GCM_SHA384 TLS13_CHACHA20_POLY1305_SHA256; do
        for path in ktls rustls; do
            flags=(--tls-suite "$suite")
            [[ $path == rustls ]] && flags+=(--ktls off)
            for dir in up down; do
                port=$((port + 1))
                local s=s$port c=c$port
                start_proxy "$s" server --listen 127.0.0.1:$((2380 + port)) --allow-cn r0 \
                    --backend 127.0.0.1:$([[ $dir == up ]] && echo 7101 || echo 7102) "${flags[@]}"
                start_proxy "$c" client --listen 127.0.0.1:$((2480 + port)) --server 127.0.0.1:$((2380 + port)) \
                    --server-name storage "${flags[@]}"
                ticks0=$(proxy_ticks "$s" "$c")
                t0=$(now)
                if [[ $dir == up ]]; then
                    timeout 600 bash -c "exec 3<>/dev/tcp/127.0.0.1/$((2480 + port)) && dd if=/dev/zero bs=1M count=$mib status=none >&3" ||
                        fail "$suite $path $dir: sending $mib MiB failed"
                else
                    timeout 600 bash -c "exec 3<>/dev/tcp/127.0.0.1/$((2480 + port)) && dd bs=1M iflag=fullblock status=none <&3 | wc -c" >"$RUN/got" ||
                        fail "$suite $path $dir: receiving failed"
                    (($(cat "$RUN/got") == mib << 20)) || fail "$suite $path $dir: received $(cat "$RUN/got") bytes, want $((mib << 20))"
                fi
                wait_for 60 "the client's tunnel to close" in_log "$c" 'tunnel closed'
                in_log "$c" "tunnel opened.*path=\"$path\"" || fail "$suite $path $dir: the client ran $(grep -o 'path=[^ ]*' "$SC_OUT/$c.log")"
                results+=("${suite#TLS13_} $dir $path $((($(proxy_ticks "$s" "$c") - ticks0) * 1024 / mib)) ticks/GiB in $(since "$t0") s")
                stop_proxy "$s" TERM
                stop_proxy "$c" TERM
            done
        done
    done
    local drivers
    drivers=$(awk '/^name/ { n = $3 } /^driver/ { d = $3 } /^priority/ && (n == "gcm(aes)" || n == "rfc7539(chacha20,poly1305)") { print n "=" d "(" $3 ")" }' /proc/crypto | paste -sd ' ')
    echo "detail: $mib MiB each, CPU of both proxies (USER_HZ $(getconf CLK_TCK)): $(printf '%s; ' "${results[@]}" | sed 's/; $//'); kernel AEADs: $drivers"
}

# proxy_ticks NAME...: user + system clock ticks the named proxies have used.
proxy_ticks() {
    local n total=0
    for n in "$@"; do
        total=$((total + $(awk '{ print $14 + $15 }' "/proc/$(cat "$RUN/$n.pid")/stat")))
    done
    echo "$total"
}

# ---------------------------------------------------------------- the driver

setup_system() {
    mount -t tmpfs tmpfs /run
    mount -t tmpfs tmpfs /tmp
    mkdir -p /dev/pts /dev/shm "$RUN" /run/rpc_pipefs /run/rpcbind
    mount -t devpts devpts /dev/pts
    echo kernel-vm >/proc/sys/kernel/hostname
    ip link set lo up
    modprobe -a nfsd nfs nfsv4 tls dummy sunrpc || true
    # The AES-NI and CLMUL implementations (the CPU model has both), as a real host would use for
    # kTLS; without them the kernel falls back to its generic C AES.
    modprobe -a aesni_intel ghash_clmulni_intel 2>/dev/null || true
    mount -t rpc_pipefs sunrpc /run/rpc_pipefs
    mount -t nfsd nfsd /proc/fs/nfsd
    cat >/etc/nfs.conf.d/kernel-tests.conf <<'EOF'
[nfsd]
vers3=n
lease-time=10
grace-time=10
EOF
    : >/etc/exports
    rpcbind -w
    nfsdcld          # client tracking, so an nfsd with no clients to reclaim skips the grace period
    rpc.mountd
    rpc.nfsd -H 127.0.0.2 8
    wait_for 10 "nfsd on $NFSD" listening $NFSD
}

# run_scenario NAME LIMIT: the scenario in its own process group under a time limit, then cleanup.
run_scenario() {
    local name=$1 limit=$2 t0 rc why
    SC_OUT=$OUT/$name
    mkdir -p "$SC_OUT"
    : >"$RUN/pids"
    t0=$(now)
    echo "kernel-tests: start $name" >/dev/kmsg
    timeout -k 10 "$limit" "$0" --scenario "$name" >"$SC_OUT/output.log" 2>&1
    rc=$?
    local took
    took=$(since "$t0")
    cleanup_scenario
    local detail
    detail=$(grep '^detail: ' "$SC_OUT/output.log" | sed 's/^detail: //' | paste -sd '|' | sed 's/|/; /g')
    if ((rc == 0)); then
        echo "PASS $name (${took%.*}s)${detail:+: $detail}" | tee -a "$OUT/summary"
    else
        why=$(grep '^why: ' "$SC_OUT/output.log" | tail -1 | sed 's/^why: //')
        [[ -z $why ]] && ((rc == 124 || rc == 137)) && why="timed out after ${limit}s in step: $(grep '^step: ' "$SC_OUT/output.log" | tail -1 | sed 's/^step: //')"
        [[ -z $why ]] && why="exit $rc: $(tail -1 "$SC_OUT/output.log")"
        echo "FAIL $name: $why (${took%.*}s)" | tee -a "$OUT/summary"
        SC_NAME=$name kernel_log_since_start >"$SC_OUT/dmesg"
    fi
}

cleanup_scenario() {
    local pid
    if grep -q " $MNT " /proc/mounts; then
        umount -f "$MNT" 2>/dev/null || umount -l "$MNT" 2>/dev/null
    fi
    for pid in $(cat "$RUN/pids" 2>/dev/null); do kill -KILL "$pid" 2>/dev/null; done
    ip link del vip0 2>/dev/null
    rm -rf /tmp/* "$RUN"/*.pid
}

main() {
    local t0
    t0=$(now)
    mkdir -p "$OUT"
    : >"$OUT/summary"
    echo "guest: kernel $(uname -r), $(nproc) CPUs, booted in $(cut -d' ' -f1 /proc/uptime) s"
    if ! (setup_system) >"$OUT/setup.log" 2>&1; then
        echo "FAIL setup: $(tail -1 "$OUT/setup.log")" | tee -a "$OUT/summary"
        echo "guest: done" >>"$OUT/summary"
        return
    fi
    local only=() plan=() s
    [[ -s $T/only ]] && read -ra only <"$T/only"
    for s in "${SCENARIOS[@]}"; do
        if ((${#only[@]} == 0)) || [[ " ${only[*]} " == *" ${s% *} "* ]]; then plan+=("$s"); fi
    done
    for s in "${BENCHES[@]}"; do
        if [[ " ${only[*]} " == *" ${s% *} "* ]]; then plan+=("$s"); fi
    done
    printf '%s\n' "${plan[@]% *}" >"$OUT/plan"
    sync
    for s in "${plan[@]}"; do
        run_scenario $s
        sync
    done
    dmesg >"$OUT/dmesg"
    echo "guest: scenarios took $(since "$t0") s" | tee -a "$OUT/summary"
    echo "guest: done" >>"$OUT/summary"
}

if [[ ${1-} == --scenario ]]; then
    SC_NAME=$2
    SC_OUT=$OUT/$2
    "$2"
    exit $?
fi
mkdir -p "$OUT"
main 2>&1 | tee "$OUT/console.log"
