"""tlm_qemu.remote — where a migration's destination runs: this host (Local) or another
one over ssh (Ssh, migrate-postcopy.sh --dst-host [USER@]HOST).

The migration code (migrate.py) talks to the destination's unix sockets and runs
`tlm_qemu.vm` commands on it; with Ssh those go over one ssh ControlMaster connection per
run (BatchMode: a key, never a password prompt):
  - tlm-uffd-server runs on HOST, through that connection: its stderr and stdout come
    back over it into the run's local log files (the daemons ignore SIGPIPE, so a lost
    connection does not kill a daemon that still serves faults);
  - the destination QEMU is started there by `python3 -m tlm_qemu.vm start --like
    COPY-OF-SOURCE-vm.json`, with the remote install's glue, in the remote run dir;
  - the unix sockets migrate.py uses (the daemon's control socket; the QEMU's qmp.sock,
    qmp-mig.sock and workload ctl.sock) are forwarded to local paths (`ssh -O forward -L
    LOCAL:REMOTE`), so the QMP and control code is the same for both; the destination's
    config seen here has `dir` = a local directory of those forwards, `remote_dir` = its
    run directory on HOST;
  - the rest (alive, log tail, TICKs, Pss, stop, link) runs `tlm_qemu.vm` over ssh.
HOST has the same tlm install, at --dst-prefix (a source tree with its build/) or at the
same paths as here; scripts/tlm-hostcheck.sh verifies it, scripts/template-push.sh copies
a template there. A forwarded socket whose remote end is not there (yet) accepts the
connection and closes it: a control command then reads an empty reply (migrate.py's
all_region_stats treats that as no answer).
"""

import atexit
import json
import os
import shlex
import subprocess
import sys
import time

from . import vm as V

PKG_PATH = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SSH_WAIT_S = 20


class RemoteError(V.VMError):
    """Something on the destination host failed; one line says what."""


def py_env():
    """The environment that finds this package (qemu-glue) for `python3 -m tlm_qemu.vm`."""
    return dict(os.environ, PYTHONPATH=os.pathsep.join(
        filter(None, (PKG_PATH, os.environ.get("PYTHONPATH")))))


class Local:
    """The destination on this host: the vm module's functions as they are."""

    remote = False

    def run_vm(self, argv):
        """Run a `python -m tlm_qemu.vm ...` command line; the CompletedProcess."""
        return subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env=py_env())

    resolve = staticmethod(V.resolve)
    alive = staticmethod(V.alive)
    log_tail = staticmethod(V.log_tail)
    wait_ticks = staticmethod(V.wait_ticks)
    pss = staticmethod(V.pss)
    stop = staticmethod(V.stop)
    link = staticmethod(V.set_link)

    def close(self, ok):
        pass


