"""tlm_qemu.virsh — tlm migration of a libvirt domain (scripts/virsh-migrate-tlm.sh; see its
--help for the options).

libvirt moves the domain as it always does (`virsh migrate --live`: its Begin, Prepare,
Perform, Finish and Confirm steps, the destination QEMU started by the destination's
libvirtd), with the capability x-ignore-shared on both QEMUs so that QEMU's stream carries
the device state and leaves the guest RAM (a `memoryBacking` file, shared) out; tlm moves
the RAM, as `migrate-postcopy.sh --mode tlm` does:
  1. the domain's RAM file is found over QMP passthrough (`virsh qemu-monitor-command`:
     query-memdev, qom-get mem-path); one memory backend, share=on, or a one-line refusal;
  2. tlm-page-server serves that file (its own mapping keeps the memory after libvirt has
     stopped the source QEMU and deleted the file), tlm-uffd-server is started for the
     destination (or the operator's is used, --dst-ctl);
  3. the destination domain XML (`--xml` of virsh migrate, libvirt's way of changing a
     migrating domain's configuration) is the source's with a <qemu:commandline>:
     LD_PRELOAD=libtlm-glue.so and its TLM_* variables (TLM_ARM=map: the glue registers
     the RAM with userfaultfd when QEMU maps it, so nothing of it can be read before
     tlm-uffd-server fills it; TLM_RAM_PATH is a pattern, libvirt names the file after the
     domain's id) and a QMP monitor of our own;
  4. the destination needs x-ignore-shared before QEMU's stream arrives (its first section
     depends on it), but QEMU 7.2 has no command-line switch for it, libvirt starts the
     incoming migration right after the QEMU and lets no command through to a domain
     whose incoming migration runs (not even qemu-monitor-command): so the source QEMU's
     stream goes through a relay here (--migrateuri points at it; the destination QEMU
     listens on the same port at --dst-addr, virsh migrate --listen-address), which
     connects on only once our own QMP monitor of the destination QEMU has set the
     capability;
  5. x-ignore-shared on the source through QMP passthrough, then `virsh migrate --live`;
     the source's STOP event (`virsh qemu-monitor-event`, with `virsh domstate` polled as
     a safety net) triggers `freeze` at the page server: the guest is stopped, its RAM
     final; the destination's faults wait at the page server until the freeze is done
     (the guest may already run: it waits on its faults, never reads a wrong page);
  6. once every page is settled at the destination, x-ignore-shared goes off there (QMP
     passthrough, as migrate-postcopy.sh does) and the daemons this run started stop.
"""

import argparse
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
import xml.etree.ElementTree as ET

from . import migrate as M
from . import remote as R
from .qmp import QMP, QMPConnectionError, QMPError

QEMU_NS = "http://libvirt.org/schemas/domain/qemu/1.0"
PROG = "virsh-migrate-tlm.sh"
RAMSTUB_MAGIC = b"tlm-ram-stub 1\n"   # runtime/template/ramstub.h


class Fail(Exception):
    """A failure with a one-line reason."""


def log(msg):
    print(f"{PROG}: {msg}", file=sys.stderr)


class Virsh:
    def __init__(self, uri):
        self.uri = uri

    def argv(self, *args):
        return ["virsh", "-q"] + (["-c", self.uri] if self.uri else []) + list(args)

    def run(self, *args, timeout=60):
        try:
            r = subprocess.run(self.argv(*args), capture_output=True, text=True,
                               timeout=timeout)
        except subprocess.TimeoutExpired:
            raise Fail(f"virsh {args[0]} ({self.uri or 'default URI'}): no answer in "
                       f"{timeout} s") from None
        if r.returncode:
            why = (r.stderr.strip().splitlines() or ["failed"])[-1].removeprefix("error: ")
            raise Fail(f"virsh {args[0]} ({self.uri or 'default URI'}): {why}")
        return r.stdout

    def qmp(self, dom, cmd, args=None):
        req = {"execute": cmd}
        if args:
            req["arguments"] = args
        out = self.run("qemu-monitor-command", dom, json.dumps(req))
        reply = json.loads(out)
        if "error" in reply:
            raise Fail(f"{dom}: QMP {cmd}: {reply['error'].get('desc', reply['error'])}")
        return reply.get("return")


