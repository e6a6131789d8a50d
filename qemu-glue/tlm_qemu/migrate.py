"""tlm_qemu.migrate — post-copy migration of running test VMs through tlm (the `--mode tlm`
of scripts/migrate-postcopy.sh; see its --help for the user-facing options).

QEMU moves the device state only (x-ignore-shared leaves the share=on RAM file out of its
stream; QEMU refuses postcopy-ram together with it, docs/ARCHITECTURE.md F4) and tlm moves
the guest RAM: tlm-page-server reads it at the source, tlm-uffd-server fills the
destination QEMU's RAM through the userfaultfd that libtlm-glue.so hands over.

Per VM, in this order (the order is what keeps the guest's memory right):
  0. live phase (unless --no-live): right after the page server starts, `live all`: for
     every region whose source QEMU tracks writes (glue TLM_TRACK=1: uffd WP_ASYNC) the
     page server classifies the RAM while the guest runs, then keeps reclassifying the
     pages written since; regions without tracking answer "post-copy: no dirty tracking"
     and are classified at freeze as before. Nothing is placed at a destination before
     freeze, whatever the live phase has done;
  1. destination QEMU started with the glue (-incoming defer); its RAM region reaches
     tlm-uffd-server, which is told to `arm` it: the glue discards the RAM and registers
     it, so the destination can touch no page that the daemon will not fill (this
     overlaps the first live pass);
  2. the daemon connects to the page server (authenticated, VM id and template digest
     checked); during the live phase the page server sends it the live class map and,
     by --policy (hybrid, auto), DATA pages in rounds, which it keeps without placing
     any (protocol/PROTOCOL.md, "Live and fix maps"); demands wait until `freeze`;
  3. switch-over, once the page server says the region is ready (its policy: the live
     map sent; DATA rounds converged or stopped converging; or it has no live phase):
     QMP `migrate` on the source with pause-before-switchover: QEMU sends its own small
     RAM blocks while the guest runs, stops the guest (its STOP event starts the
     downtime) and waits in pre-switchover, its connection warm; `freeze` is sent to
     the page server (it reclassifies only the pages written since the live pass, and
     sends the destination the fix map: which live classes and pre-sent pages stand;
     without a live phase, the whole RAM and map), and while it runs
     `migrate-continue` sends the device state: this overlap is safe because the destination, which starts running as soon as the device
     state is in, faults on every page it touches, and those faults wait at the page
     server until the freeze is done. Then the freeze reply is read; the destination's
     RESUME event ends the downtime (`cont` if it did not start by itself);
     then, once for all VMs, the --after-switch hook (a test's fault injection point);
  4. every page settled (the daemon's region phase "complete": placed, or a TEMPLATE page
     left to the kernel, mapped from the template on touch): guest checks, the source
     QEMU is shut down, the destination becomes the VM's current generation.
  4'. --split instead: the page server holds its background stream for good (--bulk-hold),
     so only the pages the destination faults on move; once it runs and its guest check
     passed it becomes current, the daemons stay as its memory host (split.json in its
     run directory) and this process returns. `--pull NAME` (pull) releases the stream,
     waits for "complete" and ends the migration as 4. does.
A failure before the destination runs stops it and lets the source run on (its RAM was
only read). After that, both QEMUs and the daemons are left as they are for inspection:
the destination's faults wait, they are never answered with a wrong page. A page server
that dies is restarted with the same command line: the regions whose source is stopped
are frozen again, the others start their live phase again.

QMP: one persistent connection per VM and side on qmp-mig.sock (qmp.sock for a VM started
before it existed), open from the destination's start to the end; the switch reacts to
QMP events (STOP, MIGRATION with the "events" capability, RESUME) instead of polling.
Downtime = destination RESUME - source STOP, from the events' timestamps (host clock);
QEMU's own figure is reported beside it (downtime_qemu_ms).
"""

import argparse
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time

from . import cmdline as C
from . import remote as R
from . import report
from . import vm as V
from .qmp import QMP, QMPError, QMPConnectionError, event_time

POLL_S = 0.05
MAX_RESTARTS = 3
REANNOUNCE_S = 15
SPLIT_FILE = "split.json"   # in a split VM's destination run directory (Mig.split)
# Mig.stop_source: from this round trip on, QEMU's own RAM blocks go paced before the stop
# (its rate limiter works in 100 ms windows: 512 KiB/s = 51 KiB per window, 0.2 MB in ~4)
WARM_RTT_US = 2000
WARM_BPS = 512 << 10


class Fail(V.VMError):
    """A migration failure with a one-line reason."""


# ---- daemons ------------------------------------------------------------------------------

def ctl_send(path, line, timeout=30):
    """Send one control-socket command (runtime/ctl.c); the socket, for ctl_reply."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect(path)
        s.sendall(line.encode() + b"\n")
        s.shutdown(socket.SHUT_WR)
    except OSError as e:
        s.close()
        raise Fail(f"control socket {path} ({line.split()[0]}): {e}") from None
    return s


def ctl_reply(s, path, line):
    """The reply to ctl_send's command, until EOF; "error: ..." raises."""
    out = b""
    try:
        while chunk := s.recv(65536):
            out += chunk
    except OSError as e:
        raise Fail(f"control socket {path} ({line.split()[0]}): {e}") from None
    finally:
        s.close()
    text = out.decode(errors="replace").strip()
    if text.startswith("error:"):
        raise Fail(f"{os.path.basename(path)}: {line.split()[0]}: {text[6:].strip()}")
    return text


def ctl(path, line, timeout=30):
    """One control-socket command: a line in, the reply until EOF."""
    return ctl_reply(ctl_send(path, line, timeout), path, line)


def all_region_stats(ctl_path, timeout=30):
    """Every region's stats by VM id, in one `stats` round trip. An empty reply is no
    answer (a forwarded socket whose daemon is not there: remote.py)."""
    text = ctl(ctl_path, "stats", timeout)
    if not text:
        raise Fail(f"control socket {ctl_path} (stats): no reply")
    return {r.get("id"): r for r in json.loads(text).get("regions", [])}


def region_stats(ctl_path, vm_id):
    """The region's stats, None if the daemon does not know it (yet, or any more)."""
    return all_region_stats(ctl_path).get(vm_id)


def wait_phase(ctl_path, vm_id, want, timeout, check=None):
    """Poll the destination daemon until the region's phase is in `want`; a failed
    region raises, and so does check() (the destination QEMU gone)."""
    deadline = time.monotonic() + timeout
    while True:
        r = region_stats(ctl_path, vm_id)
        ph = r and r["phase"]
        if ph in want:
            return r
        if ph == "failed":
            raise Fail(f"{vm_id}: tlm-uffd-server: {r.get('error', 'failed')}")
        if check:
            check()
        if time.monotonic() > deadline:
            raise Fail(f"{vm_id}: region {'not announced' if not r else ph} at "
                       f"tlm-uffd-server after {timeout:g} s (want {'/'.join(want)})")
        time.sleep(POLL_S)


def make_key(work):
    """A new pre-shared key for this run's daemons: WORK/key, 0600; its path."""
    path = os.path.join(work, "key")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_hex(32) + "\n")
    return path


