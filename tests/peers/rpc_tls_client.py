#!/usr/bin/env python3
"""An RFC 9289 (RPC-with-TLS) client written independently of nfs-tls-proxy, for its tests.

It sends the AUTH_TLS probe, requires the exact STARTTLS reply, starts TLS 1.3 with a client
certificate, then makes an NFSv4 NULL call inside TLS and requires MSG_ACCEPTED / SUCCESS.
Prints one line starting with OK or FAIL; exits 0 only on OK.

usage: rpc_tls_client.py HOST PORT --ca CA --cert CERT --key KEY --server-name NAME [--no-alpn]
"""
import argparse
import socket
import ssl
import struct
import sys

NFS_PROGRAM = 100003
AUTH_NONE, AUTH_TLS = 0, 7
CALL, REPLY, MSG_ACCEPTED, SUCCESS = 0, 1, 0, 0


def record(body: bytes) -> bytes:
    return struct.pack(">I", 0x80000000 | len(body)) + body


def read_exact(sock, n: int) -> bytes:
    out = b""
    while len(out) < n:
        chunk = sock.recv(n - len(out))
        if not chunk:
            raise EOFError(f"connection closed after {len(out)} of {n} bytes")
        out += chunk
    return out


def read_record(sock) -> bytes:
    (mark,) = struct.unpack(">I", read_exact(sock, 4))
    if not mark & 0x80000000:
        raise ValueError("fragmented record")
    length = mark & 0x7FFFFFFF
    if length > 4096:
        raise ValueError(f"record of {length} bytes")
    return read_exact(sock, length)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("host")
    ap.add_argument("port", type=int)
    ap.add_argument("--ca", required=True)
    ap.add_argument("--cert", required=True)
    ap.add_argument("--key", required=True)
    ap.add_argument("--server-name", required=True)
    ap.add_argument("--no-alpn", action="store_true")
    a = ap.parse_args()

    sock = socket.create_connection((a.host, a.port), timeout=20)
    xid = 0x5EED0001
    # RFC 9289 4.1: NULL call, program NFS, version 4, credential AUTH_TLS (empty), verifier AUTH_NONE.
    probe = record(struct.pack(">10I", xid, CALL, 2, NFS_PROGRAM, 4, 0, AUTH_TLS, 0, AUTH_NONE, 0))
    assert len(probe) == 44
    sock.sendall(probe)
    reply = read_record(sock)
    expected = struct.pack(">5I", xid, REPLY, MSG_ACCEPTED, AUTH_NONE, 8) + b"STARTTLS" + struct.pack(">I", SUCCESS)
    if reply != expected:
        print(f"FAIL reply to the probe is {reply.hex()}, expected {expected.hex()}")
        return 1

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.load_verify_locations(a.ca)
    ctx.load_cert_chain(a.cert, a.key)
    if not a.no_alpn:
        ctx.set_alpn_protocols(["sunrpc"])
    tls = ctx.wrap_socket(sock, server_hostname=a.server_name)

    # An NFSv4 NULL call inside TLS, AUTH_NONE, with record marking as before.
    xid2 = 0x5EED0002
    tls.sendall(record(struct.pack(">10I", xid2, CALL, 2, NFS_PROGRAM, 4, 0, AUTH_NONE, 0, AUTH_NONE, 0)))
    body = read_record(tls)
    got_xid, mtype, stat, vflavor, vlen = struct.unpack(">5I", body[:20])
    pad = (vlen + 3) // 4 * 4
    (accept,) = struct.unpack(">I", body[20 + pad : 24 + pad])
    if (got_xid, mtype, stat, accept) != (xid2, REPLY, MSG_ACCEPTED, SUCCESS):
        print(f"FAIL NULL reply {body.hex()}")
        return 1
    print(f"OK nfs-null-accepted version={tls.version()} cipher={tls.cipher()[0]} alpn={tls.selected_alpn_protocol()}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except Exception as e:  # one line, whatever went wrong
        print(f"FAIL {type(e).__name__}: {e}")
        sys.exit(1)
