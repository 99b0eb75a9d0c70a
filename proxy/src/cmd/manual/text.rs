//! The prose of the man pages, in the markup of [`super::roff::markup`]. What can be generated (names,
//! synopses, options and their defaults, the metric names and help texts, the CA's file names) is
//! not here; the refusal words are, and a test keeps them equal to `RefuseReason::word`.

/// Every refusal word logged as `reason=` and counted in `nfs_tls_proxy_refusals_total{reason}`,
/// with what it means and where to look.
pub(super) const REFUSALS: &[(&str, &str)] = &[
    ("no-certificate", "The client sent no certificate. Give its stunnel `cert =`, or its `--cert`."),
    ("unknown-ca", "The certificate does not chain to `--ca` (client mode: the server's does not), or its signature is bad. Compare the issuer with `ca-tool show FILE`."),
    ("expired", "The certificate's notAfter has passed: `ca-tool renew NAME`."),
    ("not-yet-valid", "The certificate's notBefore is in the future: check both clocks."),
    ("revoked", "The CRL (`--crl`) lists the certificate's serial."),
    ("revocation-unknown", "The CRL cannot speak for the certificate (e.g. it is from another issuer): refused, fail closed."),
    ("crl-expired", "`--enforce-crl-expiry` is set and the CRL's nextUpdate has passed: `ca-tool crl`, copy `crl.pem`, reload."),
    ("wrong-purpose", "The certificate is not for this use, e.g. a server certificate presented as a client's (extended key usage)."),
    ("name-not-allowed", "A valid certificate whose CN and DNS names are not on `--allow-cn`."),
    ("wrong-server-name", "Client mode: the server's certificate does not carry `--server-name` (or the host part of `--server`)."),
    ("not-tls", "The first bytes were neither a TLS ClientHello nor (with `--rpc-tls on`) an RPC record: plaintext NFS to the TLS port, or a port scanner."),
    ("rpc-without-tls", "An RPC record that is not the RFC 9289 AUTH_TLS probe: an NFS client mounting without `xprtsec=mtls` or `tls`."),
    ("rpc-malformed", "A malformed, fragmented or oversized RPC record where the probe belongs."),
    ("no-starttls", "Client mode, `--upstream-protocol rpc-tls`: the server did not answer the probe with STARTTLS; nothing of the NFS client's data was sent."),
    ("handshake-timeout", "The handshake did not finish within `--handshake-timeout` (a silent peer)."),
    ("closed-during-handshake", "The peer hung up before the handshake finished (often it refused our certificate without an alert)."),
    ("peer-rejected-us", "The peer sent a TLS alert: it refused our certificate or our parameters. Its log says why."),
    ("tls-incompatible", "No common TLS version or cipher suite (`--min-tls`)."),
    ("tls-error", "Any other TLS failure; the log line's detail names it."),
    ("unreachable", "Server mode: the backend could not be reached; client mode: no `--server` could."),
    ("max-connections", "`--max-connections` tunnels are open; the connection is closed at once."),
    ("evicted", "Still in its handshake when the handshake budget (`--max-handshakes`) was full: dropped to make room for a newcomer (the oldest connection of the busiest source address)."),
    ("resource-exhausted", "The process or host ran out of file descriptors or socket memory while accepting or dialling; logged once when it starts and once when it ends. Raise LimitNOFILE (or kern.maxfiles) or lower `--max-connections`."),
    ("ktls-refused", "The handshake completed, but the kernel would not take the session's keys (`--ktls auto`, after the start-up probe had found it able to). A fault of this host, not of the peer; `--ktls off` hands every tunnel to rustls' record layer instead."),
];