def netns_argv(ns):
    return ["ip", "netns", "exec", ns] if ns else []


class Daemon:
    """A tlm daemon this run started: its own session, log file, control socket."""

    def __init__(self, name, argv, work, ctl_path):
        self.name, self.ctl, self.log = name, ctl_path, os.path.join(work, f"{name}.log")
        self.out = os.path.join(work, f"{name}.out")
        self.argv, self.restarts = argv, 0
        self.spawn("wb")

    def spawn(self, mode):
        with open(self.log, mode) as log, open(self.out, mode) as out:
            self.p = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=out,
                                      stderr=log, start_new_session=True)

    def restart(self):
        """After a crash: the same command line (the glue hands its uffd over again; the
        page server re-attaches to the frozen source)."""
        if self.restarts >= MAX_RESTARTS:
            raise Fail(f"{self.name} died {self.restarts + 1} times: {self.tail()}")
        self.restarts += 1
        log(f"{self.name} exited (status {self.p.returncode}: {self.tail()}); restarting it "
            f"({self.restarts} of {MAX_RESTARTS})")
        self.spawn("ab")
        self.wait_ready()

    def tail(self):
        try:
            with open(self.log, errors="replace") as f:
                lines = [ln.strip() for ln in f if ln.strip()]
            return lines[-1] if lines else "(no output)"
        except OSError:
            return "(no log)"

    def wait_ready(self, timeout=10):
        """Until the control socket answers (and, for the page server, "port N")."""
        deadline = time.monotonic() + timeout
        while True:
            if self.p.poll() is not None:
                raise Fail(f"{self.name} exited at start (status {self.p.returncode}): "
                           f"{self.tail()}")
            try:
                all_region_stats(self.ctl, timeout=2)
                return
            except Fail:
                if time.monotonic() > deadline:
                    raise Fail(f"{self.name} has no control socket after {timeout} s: "
                               f"{self.tail()}") from None
            time.sleep(POLL_S)

    def drop_option(self, opt):
        """Leave `opt VALUE` out of the command line of later restarts."""
        if opt in self.argv:
            i = self.argv.index(opt)
            del self.argv[i:i + 2]

    def drop_flag(self, opt):
        """Leave the flag `opt` out of the command line of later restarts."""
        if opt in self.argv:
            self.argv.remove(opt)

    def port(self):
        with open(self.out) as f:
            for line in f:
                if line.startswith("port "):
                    return int(line.split()[1])
        raise Fail(f"{self.name} printed no port: {self.tail()}")

    def shutdown(self):
        if self.p.poll() is None:
            try:
                ctl(self.ctl, "shutdown", timeout=5)
                self.p.wait(10)
            except (Fail, subprocess.TimeoutExpired):
                self.p.kill()
                self.p.wait()


class Adopted:
    """A daemon a split migration left running (split.json), by pid and control socket:
    enough of Popen for Daemon.shutdown. Its process is not our child (the migration that
    started it has exited): it is alive while /proc/PID names its control socket."""

    def __init__(self, pid, ctl_path):
        self.pid, self.ctl_path = pid, ctl_path

    def poll(self):
        try:
            with open(f"/proc/{self.pid}/cmdline", "rb") as f:
                return None if self.ctl_path.encode() in f.read() else 0
        except OSError:
            return 0

    def wait(self, timeout=None):
        deadline = time.monotonic() + (timeout if timeout is not None else 1e9)
        while self.poll() is None:
            if time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(str(self.pid), timeout)
            time.sleep(POLL_S)
        return 0

    def kill(self):
        if self.poll() is None:
            os.kill(self.pid, signal.SIGKILL)

    @staticmethod
    def daemon(name, pid, ctl_path):
        d = Daemon.__new__(Daemon)
        d.name, d.ctl, d.p = name, ctl_path, Adopted(pid, ctl_path)
        return d


# ---- one VM ---------------------------------------------------------------------------------

