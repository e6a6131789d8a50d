"""tlm_qemu.events — record a QEMU's QMP events as JSON lines (for the downtime of the
qemu and precopy modes of scripts/migrate-postcopy.sh: source STOP -> destination RESUME).

    python3 -m tlm_qemu.events SOCK OUT.jsonl [--until EVENT] [--timeout S] [--label L]

Connects to SOCK (a VM's qmp-mig.sock: QMP serves one client per socket, so the other
helpers keep qmp.sock), negotiates, and only then creates OUT.jsonl: a caller that waits
for the file knows that no later event is missed. Each event becomes one line, as QEMU
sent it plus "label" (L, when given) and "t" (its timestamp as epoch seconds, QEMU's host
clock). It ends at the first EVENT (--until), after S seconds (--timeout, default 600),
on SIGTERM or when QEMU closes the socket. Exit status: 0, 1 cannot connect, 2 usage.

    tlm_qemu.events.load(PATH) -> list of the recorded events
    tlm_qemu.events.first(events, NAME) -> the first event NAME, or None
"""

import argparse
import json
import os
import signal
import sys
import time

from .qmp import QMP, QMPConnectionError, event_time

PROG = "tlm_qemu.events"


def load(path):
    """The events recorded in path ([] if it is missing)."""
    try:
        with open(path) as f:
            return [json.loads(ln) for ln in f if ln.strip()]
    except (OSError, ValueError):
        return []


def first(events, name):
    return next((e for e in events if e.get("event") == name), None)


def record(sock, out, until=None, timeout=600.0, label=None):
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    deadline = time.monotonic() + timeout
    with QMP(sock, timeout=10) as q:
        tmp = out + ".tmp"
        with open(tmp, "w") as f:
            os.replace(tmp, out)        # exists = connected and negotiated
            while not stop and time.monotonic() < deadline:
                try:
                    ev = q.next_event(timeout=min(0.2, max(0.0, deadline - time.monotonic())))
                except QMPConnectionError:
                    break               # QEMU quit
                if ev is None:
                    continue
                ev["t"] = event_time(ev)
                if label:
                    ev["label"] = label
                f.write(json.dumps(ev) + "\n")
                f.flush()
                if until and ev.get("event") == until:
                    break


def main(argv):
    ap = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    ap.add_argument("sock", metavar="SOCK")
    ap.add_argument("out", metavar="OUT.jsonl")
    ap.add_argument("--until", metavar="EVENT", help="stop after the first EVENT")
    ap.add_argument("--timeout", type=float, default=600.0)
    ap.add_argument("--label")
    opt = ap.parse_args(argv)
    try:
        record(opt.sock, opt.out, opt.until, opt.timeout, opt.label)
    except QMPConnectionError as e:
        print(f"{PROG}: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
