#!/usr/bin/env python3
"""Paced O_DIRECT load on an NFS mount that must survive a proxy restart (guest side).

  ioload.py write SRC DST STOPFILE PROGRESS   write SRC to DST once, in order
  ioload.py read  FILE EXPECTED STOPFILE PROGRESS   read FILE over and over, compare with EXPECTED

Every request goes to the server (O_DIRECT, so no page cache hides a broken tunnel). Both pace
themselves at about 1 MiB/s until STOPFILE exists, then run at full speed: the writer to the end of
SRC, the reader to the end of its current pass (at least one whole pass). After each request the
request count is written to PROGRESS. Prints one line: `bytes=N max_gap_s=F` (the longest time
between two completed requests); exits 1 on a mismatch or an I/O error.
"""
import mmap
import os
import sys
import time

CHUNK = 256 * 1024
PACE_S = 0.25  # ~1 MiB/s while paced


def main():
    mode, path, other, stopfile, progress = sys.argv[1:6]
    size = os.path.getsize(path if mode == "write" else other)
    buf = mmap.mmap(-1, CHUNK)  # page-aligned, as O_DIRECT wants
    if mode == "write":
        fd = os.open(other, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_DIRECT, 0o644)
        src = open(path, "rb")
    else:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
        src = open(other, "rb")
    done = 0
    last = time.monotonic()
    max_gap = 0.0
    offset = 0
    passes = 0
    requests = 0
    while True:
        n = min(CHUNK, size - offset)
        src.seek(offset)
        want = src.read(n)
        if mode == "write":
            buf.seek(0)
            buf.write(want.ljust(CHUNK, b"\0"))
            # a short last chunk still goes out whole (O_DIRECT wants aligned sizes); cut it below
            wrote = os.pwritev(fd, [buf], offset)
            if wrote < n:
                raise OSError(f"short write at {offset}: {wrote} of {n}")
        else:
            got = os.preadv(fd, [buf], offset)
            if got < n or buf[:n] != want:
                print(f"mismatch at offset {offset} (read {got} bytes)", flush=True)
                return 1
        requests += 1
        done += n
        now = time.monotonic()
        max_gap = max(max_gap, now - last)
        last = now
        with open(progress, "w") as p:
            p.write(f"{requests}\n")
        offset += n
        if offset >= size:
            passes += 1
            offset = 0
            if mode == "write" or os.path.exists(stopfile):
                break
        if not os.path.exists(stopfile):
            time.sleep(PACE_S)
    if mode == "write":
        os.ftruncate(fd, size)
        os.fsync(fd)
    os.close(fd)
    print(f"bytes={done} max_gap_s={max_gap:.1f}", flush=True)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except OSError as e:
        print(f"I/O error: {e}", flush=True)
        sys.exit(1)