class Mig:
    """One VM's migration. phase: new -> prepared (destination started) -> armed ->
    stopped (source paused: switch-over under way) -> switched (destination runs) ->
    complete (every page settled) -> done (checked, source gone)."""

    def __init__(self, arg, opt):
        self.src = V.resolve(arg)
        if not V.alive(self.src):
            raise Fail(f"{arg}: QEMU is not running")
        self.name, self.opt, self.phase = self.src["name"], opt, "new"
        if os.path.exists(os.path.join(self.src["dir"], SPLIT_FILE)):
            # part of its RAM is still at a memory host: one at a time (README, Split)
            raise Fail(f"{self.name} is split: part of its RAM is at a memory host; "
                       f"`migrate-postcopy.sh --pull {self.name}` first")
        if self.src.get("foreign"):     # hugetlbfs passed the stock modes, not tlm's
            try:
                C.check_ram_fs(self.src["ram_file"], "tlm")
            except C.Refused as e:
                raise Fail(f"{self.name}: {e}") from None
        self.dst = None
        self.conn = {}              # side -> persistent QMP connection (qmp-mig.sock)
        self.lost = None            # since when the daemon does not know the region
        self.sum_before = self.sum_after = self.tick = None
        self.t = {}
        self.ev = {}                # event timestamps: stop (source), resume (destination)
        self.live = None            # the page server's "live" stats after the freeze
        self.src_stats = {}         # the page server's region stats once complete
        self.migrate_sent = False   # QMP migrate issued (QEMU's stream is open)
        self.continued = False      # migrate-continue issued (the device state is going)
        self.bandwidth = None       # QEMU's max-bandwidth to restore before the continue
        self.live_said = None       # its reply to `live`
        self.tmpl_src = self.tmpl_dst = None
        self.region = {}
        self.spec = self.region_spec()
        # guest checks read every page: ~10 s for 2 GiB under TCG on an idle machine
        self.guest_timeout = 30 + self.src["mem_mib"] / 16
        # the test guest's checksum, the operator's --check-cmd, or none (a foreign VM)
        self.check_cmd = opt.check_cmd if opt.check else None
        if opt.check and V.check_kind(self.src, self.check_cmd) is None:
            log(V.no_check_note(self.src))

    # ---- QMP: one persistent connection per side --------------------------------------

    def open_qmp(self, side):
        """Connect to the side's qmp-mig.sock (or qmp.sock, for a VM started before it
        existed) and keep the connection for every later command and event."""
        cfg = self.src if side == "src" else self.dst
        try:
            self.conn[side] = QMP(V.mig_qmp_path(cfg), timeout=30)
        except (QMPError, QMPConnectionError) as e:
            raise Fail(f"{self.name}: {side} QMP: {e}") from None

    def close_qmp(self, side=None):
        for sd in [side] if side else list(self.conn):
            q = self.conn.pop(sd, None)
            if q:
                q.close()

    def qmp(self, side, cmd, args=None, timeout=30):
        q = self.conn.get(side)
        try:
            if q:
                return q.execute(cmd, args, timeout=timeout)
            cfg = self.src if side == "src" else self.dst
            with QMP(os.path.join(cfg["dir"], "qmp.sock"), timeout=timeout) as q:
                return q.execute(cmd, args)
        except (QMPError, QMPConnectionError) as e:
            raise Fail(f"{self.name}: {side} QMP {cmd}: {e}") from None

    def event(self, side, name, timeout, match=None):
        try:
            return self.conn[side].wait_event(name, timeout=timeout, match=match)
        except QMPConnectionError as e:
            raise Fail(f"{self.name}: {side} QMP: waiting for {name}: {e}") from None

    def migration_event(self, side, want, timeout):
        """The side's MIGRATION event with a status in want; failed/cancelled raise."""
        ev = self.event(side, "MIGRATION", timeout, lambda e: e.get("data", {}).get(
            "status") in set(want) | {"failed", "cancelled"})
        st = ev["data"]["status"]
        if st not in want:
            try:
                why = self.qmp(side, "query-migrate").get("error-desc", "no reason given")
            except Fail as e:
                why = str(e)
            raise Fail(f"{self.name}: migration {st} ({side}): {why}")
        return ev

    # ---- the source's region ----------------------------------------------------------

    def region_spec(self):
        """Where the source guest RAM is, as a tlm-page-server --region SPEC."""
        info = self.src.get("env", {}).get("TLM_REGION_FILE")
        if info:
            # The glue's line: base=0x.. size=N offset=N template=PATH|-
            # [mapping=private|shared track=wp-async|none] (older glues: no mapping=,
            # the mapping is private).
            try:
                with open(info) as f:
                    kv = dict(w.split("=", 1) for w in f.read().split())
                kv["base"], kv["size"]
            except (OSError, ValueError, KeyError) as e:
                raise Fail(f"{self.name}: no region description from the glue ({info}: "
                           f"{e})") from None
            self.region = kv
            if kv.get("mapping", "private") == "private":
                # The glue replaced the RAM file mapping by a private one: read the
                # process (its writes are tracked there if track=wp-async).
                spec = f"{self.name},pid={self.src['pid']},addr={kv['base']},size={kv['size']}"
            elif kv.get("track") == "wp-async":
                # The RAM file is still the guest RAM; the process's mapping of it is
                # write-tracked: read the file, track the mapping.
                spec = (f"{self.name},file={self.src['ram_file']},pid={self.src['pid']},"
                        f"addr={kv['base']}")
            else:
                spec = f"{self.name},file={self.src['ram_file']}"
            if kv.get("template", "-") != "-":
                self.tmpl_src = kv["template"]
        else:
            # Plain share=on RAM file: the file is the guest RAM.
            spec = f"{self.name},file={self.src['ram_file']}"
        if self.tmpl_src:
            self.tmpl_dst = self.opt.dst_template or self.tmpl_src
            spec += f",template={self.tmpl_src}"
        return spec

    # ---- preparation --------------------------------------------------------------------

    def start_dst(self, sock, source):
        env = {"LD_PRELOAD": self.opt.glue, "TLM_RAM_PATH": "{ram_file}", "TLM_SOCK": sock,
               "TLM_VM_ID": self.name, "TLM_ARM": "deferred", "TLM_SOURCE": source,
               "TLM_REGION_FILE": "{dir}/region"}
        if self.tmpl_dst:
            env["TLM_TEMPLATE"] = self.tmpl_dst
        if self.src.get("env", {}).get("TLM_TRACK") == "1":
            # tracked at the destination too, once every page is there (the glue
            # registers on DONE): the VM can leave with a live phase again
            env["TLM_TRACK"] = "1"
        argv = [sys.executable, "-m", "tlm_qemu.vm", "start",
                self.name, "--like", self.src["dir"], "--incoming", "defer", "--no-link"]
        if self.opt.dst_netns:
            argv += ["--netns", self.opt.dst_netns]
        if self.opt.dst_cmdline:
            argv += ["--cmdline", self.opt.dst_cmdline]
        for k, v in env.items():
            argv += ["--env", f"{k}={v}"]
        self.open_qmp("src")
        r = self.opt.dsthost.run_vm(argv)
        if r.returncode:
            raise Fail(f"{self.name}: the destination QEMU did not start: "
                       f"{r.stderr.strip().removeprefix(V.PROG + ': error: ')}")
        self.dst = self.opt.dsthost.resolve(r.stdout.strip())
        self.phase = "prepared"
        self.open_qmp("dst")

    def wait_region(self, ctl_path, want, timeout=15):
        """Poll the destination daemon until the region's phase is in `want`."""
        def dst_alive():
            if not self.opt.dsthost.alive(self.dst):
                raise Fail(f"{self.name}: the destination QEMU exited: "
                           f"{self.opt.dsthost.log_tail(self.dst)}")
        return wait_phase(ctl_path, self.name, want, timeout, dst_alive)

    def arm(self, ctl_path):
        self.wait_region(ctl_path, ("waiting_uffd",))
        ctl(ctl_path, f"arm {self.name}")
        # connected and authenticated: the class map comes after freeze
        self.wait_region(ctl_path, ("mapping", "fetching", "complete"))
        self.phase = "armed"

    def set_caps(self):
        caps = {"capabilities": [{"capability": "x-ignore-shared", "state": True},
                                 {"capability": "postcopy-ram", "state": False},
                                 {"capability": "events", "state": True}]}
        self.qmp("dst", "migrate-set-capabilities", caps)
        # the source pauses before the switch-over (stop_source): QEMU's own stream
        # warms up while the guest still runs
        caps["capabilities"].append({"capability": "pause-before-switchover", "state": True})
        self.qmp("src", "migrate-set-capabilities", caps)
        # QEMU stops the guest once what it still has to send fits its downtime limit
        # (300 ms of the link: tens of MB); at 1 ms its small RAM blocks go while the
        # guest runs, and the device state alone follows the stop
        self.qmp("src", "migrate-set-parameters", {"downtime-limit": 1})
        port = self.opt.dst_port + self.index if self.opt.dst_port else 0
        self.qmp("dst", "migrate-incoming", {"uri": f"tcp:{self.opt.dst_addr}:{port}"})
        self.port = self.qmp("dst", "query-migrate")["socket-address"][0]["port"]

    def live_state(self, stats):
        """(done, why) from the page server's stats: done = the switch-over may start
        (the first live pass is over, or the region has no live phase)."""
        r = stats.get(self.name)
        lv = r and r.get("live")
        if not isinstance(lv, dict):
            return True, "no live phase (the page server reports none)"
        if lv.get("method", "none") == "none":
            return True, f"no live phase: {lv.get('why') or 'no dirty tracking'}"
        if "ready" in lv:       # the page server's switch policy decides
            why = lv.get("ready_why") or ("ready" if lv["ready"] else "not ready")
            return bool(lv["ready"]), f"live ({lv['method']}, {lv.get('policy')}): {why}"
        if lv.get("pass_done"):
            return True, (f"live ({lv['method']}): first pass done, {lv.get('rounds', 0)} "
                          f"rounds, {lv.get('dirty_last', 0)} pages dirty in the last")
        return False, (f"live ({lv['method']}): first pass under way, "
                       f"{lv.get('classified', 0)} pages classified")

    # ---- switch-over ----------------------------------------------------------------------

    def stop_source(self, rtt_us=0):
        """QMP `migrate` with pause-before-switchover: QEMU copies what it still carries
        (its own small RAM blocks: firmware, option ROMs; the guest RAM is shared and
        left out) while the guest runs, stops the guest itself (its STOP event starts
        the downtime) and waits in pre-switchover. QEMU stops as soon as it has written
        those 0.2 MB into its socket; over a slow link they then crawl through TCP slow
        start after the stop (docs/ARCHITECTURE.md F24). Where the page server's bulk
        session measures a round trip of WARM_RTT_US or more, QEMU's bandwidth is held
        at WARM_BPS until the stop, so that they go in bursts over ~0.3 s while the guest
        runs, and the device state follows on a warm connection (WAN downtime 117-138 ->
        51-85 ms); it is restored before `migrate-continue`."""
        self.conn["src"].events.clear()     # only this stop's STOP counts
        self.t["stop"] = time.time()
        self.continued = False
        self.bandwidth = None
        if rtt_us >= WARM_RTT_US:
            params = self.qmp("src", "query-migrate-parameters")
            self.bandwidth = params.get("max-bandwidth")
            self.qmp("src", "migrate-set-parameters", {"max-bandwidth": WARM_BPS})
        self.send_migrate()
        self.phase = "stopped"              # undo cancels the migration from here on
        ev = self.event("src", "STOP", 60)
        self.ev["stop"] = event_time(ev) or self.t["stop"]
        self.migration_event("src", ("pre-switchover",), 30)

    def switch(self, ps_ctl):
        """freeze (the page server reclassifies what was written since the live pass)
        with the device state going over QEMU's stream meanwhile (`migrate-continue`;
        RAM left out): the destination's faults wait at the page server until the freeze
        is done."""
        self.t["freeze"] = time.time()
        s = ctl_send(ps_ctl, f"freeze {self.name}", timeout=max(60, self.opt.timeout))
        try:
            self.continue_migrate()
        except Fail:
            s.close()
            raise
        ctl_reply(s, ps_ctl, f"freeze {self.name}")
        self.t["frozen"] = time.time()

    def continue_migrate(self):
        """The source leaves pre-switchover: the device state goes (at full speed)."""
        if self.bandwidth:
            self.qmp("src", "migrate-set-parameters", {"max-bandwidth": self.bandwidth})
        self.qmp("src", "migrate-continue", {"state": "pre-switchover"})
        self.continued = True

    def send_migrate(self):
        """QMP `migrate` on the source: the device state goes (the RAM is left out)."""
        self.qmp("src", "migrate", {"uri": f"tcp:{self.opt.dst_addr}:{self.port}"})
        self.migrate_sent = True

    def resume_dst(self):
        """Until the destination runs: MIGRATION completed on both sides, then its RESUME
        event (`cont` if it did not start by itself)."""
        ev = self.migration_event("src", ("completed",), 60)
        self.ev["src_completed"] = event_time(ev) or time.time()
        ev = self.migration_event("dst", ("completed",), 30)
        self.ev["dst_completed"] = event_time(ev) or time.time()
        self.mig = self.qmp("src", "query-migrate")
        if self.qmp("dst", "query-status")["status"] != "running":
            self.qmp("dst", "cont")
        ev = self.event("dst", "RESUME", 30)
        self.t["running"] = time.time()
        self.ev["resume"] = event_time(ev) or self.t["running"]
        self.phase = "switched"

    def poll_complete(self, regions):
        """regions: all_region_stats() of the destination daemon."""
        r = regions.get(self.name)
        if r is None:       # a restarted daemon: the glue announces the region again
            self.lost = self.lost or time.monotonic()
            if time.monotonic() - self.lost > REANNOUNCE_S:
                raise Fail(f"{self.name}: tlm-uffd-server lost the region (not announced "
                           f"again in {REANNOUNCE_S} s)")
            return {"pages": {"present": 0, "template_left": 0, "total": 0}}
        self.lost = None
        if r["phase"] == "failed":
            raise Fail(f"{self.name}: tlm-uffd-server: {r.get('error', 'failed')} (the "
                       "destination is left paused on its faults)")
        if r["phase"] == "complete" and self.phase == "switched":
            self.t["complete"] = time.time()
            self.phase = "complete"
            self.stats = r
        return r

    def check_guest(self):
        """Runs at the destination, TICKs, same checksum, no bad page, time went on."""
        if self.qmp("dst", "query-status")["status"] != "running":
            raise Fail(f"{self.name}: the destination is not running")
        if not self.opt.check:
            return
        self.sum_after = V.guest_check(self.dst, "after", self.check_cmd, self.sum_before,
                                       self.guest_timeout, ticks=self.opt.dsthost.wait_ticks)

    def release_dst(self):
        """The destination checked and on its own: x-ignore-shared off again (the RAM
        comes by tlm, into a private mapping; the RAM file is the glue's stub), so that a
        later stock migration or savevm of this VM takes its RAM from the process."""
        self.check_guest()
        self.qmp("dst", "migrate-set-capabilities", {"capabilities": [
            {"capability": "x-ignore-shared", "state": False}]})
        self.close_qmp()

    def finish(self):
        self.release_dst()
        V.stop(self.src)
        self.opt.dsthost.link(self.dst)
        self.phase = "done"

    def split(self, run):
        """--split: the destination runs and is checked while pages are still missing (the
        page server holds its background stream); it becomes the VM's current generation
        and the page server stays as its memory host until `--pull`. A file source's RAM
        stays mapped by the page server (src_region.c maps it at start), so its QEMU goes;
        a pid source's QEMU is that memory and stays, paused. What `pull` needs is written
        to the destination's run directory (split.json)."""
        self.release_dst()
        keep_src = ",pid=" in f",{self.spec}"
        if not keep_src:
            V.stop(self.src)
        self.opt.dsthost.link(self.dst)
        self.stats = region_stats(run.dst_ctl, self.name) or {}
        state = {"name": self.name, "work": run.work, "t_resume": self.ev["resume"],
                 "ps": {"pid": run.ps.p.pid, "ctl": run.ps.ctl},
                 "ud": {"pid": run.ud.p.pid, "ctl": run.ud.ctl} if run.ud else None,
                 "dst_ctl": run.dst_ctl, "src_dir": self.src["dir"] if keep_src else None}
        with open(os.path.join(self.dst["dir"], SPLIT_FILE), "w") as f:
            json.dump(state, f, indent=2)
            f.write("\n")
        self.phase = "split"

    def undo(self):
        """After a failure: what can be undone is undone; says what was left."""
        if self.phase in ("prepared", "armed", "stopped") and self.dst:
            if self.phase == "stopped":
                try:
                    self.qmp("src", "migrate_cancel")
                except Fail:
                    pass
            self.close_qmp("dst")
            self.opt.dsthost.stop(self.dst)
            if self.phase == "stopped" and \
               self.qmp("src", "query-status")["status"] in ("paused", "postmigrate"):
                self.qmp("src", "cont")
            log(f"{self.name}: migration abandoned before the switch; the source keeps "
                "running")
        elif self.phase in ("switched", "complete"):
            log(f"{self.name}: failed after the switch: source {self.src['dir']} and "
                f"destination {self.dst.get('remote_dir', self.dst['dir'])} left as they "
                "are (the destination's faults wait for tlm-uffd-server)")
        self.close_qmp()


