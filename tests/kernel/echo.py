#!/usr/bin/env python3
"""Echo backend and sender for the kTLS scenarios (guest.sh), both ends of a tunnel's plain sides.

  echo.py serve PORT [LOG]      echo every connection on 127.0.0.1:PORT until its end of input, then
                                 shut down writing (the half-close travels back through the tunnel);
                                 with LOG, append "data=N end=eof|reset" for each connection there
  echo.py sink PORT             read every connection on 127.0.0.1:PORT to its end, then close
  echo.py source PORT BYTES     write BYTES (zeros) to every connection on 127.0.0.1:PORT, then close
  echo.py send PORT BYTES       send BYTES of seeded pseudo-random data to 127.0.0.1:PORT while reading
                                 the echo, shut down writing, read to the end; prints
                                 "ok sent=N received=N", or "differs sent=N received=M prefix_ok=B"
                                 (whether what came back is the start of what was sent) and exits 1
Every blocking call has a timeout (60 s), so a stuck tunnel fails the scenario instead of hanging it.
"""
import hashlib
import random
import socket
import sys
import threading

TIMEOUT = 60


def serve(port, log=None):
    serve_with(port, lambda conn: echo(conn, log))


def serve_with(port, handle):
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", port))
    srv.listen(64)
    while True:
        conn, _ = srv.accept()
        conn.settimeout(TIMEOUT)
        threading.Thread(target=handle, args=(conn,), daemon=True).start()


def sink(conn):
    try:
        while conn.recv(1 << 20):
            pass
    except OSError:
        pass
    conn.close()


def source(size):
    block = bytes(1 << 20)

    def handle(conn):
        try:
            left = size
            while left > 0:
                left -= conn.send(block[:min(left, len(block))])
            conn.shutdown(socket.SHUT_WR)
            while conn.recv(1 << 16):
                pass
        except OSError:
            pass
        conn.close()

    return handle


def echo(conn, log=None):
    total, end = 0, "eof"
    try:
        while True:
            data = conn.recv(1 << 16)
            if not data:
                break
            total += len(data)
            conn.sendall(data)
        conn.shutdown(socket.SHUT_WR)
    except ConnectionResetError:
        end = "reset"
    except OSError as e:
        end = f"error:{e}"
    finally:
        conn.close()
    if log:
        with open(log, "a") as f:
            f.write(f"data={total} end={end}\n")


def send(port, size):
    data = random.Random(size).randbytes(size)
    conn = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
    failure = []

    def writer():
        try:
            view = memoryview(data)
            for at in range(0, size, 1 << 16):
                conn.sendall(view[at:at + (1 << 16)])
            conn.shutdown(socket.SHUT_WR)
        except OSError as e:
            failure.append(f"send: {e}")

    thread = threading.Thread(target=writer)
    thread.start()
    got = hashlib.sha256()
    received = 0
    prefix_ok = True
    try:
        while True:
            chunk = conn.recv(1 << 16)
            if not chunk:
                break
            got.update(chunk)
            prefix_ok = prefix_ok and chunk == data[received:received + len(chunk)]
            received += len(chunk)
    except OSError as e:
        failure.append(f"receive: {e}")
    thread.join(TIMEOUT)
    conn.close()
    want = hashlib.sha256(data).hexdigest()
    if failure or received != size or got.hexdigest() != want:
        print(f"differs sent={size} received={received} prefix_ok={prefix_ok} {' '.join(failure)}")
        return 1
    print(f"ok sent={size} received={received}")
    return 0


if __name__ == "__main__":
    if sys.argv[1] == "serve":
        serve(int(sys.argv[2]), sys.argv[3] if len(sys.argv) > 3 else None)
    elif sys.argv[1] == "sink":
        serve_with(int(sys.argv[2]), sink)
    elif sys.argv[1] == "source":
        serve_with(int(sys.argv[2]), source(int(sys.argv[3])))
    else:
        sys.exit(send(int(sys.argv[2]), int(sys.argv[3])))