# ---- the source domain --------------------------------------------------------------------

def ram_file(src, dom):
    """The path of the domain's one memory-backend-file, checked share=on."""
    devs = src.qmp(dom, "query-memdev") or []
    if len(devs) != 1:
        raise Fail(f"{dom}: {len(devs)} memory backends; tlm moves a domain whose RAM is one "
                   "<memoryBacking> file (no NUMA cells, no memory devices)")
    dev = devs[0]
    backends = [o for o in src.qmp(dom, "qom-list", {"path": "/objects"})
                if o.get("type", "").startswith("child<memory-backend")]
    if len(backends) != 1:
        raise Fail(f"{dom}: cannot tell which object is the guest RAM "
                   f"({[o['name'] for o in backends]})")
    path, kind = f"/objects/{backends[0]['name']}", backends[0]["type"]
    if kind != "child<memory-backend-file>" or not dev.get("share"):
        raise Fail(f"{dom}: guest RAM is {kind[6:-1] or 'unknown'}"
                   f"{'' if dev.get('share') else ', not shared'}; the domain XML needs "
                   "<memoryBacking><source type='file'/><access mode='shared'/>"
                   "</memoryBacking>")
    mem = src.qmp(dom, "qom-get", {"path": path, "property": "mem-path"})
    if not os.path.isfile(mem):
        raise Fail(f"{dom}: its RAM file {mem} is not visible here (run this on the "
                   "source host, outside any private mount namespace of libvirtd)")
    with open(mem, "rb") as f:
        stub = f.read(len(RAMSTUB_MAGIC)) == RAMSTUB_MAGIC
    if stub:
        # The glue maps this QEMU's RAM privately (the domain arrived by tlm, or is a
        # template clone): tlm-page-server would have to read it from the process, and
        # libvirt stops the source QEMU as soon as the destination runs.
        raise Fail(f"{dom}: its RAM is the glue's private mapping ({mem} is a stub): "
                   "libvirt would stop this QEMU before tlm had read it; use stock "
                   "`virsh migrate` (it takes the RAM from the process)")
    return mem, int(dev["size"])


def ignore_shared(on):
    """migrate-set-capabilities arguments: x-ignore-shared on or off."""
    return {"capabilities": [{"capability": "x-ignore-shared", "state": on}]}


def dst_xml(xml, dom, env, args):
    """The domain XML for the destination: the source's with the glue's environment and
    QEMU arguments added to <qemu:commandline> (libvirt's passthrough)."""
    ET.register_namespace("qemu", QEMU_NS)
    root = ET.fromstring(xml)
    if root.findtext("name") != dom:
        raise Fail(f"{dom}: virsh dumpxml gave domain '{root.findtext('name')}'")
    cl = root.find(f"{{{QEMU_NS}}}commandline")
    if cl is None:
        cl = ET.SubElement(root, f"{{{QEMU_NS}}}commandline")
    for e in cl.findall(f"{{{QEMU_NS}}}env"):
        if e.get("name") in env:
            cl.remove(e)
    for a in args:
        ET.SubElement(cl, f"{{{QEMU_NS}}}arg", {"value": a})
    for k, v in env.items():
        ET.SubElement(cl, f"{{{QEMU_NS}}}env", {"name": k, "value": v})
    return ET.tostring(root, encoding="unicode")


# ---- the switch ------------------------------------------------------------------------------

