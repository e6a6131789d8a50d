"""tlm_qemu.vm — launch and drive tlm's test guests (QEMU + the memload workload).

Each VM lives in a run directory RUN/NAME.GEN (RUN = $TLM_RUN_DIR, default
/dev/shm/tlm/run) holding:
    vm.json      its configuration and QEMU pid (everything below is named there)
    qmp.sock     QMP monitor                     ram          guest RAM (tmpfs file)
    qmp-mig.sock a second QMP monitor, reserved for the migration orchestrator's
                 persistent connection (a QMP socket serves one client at a time)
    ctl.sock     workload command port (ttyS1)   console.log  kernel + workload (ttyS0)
    qemu.log     QEMU's own stdout/stderr        region       the glue's region line
RUN/NAME is a symlink to the current generation: a migration starts NAME.GEN+1 next
to it and flips the link once the destination runs (socket paths are never reused).
A VM is named by NAME, by its directory, or by any file in that directory (qmp.sock).

Guest RAM is always `-object memory-backend-file,share=on` on a named file, so that
x-ignore-shared can leave it out of QEMU's stream and tlm can map it (docs/ARCHITECTURE.md
F3-F4, F8).

A QEMU started by anyone else (an operator's own command line) joins by `adopt`: its run
directory holds vm.json ("foreign": true, "adopted": true, its argv from /proc) and
qmp.sock, a symlink to its QMP socket; the QEMU and its files stay the operator's. A
destination started `--like` a foreign VM runs the source's command line rewritten
(tlm_qemu.cmdline: new RAM file, sockets in its run directory, -incoming) and is a
foreign VM of its own, with the usual run directory. Foreign VMs have no workload port:
their guest checks are the operator's --check-cmd (guest_check).

Run as `python3 -m tlm_qemu.vm` with qemu-glue on PYTHONPATH (the scripts' tlm_vm, from
scripts/lib/py.sh, does both); below, `vm` stands for that command.

    vm probe-accel [--force]      kvm or tcg, probed once, cached (docs/ARCHITECTURE.md F6)
    vm start NAME [--mem MiB] [--wl-mem MiB] [--seed N] [--dirty N] [--like VM]
             [--incoming URI] [--ram-file F] [--ram-copy-from F] [--env K=V]... [--no-link]
             [--netns NS] [--track] [--free-page-reporting] [--disk FILE]... [--mac MAC|auto]...
        --disk: a virtio-blk disk (/dev/vda, ...); --mac: a virtio-net NIC; with --like
        they replace the source's, one for one (clone-start.sh: overlays, fresh MACs).
        With --like, every disk QEMU would open read-write must exist here: migrations
        move no disk, the storage is shared (the same path on both hosts)
        --track: preload libtlm-glue.so ($TLM_GLUE, else BUILD/qemu-glue/libtlm-glue.so)
        with TLM_TRACK=1: the glue registers the guest RAM for dirty tracking, so that
        tlm-page-server can classify it while the guest runs (the live phase of
        migrate-postcopy.sh --mode tlm); --env K=V given too wins over its variables
        --free-page-reporting: a virtio-balloon with free page reporting: the guest
        reports the pages it frees and QEMU discards them from the RAM file (holes, which
        tlm classifies ZERO without reading); a destination started --like it has it too
        [--cmdline FILE]  with --like a foreign VM: FILE's arguments (one per line)
        instead of the source's, rewritten the same way
    vm adopt QMP_SOCKET [--name N] [--mode tlm|qemu|precopy]
        records the QEMU serving QMP_SOCKET (found by SO_PEERCRED) as VM N (default: its
        -name), after checking that its RAM can be migrated in that mode; prints its run
        directory (the same one if it was adopted before)
    vm check VM --phase before|after [--cmd CMD] [--before TEXT] [--timeout S]
        the guest check of a migration (guest_check); prints what "after" compares with
    vm wait-ready VM [--timeout S]              waits for the workload's READY
    vm cmd VM LINE [--timeout S]                one workload command, prints the reply
    vm ticks VM [--count N] [--timeout S]       waits for N new TICK lines
    vm sum-check BEFORE AFTER                   same guest memory after a migration?
    vm wait-migration VM --until ST[,ST] [--timeout S]      polls query-migrate
    vm link VM                                  makes VM the current generation of its name
    vm stop VM [--keep] [--timeout S]           quit (then SIGKILL), remove its directory
    vm pss VM | info VM [--get FIELD] | list
    vm devices VM      {"disks": [{"file", "format"}] QEMU writes, "nics": count} (JSON)
Exit status: 0 success, 1 failure (one line on stderr says what), 2 usage.
"""

import argparse
import json
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time

from . import cmdline as C
from .qmp import QMP, QMPError, QMPConnectionError, get_field

PROG = "tlm_qemu.vm"
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
QEMU = os.environ.get("TLM_QEMU", "qemu-system-x86_64")
KVM_PROBE_SECONDS = 8


class VMError(Exception):
    """A failure with a one-line, human reason."""


def run_dir():
    return os.environ.get("TLM_RUN_DIR", "/dev/shm/tlm/run")


def guest_dir():
    return os.environ.get("TLM_GUEST_DIR", os.path.join(ROOT, "build", "guest"))


def glue_path():
    """libtlm-glue.so: $TLM_GLUE, else next to $TLM_BIN_DIR's build tree, else build/."""
    if os.environ.get("TLM_GLUE"):
        return os.environ["TLM_GLUE"]
    bin_dir = os.environ.get("TLM_BIN_DIR")
    build = os.path.dirname(os.path.abspath(bin_dir)) if bin_dir else os.path.join(ROOT, "build")
    return os.path.join(build, "qemu-glue", "libtlm-glue.so")


def mig_qmp_path(cfg):
    """The QMP socket reserved for the migration orchestrator (qmp-mig.sock), or qmp.sock
    for a VM started before it existed or adopted without one."""
    p = os.path.join(cfg["dir"], "qmp-mig.sock")
    if cfg.get("foreign"):
        return cfg.get("mig_path") or os.path.join(cfg["dir"], "qmp.sock")
    return p if "qmp-mig.sock" in " ".join(cfg.get("argv") or []) else \
        os.path.join(cfg["dir"], "qmp.sock")


# ---- configuration ----------------------------------------------------------------------

def kernel_append(cfg):
    wl = cfg["workload"]
    args = ["console=ttyS0", "quiet", "loglevel=3", "panic=-1",
            f"tlm.mem={wl['mem']}", f"tlm.seed={wl['seed']}", f"tlm.dirty={wl['dirty']}"]
    if wl.get("hot"):
        args.append(f"tlm.hot={wl['hot']}")
    return " ".join(args + cfg.get("append_extra", []))