pub(super) const OVERVIEW: &str = r#"
`nfs-tls-proxy` replaces stunnel in front of NFS. On the storage servers, `nfs-tls-proxy server` accepts TLS from the NFS clients, checks their certificates against a private CA, a CRL and an allow-list, and forwards plain NFS to the local NFS server. On the NFS clients, `nfs-tls-proxy client` accepts plain NFS on loopback and carries it over TLS to the storage servers. Both modes share one connection pipeline: accept, handshake (every certificate check happens inside it, before the backend is dialled), connect, copy both ways, and one `tunnel closed` log line per tunnel.

The server also speaks RFC 9289 RPC-with-TLS on the same port (kernel NFS clients with `xprtsec=mtls` on Linux or `-o tls` on FreeBSD), and follows a CARP or keepalived address: a `--listen` address the host does not hold is bound when the host takes it over, and let go (with its tunnels) when it moves away.

Each command has its own page; the certificates come from `ca-tool`(1).
"#;

pub(super) const SERVER: &str = r#"
Accepts TLS on every `--listen` address, requires a client certificate that chains to `--ca` (and, with `--crl`, is not revoked; with `--allow-cn`, carries an allowed name), and forwards the plaintext to `--backend`, normally the NFS server on 127.0.0.1:2049. A refused connection never reaches the backend; it gets a TLS alert and one `connection refused` log line with its reason (see REFUSAL REASONS).

On the same port the server answers RFC 9289 clients: an RPC record that is the AUTH_TLS probe is answered with STARTTLS by the proxy itself, followed by a TLS 1.3 handshake under the same rules (`--rpc-tls off` turns this off).

A `--listen` address this host does not own is not an error: the server logs `standing by` and binds it as soon as the host owns it (Linux: the address is assigned; FreeBSD: assigned and its CARP vhid is MASTER), checking every 0.5 seconds. When the host loses it, the listener closes and every tunnel accepted through it is cut (`address lost`).
"#;

pub(super) const CLIENT: &str = r#"
Accepts plaintext NFS on every `--listen` address (loopback: 127.0.0.1:2323 by default; add 127.0.0.1:2049 so mounts need no port option) and carries each connection over TLS to the first `--server` that completes a handshake, presenting `--cert` and requiring a server certificate that chains to `--ca` and carries `--server-name`. Servers are tried in order, each under `--connect-timeout` and `--handshake-timeout`; while none answers (or each closes the handshake half-way, as a server whose handshake budget is full does), a connection is held for `--upstream-retry-for` so that a hard mount waits instead of reconnecting in a tight loop.