class StopWatch:
    """Calls on_stop once, as soon as the source domain is stopped: its QMP STOP event, or
    (safety net, should the event be missed) `virsh domstate` saying paused."""

    def __init__(self, src, dom, on_stop, poll_s=0.5):
        self.src, self.dom, self.on_stop, self.poll_s = src, dom, on_stop, poll_s
        self.lock, self.fired, self.error, self.done = threading.Lock(), False, None, False
        self.ev = subprocess.Popen(src.argv("qemu-monitor-event", dom, "--event", "STOP",
                                            "--timeout", "3600"),
                                   stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                   text=True)
        threading.Thread(target=self.watch_event, daemon=True).start()
        threading.Thread(target=self.watch_state, daemon=True).start()

    def fire(self, how):
        with self.lock:
            if self.fired or self.done:
                return
            self.fired = True
        log(f"{self.dom}: source stopped ({how}): freeze")
        try:
            self.on_stop()
        except Fail as e:
            self.error = e

    def watch_event(self):
        for line in self.ev.stdout:
            if "STOP" in line:
                self.fire("STOP event")
                return

    def watch_state(self):
        while not self.fired and not self.done:
            time.sleep(self.poll_s)
            try:
                state = self.src.run("domstate", self.dom, timeout=10).strip()
            except Fail:
                continue            # gone: the migration is over, or failed
            if state.startswith("paused"):
                self.fire(f"domstate {state}")

    def close(self):
        self.done = True
        if self.ev.poll() is None:
            self.ev.kill()
            self.ev.wait()


class Relay:
    """The source QEMU's migration connection goes through here (--migrateuri points at
    it) and is passed on to the destination QEMU only once `release` is called: QEMU 7.2
    has no way to set x-ignore-shared on the command line, and libvirt starts the
    incoming migration right after the destination QEMU, so the capability is set there
    by QMP passthrough while the source's stream waits in this relay (the stream's first
    section already depends on it)."""

    def __init__(self, addr, port, target_addr):
        self.ready, self.error, self.closed = threading.Event(), None, False
        try:
            self.ls = socket.create_server((addr, port))
        except OSError as e:
            raise Fail(f"relay for QEMU's stream at {addr}:{port}: {e}") from None
        # the destination QEMU listens on the same port number (libvirt takes the port
        # of --migrateuri for its -incoming)
        self.port = self.ls.getsockname()[1]
        self.target = (target_addr, self.port)
        threading.Thread(target=self.serve, daemon=True).start()

    def release(self):
        self.ready.set()

    def pump(self, a, b):
        try:
            while data := a.recv(1 << 16):
                b.sendall(data)
        except OSError:
            pass
        for s in (a, b):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def serve(self):
        try:
            c, _ = self.ls.accept()
        except OSError:
            return
        self.ls.close()
        self.ready.wait()
        try:
            d = socket.create_connection(self.target, timeout=30)
            d.settimeout(None)
        except OSError as e:
            self.error = "relay to the destination QEMU at %s:%d: %s" % (*self.target, e)
            c.close()
            return
        threading.Thread(target=self.pump, args=(d, c), daemon=True).start()
        self.pump(c, d)

    def close(self):
        self.closed = True
        self.ready.set()
        try:
            self.ls.close()
        except OSError:
            pass


