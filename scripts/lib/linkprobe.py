#!/usr/bin/env python3
"""linkprobe.py — measure an emulated link (scripts/lib/netns.sh): TCP round trip and
throughput between two network namespaces.

    linkprobe.py server ADDR PORT            answers one ping connection, one bulk one
    linkprobe.py client ADDR PORT MIB        prints "<Mbit/s> <median RTT ms>"

The RTT is a 1-byte TCP ping-pong (TCP_NODELAY, median of 20); the throughput is MIB MiB
sent in one TCP connection, timed until the server has counted them all.
"""

import socket
import sys
import time


def server(addr, port):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((addr, port))
    s.listen(2)
    s.settimeout(30)
    for _ in range(2):
        c, _ = s.accept()
        if c.recv(1) == b"p":           # ping: echo until closed
            c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            while d := c.recv(64):
                c.sendall(d)
        else:                           # bulk: count, then say how much arrived
            n = 0
            while d := c.recv(1 << 20):
                n += len(d)
            c.sendall(str(n).encode())
        c.close()


def connect(addr, port):
    deadline = time.monotonic() + 5
    while True:         # the server starts concurrently
        try:
            return socket.create_connection((addr, port), timeout=30)
        except ConnectionRefusedError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def client(addr, port, mib):
    c = connect(addr, port)
    c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    c.sendall(b"p")
    rtts = []
    for _ in range(20):
        t = time.perf_counter()
        c.sendall(b"x")
        c.recv(64)
        rtts.append(time.perf_counter() - t)
    c.close()
    c = connect(addr, port)
    c.sendall(b"b")
    buf = bytes(1 << 20)
    t = time.perf_counter()
    for _ in range(mib):
        c.sendall(buf)
    c.shutdown(socket.SHUT_WR)
    got = int(c.recv(64) or 0)
    dt = time.perf_counter() - t
    if got != mib << 20:
        sys.exit(f"linkprobe.py: {got} of {mib << 20} bytes arrived")
    rtts.sort()
    print(f"{got * 8 / dt / 1e6:.0f} {rtts[len(rtts) // 2] * 1000:.2f}")


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "server":
        server(sys.argv[2], int(sys.argv[3]))
    elif len(sys.argv) == 5 and sys.argv[1] == "client":
        client(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
    else:
        sys.exit(__doc__.strip().splitlines()[3].strip())