`--upstream-protocol rpc-tls` talks RFC 9289 to an NFS server that does RPC-with-TLS itself (FreeBSD's nfsd with rpc.tlsservd): the probe first, the exact STARTTLS reply required, then TLS 1.3 with ALPN `sunrpc`.
"#;

pub(super) const CHECK: &str = r#"
Loads a configuration file exactly as start-up does and prints what it holds: the mode, the listeners (and whether this host owns each address now), the backend or the servers, the certificate's subject, names and expiry, whether the key matches it, whether it chains to the CA, the CRL's issuer, nextUpdate and revoked count, and the allow-list. A client also tries a handshake with each server and checks its name. Every problem is one `problem:` line on standard error. Meant for systemd's ExecStartPre and the rc.d script's precmd, so that a broken file never replaces a running proxy.
"#;

pub(super) const RELOAD: &str = r#"
Reads the process id from `--pid-file`, sends it SIGHUP, and waits for the outcome that the proxy writes next to its pid file (FILE.reload). Prints the reload's summary and exits 0 when the new material was taken; prints why and exits 1 when the proxy refused it (it then keeps the configuration it had), and also when no outcome arrives within `--timeout`. For systemd's ExecReload and the rc.d script's reload, so that a bad certificate or CRL makes the reload fail loudly.
"#;

pub(super) const CONVERT: &str = r#"
Translates a stunnel configuration into the equivalent nfs-tls-proxy TOML file, printed on standard output with a comment for each translated line. Weak settings (e.g. `verify = 2` without an allow-list, TLS below 1.2) are warned about in the output and on standard error; options that cannot be translated are errors naming their line, and nothing is printed.
"#;

pub(super) const DEMO: &str = r#"
Runs a server, a client and an echo backend in one process on loopback, with the built-in demo certificates, sends data through them and prints what happened. Nothing to configure; it shows the log lines a real setup produces.
"#;

pub(super) const MANUAL: &str = r#"
Writes the man pages of `nfs-tls-proxy` and `ca-tool` to DIR/man and their bash, zsh and fish completions to DIR/completions. Everything is generated from the flag definitions of this very binary, so the pages cannot drift from the flags. The packages (the RPM and the FreeBSD port) run it at build time.
"#;

pub(super) const CONFIGURATION: &str = r#"
`server` and `client` read `--config FILE`, a TOML file whose keys are the long flag names without their dashes in front (`handshake-timeout`; `handshake_timeout` works too). A repeatable flag takes a list, an on/off flag `true` or `false`, anything else a string or a number. Flags given on the command line win over the file. An unknown key is an error naming it. SIGHUP reads the file again.

`nfs-tls-proxy check --config FILE` loads it as start-up would; `nfs-tls-proxy convert-stunnel` writes one from a stunnel.conf. The packages install samples as server.toml.sample and client.toml.sample.
"#;

pub(super) const CONFIGURATION_SERVER: &str = r#"
    # /usr/local/etc/nfs-tls-proxy/server.toml (FreeBSD), /etc/nfs-tls-proxy/server.toml (Linux)
    listen = ["192.168.1.138:2323"]
    backend = "127.0.0.1:2049"
    cert = "/usr/local/etc/nfs-tls-proxy/f3s-storage-ha-cert.pem"
    key = "/usr/local/etc/nfs-tls-proxy/f3s-storage-ha-key.pem"
    ca = "/usr/local/etc/nfs-tls-proxy/ca-cert.pem"
    crl = "/usr/local/etc/nfs-tls-proxy/crl.pem"
    allow-cn = ["r0", "r1", "r2", "earth"]
    reload-every = "1h"
    metrics = "127.0.0.1:9469"
"#;

pub(super) const CONFIGURATION_CLIENT: &str = r#"
    # /etc/nfs-tls-proxy/client.toml (Linux), /usr/local/etc/nfs-tls-proxy/client.toml (FreeBSD)
    listen = ["127.0.0.1:2049", "127.0.0.1:2323"]
    server = ["f3s-storage-ha:2323"]
    server-name = "f3s-storage-ha"
    cert = "/etc/nfs-tls-proxy/r0-cert.pem"
    key = "/etc/nfs-tls-proxy/r0-key.pem"
    ca = "/etc/nfs-tls-proxy/ca-cert.pem"
    metrics = "127.0.0.1:9469"
"#;

pub(super) const SIGNALS: &str = r#"
SIGHUP:: Reload: read the `--config` file, the certificate, key, CA, CRL and allow-list again. Everything is loaded and checked first and swapped in last, so a broken or missing file keeps the current configuration (logged as `reload failed`). New handshakes use the new material; open tunnels go on, except those whose client certificate the new CRL revokes or the new allow-list no longer admits, which are cut, each with a log line. Settings other than the TLS material and the allow-list (listen addresses, backend, servers, timeouts, `--metrics`, `--user`) need a restart; a reload that sees them changed says so (`restart_needed`). `--reload-every` does the same on a timer.
SIGTERM, SIGINT:: Stop accepting, let open tunnels finish for `--drain-timeout`, cut the rest, log how many were cut, remove the pid file, exit 0. NFS connections do not end by themselves, so the default is short.

Restarting without refusing a connection: under systemd, the socket units hold the listening sockets across a restart (socket activation). Elsewhere (FreeBSD's rc.d, a proxy started by hand), start the proxy with `--handover-socket PATH`: a second proxy started with the same PATH takes the running one's listening sockets (tunnel listeners and `--metrics`, with SCM_RIGHTS over that Unix socket) where its own `--listen`/`--metrics` name the same address, binds the rest, and accepts; once it is ready the old one stops accepting, drains as on SIGTERM (its log says `signal="hand-over"`) and exits 0. Connections waiting in a listen queue meanwhile are accepted by the new one. If the new one fails before it is ready, the old one goes on serving. `service nfs_tls_proxy restart` does this.

`nfs-tls-proxy reload --pid-file FILE` sends SIGHUP and waits for the outcome the proxy records in FILE.reload (`GENERATION ok|failed MESSAGE`), exiting non-zero when the reload failed: use it rather than a bare `kill -HUP`. Under systemd, `systemctl reload` runs it; on FreeBSD, `service nfs_tls_proxy reload`.
"#;

pub(super) const FILES: &str = r#"
/usr/local/etc/nfs-tls-proxy/:: FreeBSD: `server.toml`, `client.toml`, the certificates and keys (the port installs the samples here).
/etc/nfs-tls-proxy/:: Linux: the same (0750 root:nfs-tls-proxy, created by the packages' tmpfiles.d entry).
KEY FILES:: Private keys are owned `root:nfs-tls-proxy` with mode 0640: root writes them, the service user reads them at start and at every reload. The proxy refuses a key that others can read, and one that its group can read unless that group is the group the proxy runs as and not root's (`--insecure-key-permissions` overrides); mode 0600 is always accepted. Fix with `chown root:nfs-tls-proxy KEY && chmod 0640 KEY`. With `--user`, right after dropping privileges the proxy opens the key, certificate, CA and CRL once as that user and stops if one cannot be opened (naming a directory on the way that bars it): each is read again at every reload.
FILE (--pid-file):: The process id, written at start (before privileges are dropped, then handed to the `--user`) and removed at exit, e.g. /run/nfs-tls-proxy/server.pid.
FILE.reload:: Next to the pid file: the outcome of the last reload, one line, `GENERATION ok|failed MESSAGE`, which `nfs-tls-proxy reload` waits for.
PATH (--handover-socket):: The Unix socket a restarted proxy takes the listening sockets over, mode 0600, e.g. /var/run/nfs_tls_proxy.handover (the rc.d script's, one per instance). Created by the first proxy, handed on to each successor, removed at a stop without a successor; a file left by a killed proxy is replaced.
/usr/local/etc/rc.d/nfs_tls_proxy:: FreeBSD: the rc.d script (`nfs_tls_proxy_enable`, `_mode`, `_config`, `_flags`, `_runas`); symlink it as nfs_tls_proxy_client for a second instance.
nfs-tls-proxy-server.service, nfs-tls-proxy-client.service:: Linux: the systemd units (Type=notify, User=nfs-tls-proxy, ExecStartPre runs `check`, ExecReload runs `reload`).
"#;

pub(super) const EXIT_STATUS_PROXY: &str = r#"
0:: `server` and `client`: stopped by SIGTERM or SIGINT after draining. Other commands: done, no problem found.
1:: An error, printed once on one line on standard error: a configuration that cannot be used (`--cert is required ...`), a file that cannot be read, an address that cannot be bound, a key with unsafe permissions; `check`: one or more problems; `reload`: the reload failed or no outcome arrived in time; `convert-stunnel`: lines that cannot be translated.
2:: The command line (or a key of the `--config` file) does not parse: unknown flag, bad value, unknown key.
"#;

pub(super) const EXIT_STATUS_CA_TOOL: &str = r#"
0:: Done; what was written is printed on standard output.
1:: An error, printed once on one line on standard error; the CA directory is unchanged (files are written to a temporary name and renamed, and a second command running on the same directory fails at once).
2:: The command line does not parse.
"#;

pub(super) const REFUSALS_INTRO: &str = r#"
Every refused connection is logged once, as `connection refused` with `peer`, `reason` (one of the words below), and for a certificate that was presented its `identity` and `serial`; the same refusal of the same certificate within a minute is summarised (`repeated=N`) on its next line, and any other reason logs its first few refusals of a second one by one and the rest of that second as one summary line with a count. Each refusal also counts in `nfs_tls_proxy_refusals_total{reason}`. The backend is never dialled for a refused connection.
"#;

pub(super) const METRICS_INTRO: &str = r#"
With `--metrics ADDR` (or a bare port, for 127.0.0.1:PORT) the proxy serves plain HTTP: `/metrics` (Prometheus text format), `/healthz` (server: an NFS NULL call to the backend is answered; client: an NFS NULL call through a tunnel to the first server that lets it in; 200, or 503 with a one-line reason; the far side is asked at most once every 2 s and requests meanwhile share its answer) and `/tunnels` (the open tunnels as JSON). The metrics:
"#;

pub(super) const EXAMPLES_SERVER: &str = r#"
On f0 and f1, the FreeBSD storage hosts under CARP, in front of the NFS server on 127.0.0.1:2049; both run the same command and the one holding the VIP 192.168.1.138 serves:

    nfs-tls-proxy server --listen 192.168.1.138:2323 --backend 127.0.0.1:2049 \
        --cert f3s-storage-ha-cert.pem --key f3s-storage-ha-key.pem --ca ca-cert.pem \
        --crl crl.pem --allow-cn r0 --allow-cn r1 --allow-cn r2 --allow-cn earth

As a service, from the configuration file above:

    nfs-tls-proxy check --config /usr/local/etc/nfs-tls-proxy/server.toml
    sysrc nfs_tls_proxy_enable=YES && service nfs_tls_proxy start

Cut off a client at once: revoke it, copy the new CRL to f0 and f1, reload:

    ca-tool revoke r2
    service nfs_tls_proxy reload
"#;

pub(super) const EXAMPLES_CLIENT: &str = r#"
On r0, r1, r2 and earth (the NFS clients), listening on 127.0.0.1:2049 so that mounts need no port, and on 2323 as with stunnel:

    nfs-tls-proxy client --listen 127.0.0.1:2323 --listen 127.0.0.1:2049 \
        --server f3s-storage-ha:2323 --server-name f3s-storage-ha \
        --cert r0-cert.pem --key r0-key.pem --ca ca-cert.pem
    mount -t nfs4 127.0.0.1:/data/nfs/k3svolumes /data/nfs/k3svolumes
    mount -t nfs4 -o port=2323 127.0.0.1:/data/nfs/k3svolumes /data/nfs/k3svolumes

stunnel's combined certificate-and-key file works as it is (`--key` left out): `--cert r0-stunnel.pem`. As a service:

    nfs-tls-proxy check --mode client --config /etc/nfs-tls-proxy/client.toml
    systemctl enable --now nfs-tls-proxy-client

In /etc/fstab, after the unit:

    127.0.0.1:/data/nfs/k3svolumes /data/nfs/k3svolumes nfs4 hard,_netdev,x-systemd.requires=nfs-tls-proxy-client.service 0 0
"#;

pub(super) const EXAMPLES_CHECK: &str = r#"
    nfs-tls-proxy check --config /usr/local/etc/nfs-tls-proxy/server.toml
    nfs-tls-proxy check --mode client --config /etc/nfs-tls-proxy/client.toml
"#;

pub(super) const EXAMPLES_RELOAD: &str = r#"
    nfs-tls-proxy reload --pid-file /run/nfs-tls-proxy/client.pid
    nfs-tls-proxy reload --pid-file /run/nfs-tls-proxy/server.pid --timeout 10s
"#;

pub(super) const EXAMPLES_CONVERT: &str = r#"
    nfs-tls-proxy convert-stunnel /usr/local/etc/stunnel/stunnel.conf > server.toml
    nfs-tls-proxy convert-stunnel /etc/stunnel/stunnel.conf --service nfs > client.toml
"#;

pub(super) const EXAMPLES_DEMO: &str = r#"
    nfs-tls-proxy demo
"#;

pub(super) const EXAMPLES_MANUAL: &str = r#"
    nfs-tls-proxy manual --out /tmp/manual
    install -m 0644 /tmp/manual/man/*.1 /usr/local/share/man/man1/
    install -m 0644 /tmp/manual/completions/nfs-tls-proxy.bash /usr/local/share/bash-completion/completions/nfs-tls-proxy
"#;

pub(super) const MANUAL_FILES: &str = r#"
DIR/man/*.1:: The pages: nfs-tls-proxy(1), one per command (nfs-tls-proxy-server(1), ...), and ca-tool(1).
DIR/completions/:: For each binary: NAME.bash (install as bash-completion's completions/NAME), _NAME (zsh site-functions), NAME.fish (fish vendor_completions.d).
"#;

pub(super) const CA_TOOL: &str = r#"
`ca-tool` runs the private CA behind nfs-tls-proxy: ECDSA P-256 keys, a CA limited to signing leaves (path length 0), client certificates (extended key usage clientAuth; CN and DNS name = the host name), server certificates (serverAuth; the name plus every `--dns` and `--ip`), a signed CRL, and an index of everything issued. It can also adopt a CA made with openssl (`import`), so that stunnel and nfs-tls-proxy trust the same CA during a migration.

Keys are written with mode 0600 and the CA directory is 0700. Every file is written to a temporary name and renamed, nothing is overwritten without `--force`, and commands that change the CA take a lock: a second one started meanwhile fails at once and changes nothing. `ca-key.pem` never needs to leave the CA directory: copy `ca-cert.pem`, `crl.pem` and each host's pair (or the directory `bundle` writes) to the hosts.
"#;

pub(super) const CA_TOOL_EXAMPLES: &str = r#"
### A new CA for f3s (on f0, in a private directory)

    ca-tool init --dir /usr/local/etc/nfs-tls-proxy/ca --cn "f3s CA"
    cd /usr/local/etc/nfs-tls-proxy/ca
    ca-tool issue f3s-storage-ha --server --dns f0 --dns f1 --dns f0.lan --dns f1.lan --ip 192.168.1.138
    for host in r0 r1 r2 earth; do ca-tool issue $host; done
    ca-tool list
    ca-tool bundle r0 --out /root/bundles/r0

### Migrating from the blog's openssl CA

Adopt the CA that stunnel uses (made with `openssl req -new -x509`, leaves with `openssl x509 -req`), record its leaves as legacy, and re-issue v3 certificates under the same CA; `--combined` writes NAME-stunnel.pem for hosts still on stunnel:

    ca-tool import --cert /root/stunnel-ca/ca-cert.pem --key /root/stunnel-ca/ca-key.pem \
        --dir /usr/local/etc/nfs-tls-proxy/ca \
        --leaves /root/stunnel-ca/r0-cert.pem /root/stunnel-ca/r1-cert.pem /root/stunnel-ca/r2-cert.pem /root/stunnel-ca/earth-cert.pem \
        --server-leaves /root/stunnel-ca/f3s-storage-ha-cert.pem
    cd /usr/local/etc/nfs-tls-proxy/ca
    ca-tool issue f3s-storage-ha --server --dns f0 --dns f1 --dns f0.lan --dns f1.lan --ip 192.168.1.138 --combined
    ca-tool issue r0 --combined
    ca-tool show /root/stunnel-ca/r0-cert.pem

Once every host presents its new certificate (`ca-tool list` shows which are still legacy), revoke the old serials:

    ca-tool revoke r0 --serial 7231404F7097A27F710173CB67CF78425BEA1B65

### Keeping it running

    ca-tool crl --days 30
    ca-tool list --expiring 30d
    ca-tool renew r0
"#;