class Run:
    def __init__(self, opt):
        self.opt, self.dom = opt, opt.domain
        self.src, self.dst = Virsh(opt.src_uri), Virsh(opt.dst_uri)
        self.work = opt.work or os.path.join(opt.run_dir, f"virsh-{self.dom}")
        shutil.rmtree(self.work, ignore_errors=True)
        os.makedirs(os.path.join(self.work, "src"))
        self.ps = self.ud = None
        self.ok = False
        opt.work = self.work
        self.host = R.connect(opt)     # Local, or Ssh for --dst-host (remote.py)

    def start_daemons(self, ram):
        key = M.make_key(self.work)
        spec = f"{self.dom},file={ram}"
        if self.opt.template:
            spec += f",template={self.opt.template}"
        ctl = os.path.join(self.work, "src", "ctl.sock")
        self.ps = M.Daemon("tlm-page-server", [
            os.path.join(self.opt.bin_dir, "tlm-page-server"), "--listen",
            f"{self.opt.src_addr}:0", "--key", key, "--ctl", ctl, "--region", spec,
            "--log-level", self.opt.log_level], self.work, ctl)
        self.ps.wait_ready()
        self.source = f"{self.opt.src_addr}:{self.ps.port()}"
        if self.opt.dst_ctl:
            self.ud_ctl, self.glue_sock = self.opt.dst_ctl, self.opt.dst_sock
            M.all_region_stats(self.ud_ctl, timeout=5)
            return
        templates = [self.opt.dst_template or self.opt.template] if self.opt.template else []
        if self.host.remote:           # on HOST over ssh, its control socket forwarded here
            self.glue_sock = self.host.glue_sock()
            argv = self.host.uffd_server_argv(self.host.copy_key(key), self.source,
                                              templates, self.opt.log_level)
            self.ud_ctl = self.host.forward_ctl(f"{self.host.rwork}/ctl.sock")
        else:
            self.ud_ctl = os.path.join(self.work, "dst.ctl")
            self.glue_sock = os.path.join(self.work, "glue.sock")
            argv = [os.path.join(self.opt.bin_dir, "tlm-uffd-server"), "--sock",
                    self.glue_sock, "--ctl", self.ud_ctl, "--key", key, "--source",
                    self.source, "--log-level", self.opt.log_level]
            for t in templates:
                argv += ["--template", t]
        self.ud = M.Daemon("tlm-uffd-server", argv, self.work, self.ud_ctl)
        self.ud.wait_ready()

    def glue_env(self, ram):
        # libvirt names the file <memory_backing_dir>/libvirt/qemu/<id>-<name>/<alias>:
        # the id is the destination's, the alias (pc.ram) the same on both sides
        env = {"LD_PRELOAD": self.host.glue if self.host.remote else self.opt.glue,
               "TLM_RAM_PATH": f"*/{os.path.basename(ram)}",
               "TLM_SOCK": self.glue_sock, "TLM_VM_ID": self.dom, "TLM_ARM": "map",
               "TLM_SOURCE": self.source}
        if self.opt.template:
            env["TLM_TEMPLATE"] = self.opt.dst_template or self.opt.template
        return env

    def dst_caps(self, relay):
        """Once the destination QEMU is up (libvirt's Prepare started it): x-ignore-shared
        on there, then the source's stream may go on. Through a QMP monitor of our own on
        that QEMU (the domain XML adds it): libvirt lets no command through to a domain
        whose incoming migration is under way, not even qemu-monitor-command."""
        self.caps_error = None
        deadline = time.monotonic() + self.opt.timeout
        while True:
            try:
                with QMP(self.dst_qmp, timeout=30) as q:
                    q.execute("migrate-set-capabilities", ignore_shared(True))
                relay.release()
                return
            except QMPError as e:
                why = e
            except QMPConnectionError as e:
                # not there yet (a forwarded socket takes the connection and closes it)
                why = e
                if time.monotonic() < deadline and not relay.closed:
                    time.sleep(M.POLL_S)
                    continue
            self.caps_error = f"destination QMP {self.dst_qmp}: {why}"
            relay.close()
            return

    def freeze(self):
        M.ctl(self.ps.ctl, f"freeze {self.dom}", timeout=max(60, self.opt.timeout))

    def migrate(self, xml_path):
        t0 = time.time()
        self.src.qmp(self.dom, "migrate-set-capabilities", ignore_shared(True))
        watch = StopWatch(self.src, self.dom, self.freeze)
        relay = Relay(self.opt.relay_addr, self.opt.migrate_port, self.opt.dst_addr)
        port = relay.port
        setter = threading.Thread(target=self.dst_caps, args=(relay,), daemon=True)
        setter.start()
        try:
            self.src.run("migrate", "--live", "--xml", xml_path, self.dom, self.opt.dst_uri,
                         "--migrateuri", f"tcp:{self.opt.relay_addr}:{port}",
                         "--listen-address", self.opt.dst_addr, timeout=self.opt.timeout)
        except Fail as e:
            watch.close()
            relay.close()
            if self.caps_error or relay.error:
                e = Fail(f"{e} ({self.caps_error or relay.error})")
            # the source may still be ours: x-ignore-shared off again, it keeps running
            try:
                self.src.qmp(self.dom, "migrate-set-capabilities", ignore_shared(False))
            except Fail:
                pass
            raise e from None
        relay.close()
        t_switch = time.time()
        if not watch.fired:
            watch.fire("migration over")        # the event and the poll both missed it
        watch.close()
        if watch.error:
            raise Fail(f"{self.dom}: the freeze failed: {watch.error} (the destination "
                       "is left waiting on its faults)")
        return t_switch - t0

    def run(self):
        ram, size = ram_file(self.src, self.dom)
        log(f"{self.dom}: RAM {ram} ({size >> 20} MiB)")
        self.start_daemons(ram)
        if self.host.remote:            # on HOST, forwarded here
            qmp_there = f"{self.host.rwork}/qmp.sock"
            os.makedirs(self.host.mirror, mode=0o700, exist_ok=True)
            self.dst_qmp = self.host.forward(os.path.join(self.host.mirror, "qmp.sock"),
                                             qmp_there)
        else:
            qmp_there = self.dst_qmp = os.path.join(self.work, "dst-qmp.sock")
        xml = dst_xml(self.src.run("dumpxml", "--migratable", self.dom), self.dom,
                      self.glue_env(ram), ["-qmp", f"unix:{qmp_there},server=on,wait=off"])
        xml_path = os.path.join(self.work, "dst.xml")
        with open(xml_path, "w") as f:
            f.write(xml)
        secs = self.migrate(xml_path)
        r = M.wait_phase(self.ud_ctl, self.dom, ("complete",), self.opt.timeout)
        # The RAM came by tlm into a private mapping (the file is the glue's stub): a
        # later stock migration or savevm must take it from the process.
        self.dst.qmp(self.dom, "migrate-set-capabilities", ignore_shared(False))
        pages = r.get("pages", {})
        wire = r.get("wire", {})
        self.ok = True
        log(f"{self.dom}: migrated with tlm in {secs:.2f} s (virsh migrate); pages "
            f"present {pages.get('present')}, left to the kernel "
            f"{pages.get('template_left', 0)}, {wire.get('in_bytes', 0) / 1e6:.1f} MB "
            "received")

    def cleanup(self):
        for d in (self.ud, self.ps):
            if d:
                d.shutdown()
        self.host.close(self.ok)