def qemu_argv(cfg):
    """The QEMU command line of a VM config (same for source and destination)."""
    if cfg.get("foreign"):
        return netns_prefix(cfg) + cfg["cmdline"] + (
            ["-incoming", cfg["incoming"]] if cfg.get("incoming") else [])
    d, mem = cfg["dir"], cfg["mem_mib"]
    argv = [QEMU, "-name", f"{cfg['name']},debug-threads=on",
            "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
            "-machine", f"{cfg['machine']},memory-backend=ram0",
            "-accel", cfg["accel"], "-smp", str(cfg["smp"]), "-m", f"{mem}M",
            "-object", f"memory-backend-file,id=ram0,size={mem}M,"
                       f"mem-path={cfg['ram_file']},share=on",
            "-kernel", cfg["kernel"], "-initrd", cfg["initrd"],
            "-append", kernel_append(cfg),
            "-chardev", f"file,id=con0,path={d}/console.log", "-serial", "chardev:con0",
            "-chardev", f"socket,id=ctl0,path={d}/ctl.sock,server=on,wait=off",
            "-serial", "chardev:ctl0",
            "-qmp", f"unix:{d}/qmp.sock,server=on,wait=off",
            "-qmp", f"unix:{d}/qmp-mig.sock,server=on,wait=off"]
    if cfg.get("cpu"):
        argv += ["-cpu", cfg["cpu"]]
    if cfg.get("free_page_reporting"):
        # the same device at both ends: its state migrates with the rest (the guest's
        # /init loads the driver when it sees it)
        argv += ["-device", "virtio-balloon-pci,id=balloon0,free-page-reporting=on"]
    argv += disk_nic_argv(cfg)
    if cfg.get("incoming"):
        argv += ["-incoming", cfg["incoming"]]
    return netns_prefix(cfg) + argv


def disk_nic_argv(cfg):
    """The test guest's disks (virtio-blk: /dev/vda, /dev/vdb, ...) and NICs (virtio-net on
    a user netdev that reaches nothing: a MAC, no traffic). A destination runs the same
    devices in the same order, so their PCI slots and the device state match."""
    argv = []
    for i, d in enumerate(cfg.get("disks") or []):
        argv += ["-drive", C.join_kv([["file", d["file"]], ["format", d["format"]],
                                      ["if", "none"], ["id", f"disk{i}"]]),
                 "-device", f"virtio-blk-pci,drive=disk{i},id=vd{i}"]
    for i, n in enumerate(cfg.get("nics") or []):
        argv += ["-netdev", f"user,id=net{i},restrict=on",
                 "-device", f"virtio-net-pci,netdev=net{i},id=nic{i},romfile="
                            + (f",mac={n['mac']}" if n.get("mac") else "")]
    return argv


def disk_format(path):
    """qcow2 (by its magic) or raw; VMError if the file cannot be read."""
    try:
        with open(path, "rb") as f:
            return "qcow2" if f.read(4) == b"QFI\xfb" else "raw"
    except OSError as e:
        raise VMError(f"disk {path}: {e.strerror}") from None


def cfg_devices(cfg):
    """(the disks QEMU opens read-write, [{"file", "format" (None: QEMU probes it)}], the
    NICs' count) of a config: the test guest's, or those of a foreign command line ("base":
    a destination's, not rewritten yet)."""
    if not cfg.get("foreign"):
        return cfg.get("disks") or [], len(cfg.get("nics") or [])
    argv = cfg.get("cmdline") or cfg["base"]
    try:
        return ([d for d in C.disks(argv, cfg.get("cwd")) if not d["readonly"]],
                len(C.nics(argv)))
    except C.Refused as e:
        raise VMError(f"{cfg['name']}: {e}") from None


def devices(cfg):
    """`vm devices`: {"disks": [{"file", "format"}], "nics": count} (what a template
    snapshots, what a clone replaces)."""
    dl, nics = cfg_devices(cfg)
    return {"disks": [{"file": d["file"], "format": d["format"] or disk_format(d["file"])}
                      for d in dl], "nics": nics}


def check_disks(cfg):
    """A VM started --like another (a migration's destination, a clone) opens the disks of
    its command line as they are: tlm moves no disk, the storage is shared (the same path
    on both hosts). A path this host cannot open read-write is refused here, in one line,
    before QEMU starts (QEMU itself would only fail when the migration activates it)."""
    for f in (d["file"] for d in cfg_devices(cfg)[0]):
        if not os.path.exists(f):
            raise VMError(f"disk {f}: no such file here: tlm migrates disks on shared "
                          f"storage only (the same path on both hosts)")
        if not os.access(f, os.R_OK | os.W_OK):
            raise VMError(f"disk {f}: not readable and writable here (shared storage "
                          f"must give the destination the same access)")


def netns_prefix(cfg):
    """An emulated host: `ip netns exec` execs QEMU (same pid)."""
    return ["ip", "netns", "exec", cfg["netns"]] if cfg.get("netns") else []


def load_cfg(path):
    with open(path) as f:
        return json.load(f)


def save_cfg(cfg):
    tmp = os.path.join(cfg["dir"], "vm.json.tmp")
    with open(tmp, "w") as f:
        json.dump(cfg, f, indent=2)
        f.write("\n")
    os.replace(tmp, os.path.join(cfg["dir"], "vm.json"))


def resolve(vm):
    """VM name, run directory, or a file in it -> its config."""
    cands = [vm, os.path.join(run_dir(), vm)]
    for c in cands:
        d = c if os.path.isdir(c) else os.path.dirname(c) if os.path.exists(c) else None
        if d and os.path.exists(os.path.join(d, "vm.json")):
            return load_cfg(os.path.join(os.path.realpath(d), "vm.json"))
    raise VMError(f"no VM '{vm}' (looked for vm.json in {vm} and {cands[1]})")


def alive(cfg):
    """Is the QEMU process of this config still running (and really this QEMU)?"""
    pid = cfg.get("pid")
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            raw = f.read()
    except (OSError, TypeError):
        return False
    if cfg.get("adopted"):      # its argv names nothing of ours: all of it must match
        return proc_argv(raw) == cfg["cmdline"]
    return (cfg["dir"] + "/qmp.sock").encode() in raw


def proc_argv(raw):
    return [os.fsdecode(a) for a in raw.split(b"\0")[:-1]]


# ---- accelerator probe ------------------------------------------------------------------

def kernel_release(gdir):
    try:
        with open(os.path.join(gdir, "kernel.stamp")) as f:
            for line in f:
                if line.startswith("release="):
                    return line.split("=", 1)[1].strip()
    except OSError:
        pass
    return None