def log(msg):
    print(f"migrate-postcopy.sh: {msg}", file=sys.stderr)


# ---- the run ------------------------------------------------------------------------------

class Run:
    def __init__(self, opt):
        self.opt = opt
        self.work = opt.work
        self.ps = self.ud = None
        self.live = False
        self.migs = [Mig(a, opt) for a in opt.vms]
        for i, m in enumerate(self.migs):
            m.index = i
        names = [m.name for m in self.migs]
        if len(set(names)) != len(names):
            raise Fail(f"a VM is named twice: {' '.join(names)}")
        self.key = opt.key or make_key(self.work)
        self.dst_ctl = opt.dst_ctl or os.path.join(self.work, "dst", "ctl.sock")
        self.dst_sock = opt.dst_sock or os.path.join(self.work, "dst", "glue.sock")
        if opt.dsthost.remote:      # paths on the destination host; its ctl forwarded here
            self.dst_key = opt.dst_key or opt.key or opt.dsthost.copy_key(self.key)
            self.dst_sock = opt.dst_sock or opt.dsthost.glue_sock()
            self.dst_ctl = opt.dsthost.forward_ctl(
                opt.dst_ctl or f"{opt.dsthost.rwork}/ctl.sock")

    def start_page_server(self):
        argv = netns_argv(self.opt.src_netns) + [
            os.path.join(self.opt.bin_dir, "tlm-page-server"),
            "--listen", f"{self.opt.src_addr}:{self.opt.src_port}", "--key", self.key,
            "--ctl", os.path.join(self.work, "src", "ctl.sock"),
            "--log-level", self.opt.log_level]
        for m in self.migs:
            argv += ["--region", m.spec]
        if self.opt.bulk_delay is not None:
            argv += ["--bulk-delay", str(self.opt.bulk_delay)]
        if self.opt.after_switch or self.opt.split:
            # no DATA on bulk until the hook has run (after_switch) or `pull` (split)
            argv += ["--bulk-hold"]
        if self.opt.live_rate is not None:
            argv += ["--live-rate", str(self.opt.live_rate)]
        if self.opt.policy:
            argv += ["--policy", self.opt.policy]
        argv += ["--tls", self.opt.tls]
        self.ps = Daemon("tlm-page-server", argv, self.work,
                         os.path.join(self.work, "src", "ctl.sock"))
        self.ps.wait_ready()
        self.ps.drop_option("--bulk-delay")     # a restarted page server streams at once
        self.ps.drop_flag("--bulk-hold")
        listen = f"{self.opt.src_addr}:{self.ps.port()}"
        self.ps.argv[self.ps.argv.index("--listen") + 1] = listen   # same port on restart
        self.source = self.opt.src_reach or listen

    def start_uffd_server(self):
        if self.opt.dst_ctl:        # the operator's daemon: it must answer
            try:
                all_region_stats(self.dst_ctl, timeout=5)
            except Fail as e:
                raise Fail(f"tlm-uffd-server is not running at {self.dst_ctl}: {e}") from None
            return
        templates = sorted({m.tmpl_dst for m in self.migs if m.tmpl_dst})
        if self.opt.dsthost.remote:
            argv = self.opt.dsthost.uffd_server_argv(self.dst_key, self.source, templates,
                                                     self.opt.log_level, self.opt.tls)
        else:
            argv = netns_argv(self.opt.dst_netns) + [
                os.path.join(self.opt.bin_dir, "tlm-uffd-server"),
                "--sock", self.dst_sock, "--ctl", self.dst_ctl, "--key", self.key,
                "--source", self.source, "--log-level", self.opt.log_level,
                "--tls", self.opt.tls]
            for t in templates:
                argv += ["--template", t]
        self.ud = Daemon("tlm-uffd-server", argv, self.work, self.dst_ctl)
        self.ud.wait_ready()

    def each(self, fn, *args):
        for m in self.migs:
            fn(m, *args)

    def wait_complete(self):
        deadline = time.monotonic() + self.opt.timeout
        t0 = min(m.t["stop"] for m in self.migs)
        trace = open(self.opt.trace, "a") if self.opt.trace else None
        try:
            while any(m.phase == "switched" for m in self.migs):
                now = time.time()
                try:
                    regions = all_region_stats(self.dst_ctl)
                    samples = [(m, m.poll_complete(regions)) for m in self.migs]
                except Fail:
                    if self.watch_daemons():        # it died while we asked
                        continue
                    raise
                self.watch_daemons()
                for m, r in samples if trace else ():
                    trace.write(f"tlm,{m.name},{now - t0:.3f},{settled(r['pages'])},"
                                f"{r['pages']['total']}\n")
                if time.monotonic() > deadline:
                    left = [m.name for m in self.migs if m.phase == "switched"]
                    raise Fail(f"{' '.join(left)}: not every page present after "
                               f"{self.opt.timeout} s")
                time.sleep(POLL_S if not trace else 0.1)
        finally:
            if trace:
                trace.close()
        self.read_src_stats()

    def read_src_stats(self):
        """The page server's view of each region once complete (its bulk pacing)."""
        try:
            regions = all_region_stats(self.ps.ctl)
        except Fail:
            return
        for m in self.migs:
            m.src_stats = regions.get(m.name, {})

    def hook(self, opt_name, cmd):
        """Run a test hook `sh -c CMD`, its stdout to our stderr, with the daemons in its
        environment (TLM_PAGE_SERVER_PID, TLM_PAGE_SERVER_CTL, TLM_UFFD_SERVER_PID (empty:
        not ours), TLM_UFFD_SERVER_CTL), the work directory (TLM_MIGRATE_WORK) and the VM
        names (TLM_MIGRATE_VMS). A daemon it kills is restarted afterwards; a non-zero exit
        fails the migration."""
        env = dict(os.environ, TLM_MIGRATE_WORK=self.work,
                   TLM_MIGRATE_VMS=" ".join(m.name for m in self.migs),
                   TLM_PAGE_SERVER_PID=str(self.ps.p.pid), TLM_PAGE_SERVER_CTL=self.ps.ctl,
                   TLM_UFFD_SERVER_PID=str(self.ud.p.pid) if self.ud else "",
                   TLM_UFFD_SERVER_CTL=self.dst_ctl)
        try:
            r = subprocess.run(["/bin/sh", "-c", cmd], env=env,
                               stdin=subprocess.DEVNULL, stdout=sys.stderr)
        except OSError as e:
            raise Fail(f"{opt_name}: {e}") from None
        if r.returncode:
            raise Fail(f"the {opt_name} command exited with status {r.returncode}")

    def before_stop(self):
        """--before-stop CMD: run once the destinations are armed and the live phase
        runs, before any source is stopped (a test's fault injection point: a page server
        killed here is restarted and starts the live phase again)."""
        if self.opt.before_stop:
            self.hook("--before-stop", self.opt.before_stop)

    def after_switch(self):
        """--after-switch CMD: run once every destination runs on its faults and before
        any completion is looked at (the caller's fault injection point). Pages are still
        missing while it runs: the page server holds its background stream (--bulk-hold)
        until the hook returns, so DATA moves only as the guest demands it (a restarted
        page server streams at once); a non-zero exit fails the migration (both sides
        left as they are)."""
        if not self.opt.after_switch:
            return
        self.hook("--after-switch", self.opt.after_switch)
        if self.ps.p.poll() is None and not self.opt.split:
            ctl(self.ps.ctl, "bulk-release all")

    def switch(self, m):
        """m's freeze and device state (Mig.switch). --before-freeze CMD runs first (a
        test's fault injection point). A page server that dies before or during the
        freeze is restarted, and the restarted one freezes m (reattach: its source is
        stopped, so every page is classified anew); the device state then goes if it had
        not gone yet."""
        if self.opt.before_freeze:
            self.hook("--before-freeze", self.opt.before_freeze)
        try:
            m.switch(self.ps.ctl)
        except Fail as e:
            if not self.watch_daemons():
                raise
            log(f"{m.name}: the freeze failed ({e}); the restarted page server froze it")
            if not m.continued:
                m.continue_migrate()
            m.t["frozen"] = time.time()

    def watch_daemons(self):
        """Restart a daemon of this run that died; True if one did."""
        dead = [d for d in (self.ps, self.ud) if d and d.p.poll() is not None]
        for d in dead:
            d.restart()
            if d is self.ps:
                self.reattach()
        return bool(dead)

    def reattach(self):
        """A restarted page server has every region in phase configured: the regions
        whose source is stopped are frozen again (their QEMU is paused, nothing changes),
        the others start their live phase again."""
        for m in self.migs:
            if m.phase in ("stopped", "switched", "complete"):
                ctl(self.ps.ctl, f"freeze {m.name}")
            elif self.live:
                self.start_live(m.name)

    def start_live(self, which="all"):
        """`live ID|all`: the page server classifies while the guests run (where their
        QEMU tracks writes). An older page server without it: no live phase."""
        try:
            reply = ctl(self.ps.ctl, f"live {which}")
        except Fail as e:
            if "unknown command" in str(e):
                log(f"tlm-page-server has no live phase ({e}): classification after the "
                    "stop")
                self.live = False
                for m in self.migs:
                    m.live_said = "tlm-page-server has no live phase"
                return
            # A region whose live phase failed to start is classified at freeze (its
            # stats say method none): not a reason to give up the migration.
            log(f"live {which}: {e}")
            reply = str(e).split(": live: ", 1)[-1]
        # one line per region: "ID live: METHOD (why)" | "ID post-copy: no dirty tracking
        # (why)"
        for line in reply.splitlines():
            if line.strip():
                log(f"tlm-page-server: {line.strip()}")
                name, _, said = line.strip().partition(" ")
                for m in self.migs:
                    if m.name == name:
                        m.live_said = said
        self.live = True

    def wait_live(self, m):
        """Before m's source stops: until its first live pass is done (or it has none),
        restarting a page server that dies meanwhile; bounded by --timeout (then the
        freeze classifies what the pass had not reached)."""
        if not self.live:
            return
        deadline = time.monotonic() + self.opt.timeout
        t0, why = time.time(), None
        while True:
            try:
                done, why = m.live_state(all_region_stats(self.ps.ctl))
            except Fail:
                if self.watch_daemons():
                    continue
                raise
            if done:
                break
            self.watch_daemons()
            if time.monotonic() > deadline:
                log(f"{m.name}: first live pass not done after {self.opt.timeout:g} s "
                    f"({why}); stopping the source anyway")
                break
            time.sleep(0.1)
        m.t["live_wait_s"] = round(time.time() - t0, 3)
        log(f"{m.name}: {why} (waited {m.t['live_wait_s']:.1f} s)")

    def bulk_rtt_us(self, m):
        """The round trip the page server measures on m's bulk session (0: unknown)."""
        try:
            return int(all_region_stats(self.ps.ctl).get(m.name, {}).get("bulk_rtt_us") or 0)
        except (Fail, ValueError):
            return 0

    def live_stats(self, m):
        """The page server's live figures of m after its freeze."""
        try:
            r = all_region_stats(self.ps.ctl).get(m.name) or {}
        except Fail:
            return
        if isinstance(r.get("live"), dict):
            m.live = r["live"]

    def migrate(self):
        self.t0 = time.time()       # total_s of every VM counts from here
        self.start_page_server()
        if self.opt.live:
            self.start_live()       # the first pass overlaps everything up to the stop
        for m in self.migs if not self.opt.live else ():
            m.live_said = "--no-live"
        self.start_uffd_server()
        for m in self.migs:
            m.sum_before = V.guest_check(m.src, "before", m.check_cmd, None,
                                         m.guest_timeout) if self.opt.check else None
        self.each(Mig.start_dst, self.dst_sock, self.source)
        self.each(Mig.arm, self.dst_ctl)
        self.each(Mig.set_caps)
        self.before_stop()
        for m in self.migs:     # one switch-over after the other: each VM's downtime is its own
            self.wait_live(m)
            self.watch_daemons()
            m.stop_source(self.bulk_rtt_us(m))
            self.switch(m)
            m.resume_dst()
            self.live_stats(m)
        self.after_switch()
        if self.opt.split:
            self.each(Mig.split, self)
            return
        self.wait_complete()
        self.each(Mig.finish)

    def cleanup(self, ok):
        left = False
        if all(m.phase == "split" for m in self.migs):
            return True     # the daemons stay: the memory hosts until `pull`
        for m in self.migs:
            if m.phase != "done":
                try:
                    m.undo()
                except (V.VMError, QMPError, QMPConnectionError) as e:
                    log(f"{m.name}: undo: {e}")
                left |= m.phase in ("switched", "complete", "split")
        if left:
            log(f"daemons left running for the destination: tlm-page-server ctl "
                f"{self.ps.ctl if self.ps else '-'}, tlm-uffd-server ctl {self.dst_ctl}; "
                f"logs in {self.work}")
            return False
        for d in (self.ps, self.ud):
            if d:
                d.shutdown()
        return True


