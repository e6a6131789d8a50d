"""tlm_qemu.qmp — a small QMP (QEMU Machine Protocol) client, Python 3 standard library only.

Library use:

    from tlm_qemu.qmp import QMP, QMPError
    with QMP("/run/vm/qmp.sock", timeout=10) as q:       # connects, negotiates
        q.execute("stop")
        info = q.execute("query-migrate")                 # the "return" value
        q.execute("migrate", {"uri": "tcp:127.0.0.1:4444"})
        ev = q.wait_event("MIGRATION", timeout=60,
                          match=lambda e: e["data"]["status"] == "completed")
        event_time(ev)                                    # its host timestamp, epoch s

Command line (used by the shell scripts; prints the result as JSON; PYTHONPATH=qemu-glue,
scripts/lib/py.sh's tlm_py sets it):

    python3 -m tlm_qemu.qmp [--timeout S] [--get FIELD] SOCK COMMAND [JSON-ARGS]
    python3 -m tlm_qemu.qmp [--timeout S] --batch SOCK < COMMANDS
    python3 -m tlm_qemu.qmp SOCK query-migrate --get ram.transferred      # one field, dotted path
    python3 -m tlm_qemu.qmp SOCK migrate-set-capabilities \\
        '{"capabilities": [{"capability": "postcopy-ram", "state": true}]}'
    printf '%s\\n' 'migrate {"uri": "tcp:127.0.0.1:4444"}' migrate-start-postcopy |
        python3 -m tlm_qemu.qmp --batch SOCK     # one session, one command per line, back to back

Exit status: 0 success, 1 QEMU answered with an error (its class and description are
printed) or --get names a missing field, 2 usage error, 3 cannot connect, timeout or
connection lost.

Protocol notes: QEMU sends a greeting {"QMP": {...}} on connect; nothing but
qmp_capabilities is accepted before negotiation. Each message is one JSON object on one
line. Replies carry the "id" of their command; events ({"event": ...}) may arrive at
any time, also between a command and its reply: they are queued for wait_event().
A QMP monitor serves one client at a time: a second client waits until the first leaves.
"""

import argparse
import collections
import json
import socket
import sys
import time

PROG = "tlm_qemu.qmp"


class QMPError(Exception):
    """QEMU answered a command with an error (class + human description)."""

    def __init__(self, command, klass, desc):
        super().__init__(f"{command}: {desc} ({klass})")
        self.command = command
        self.klass = klass
        self.desc = desc


class QMPConnectionError(Exception):
    """Cannot connect, the connection broke, or QEMU did not answer in time."""


class QMPTimeout(QMPConnectionError):
    """No reply/event within the timeout."""