def probe_accel(gdir, force=False, quiet=False):
    """KVM if a guest actually reaches READY under KVM, else TCG; cached in gdir/accel."""
    cache = os.path.join(gdir, "accel")
    release = kernel_release(gdir)
    if not force and os.path.exists(cache):
        with open(cache) as f:
            res = json.load(f)
        if res.get("kernel") == release:
            return res
    res = {"kernel": release, "probed_at": time.strftime("%Y-%m-%dT%H:%M:%S")}
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        res.update(accel="tcg", cpu=None, reason="/dev/kvm is missing or not accessible")
    else:
        res.update(try_kvm(gdir))
    with open(cache + ".tmp", "w") as f:
        json.dump(res, f, indent=2)
        f.write("\n")
    os.replace(cache + ".tmp", cache)
    if not quiet:
        print(f"{PROG}: accelerator: {res['accel']} ({res['reason']})", file=sys.stderr)
    return res


def try_kvm(gdir):
    """Boot a 1 MiB workload under KVM and wait a few seconds for READY, first with
    -cpu host, then with QEMU's default model (some hosts refuse host MSRs)."""
    base = os.path.join(run_dir(), "probe")
    os.makedirs(base, exist_ok=True)
    reasons = []
    for cpu in ("host", None):
        cfg = new_cfg(argparse.Namespace(
            name=f"kvm-probe-{os.getpid()}", mem=128, wl_mem=1, seed=1, dirty=0, hot=None,
            smp=1, machine="pc", accel="kvm", cpu=cpu, like=None, append=[]), gdir, base)
        cfg["cpu"] = cpu        # None: QEMU's default model, not new_cfg's "host"
        t0 = time.monotonic()
        try:
            launch(cfg, {})
            wait_console(cfg, "READY", KVM_PROBE_SECONDS)
            return {"accel": "kvm", "cpu": cpu,
                    "reason": f"KVM guest (-cpu {cpu or 'default'}) reached READY in "
                              f"{time.monotonic() - t0:.1f} s"}
        except VMError as e:
            reasons.append(f"-cpu {cpu or 'default'}: {e}")
        finally:
            stop(cfg, timeout=2)
    try:
        os.rmdir(base)
    except OSError:
        pass
    return {"accel": "tcg", "cpu": None, "reason": "KVM unusable: " + "; ".join(reasons)}


# ---- start / stop -----------------------------------------------------------------------

def next_gen(name, base):
    gens = [0]
    for e in os.listdir(base) if os.path.isdir(base) else []:
        stem, _, g = e.rpartition(".")
        if stem == name and g.isdigit():
            gens.append(int(g))
    return max(gens) + 1


def max_wl_mem(mem_mib):
    """The largest workload buffer a guest of mem_mib MiB holds (a 2048 MiB guest: 1840;
    memload is OOM-killed at 1900)."""
    return mem_mib - 80 - mem_mib // 16


def new_cfg(opt, gdir, base):
    """Config of a new VM: from --like (same machine) or from the options."""
    if opt.like:
        src = resolve(opt.like) if not opt.like.endswith(".json") else load_cfg(opt.like)
        if src.get("foreign"):
            cfg = foreign_like(src, getattr(opt, "cmdline", None))
        else:
            cfg = {k: src.get(k) for k in ("mem_mib", "machine", "accel", "cpu", "smp",
                                           "kernel", "initrd", "workload", "append_extra",
                                           "free_page_reporting", "disks", "nics")}
    elif getattr(opt, "cmdline", None):
        raise VMError("--cmdline goes with --like a foreign VM (one adopted, or started "
                      "like one)")
    else:
        for f in ("vmlinuz", "initrd.gz"):
            if not os.path.exists(os.path.join(gdir, f)):
                raise VMError(f"no guest image {gdir}/{f} (run scripts/mkguest.sh)")
        accel, cpu = opt.accel, opt.cpu
        if accel == "auto":
            res = probe_accel(gdir)
            accel, cpu = res["accel"], cpu or res.get("cpu")
        elif accel == "kvm" and not cpu:
            cpu = "host"
        cfg = {"mem_mib": opt.mem, "machine": opt.machine, "accel": accel, "cpu": cpu,
               "smp": opt.smp,
               "kernel": os.path.join(gdir, "vmlinuz"),
               "initrd": os.path.join(gdir, "initrd.gz"),
               "workload": {"mem": opt.wl_mem, "seed": opt.seed, "dirty": opt.dirty,
                            "hot": opt.hot},
               "append_extra": opt.append,
               "free_page_reporting": bool(getattr(opt, "free_page_reporting", False)),
               "disks": [], "nics": []}
        if opt.wl_mem > max_wl_mem(opt.mem):
            raise VMError(f"--wl-mem {opt.wl_mem} MiB does not fit in a {opt.mem} MiB "
                          f"guest (at most {max_wl_mem(opt.mem)}: 80 MiB for the kernel "
                          f"and initramfs, 1/16 of the RAM for the kernel's page tables "
                          f"and the workload's own tables)")
    gen = next_gen(opt.name, base)
    d = os.path.join(base, f"{opt.name}.{gen}")
    if len(d) + len("/qmp.sock") >= 108:
        raise VMError(f"run directory path too long for a unix socket: {d}")
    cfg.update(name=opt.name, gen=gen, dir=d, ram_file=os.path.join(d, "ram"),
               incoming=None, env={}, pid=None)
    set_devices(cfg, getattr(opt, "disk", None) or [], getattr(opt, "mac", None) or [],
                bool(opt.like))
    if cfg.get("foreign"):
        foreign_dst(cfg)
    if opt.like:
        check_disks(cfg)
    return cfg


def set_devices(cfg, disks, macs, like):
    """--disk FILE... and --mac MAC|auto...: the test guest's disks and NICs; with --like
    they replace the source's one for one (a clone's overlays, its own MACs: the device
    state it loads has the same devices), for a foreign VM in its command line."""
    if like:
        old, nics = cfg_devices(cfg)
        for what, new, n in (("--disk", disks, len(old)), ("--mac", macs, nics)):
            if new and len(new) != n:
                raise VMError(f"{what}: {len(new)} given, the VM it is like has {n} "
                              f"({'writable disks' if what == '--disk' else 'NICs'})")
    files = [os.path.abspath(f) for f in disks]
    for m in macs:
        if m != "auto" and not re.fullmatch(r"([0-9a-f]{2}:){5}[0-9a-f]{2}", m):
            raise VMError(f"--mac {m}: not a MAC (xx:xx:xx:xx:xx:xx, lower case) or auto")
    macs = [None if m == "auto" else m for m in macs]
    if cfg.get("foreign"):
        try:
            if files:
                cfg["base"] = C.set_disks(cfg["base"], cfg.get("cwd"), files)
            if macs:
                cfg["base"] = C.set_macs(cfg["base"], macs)
        except C.Refused as e:
            raise VMError(str(e)) from None
        return
    if files or not like:
        cfg["disks"] = [{"file": f, "format": disk_format(f)} for f in files]
    if macs or not like:
        cfg["nics"] = [{"mac": m} for m in macs]