# ---- report and command line ------------------------------------------------------------

def switch_timeline(m):
    """Where the downtime went: ms after the source's STOP event at which the freeze
    reply came, the destination daemon had the final class map (whole or fix), QEMU's
    stream completed at the source and at the destination, and the destination resumed
    (host clock; events carry QEMU's timestamps)."""
    t0 = m.ev["stop"]
    dst_map = (m.stats or {}).get("map_received_wall") or None
    at = {"frozen": m.t.get("frozen"), "dst_map": dst_map,
          "src_completed": m.ev.get("src_completed"),
          "dst_completed": m.ev.get("dst_completed"), "resume": m.ev.get("resume")}
    return {k: round((v - t0) * 1000, 1) for k, v in at.items() if v}


def settled(pages):
    """Pages of a region the destination needs nothing more for: placed, or TEMPLATE
    pages left to the kernel (mapped from the template's page cache on first touch)."""
    return pages["present"] + pages.get("template_left", 0)


def tlm_row(m):
    s, lat = m.stats, m.stats["latency_demand"]
    cls = s["classes"]
    lv = m.live or {}
    ps = lv.get("presend") if isinstance(lv.get("presend"), dict) else {}
    return {"vm": m.name, "mode": "tlm", "time_s": round(m.t["complete"] - m.ev["stop"], 3),
            "downtime_ms": round((m.ev["resume"] - m.ev["stop"]) * 1000, 1),
            "downtime_qemu_ms": m.mig.get("downtime"),
            "freeze_ms": round((m.t["frozen"] - m.t["freeze"]) * 1000, 1),
            "switch_ms": switch_timeline(m),
            "live_method": lv.get("method", "none"),
            "live_why": lv.get("why") or m.live_said,
            "live_wait_s": m.t.get("live_wait_s"),
            "final_dirty": lv.get("final_dirty"), "final_ms": lv.get("final_ms"),
            "redone": lv.get("redone"), "live_rounds": lv.get("rounds"),
            "policy": lv.get("policy"), "ready_why": lv.get("ready_why"),
            "presend_rounds": ps.get("round"), "presend_bytes": lv.get("presend_bytes", 0),
            "resent_bytes": (ps.get("resent", 0) + lv.get("invalid_at_freeze", 0)) * 4096,
            "valid_at_freeze": lv.get("valid_at_freeze"),
            "post_window_s": round(m.t["complete"] - m.ev["resume"], 3),
            "map": s.get("map"), "stage": s.get("stage"),
            # the destination daemon's clock, ms after it got the region: where the
            # post-copy window goes
            "dst_ms": {k: s.get(k) for k in ("elapsed_ms", "fix_map_received_ms",
                                             "map_applied_ms", "done_ms")},
            "qemu_bytes": m.mig.get("ram", {}).get("transferred"),
            # of which after the stop (QEMU 7.1+): its RAM blocks should have gone before
            "qemu_downtime_bytes": m.mig.get("ram", {}).get("downtime-bytes"),
            "qemu_stop_ms": round((m.ev["stop"] - m.t["stop"]) * 1000, 1),
            "qemu_warmup": bool(m.bandwidth),
            "tlm_bytes": s["wire"]["in_bytes"] + s["wire"]["out_bytes"],
            "tlm_payload_bytes": s["wire"]["payload_bytes"],
            "pages": {k: cls[k] for k in ("template", "zero", "ref", "data")},
            "template_left": s["pages"].get("template_left", 0),
            # ZERO (or zero TEMPLATE) pages the page server found in holes of the RAM
            # file, not read: never written, or freed by the guest (free page reporting)
            "zero_holes": (m.src_stats.get("pages") or {}).get("zero_holes"),
            "bulk_pace": m.src_stats.get("bulk_pace"),
            "bulk_pace_mbps": round(m.src_stats.get("bulk_pace_bps", 0)
                                    * 8 / 1e6, 1),
            "demand_faults": lat["count"], "fault_p50_us": lat["p50_us"],
            "fault_p99_us": lat["p99_us"], "faults": s["faults"],
            "dst_pss_kb": m.opt.dsthost.pss(m.dst)["pss_kb"],
            "checksum": m.sum_after or "not checked"}


