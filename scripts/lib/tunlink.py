#!/usr/bin/env python3
"""tunlink.py — a point-to-point link between two network namespaces with rate, delay and
loss, for kernels without sch_netem (scripts/lib/netns.sh uses it then).

    tunlink.py SRC_NS DEV_S DST_NS DEV_D RATE_BPS DELAY_US QUEUE_US LOSS_PCT

Creates tun device DEV_S in SRC_NS and DEV_D in DST_NS (MTU set by the caller: large
packets keep the packet rate low), prints "ready", then forwards every IP packet from one to
the other: each direction is a link of RATE_BPS (packets leave one after the other, each
taking len*8/rate), DELAY_US of propagation, a tail-drop queue of QUEUE_US at line rate and
LOSS_PCT random loss. Runs until SIGTERM; the devices go with it.
"""

import ctypes
import fcntl
import heapq
import os
import random
import select
import signal
import struct
import sys
import time

TUNSETIFF = 0x400454CA
IFF_TUN, IFF_NO_PI = 0x0001, 0x1000
CLONE_NEWNET = 0x40000000


def tun_in(ns, dev):
    """Open tun DEV inside namespace NS (the device lives there, the fd works anywhere)."""
    libc = ctypes.CDLL(None, use_errno=True)
    with open(f"/var/run/netns/{ns}") as f:
        if libc.setns(f.fileno(), CLONE_NEWNET):
            sys.exit(f"tunlink.py: setns {ns}: {os.strerror(ctypes.get_errno())}")
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", dev.encode(), IFF_TUN | IFF_NO_PI))
    return fd


def main(a):
    src_ns, dev_s, dst_ns, dev_d = a[:4]
    rate, delay, queue, loss = int(a[4]), int(a[5]) / 1e6, int(a[6]) / 1e6, float(a[7])
    home = open("/proc/self/ns/net")
    fds = [tun_in(src_ns, dev_s), tun_in(dst_ns, dev_d)]
    ctypes.CDLL(None).setns(home.fileno(), CLONE_NEWNET)
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    print("ready", flush=True)
    free = [0.0, 0.0]           # when each direction's wire is free again
    due, seq = [], 0            # heap of (arrival time, seq, out fd, packet)
    while not stop:
        now = time.monotonic()
        while due and due[0][0] <= now:
            _, _, fd, pkt = heapq.heappop(due)
            try:
                os.write(fd, pkt)
            except OSError:     # the device is down or full: the packet is lost
                pass
        wait = max(0.0, due[0][0] - now) if due else 0.5
        try:
            ready, _, _ = select.select(fds, [], [], wait)
        except InterruptedError:
            continue
        now = time.monotonic()
        for i, fd in enumerate(fds):
            if fd not in ready:
                continue
            for _ in range(64):
                try:
                    pkt = os.read(fd, 65536)
                except BlockingIOError:
                    break
                start = max(now, free[i])
                if start - now > queue or (loss and random.random() * 100 < loss):
                    continue    # tail drop (queue full) or loss
                free[i] = start + len(pkt) * 8 / rate
                seq += 1
                heapq.heappush(due, (free[i] + delay, seq, fds[1 - i], pkt))


if __name__ == "__main__":
    if len(sys.argv) != 9:
        sys.exit(__doc__.strip().splitlines()[3].strip())
    main(sys.argv[1:])
