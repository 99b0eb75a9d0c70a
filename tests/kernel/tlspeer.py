#!/usr/bin/env python3
"""A TLS 1.3 client made of Python's ssl module (OpenSSL) driven through memory BIOs, so that what
goes on the wire is ours to cut or corrupt; for the kTLS fault scenario of guest.sh.

  tlspeer.py PORT CERT KEY CA CASE [SERVER_NAME]   (default: storage)

It sends "hello" in one record, then per CASE:
  close     close_notify, then FIN; reads the echo and the server's close_notify
  truncate  half of the next record, then FIN
  badmac    the next record with its last byte flipped
  badheader the next record with a record header no TLS version has (0x0400)
and prints one line of what came back: `echo=<bytes> end=<close_notify|eof|reset|alert:NAME>`.
Every blocking call has a timeout (30 s).
"""
import socket
import ssl
import sys


def main(port, cert, key, ca, case, name="storage"):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.load_cert_chain(cert, key)
    ctx.load_verify_locations(ca)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ctx.wrap_bio(incoming, outgoing, server_hostname=name)
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)

    def flush():
        data = outgoing.read()
        if data:
            sock.sendall(data)

    while True:
        try:
            tls.do_handshake()
            break
        except ssl.SSLWantReadError:
            flush()
            data = sock.recv(1 << 16)
            if not data:
                print("echo= end=closed-in-handshake")
                return
            incoming.write(data)
    flush()

    tls.write(b"hello")
    flush()
    if case == "close":
        try:
            tls.unwrap()
        except ssl.SSLWantReadError:
            pass
        flush()
        sock.shutdown(socket.SHUT_WR)
    else:
        tls.write(b"world")
        record = bytearray(outgoing.read())
        if case == "truncate":
            sock.sendall(record[: len(record) // 2])
            sock.shutdown(socket.SHUT_WR)
        elif case == "badheader":
            record[1:3] = b"\x04\x00"
            sock.sendall(record)
        else:
            record[-1] ^= 1
            sock.sendall(record)

    echo, end = b"", None
    while end is None:
        try:
            data = sock.recv(1 << 16)
        except ConnectionResetError:
            end = "reset"
            break
        except socket.timeout:
            end = "timeout"
            break
        if not data:
            incoming.write_eof()
        else:
            incoming.write(data)
        while True:
            try:
                chunk = tls.read(1 << 16)
            except ssl.SSLWantReadError:
                if not data:
                    end = "eof"
                break
            except ssl.SSLZeroReturnError:
                end = "close_notify"
                break
            except ssl.SSLEOFError:
                end = "eof"
                break
            except ssl.SSLError as e:
                end = "alert:" + (e.reason or str(e))
                break
            if not chunk:
                end = "close_notify"
                break
            echo += chunk
    print(f"echo={echo.decode(errors='replace')} end={end}")


if __name__ == "__main__":
    main(int(sys.argv[1]), *sys.argv[2:7])