def split_row(m):
    s = m.stats
    lat, pages = s.get("latency_demand") or {}, s.get("pages") or {}
    return {"vm": m.name, "mode": "tlm-split", "phase": s.get("phase"),
            "downtime_ms": round((m.ev["resume"] - m.ev["stop"]) * 1000, 1),
            "pages_settled": settled(pages) if pages else None,
            "pages_total": pages.get("total"), "demand_faults": lat.get("count"),
            "fault_p50_us": lat.get("p50_us"), "fault_p90_us": lat.get("p90_us"),
            "fault_p99_us": lat.get("p99_us"), "fault_max_us": lat.get("max_us"),
            "fault_mean_us": lat.get("mean_us"), "memory_host": s.get("source"), "checksum": m.sum_after or "not checked",
            "split_file": os.path.join(m.dst["dir"], SPLIT_FILE)}


def split_report(migs, json_out):
    """One line per split VM: what is still at the memory host and how to pull it."""
    rows = [split_row(m) for m in migs]
    for r in rows:
        print(f"{r['vm']}: split: runs at the destination with {r['pages_settled']} of "
              f"{r['pages_total']} pages, the rest at tlm-page-server; downtime "
              f"{r['downtime_ms']} ms; {r['demand_faults']} remote faults, p50 "
              f"{r['fault_p50_us']} us, p90 {r['fault_p90_us']} us, p99 "
              f"{r['fault_p99_us']} us, max {r['fault_max_us']} us; checksum "
              f"{r['checksum']}")
        print(f"{r['vm']}: pull the rest with: scripts/migrate-postcopy.sh --pull {r['vm']}")
    if json_out:
        with open(json_out, "w") as f:
            json.dump({"mode": "tlm-split", "vms": rows}, f, indent=2)
            f.write("\n")
    return 0