def parse(argv):
    p = argparse.ArgumentParser(prog=PROG, add_help=True)
    p.add_argument("domain")
    p.add_argument("dst_uri")
    p.add_argument("--src-uri", default=os.environ.get("LIBVIRT_DEFAULT_URI"))
    p.add_argument("--dst-addr", required=True)
    p.add_argument("--relay-addr", default="127.0.0.1")
    p.add_argument("--migrate-port", type=int, default=0)
    p.add_argument("--template")
    p.add_argument("--dst-template")
    p.add_argument("--dst-ctl")
    p.add_argument("--dst-sock")
    p.add_argument("--src-addr", default="127.0.0.1")
    p.add_argument("--dst-host")
    p.add_argument("--dst-prefix")
    p.add_argument("--dst-run-dir")
    p.add_argument("--ssh-config", default=os.environ.get("TLM_SSH_CONFIG"))
    p.add_argument("--bin-dir", required=True)
    p.add_argument("--glue", required=True)
    p.add_argument("--run-dir", required=True)
    p.add_argument("--work")
    p.add_argument("--timeout", type=float, default=300)
    p.add_argument("--log-level", default="warn")
    opt = p.parse_args(argv)
    if opt.dst_ctl and not opt.dst_sock:
        p.error("--dst-ctl needs --dst-sock (the daemon's glue socket, as the destination "
                "QEMU sees it)")
    if not re.fullmatch(r"[A-Za-z0-9._-]{1,64}", opt.domain) or opt.domain in (".", ".."):
        p.error(f"domain name '{opt.domain}': tlm needs 1..64 of [A-Za-z0-9._-] (its VM id)")
    return opt


def main(argv=None):
    opt = parse(sys.argv[1:] if argv is None else argv)
    try:
        run = Run(opt)
    except R.RemoteError as e:
        log(f"error: {e}")
        return 1
    try:
        run.run()
    except (Fail, M.Fail, R.RemoteError) as e:
        log(f"error: {e}")
        return 1
    finally:
        run.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