def foreign_like(src, path):
    """The start of a destination's config for the foreign VM src: its command line (or
    the file path's, one argument per line), finished by foreign_dst."""
    try:
        base = C.read_cmdline_file(path) if path else src["cmdline"]
        ram = C.guest_ram(base, src.get("cwd"), check_fs=False)
    except C.Refused as e:
        raise VMError(f"{path or src['name']}: {e}") from None
    cfg = {"foreign": True, "base": base, "cwd": src.get("cwd"),
           "mem_mib": ram["size"] >> 20 if ram["size"] else src.get("mem_mib"),
           "src_qmp": None if path else src.get("qmp_sock"), "src_mig": src.get("mig_path"),
           "ram_dir": None}
    if C.fs_type(src["ram_file"]) == "hugetlbfs":
        # stock QEMU migrates between RAM blocks of the same page size only: the new
        # file goes next to the source's (removed with the VM: "owned")
        cfg["ram_dir"] = os.path.dirname(src["ram_file"])
    return cfg


def foreign_dst(cfg):
    """The destination's command line (tlm_qemu.cmdline.dst_argv; -incoming is added by
    qemu_argv) and the sockets it will have."""
    d, ram_dir = cfg["dir"], cfg.pop("ram_dir")
    if ram_dir:
        cfg["ram_file"] = os.path.join(ram_dir, f"{cfg['name']}.{cfg['gen']}.ram")
        cfg["owned"] = [cfg["ram_file"]]
    cfg["cmdline"] = C.dst_argv(cfg.pop("base"), cfg["cwd"], cfg["ram_file"], d,
                                qmp=cfg.pop("src_qmp"), drop=[cfg.pop("src_mig")])
    cfg.update(qmp_sock=os.path.join(d, "qmp.sock"), mig_path=os.path.join(d, "qmp-mig.sock"))


def launch(cfg, env):
    """Create the run directory (unless made already), start QEMU in its own session,
    wait for QMP. On failure nothing is left behind (QEMU killed, directory removed)."""
    os.makedirs(cfg["dir"], exist_ok=True)
    cfg["env"] = env
    cfg["argv"] = qemu_argv(cfg)
    try:
        with open(os.path.join(cfg["dir"], "qemu.log"), "wb") as log:
            p = subprocess.Popen(cfg["argv"], stdin=subprocess.DEVNULL, stdout=log,
                                 stderr=subprocess.STDOUT, start_new_session=True,
                                 env=dict(os.environ, **env), cwd=cfg.get("cwd"))
    except OSError as e:
        shutil.rmtree(cfg["dir"], ignore_errors=True)
        raise VMError(f"cannot run {QEMU}: {e}") from None
    cfg["pid"] = p.pid
    cfg["started_at"] = time.time()
    save_cfg(cfg)
    try:
        wait_qmp(cfg, p, 15)
    except VMError:
        if p.poll() is None:
            p.kill()
            p.wait()
        shutil.rmtree(cfg["dir"], ignore_errors=True)
        raise


def wait_qmp(cfg, p, timeout):
    deadline = time.monotonic() + timeout
    while True:
        if p.poll() is not None:
            raise VMError(f"QEMU {cfg['name']} exited at start (status {p.returncode}): "
                          f"{log_tail(cfg)}")
        try:
            with QMP(os.path.join(cfg["dir"], "qmp.sock"), timeout=0.5) as q:
                q.execute("query-status")
            return
        except QMPConnectionError:
            if time.monotonic() > deadline:
                raise VMError(f"QEMU {cfg['name']} (pid {p.pid}) has no QMP after "
                              f"{timeout} s: {log_tail(cfg)}") from None


def log_tail(cfg, n=3):
    try:
        with open(os.path.join(cfg["dir"], "qemu.log"), errors="replace") as f:
            lines = [ln.strip() for ln in f if ln.strip()]
        return " | ".join(lines[-n:]) or "(no output)"
    except OSError:
        return "(no qemu.log)"


def set_link(cfg):
    link = os.path.join(os.path.dirname(cfg["dir"]), cfg["name"])
    tmp = link + ".link-tmp"
    if os.path.lexists(tmp):
        os.unlink(tmp)
    os.symlink(os.path.basename(cfg["dir"]), tmp)
    os.replace(tmp, link)


def stop(cfg, timeout=10, keep=False):
    """QMP quit, then SIGTERM, then SIGKILL; remove the directory unless keep."""
    if alive(cfg):
        try:
            with QMP(os.path.join(cfg["dir"], "qmp.sock"), timeout=min(timeout, 3)) as q:
                q.execute("quit")
        except (QMPError, QMPConnectionError):
            pass        # QEMU closes the socket while quitting; or it is stuck: signals
        deadline = time.monotonic() + timeout
        for sig in (None, signal.SIGTERM, signal.SIGKILL):
            if sig is not None and alive(cfg):
                os.kill(cfg["pid"], sig)
                deadline = time.monotonic() + 3
            while alive(cfg) and time.monotonic() < deadline:
                time.sleep(0.05)
            if not alive(cfg):
                break
    if alive(cfg):
        raise VMError(f"QEMU {cfg['name']} (pid {cfg['pid']}) does not die")
    if not keep:
        shutil.rmtree(cfg["dir"], ignore_errors=True)
        for f in cfg.get("owned") or ():
            if os.path.exists(f):
                os.unlink(f)
        link = os.path.join(os.path.dirname(cfg["dir"]), cfg["name"])
        if os.path.islink(link) and os.readlink(link) == os.path.basename(cfg["dir"]):
            os.unlink(link)


# ---- guest I/O --------------------------------------------------------------------------