def pull(argv):
    """`--pull NAME`: the rest of a split VM's RAM (Mig.split). The page server's held
    stream is released, every page settles at the destination, and the migration ends as
    an unsplit one does: the source QEMU (a pid source) stops, and so do the daemons."""
    ap = argparse.ArgumentParser(prog="migrate-postcopy.sh --pull")
    ap.add_argument("name", metavar="NAME")
    ap.add_argument("--timeout", type=float, default=300)
    opt = ap.parse_args(argv)
    dst = V.resolve(opt.name)
    path = os.path.join(dst["dir"], SPLIT_FILE)
    try:
        with open(path) as f:
            st = json.load(f)
    except FileNotFoundError:
        raise Fail(f"{opt.name}: not split (no {path}): nothing to pull") from None
    name = st["name"]
    ps = Adopted.daemon("tlm-page-server", st["ps"]["pid"], st["ps"]["ctl"])
    if ps.p.poll() is not None:
        raise Fail(f"{name}: its memory host, tlm-page-server pid {st['ps']['pid']}, is "
                   f"gone: faults on the pages it held wait (logs in {st['work']})")
    def dst_alive():
        if not V.alive(dst):
            raise Fail(f"{name}: the destination QEMU exited: {V.log_tail(dst)}")

    before = region_stats(st["dst_ctl"], name) or {}
    t0 = time.time()
    ctl(ps.ctl, f"bulk-release {name}")
    r = wait_phase(st["dst_ctl"], name, ("complete",), opt.timeout, dst_alive)
    pull_s = time.time() - t0
    if st.get("src_dir") and os.path.exists(os.path.join(st["src_dir"], "vm.json")):
        V.stop(V.load_cfg(os.path.join(st["src_dir"], "vm.json")))
    ps.shutdown()
    if st.get("ud"):
        Adopted.daemon("tlm-uffd-server", st["ud"]["pid"], st["ud"]["ctl"]).shutdown()
    os.unlink(path)
    if os.environ.get("TLM_MIGRATE_KEEP") == "1":
        log(f"work directory kept: {st['work']}")
    else:
        shutil.rmtree(st["work"], ignore_errors=True)
    lat, pages = r["latency_demand"], r["pages"]
    left = pages["total"] - settled(before.get("pages") or pages)
    print(f"{name}: pulled {left} pages in {pull_s:.2f} s: {settled(pages)} of "
          f"{pages['total']} pages settled, {lat['count']} remote faults since the switch "
          f"(p50 {lat['p50_us']} us, p99 {lat['p99_us']} us); source and memory host "
          "stopped")
    return 0


