#!/usr/bin/env python3
"""An RFC 9289 (RPC-with-TLS) server written independently of nfs-tls-proxy, standing in for FreeBSD's
nfsd with rpc.tlsservd in its tests. Serves one connection, then exits.

It requires the exact AUTH_TLS probe (any XID), then answers as --answer says:
  starttls  the RFC reply; then TLS 1.3 requiring a client certificate from --ca, and echoes
  denied    MSG_DENIED / AUTH_ERROR (a server without RPC-with-TLS)
  plain     MSG_ACCEPTED / SUCCESS with an empty AUTH_NONE verifier (no STARTTLS)
Prints "listening PORT" first, then one result line: "tls VERSION CIPHER ALPN echoed=N" or
"after-reply-bytes N" (what the client sent after a non-STARTTLS answer, until it closed).

usage: rpc_tls_server.py --ca CA --cert CERT --key KEY --answer starttls|denied|plain
"""
import argparse
import socket
import ssl
import struct
import sys

NFS_PROGRAM, AUTH_NONE, AUTH_TLS = 100003, 0, 7


def read_exact(sock, n):
    out = b""
    while len(out) < n:
        chunk = sock.recv(n - len(out))
        if not chunk:
            raise EOFError(f"closed after {len(out)} of {n} bytes")
        out += chunk
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ca", required=True)
    ap.add_argument("--cert", required=True)
    ap.add_argument("--key", required=True)
    ap.add_argument("--answer", choices=["starttls", "denied", "plain"], required=True)
    a = ap.parse_args()

    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(1)
    print(f"listening {lsock.getsockname()[1]}", flush=True)
    lsock.settimeout(60)
    conn, _ = lsock.accept()
    conn.settimeout(20)

    probe = read_exact(conn, 44)
    (xid,) = struct.unpack(">I", probe[4:8])
    expected = struct.pack(">11I", 0x80000028, xid, 0, 2, NFS_PROGRAM, 4, 0, AUTH_TLS, 0, AUTH_NONE, 0)
    if probe != expected:
        print(f"bad-probe {probe.hex()}", flush=True)
        return 1

    if a.answer == "starttls":
        body = struct.pack(">5I", xid, 1, 0, AUTH_NONE, 8) + b"STARTTLS" + struct.pack(">I", 0)
    elif a.answer == "denied":
        body = struct.pack(">5I", xid, 1, 1, 1, 1)  # MSG_DENIED, AUTH_ERROR, AUTH_BADCRED
    else:
        body = struct.pack(">6I", xid, 1, 0, AUTH_NONE, 0, 0)
    conn.sendall(struct.pack(">I", 0x80000000 | len(body)) + body)

    if a.answer != "starttls":
        extra = 0
        try:
            while True:
                chunk = conn.recv(65536)
                if not chunk:
                    break
                extra += len(chunk)
        except (socket.timeout, ConnectionResetError):
            pass
        print(f"after-reply-bytes {extra}", flush=True)
        return 0

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(a.ca)
    ctx.load_cert_chain(a.cert, a.key)
    ctx.set_alpn_protocols(["sunrpc"])
    tls = ctx.wrap_socket(conn, server_side=True)
    echoed = 0
    while True:
        chunk = tls.recv(65536)
        if not chunk:
            break
        tls.sendall(chunk)
        echoed += len(chunk)
    print(f"tls {tls.version()} {tls.cipher()[0]} {tls.selected_alpn_protocol()} echoed={echoed}", flush=True)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except Exception as e:
        print(f"error {type(e).__name__}: {e}", flush=True)
        sys.exit(1)