def wait_console(cfg, word, timeout):
    """Wait for a console line starting with `word`."""
    path = os.path.join(cfg["dir"], "console.log")
    deadline = time.monotonic() + timeout
    while True:
        try:
            with open(path, "rb") as f:
                for raw in f.read().splitlines():
                    line = raw.decode(errors="replace").strip()
                    if line.startswith(word):
                        return line
        except FileNotFoundError:
            pass
        if not alive(cfg):
            raise VMError(f"QEMU {cfg['name']} is not running: {log_tail(cfg)}; last "
                          f"console line: {console_tail(path)!r}")
        if time.monotonic() > deadline:
            raise VMError(f"{cfg['name']}: no '{word}' on the console in {timeout:g} s "
                          f"(last console line: {console_tail(path)!r})")
        time.sleep(0.1)


def console_tail(path):
    try:
        with open(path, "rb") as f:
            lines = [ln.strip() for ln in f.read().splitlines() if ln.strip()]
        return lines[-1].decode(errors="replace")[:120] if lines else ""
    except OSError:
        return ""


REPLY = {"sum": "SUM", "reseed": "RESEEDED", "dirty": "DIRTY", "pause": "PAUSED",
         "resume": "RESUMED", "ping": "PONG", "dwrite": "DWROTE", "dread": "DREAD"}


RESEND_S = 5


def guest_cmd(cfg, line, timeout=30):
    """Send one command line on the workload port, return its reply line.

    A line that reaches the guest before memload opened its port is lost, so the
    command is sent again every RESEND_S seconds without a reply (every command is
    idempotent; a surplus reply is dropped by QEMU once we disconnect)."""
    if not line.split():
        raise VMError("empty workload command")
    want = REPLY.get(line.split()[0], "")
    path = os.path.join(cfg["dir"], "ctl.sock")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    deadline = time.monotonic() + timeout
    try:
        s.settimeout(timeout)
        s.connect(path)
        buf = b""
        while True:
            s.sendall(line.encode() + b"\n")
            resend = min(deadline, time.monotonic() + RESEND_S)
            try:
                reply, buf = read_reply(s, buf, want, line.split()[0], resend)
            except VMError as e:
                raise VMError(f"{cfg['name']}: {e}") from None
            if reply is not None:
                return reply
            if time.monotonic() >= deadline:
                raise socket.timeout
    except socket.timeout:
        raise VMError(f"{cfg['name']}: no reply to '{line}' in {timeout:g} s") from None
    except OSError as e:
        raise VMError(f"{cfg['name']}: workload port {path}: {e}") from None
    finally:
        s.close()


def read_reply(s, buf, want, word, until):
    """The first line starting with `want` (any line if want is empty) before `until`;
    (None, buf) at `until`. ERR replies naming `word` raise (others answer a fragment
    of an earlier, garbled line)."""
    while True:
        *lines, buf = buf.split(b"\n")
        for raw in lines:
            reply = raw.decode(errors="replace").strip()
            if reply.startswith("ERR"):
                if word in reply:
                    raise VMError(f"workload: {reply}")
                continue
            if want and reply.startswith(want) or not want and reply:
                return reply, buf
        left = until - time.monotonic()
        if left <= 0:
            return None, buf
        s.settimeout(left)
        try:
            chunk = s.recv(4096)
        except socket.timeout:
            return None, buf
        if not chunk:
            raise VMError("workload port closed before the reply")
        buf += chunk


def sum_differs(before, after):
    """Two workload "SUM <hash> <pages> <rewrites> bad=<n>" replies of one guest, before
    and after a migration: None if the memory is the same (hash and pages), no page is bad
    and time went on (rewrites did not go back); else why not."""
    b, a = before.split(), after.split()
    if len(a) != 5 or len(b) != 5 or a[1:3] != b[1:3] or a[4] != "bad=0" or \
       int(a[3]) < int(b[3]):
        return f"guest memory differs after migration: before '{before}', after '{after}'"
    return None


def wait_ticks(cfg, count, timeout):
    """Wait for `count` TICK lines written after now; return the last."""
    path = os.path.join(cfg["dir"], "console.log")
    start = os.path.getsize(path) if os.path.exists(path) else 0
    deadline = time.monotonic() + timeout
    while True:
        with open(path, "rb") as f:
            f.seek(start)
            ticks = [ln.decode(errors="replace").strip() for ln in f.read().splitlines()
                     if ln.startswith(b"TICK ")]
        if len(ticks) >= count:
            return ticks[count - 1]
        if not alive(cfg):
            raise VMError(f"QEMU {cfg['name']} is not running: {log_tail(cfg)}")
        if time.monotonic() > deadline:
            raise VMError(f"{cfg['name']}: {len(ticks)} of {count} TICKs in {timeout:g} s "
                          f"(guest not running? see {path})")
        time.sleep(0.1)


def trace_sample(trace, info):
    """trace = (file, label, t0): append "label,seconds,pages_present,pages_total", pages
    present at the destination = pages QEMU sent whole or as zero pages."""
    f, label, t0 = trace
    ram = info.get("ram", {})
    if ram.get("total"):
        f.write(f"{label},{time.time() - t0:.3f},{ram.get('normal', 0) + ram.get('duplicate', 0)},"
                f"{ram['total'] // 4096}\n")


def wait_migration(cfg, until, timeout, timeout_ok=False, trace=None, poll=0.05):
    """Poll query-migrate until status is in `until`; failed/cancelled raise; so does the
    timeout unless timeout_ok (then the last query-migrate result is returned)."""
    deadline = time.monotonic() + timeout
    last = None
    with QMP(os.path.join(cfg["dir"], "qmp.sock"), timeout=10) as q:
        while True:
            info = q.execute("query-migrate")
            if trace:
                trace_sample(trace, info)
            last = info.get("status", "none")
            if last in until:
                return info
            if last in ("failed", "cancelled") and last not in until:
                raise VMError(f"{cfg['name']}: migration {last}: "
                              f"{info.get('error-desc', 'no reason given')}")
            if time.monotonic() > deadline:
                if timeout_ok:
                    return info
                raise VMError(f"{cfg['name']}: migration still '{last}' after {timeout:g} s")
            time.sleep(poll)


def pss(cfg):
    """Proportional set size of the QEMU process (kB), from smaps_rollup, and the
    allocated size of its RAM file."""
    keys = {"Rss": "rss_kb", "Pss": "pss_kb", "Pss_Anon": "pss_anon_kb",
            "Pss_File": "pss_file_kb", "Pss_Shmem": "pss_shmem_kb"}
    out = {"pid": cfg["pid"]}
    try:
        with open(f"/proc/{cfg['pid']}/smaps_rollup") as f:
            for line in f:
                k, _, v = line.partition(":")
                if k in keys:
                    out[keys[k]] = int(v.split()[0])
    except OSError as e:
        raise VMError(f"{cfg['name']}: cannot read smaps_rollup: {e}") from None
    try:        # tmpfs pages of the RAM file, mapped or not (Pss sees mapped ones only)
        out["ram_file_kb"] = os.stat(cfg["ram_file"]).st_blocks // 2
    except OSError:
        out["ram_file_kb"] = None
    return out