def parser():
    ap = argparse.ArgumentParser(prog="tlm_qemu.migrate", description=__doc__.split("\n\n")[0])
    ap.add_argument("vms", nargs="+", metavar="VM")
    ap.add_argument("--work", required=True, help="work directory (keys, sockets, logs)")
    ap.add_argument("--key", help="pre-shared key file (0600); default: a new random key")
    ap.add_argument("--dst-ctl", help="control socket of a running tlm-uffd-server")
    ap.add_argument("--dst-sock", help="its glue socket (with --dst-ctl)")
    ap.add_argument("--dst-template", help="the template's path at the destination")
    ap.add_argument("--src-addr", default="127.0.0.1")
    ap.add_argument("--dst-addr", default="127.0.0.1")
    ap.add_argument("--src-port", type=int, default=0)
    ap.add_argument("--src-reach", metavar="HOST:PORT",
                    help="how the destination reaches the page server (NAT, proxy)")
    ap.add_argument("--dst-port", type=int, default=0)
    ap.add_argument("--src-netns")
    ap.add_argument("--dst-netns")
    ap.add_argument("--dst-host", metavar="[USER@]HOST",
                    help="run the destination side there, over ssh (remote.py)")
    ap.add_argument("--dst-prefix", metavar="DIR",
                    help="--dst-host: its tlm source tree (with build/); default: the "
                         "same paths as here")
    ap.add_argument("--dst-run-dir", metavar="DIR",
                    help="--dst-host: its TLM_RUN_DIR (default: its default)")
    ap.add_argument("--dst-key", metavar="FILE",
                    help="--dst-host: the key file's path there (default: --key's path; "
                         "without --key, this run's key is copied there)")
    ap.add_argument("--ssh-config", metavar="FILE", default=os.environ.get("TLM_SSH_CONFIG"),
                    help="ssh -F FILE (default $TLM_SSH_CONFIG)")
    ap.add_argument("--timeout", type=float, default=300)
    ap.add_argument("--no-check", dest="check", action="store_false")
    ap.add_argument("--check-cmd", metavar="CMD",
                    help="guest check: sh -c CMD before and after (tlm_qemu.vm guest_check)")
    ap.add_argument("--dst-cmdline", metavar="FILE",
                    help="the destination's QEMU command line (a foreign VM; tlm_qemu.vm "
                         "start --cmdline)")
    ap.add_argument("--json")
    ap.add_argument("--trace")
    ap.add_argument("--bin-dir", required=True)
    ap.add_argument("--glue", required=True)
    ap.add_argument("--log-level", default="info")
    ap.add_argument("--after-switch", metavar="CMD",
                    help="shell command run once every destination runs, before the "
                         "completion wait (see Run.after_switch)")
    ap.add_argument("--before-stop", metavar="CMD",
                    help="shell command run once the destinations are armed and the live "
                         "phase runs, before any source stops (see Run.before_stop)")
    ap.add_argument("--before-freeze", metavar="CMD",
                    help="shell command run for each VM after its source stopped, before "
                         "its freeze (see Run.switch)")
    ap.add_argument("--no-live", dest="live", action="store_false",
                    help="no live phase: the page server classifies after the stop")
    ap.add_argument("--live-rate", type=int, metavar="MiB",
                    help="tlm-page-server --live-rate: MiB/s of live classification reads "
                         "(0 = unlimited)")
    ap.add_argument("--tls", choices=("psk", "off"), default="off",
                    help="TLS 1.3 between the daemons, keyed from the key (both daemons; "
                         "a --dst-ctl daemon must have been started with the same)")
    ap.add_argument("--policy", choices=("post", "hybrid", "auto"),
                    help="tlm-page-server --policy: what the live phase sends before the "
                         "stop: post = the class map only; hybrid = also DATA pages in "
                         "rounds until few are left; auto (its default) = DATA rounds "
                         "while they converge, judged from the measured write and send "
                         "rates; the switch waits until the page server says ready")
    ap.add_argument("--split", action="store_true",
                    help="leave the pages the destination has not faulted on at the "
                         "page server (its background stream held) and return once the "
                         "destination runs and is checked; `--pull NAME` moves the rest")
    ap.add_argument("--bulk-delay", type=int, metavar="MS",
                    help="tlm-page-server --bulk-delay: the background DATA stream starts "
                         "MS ms after freeze (not after a page-server restart)")
    return ap


def main(argv):
    if argv[:1] == ["--pull"]:
        return pull(argv[1:])
    opt = parser().parse_args(argv)
    if opt.split and opt.dst_host:
        raise Fail("--split and --dst-host: not yet (split.json is written to the "
                   "destination's run directory, here)")
    if opt.split and not opt.policy:
        # nothing pre-sent: the pages the guest touches move on its faults, the rest
        # stays at the memory host (hybrid/auto pre-send the DATA in rounds)
        opt.policy = "post"
    # SIGTERM unwinds like a failure: the cleanup below undoes what can be undone
    signal.signal(signal.SIGTERM, lambda *_: sys.exit("migrate-postcopy.sh: terminated"))
    if bool(opt.dst_ctl) != bool(opt.dst_sock):
        raise Fail("--dst-ctl and --dst-sock go together (a running tlm-uffd-server)")
    for d in ("src", "dst"):
        os.makedirs(os.path.join(opt.work, d), mode=0o700, exist_ok=True)
    if opt.dst_host and opt.dst_netns:
        raise Fail("--dst-host and --dst-netns exclude each other (the host's ssh "
                   "session runs where its sshd does)")
    if not opt.dst_host and (opt.dst_prefix or opt.dst_run_dir or opt.dst_key):
        raise Fail("--dst-prefix, --dst-run-dir and --dst-key go with --dst-host")
    opt.dsthost = R.connect(opt)
    if opt.dsthost.remote:
        opt.glue = opt.dsthost.glue     # the destination QEMU preloads the remote install's
    run, ok, left = None, False, False
    try:
        run = Run(opt)
        run.migrate()
        ok = True
    finally:
        left = run and not run.cleanup(ok)
        if (left and not ok) or (ok and opt.split):     # split: the daemons' logs
            open(os.path.join(opt.work, ".keep"), "w").close()
        opt.dsthost.close(ok or not left)
    if opt.split:
        return split_report(run.migs, opt.json)
    rows = [dict(tlm_row(m), total_s=round(m.t["complete"] - run.t0, 3)) for m in run.migs]
    t0 = min(m.ev["stop"] for m in run.migs)
    t1 = max(m.t["complete"] for m in run.migs)
    report.emit("tlm", rows, t1 - t0, opt.json)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except (V.VMError, QMPError, QMPConnectionError) as e:
        print(f"migrate-postcopy.sh: error: {e}", file=sys.stderr)
        sys.exit(1)