class QMP:
    def __init__(self, path, timeout=10.0, negotiate=True):
        self.path = path
        self.timeout = timeout
        self.events = collections.deque()
        self._buf = b""
        self._next_id = 1
        self._sock = self._connect(path, timeout)
        try:
            self.greeting = self._read_msg(time.monotonic() + timeout)
            if "QMP" not in self.greeting:
                raise QMPConnectionError(f"{path}: not a QMP greeting: {self.greeting}")
            if negotiate:
                self.execute("qmp_capabilities")
        except BaseException:
            self.close()
            raise

    @staticmethod
    def _connect(path, timeout):
        """Connect, retrying while the socket does not exist yet or is busy."""
        deadline = time.monotonic() + timeout
        while True:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                s.settimeout(max(0.1, deadline - time.monotonic()))
                s.connect(path)
                return s
            except (FileNotFoundError, ConnectionRefusedError, socket.timeout) as e:
                s.close()
                if time.monotonic() >= deadline:
                    raise QMPConnectionError(f"{path}: cannot connect: {e}") from None
                time.sleep(0.05)
            except OSError as e:
                s.close()
                raise QMPConnectionError(f"{path}: cannot connect: {e}") from None

    def close(self):
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _read_msg(self, deadline):
        """Next JSON message (reply or event); raises QMPTimeout/QMPConnectionError."""
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise QMPTimeout(f"{self.path}: no answer from QEMU in time")
            self._sock.settimeout(left)
            try:
                chunk = self._sock.recv(65536)
            except socket.timeout:
                raise QMPTimeout(f"{self.path}: no answer from QEMU in time") from None
            except OSError as e:
                raise QMPConnectionError(f"{self.path}: {e}") from None
            if not chunk:
                raise QMPConnectionError(f"{self.path}: QEMU closed the connection")
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        try:
            return json.loads(line)
        except ValueError:
            raise QMPConnectionError(f"{self.path}: bad JSON from QEMU: {line[:200]!r}") from None

    def execute(self, command, arguments=None, timeout=None):
        """Run one command; return its "return" value or raise QMPError."""
        if self._sock is None:
            raise QMPConnectionError(f"{self.path}: not connected")
        cid = self._next_id
        self._next_id += 1
        msg = {"execute": command, "id": cid}
        if arguments:
            msg["arguments"] = arguments
        try:
            self._sock.sendall(json.dumps(msg).encode() + b"\n")
        except OSError as e:
            raise QMPConnectionError(f"{self.path}: {command}: {e}") from None
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            reply = self._read_msg(deadline)
            if "event" in reply:
                self.events.append(reply)
                continue
            if reply.get("id") != cid:
                continue        # a late reply to a command that timed out earlier
            if "error" in reply:
                err = reply["error"]
                raise QMPError(command, err.get("class", "?"), err.get("desc", str(err)))
            return reply.get("return")

    def wait_event(self, name, timeout=None, match=None):
        """Return the first queued or arriving event called `name` (and matching)."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            for ev in list(self.events):
                if ev.get("event") == name and (match is None or match(ev)):
                    self.events.remove(ev)
                    return ev
            try:
                msg = self._read_msg(deadline)
            except QMPTimeout:
                raise QMPTimeout(f"{self.path}: no {name} event in time") from None
            if "event" in msg:
                self.events.append(msg)


    def next_event(self, timeout=None):
        """The next event (queued first), None if none comes within timeout."""
        if self.events:
            return self.events.popleft()
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            try:
                msg = self._read_msg(deadline)
            except QMPTimeout:
                return None
            if "event" in msg:
                return msg


def event_time(ev):
    """An event's "timestamp" ({seconds, microseconds}, QEMU's host clock) as epoch
    seconds; None if it has none."""
    ts = ev.get("timestamp") if ev else None
    if not ts or "seconds" not in ts:
        return None
    return ts["seconds"] + ts.get("microseconds", 0) / 1e6


def get_field(value, path):
    """Dotted path into a QMP result: "ram.transferred", "0.status" for lists."""
    for part in path.split(".") if path else []:
        if isinstance(value, list):
            value = value[int(part)]
        elif isinstance(value, dict) and part in value:
            value = value[part]
        else:
            raise KeyError(path)
    return value


def parse_cmd(line):
    """'COMMAND [JSON-ARGS]' -> (command, args or None); ValueError names the problem."""
    name, _, rest = line.strip().partition(" ")
    if not rest.strip():
        return name, None
    try:
        args = json.loads(rest)
    except ValueError as e:
        raise ValueError(f"{name}: JSON-ARGS is not valid JSON: {e}") from None
    if not isinstance(args, dict):
        raise ValueError(f"{name}: JSON-ARGS must be a JSON object")
    return name, args


def main(argv):
    ap = argparse.ArgumentParser(
        prog=PROG, description="Run one QMP command and print its result as JSON.")
    ap.add_argument("--timeout", type=float, default=10.0,
                    help="seconds to wait for the socket and the reply (default 10)")
    ap.add_argument("--get", metavar="FIELD",
                    help="print only this dotted field of the result (scalars unquoted)")
    ap.add_argument("--batch", action="store_true",
                    help="read 'COMMAND [JSON-ARGS]' lines from stdin, run them in one "
                         "session without delay, print one JSON result per line")
    ap.add_argument("sock", metavar="SOCK", help="QMP unix socket")
    ap.add_argument("command", metavar="COMMAND", nargs="?",
                    help="QMP command, e.g. query-status")
    ap.add_argument("args", metavar="JSON-ARGS", nargs="?", help="arguments, a JSON object")
    opt = ap.parse_args(argv)
    if opt.batch == (opt.command is not None):
        ap.error("give either COMMAND or --batch")
    try:
        cmds = [parse_cmd(ln) for ln in sys.stdin if ln.strip()] if opt.batch else \
            [parse_cmd(opt.command + (" " + opt.args if opt.args else ""))]
    except ValueError as e:
        ap.error(str(e))
    results = []
    try:
        with QMP(opt.sock, timeout=opt.timeout) as q:
            for name, args in cmds:
                results.append(q.execute(name, args))
                if opt.batch:
                    print(json.dumps(results[-1]), flush=True)
    except QMPError as e:
        print(f"{PROG}: {e}", file=sys.stderr)
        return 1
    except QMPConnectionError as e:
        print(f"{PROG}: {cmds[len(results)][0]}: {e}", file=sys.stderr)
        return 3
    if opt.batch:
        return 0
    result = results[0]
    if opt.get is not None:
        try:
            result = get_field(result, opt.get)
        except (KeyError, IndexError, ValueError):
            print(f"{PROG}: {opt.command}: the result has no field '{opt.get}'",
                  file=sys.stderr)
            return 1
        if not isinstance(result, (dict, list)):
            print(str(result).lower() if isinstance(result, bool) else result)
            return 0
    print(json.dumps(result, indent=None if opt.get else 2))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