# ---- foreign VMs: adoption and guest checks ------------------------------------------------

VM_NAME = "[A-Za-z0-9._-]{1,64}"     # a VM id of the protocol (TLM_PROTO_VMID_MAX)
GLUE_ENV = ("LD_PRELOAD", "TLM_RAM_PATH", "TLM_TEMPLATE", "TLM_SOCK", "TLM_VM_ID",
            "TLM_SOURCE", "TLM_ARM", "TLM_REGION_FILE", "TLM_TRACK", "TLM_LOG_LEVEL")


def socket_pid(path):
    """The pid of the process listening on the unix socket path (SO_PEERCRED of a
    connection: the credentials its server had at listen()); QEMU's QMP greeting is never
    read, the connection is closed at once."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.settimeout(5)
        s.connect(path)
        pid, _, _ = struct.unpack("3i", s.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                                     struct.calcsize("3i")))
    except OSError as e:
        raise VMError(f"{path}: {e.strerror or e}") from None
    finally:
        s.close()
    if pid <= 0:
        raise VMError(f"{path}: its server runs in another pid namespace (no pid here)")
    return pid


def adopted(base, pid):
    """The run-directory entry of an adopted, still running QEMU pid, if any."""
    for e in os.listdir(base) if os.path.isdir(base) else ():
        p = os.path.join(base, e)
        if os.path.islink(p) and os.path.exists(os.path.join(p, "vm.json")):
            cfg = resolve(p)
            if cfg.get("adopted") and cfg.get("pid") == pid and alive(cfg):
                return cfg
    return None


def adopt(sock, name=None, mode="tlm"):
    """Record the QEMU serving QMP socket sock as a VM of the run directory (see the
    module's doc), after checking that its RAM can be migrated in this mode."""
    sock = os.path.abspath(sock)
    pid = socket_pid(sock)
    base = run_dir()
    old = adopted(base, pid)
    if old:         # adopted before, perhaps for another mode
        if name and name != old["name"]:
            raise VMError(f"{sock}: adopted already, as VM {old['name']} ({old['dir']})")
        try:
            C.check_ram_fs(old["ram_file"], mode)
        except C.Refused as e:
            raise VMError(f"{sock}: {e}") from None
        return old
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = proc_argv(f.read())
        cwd = os.readlink(f"/proc/{pid}/cwd")
        with open(f"/proc/{pid}/environ", "rb") as f:
            environ = dict(os.fsdecode(kv).partition("=")[::2] for kv in f.read().split(b"\0")
                           if kv)
    except OSError as e:
        raise VMError(f"{sock}: its server, pid {pid}: {e.strerror}") from None
    try:
        C.check_daemonized(argv)
        ram = C.guest_ram(argv, cwd, mode)
        if os.path.realpath(sock) not in [os.path.realpath(p)
                                          for p in C.server_sockets(argv, cwd)]:
            raise C.Refused(f"pid {pid} ({os.path.basename(argv[0])}) does not name "
                            f"{sock} on its command line: give the QMP socket of a QEMU")
    except C.Refused as e:
        raise VMError(f"{sock}: {e}") from None
    try:            # the migration needs it: a QMP monitor, no other client on it
        with QMP(sock, timeout=5) as q:
            q.execute("query-status")
    except (QMPError, QMPConnectionError) as e:
        raise VMError(f"{e}: give the QMP socket of the VM (-qmp unix:PATH,server=on), "
                      f"with no other client connected (QEMU serves one at a time)") from None
    name = name or C.vm_name(argv)
    if not name or not re.fullmatch(VM_NAME, name):
        raise VMError(f"{sock}: {'the -name ' + repr(name) if name else 'no -name'}: give "
                      f"a VM name of 1-64 [A-Za-z0-9._-] (--name)")
    link = os.path.join(base, name)
    if os.path.exists(os.path.join(link, "vm.json")):
        old = resolve(link)
        if alive(old):
            raise VMError(f"{sock}: a VM named {name} runs already ({old['dir']}): give "
                          f"another name (--name)")
        stop(old)       # a dead leftover: clear it
    os.makedirs(base, exist_ok=True)
    gen = next_gen(name, base)
    d = os.path.join(base, f"{name}.{gen}")
    if len(d) + len("/qmp-mig.sock") >= 108:
        raise VMError(f"run directory path too long for a unix socket: {d}")
    os.makedirs(d)
    os.symlink(sock, os.path.join(d, "qmp.sock"))
    # started with the glue (dirty tracking: TLM_TRACK=1, TLM_REGION_FILE): keep its
    # configuration, which the migration reads like that of `start --track`
    env = {k: v for k, v in environ.items() if k in GLUE_ENV} \
        if "libtlm-glue" in environ.get("LD_PRELOAD", "") else {}
    cfg = {"name": name, "gen": gen, "dir": d, "foreign": True, "adopted": True,
           "cmdline": argv, "argv": argv, "cwd": cwd, "pid": pid, "ram_file": ram["mem_path"],
           "mem_mib": (ram["size"] or 0) >> 20, "qmp_sock": sock, "mig_path": None,
           "env": env, "track": env.get("TLM_TRACK") == "1", "incoming": None,
           "netns": None, "started_at": time.time()}
    save_cfg(cfg)
    set_link(cfg)
    return cfg


def qmp_sock(cfg):
    """The VM's QMP socket for other clients: the operator's for an adopted VM."""
    return cfg.get("qmp_sock") or os.path.join(cfg["dir"], "qmp.sock")


def check_kind(cfg, cmd):
    """How a migration checks this guest: "cmd" (--check-cmd), "sum" (the test guest's
    checksum, tlm_qemu.vm's own VMs) or None (a foreign VM without --check-cmd)."""
    return "cmd" if cmd else None if cfg.get("foreign") else "sum"


def no_check_note(cfg):
    return (f"{cfg['name']}: no guest check (a VM not started by tlm_qemu.vm: "
            f"--check-cmd CMD adds one)")


def guest_check(cfg, phase, cmd=None, before=None, timeout=60, ticks=None):
    """The guest check of a migration, at the side that runs the guest (phase before: the
    source, after: the destination). "sum": the workload's checksum before; after, TICKs
    and the same checksum. "cmd": `sh -c CMD` with TLM_CHECK_PHASE, TLM_VM_NAME, TLM_VM_QMP
    and, after, TLM_CHECK_BEFORE = its output before; a non-zero exit fails. Returns
    before: what after compares with; after: the report's "checksum" field. ticks: how to
    wait for TICKs (default wait_ticks; a remote destination's runs there)."""
    kind = check_kind(cfg, cmd)
    if kind is None:
        return None if phase == "before" else "not checked"
    if kind == "sum":
        if phase == "before":
            return guest_cmd(cfg, "sum", timeout)
        (ticks or wait_ticks)(cfg, 2, 30)
        after = guest_cmd(cfg, "sum", timeout)
        why = sum_differs(before, after)
        if why:
            raise VMError(f"{cfg['name']}: {why}")
        return f"{after.split()[1]} ok"
    env = dict(os.environ, TLM_CHECK_PHASE=phase, TLM_VM_NAME=cfg["name"],
               TLM_VM_QMP=qmp_sock(cfg))
    if phase == "after":
        env["TLM_CHECK_BEFORE"] = before or ""
    try:
        r = subprocess.run(["/bin/sh", "-c", cmd], env=env, stdin=subprocess.DEVNULL,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           timeout=timeout)
    except subprocess.TimeoutExpired:
        raise VMError(f"{cfg['name']}: --check-cmd {phase} the migration: no exit in "
                      f"{timeout:g} s") from None
    if r.returncode:        # its last line says why, once
        last = (r.stderr.strip().splitlines() or r.stdout.strip().splitlines() or
                ["no output"])[-1]
        raise VMError(f"{cfg['name']}: guest check failed {phase} the migration "
                      f"(--check-cmd exit {r.returncode}): {last}")
    sys.stderr.write(r.stderr)
    return r.stdout.strip() if phase == "before" else "check-cmd ok"


# ---- command line -----------------------------------------------------------------------

def cmd_start(opt):
    base = run_dir()
    os.makedirs(base, exist_ok=True)
    link = os.path.join(base, opt.name)
    if not opt.no_link and os.path.exists(os.path.join(link, "vm.json")):
        old = resolve(link)
        if alive(old):
            raise VMError(f"VM {opt.name} already runs (pid {old['pid']}, {old['dir']})")
        stop(old)       # a dead leftover: clear it
    cfg = new_cfg(opt, guest_dir(), base)
    if opt.ram_file:
        cfg["ram_file"] = os.path.abspath(opt.ram_file)
    cfg["incoming"] = opt.incoming
    cfg["netns"] = opt.netns
    env = {}
    if opt.track:
        glue = glue_path()
        if not os.path.exists(glue):
            raise VMError(f"--track: no {glue} (build tlm, or set TLM_GLUE)")
        env.update({"LD_PRELOAD": glue, "TLM_RAM_PATH": "{ram_file}", "TLM_TRACK": "1",
                    "TLM_REGION_FILE": "{dir}/region"})
    for kv in opt.env:
        k, sep, v = kv.partition("=")
        if not sep or not k:
            raise VMError(f"--env wants K=V, not '{kv}'")
        env[k] = v
    env = {k: v.replace("{ram_file}", cfg["ram_file"]).replace("{dir}", cfg["dir"])
           for k, v in env.items()}
    cfg["track"] = bool(opt.track)
    if opt.ram_copy_from:
        # The non-shared fallback: the clone gets a private copy of the template RAM.
        os.makedirs(cfg["dir"])
        os.makedirs(os.path.dirname(cfg["ram_file"]), exist_ok=True)
        r = subprocess.run(["cp", "--sparse=always", opt.ram_copy_from, cfg["ram_file"]],
                           stderr=subprocess.PIPE, text=True)
        if r.returncode:
            shutil.rmtree(cfg["dir"], ignore_errors=True)
            raise VMError(f"cannot copy {opt.ram_copy_from}: {r.stderr.strip()}")
    launch(cfg, env)
    if not opt.no_link:
        set_link(cfg)
    print(cfg["dir"])


def cmd_info(opt):
    cfg = resolve(opt.vm)
    cfg["running"] = alive(cfg)
    cfg["qmp"] = os.path.join(cfg["dir"], "qmp.sock")
    cfg["qmp_sock"] = qmp_sock(cfg)
    cfg["qmp_mig"] = mig_qmp_path(cfg)
    cfg["ctl"] = os.path.join(cfg["dir"], "ctl.sock")
    cfg["console"] = os.path.join(cfg["dir"], "console.log")
    if opt.get:
        v = get_field(cfg, opt.get)
        print(json.dumps(v) if isinstance(v, (dict, list)) else
              str(v).lower() if isinstance(v, bool) else v)
    else:
        print(json.dumps(cfg, indent=2))


def cmd_list(opt):
    base = run_dir()
    for e in sorted(os.listdir(base)) if os.path.isdir(base) else []:
        p = os.path.join(base, e)
        if os.path.islink(p) and os.path.exists(os.path.join(p, "vm.json")):
            cfg = resolve(p)
            state = "running" if alive(cfg) else "dead"
            print(f"{e}\t{cfg['dir']}\tpid {cfg['pid']}\t{state}")


def cmd_check(opt):
    cfg = resolve(opt.vm)
    if check_kind(cfg, opt.check_cmd) is None and opt.phase == "before":
        print(f"{PROG}: {no_check_note(cfg)}", file=sys.stderr)
    out = guest_check(cfg, opt.phase, opt.check_cmd, opt.before, opt.timeout)
    if out is not None:
        print(out)


def cmd_wait_ready(opt):
    cfg = resolve(opt.vm)
    line = wait_console(cfg, "READY", opt.timeout)
    print(f"{line} boot_s={time.time() - cfg['started_at']:.1f}")


def parser():
    ap = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("probe-accel", help="decide kvm or tcg (cached in the guest dir)")
    p.add_argument("--force", action="store_true", help="probe again")
    p.add_argument("--guest-dir", help="guest image dir (default build/guest)")
    p = sub.add_parser("start", help="start a VM")
    p.add_argument("name")
    p.add_argument("--mem", type=int, default=256, help="guest RAM, MiB (256)")
    p.add_argument("--wl-mem", type=int, default=64, help="workload buffer, MiB (64)")
    p.add_argument("--seed", type=int, default=1, help="workload seed (1)")
    p.add_argument("--dirty", type=int, default=100, help="rewrites, pages/s (100)")
    p.add_argument("--hot", type=int, help="rewrite set, MiB (workload buffer / 8)")
    p.add_argument("--smp", type=int, default=1)
    p.add_argument("--machine", default="pc")
    p.add_argument("--cpu", help="CPU model (KVM default: the probed one, host)")
    p.add_argument("--accel", default="auto", choices=["auto", "kvm", "tcg"])
    p.add_argument("--append", action="append", default=[], help="extra kernel argument")
    p.add_argument("--like", help="copy the machine config of this VM or vm.json")
    p.add_argument("--incoming", help="QEMU -incoming URI (e.g. defer)")
    p.add_argument("--ram-file", help="guest RAM file (default RUNDIR/ram)")
    p.add_argument("--ram-copy-from", help="copy this file to the RAM file first")
    p.add_argument("--env", action="append", default=[], metavar="K=V",
                   help="environment of QEMU (LD_PRELOAD=..., TLM_...); {ram_file} and "
                        "{dir} in V become the VM's RAM file and run directory")
    p.add_argument("--netns", help="run QEMU in this network namespace (ip netns)")
    p.add_argument("--disk", action="append", default=[], metavar="FILE",
                   help="a virtio-blk disk (qcow2 or raw, by its header); with --like: "
                        "the source's writable disks, one for one")
    p.add_argument("--mac", action="append", default=[], metavar="MAC",
                   help="a virtio-net NIC with this MAC (auto: QEMU's); with --like: the "
                        "source's NICs' MACs, one for one")
    p.add_argument("--cmdline", metavar="FILE",
                   help="with --like a foreign VM: its command line from FILE (one argument "
                        "per line), rewritten like the source's")
    p.add_argument("--no-link", action="store_true",
                   help="do not make it the current VM of NAME (migration destinations)")
    p.add_argument("--track", action="store_true",
                   help="preload libtlm-glue.so with TLM_TRACK=1 (dirty tracking of the "
                        "guest RAM for tlm's live phase)")
    p.add_argument("--free-page-reporting", action="store_true",
                   help="a virtio-balloon with free page reporting: pages the guest frees "
                        "are discarded from its RAM file")
    for name, hlp in (("wait-ready", "wait for READY"), ("pss", "Pss of QEMU (kB)"),
                      ("devices", "writable disks and NICs (JSON)"),
                      ("link", "make this generation current"), ("info", "config")):
        p = sub.add_parser(name, help=hlp)
        p.add_argument("vm")
        if name == "wait-ready":
            p.add_argument("--timeout", type=float, default=60)
        if name == "info":
            p.add_argument("--get", metavar="FIELD")
    p = sub.add_parser("cmd", help="send one workload command, print the reply")
    p.add_argument("vm")
    p.add_argument("line")
    p.add_argument("--timeout", type=float, default=60)
    p = sub.add_parser("sum-check", help="compare SUM replies from before/after a "
                       "migration (exit 1 and why if they differ)")
    p.add_argument("before")
    p.add_argument("after")
    p = sub.add_parser("ticks", help="wait for new TICK lines")
    p.add_argument("vm")
    p.add_argument("--count", type=int, default=2)
    p.add_argument("--timeout", type=float, default=20)
    p = sub.add_parser("wait-migration", help="poll query-migrate until a status")
    p.add_argument("vm")
    p.add_argument("--until", required=True, help="comma-separated statuses")
    p.add_argument("--timeout", type=float, default=300)
    p.add_argument("--timeout-ok", action="store_true",
                   help="exit 0 at the timeout (print the last status); failures still fail")
    p.add_argument("--trace", metavar="FILE", help="append progress samples (CSV) to FILE")
    p.add_argument("--trace-label", default="qemu,vm,0", metavar="MODE,VM,T0",
                   help="first columns of the samples; T0: epoch seconds of time 0")
    p = sub.add_parser("stop", help="stop a VM and remove its run directory")
    p.add_argument("vm")
    p.add_argument("--keep", action="store_true", help="keep the run directory")
    p.add_argument("--timeout", type=float, default=10)
    sub.add_parser("list", help="list the VMs of the run directory")
    p = sub.add_parser("adopt", help="record a QEMU started by someone else (by its QMP "
                       "socket) as a VM; print its run directory")
    p.add_argument("sock", metavar="QMP_SOCKET")
    p.add_argument("--name", help="VM name (default: its -name)")
    p.add_argument("--mode", default="tlm", choices=["tlm", "qemu", "precopy"],
                   help="the migration mode its RAM is checked for (tlm)")
    p = sub.add_parser("check", help="a migration's guest check (prints what 'after' "
                       "compares with, or the result)")
    p.add_argument("vm")
    p.add_argument("--phase", required=True, choices=["before", "after"])
    p.add_argument("--cmd", dest="check_cmd", help="the operator's check: sh -c CMD")
    p.add_argument("--before", default="", help="the before phase's output (after)")
    p.add_argument("--timeout", type=float, default=60)
    return ap


def main(argv):
    opt = parser().parse_args(argv)
    if opt.cmd == "probe-accel":
        res = probe_accel(opt.guest_dir or guest_dir(), opt.force, quiet=True)
        print(f"{PROG}: accelerator: {res['accel']} ({res['reason']})", file=sys.stderr)
        print(res["accel"])
    elif opt.cmd == "start":
        cmd_start(opt)
    elif opt.cmd == "wait-ready":
        cmd_wait_ready(opt)
    elif opt.cmd == "cmd":
        print(guest_cmd(resolve(opt.vm), opt.line, opt.timeout))
    elif opt.cmd == "sum-check":
        why = sum_differs(opt.before, opt.after)
        if why:
            raise VMError(why)
    elif opt.cmd == "ticks":
        print(wait_ticks(resolve(opt.vm), opt.count, opt.timeout))
    elif opt.cmd == "wait-migration":
        trace = None
        if opt.trace:
            label, _, t0 = opt.trace_label.rpartition(",")
            trace = (open(opt.trace, "a"), label, float(t0))
        info = wait_migration(resolve(opt.vm), opt.until.split(","), opt.timeout,
                              opt.timeout_ok, trace)
        print(json.dumps(info))
    elif opt.cmd == "link":
        set_link(resolve(opt.vm))
    elif opt.cmd == "stop":
        stop(resolve(opt.vm), opt.timeout, opt.keep)
    elif opt.cmd == "pss":
        print(json.dumps(pss(resolve(opt.vm))))
    elif opt.cmd == "devices":
        print(json.dumps(devices(resolve(opt.vm))))
    elif opt.cmd == "info":
        cmd_info(opt)
    elif opt.cmd == "list":
        cmd_list(opt)
    elif opt.cmd == "adopt":
        print(adopt(opt.sock, opt.name, opt.mode)["dir"])
    elif opt.cmd == "check":
        cmd_check(opt)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except (VMError, QMPError, QMPConnectionError) as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        sys.exit(1)
    except KeyError as e:
        print(f"{PROG}: error: no field {e}", file=sys.stderr)
        sys.exit(1)