class Ssh:
    """The destination on another host, over one ssh ControlMaster connection."""

    remote = True

    def __init__(self, host, work, bin_dir, glue, prefix=None, run_dir=None,
                 ssh_config=None):
        self.host, self.work, self.run_dir = host, work, run_dir
        self.opts = ["-o", "BatchMode=yes", "-S", os.path.join(work, "ssh.sock")]
        if ssh_config:
            self.opts = ["-F", ssh_config] + self.opts
        # the remote install: a source tree with its build/ at prefix, else our own paths
        self.bin_dir = os.path.join(prefix, "build", "runtime") if prefix else bin_dir
        self.glue = os.path.join(prefix, "build", "qemu-glue", "libtlm-glue.so") \
            if prefix else glue
        self.pkg = os.path.join(prefix, "qemu-glue") if prefix else PKG_PATH
        self.mirror = os.path.join(work, "dst")
        self.master = None
        self.rwork = None
        self.open_master()
        base = shlex.quote(run_dir) if run_dir else '"${TMPDIR:-/tmp}"'
        try:
            self.rwork = self.sh(f"mkdir -p {base} && mktemp -d {base}/tlm-dst.XXXXXX")
        except RemoteError:
            self.kill_master()
            raise

    # ---- the connection --------------------------------------------------------------

    def open_master(self):
        """Start the ControlMaster (ours: killed in close) and wait until it is up."""
        log = os.path.join(self.work, "ssh.log")
        with open(log, "wb") as f:
            self.master = subprocess.Popen(
                ["ssh", "-M", "-N", "-o", "ControlPersist=no",
                 "-o", "StreamLocalBindUnlink=yes", "-o", "ServerAliveInterval=10"]
                + self.opts + [self.host], stdin=subprocess.DEVNULL, stdout=f, stderr=f,
                start_new_session=True)
        atexit.register(self.kill_master)
        deadline = time.monotonic() + SSH_WAIT_S
        while subprocess.run(["ssh", "-O", "check"] + self.opts + [self.host],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode:
            if self.master.poll() is not None or time.monotonic() > deadline:
                with open(log, errors="replace") as f:
                    why = " | ".join(ln.strip() for ln in f if ln.strip()) or "no output"
                self.kill_master()
                raise RemoteError(f"cannot ssh to {self.host}: {why}")
            time.sleep(0.05)

    def argv(self, cmd):
        """ssh command line running the shell command `cmd` on the host."""
        return ["ssh"] + self.opts + [self.host, "--", cmd]

    def sh(self, cmd, input=None, timeout=120):
        """Run a shell command on the host; its stdout (stripped). Failing raises."""
        try:
            r = subprocess.run(self.argv(cmd), input=input, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise RemoteError(f"{self.host}: no answer in {timeout} s to: {cmd}") from None
        if r.returncode:
            why = r.stderr.strip().splitlines()
            raise RemoteError(f"{self.host}: {why[-1] if why else f'status {r.returncode}'}"
                              f" (from: {cmd[:120]})")
        return r.stdout.strip()

    def vm_cmd(self, args, timeout=120):
        """`python3 -m tlm_qemu.vm ARGS` on the host, with the remote install's package
        and run dir; its stdout. Its error line raises, without the program's name."""
        env = f"PYTHONPATH={shlex.quote(self.pkg)} PYTHONDONTWRITEBYTECODE=1"
        if self.run_dir:
            env += f" TLM_RUN_DIR={shlex.quote(self.run_dir)}"
        try:
            return self.sh(f"env {env} python3 -m tlm_qemu.vm {shlex.join(args)}",
                           timeout=timeout)
        except RemoteError as e:
            raise RemoteError(str(e).replace(f"{V.PROG}: error: ", "").split(" (from:")[0]) \
                from None

    def forward(self, local, remote):
        """Forward the local unix socket path `local` to `remote` on the host."""
        r = subprocess.run(["ssh", "-O", "forward", "-L", f"{local}:{remote}"] + self.opts
                           + [self.host], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                           text=True)
        if r.returncode:
            raise RemoteError(f"{self.host}: cannot forward {local} to {remote}: "
                              f"{r.stderr.strip()}")
        return local

    def kill_master(self):
        if self.master and self.master.poll() is None:
            subprocess.run(["ssh", "-O", "exit"] + self.opts + [self.host],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:
                self.master.wait(5)
            except subprocess.TimeoutExpired:
                self.master.kill()
                self.master.wait()

    def close(self, ok):
        """After the run: the remote work directory goes if all went well (else it is
        kept and named, with the daemon that may still serve the destination). The
        connection stays until this process exits: the report reads the destination's
        Pss after the daemons have stopped."""
        try:
            if ok:
                self.sh(f"rm -rf {shlex.quote(self.rwork)}")
            elif self.rwork:
                print(f"migrate-postcopy.sh: destination work directory kept on "
                      f"{self.host}: {self.rwork} (tlm-uffd-server ctl "
                      f"{self.rwork}/ctl.sock, if it still runs)", file=sys.stderr)
        except RemoteError as e:
            print(f"migrate-postcopy.sh: {e}", file=sys.stderr)

    # ---- files -------------------------------------------------------------------------

    def put(self, data, name, mode="600"):
        """Write data into the remote work directory as `name` (mode); its path."""
        path = f"{self.rwork}/{name}"
        self.sh(f"umask 077 && cat > {shlex.quote(path)} && chmod {mode} {shlex.quote(path)}",
                input=data)
        return path

    def fetch(self, path):
        """A remote file's text ("" if it is not there)."""
        return self.sh(f"cat {shlex.quote(path)} 2>/dev/null || true")

    # ---- tlm-uffd-server ----------------------------------------------------------------

    def uffd_server_argv(self, key, source, templates, log_level, tls="off"):
        """The ssh command line of a tlm-uffd-server on the host (its pid in
        RWORK/tlm-uffd-server.pid: `ssh` exits when it does) and its local control
        socket (forwarded to RWORK/ctl.sock); its glue socket is RWORK/glue.sock."""
        argv = [f"{self.bin_dir}/tlm-uffd-server", "--sock", self.glue_sock(),
                "--ctl", f"{self.rwork}/ctl.sock", "--key", key, "--source", source,
                "--log-level", log_level, "--tls", tls]
        for t in templates:
            argv += ["--template", t]
        pid = shlex.quote(f"{self.rwork}/tlm-uffd-server.pid")
        cmd = f"echo $$ > {pid} && exec {shlex.join(argv)}"
        return self.argv(f"exec sh -c {shlex.quote(cmd)}")

    def glue_sock(self):
        return f"{self.rwork}/glue.sock"

    def forward_ctl(self, remote_ctl):
        """The remote daemon's control socket as a local path."""
        os.makedirs(self.mirror, mode=0o700, exist_ok=True)
        return self.forward(os.path.join(self.mirror, "uffd-ctl.sock"), remote_ctl)

    def copy_key(self, key_path):
        """A key of this run (not given by the operator) copied to the host; its path."""
        with open(key_path) as f:
            return self.put(f.read(), "key")

    # ---- the destination QEMU ---------------------------------------------------------

    def run_vm(self, argv):
        """Run migrate.py's `python -m tlm_qemu.vm start NAME --like SRCDIR ...` on the
        host: the source's vm.json goes with it (--like names the copy). The
        CompletedProcess, as Local.run_vm."""
        i = argv.index("-m")
        args = argv[i + 2:]
        if "--like" in args:
            j = args.index("--like") + 1
            src = V.resolve(args[j]) if not args[j].endswith(".json") else \
                V.load_cfg(args[j])
            args[j] = self.put(json.dumps(src), f"{src['name']}.like.json", "644")
        try:
            out = self.vm_cmd(args)
        except RemoteError as e:
            return subprocess.CompletedProcess(args, 1, "", f"{e}")
        return subprocess.CompletedProcess(args, 0, out, "")

    def resolve(self, remote_dir):
        """The config of the VM in remote_dir, seen from here: `dir` is a local directory
        holding forwards of its sockets, `remote_dir` the real one."""
        cfg = json.loads(self.vm_cmd(["info", remote_dir]))
        local = os.path.join(self.mirror, os.path.basename(cfg["dir"]))
        os.makedirs(local, mode=0o700, exist_ok=True)
        for s in ("qmp.sock", "qmp-mig.sock", "ctl.sock"):
            self.forward(os.path.join(local, s), f"{cfg['dir']}/{s}")
        return dict(cfg, dir=local, remote_dir=cfg["dir"])

    def alive(self, cfg):
        try:
            return self.vm_cmd(["info", cfg["remote_dir"], "--get", "running"]) == "true"
        except RemoteError:
            return False

    def log_tail(self, cfg, n=3):
        lines = [ln.strip() for ln in self.fetch(f"{cfg['remote_dir']}/qemu.log").splitlines()
                 if ln.strip()]
        return " | ".join(lines[-n:]) or "(no qemu.log)"

    def wait_ticks(self, cfg, count, timeout):
        return self.vm_cmd(["ticks", cfg["remote_dir"], "--count", str(count),
                            "--timeout", str(timeout)], timeout=timeout + 30)

    def pss(self, cfg):
        return json.loads(self.vm_cmd(["pss", cfg["remote_dir"]]))

    def stop(self, cfg, timeout=10):
        self.vm_cmd(["stop", cfg["remote_dir"], "--timeout", str(timeout)],
                    timeout=timeout + 30)

    def link(self, cfg):
        self.vm_cmd(["link", cfg["remote_dir"]])


def connect(opt):
    """The destination of a migrate.py run: Local, or Ssh with opt.dst_host."""
    if not getattr(opt, "dst_host", None):
        return Local()
    return Ssh(opt.dst_host, opt.work, opt.bin_dir, opt.glue, opt.dst_prefix,
               opt.dst_run_dir, opt.ssh_config)
