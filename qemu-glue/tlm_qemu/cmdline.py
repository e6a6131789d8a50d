"""tlm_qemu.cmdline — a QEMU command line that tlm_qemu.vm did not write (an operator's VM,
docs: README "Migrating your own VM"): where its guest RAM is, whether it can be migrated,
and the destination's command line made from it.

The one requirement on such a VM is its RAM: a single `memory-backend-file,share=on` whose
mem-path is a file on tmpfs (hugetlbfs too for stock QEMU migration), used as the machine's
RAM (`-machine memory-backend=ID` or `-numa node,memdev=ID`). Anything else is refused with
one line saying what to change (Refused), before anything is started.

The destination's command line is the source's (or the operator's --dst-cmdline file) with
  - the RAM backend's mem-path set to the destination's new RAM file;
  - every listening unix socket (QMP, monitors, serial ports: -qmp/-monitor/-serial
    `unix:PATH,server...`, `-chardev socket,path=PATH,server=on`) moved into the
    destination's run directory: the VM's QMP socket becomes RUN/qmp.sock, the others keep
    their file name; a second QMP monitor RUN/qmp-mig.sock is added (the migration's
    persistent connection, as for tlm_qemu.vm's own VMs);
  - file chardevs (`-chardev file`, `-serial file:`) appending to the same file, so that
    a console log goes on where the source left it;
  - -pidfile moved into the run directory; -daemonize and -S dropped (tlm_qemu.vm watches
    the process, the guest runs on); -incoming replaced by the caller's.
Everything else (disks, network, display) stays as it is: what must differ at the
destination (a tap device, a TCP port on the same host) goes in a --dst-cmdline file.
Disks keep their paths: tlm migrates no disk, the destination opens the same files
(shared storage; tlm_qemu.vm refuses a path the destination cannot open).

Clones of a template made from such a VM (scripts/clone-start.sh) run its command line
with each writable disk replaced by the clone's qcow2 overlay (disks, set_disks) and each
NIC given the clone's MAC (nics, set_macs).
"""

import json
import os
import re
import sys

# QEMU 7.2 options that take no value (qemu-options.def, HAS_ARG 0); every other option
# takes exactly one.
FLAGS = frozenset("""
    -h -help -version -S -daemonize -nodefaults -no-user-config -nographic -snapshot
    -enable-kvm -no-reboot -no-shutdown -only-migratable -preconfig -s -mem-prealloc
    -usb -portrait -full-screen -win2k-hack -no-fd-bootchk -no-acpi -no-hpet -singlestep
    -audio-help -xen-attach -xen-domid-restrict -async-teardown -enable-sync-profile
    -alt-grab -ctrl-grab -no-quit -no-frame -curses -sdl -enable-fips -old-param
    -semihosting -rtc-td-hack -no-kvm-pit-reinjection -no-kvm-irqchip -no-kvm
    -no-kvm-pit -tdf""".split())
DROPPED = frozenset(("-daemonize", "-S"))
RAM_FIX = ("-object memory-backend-file,id=ram0,size=SIZE,mem-path=FILE,share=on "
           "-machine memory-backend=ram0 (FILE on tmpfs, e.g. /dev/shm)")
TRUE = ("on", "yes", "true", "y")


class Refused(Exception):
    """This command line cannot be migrated; the message says what to change."""


# ---- parsing --------------------------------------------------------------------------------

def options(argv):
    """argv (argv[0] the binary) -> [opt, value] pairs; value None for a flag; "--x" is
    "-x"; a bare argument (QEMU's -hda shorthand) comes as ["", arg]."""
    out, i = [], 1
    while i < len(argv):
        a = argv[i]
        if not a.startswith("-"):
            out.append(["", a])
        else:
            opt = "-" + a.lstrip("-")
            if opt in FLAGS:
                out.append([opt, None])
            elif i + 1 >= len(argv):
                raise Refused(f"QEMU option {a} has no value")
            else:
                i += 1
                out.append([opt, argv[i]])
        i += 1
    return out


def unparse(argv0, opts):
    argv = [argv0]
    for opt, val in opts:
        argv += [val] if opt == "" else [opt] if val is None else [opt, val]
    return argv


def split_kv(s, implied=None):
    """QEMU's "a=b,c=d" (",," is a comma in a value) -> [[key, value]]; a first item
    without "=" is the value of `implied`; other items without "=" have value None."""
    items, cur, i = [], "", 0
    parts = []
    while i < len(s):
        if s[i] == ",":
            if s[i + 1:i + 2] == ",":
                cur += ","
                i += 2
                continue
            parts.append(cur)
            cur = ""
        else:
            cur += s[i]
        i += 1
    parts.append(cur)
    for n, p in enumerate(parts):
        k, eq, v = p.partition("=")
        if not eq:
            items.append([implied, p] if n == 0 and implied else [p, None])
        else:
            items.append([k, v])
    return items


def join_kv(items, implied=None):
    out = []
    for n, (k, v) in enumerate(items):
        v = None if v is None else v.replace(",", ",,")
        out.append(v if n == 0 and k == implied and implied else k if v is None else
                   f"{k}={v}")
    return ",".join(out)


def object_props(val):
    """-object's value -> (dict of its properties, json form?)."""
    if val.lstrip().startswith("{"):
        try:
            d = json.loads(val)
        except ValueError as e:
            raise Refused(f"-object {val[:40]}...: bad JSON ({e})") from None
        return {k: str(v).lower() if isinstance(v, bool) else str(v)
                for k, v in d.items()}, True
    return dict((k, v) for k, v in split_kv(val, "qom-type")), False


def get(val, key, implied=None):
    for k, v in split_kv(val, implied):
        if k == key:
            return v
    return None


def abspath(path, cwd):
    return os.path.normpath(os.path.join(cwd or "/", path))


# ---- the guest RAM ----------------------------------------------------------------------------

def size_bytes(s):
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([bkmgtpe]?)\s*", str(s), re.I)
    if not m:
        return None
    return int(float(m.group(1)) * 1024 ** "bkmgtpe".index((m.group(2) or "b").lower()))


def guest_ram(argv, cwd, mode="tlm", check_fs=True):
    """The guest RAM of a QEMU command line: {"id", "mem_path" (absolute), "size"}; or
    Refused with what to change. mode tlm refuses hugetlbfs (the glue places 4 KiB pages);
    qemu and precopy (stock QEMU migration) accept it."""
    opts = options(argv)
    if any(o == "-mem-path" for o, _ in opts):
        raise Refused(f"-mem-path gives the guest private file memory: replace it by "
                      f"{RAM_FIX}")
    backends = []
    for o, v in opts:
        if o == "-object":
            props, _ = object_props(v)
            if props.get("qom-type", "").startswith("memory-backend-"):
                backends.append(props)
    ram_ids = [get(v, "memory-backend", "type") for o, v in opts if o in ("-machine", "-M")]
    ram_ids += [get(v, "memdev", "type") for o, v in opts if o == "-numa"]
    ram_ids = [i for i in ram_ids if i]
    if not backends or not ram_ids:
        raise Refused("the guest RAM is QEMU's anonymous memory (no memory-backend-file "
                      f"as the machine's memory): add {RAM_FIX}")
    if len(backends) > 1 or len(set(ram_ids)) > 1:
        ids = sorted({b.get("id", "?") for b in backends} | set(ram_ids))
        raise Refused(f"{len(ids)} memory backends ({', '.join(ids)}): tlm migrates a "
                      f"guest with one; use a single {RAM_FIX}")
    b = backends[0]
    if b.get("id") != ram_ids[0]:
        raise Refused(f"the machine's memory is '{ram_ids[0]}', not the backend "
                      f"'{b.get('id')}': use {RAM_FIX}")
    if b["qom-type"] != "memory-backend-file":
        raise Refused(f"the guest RAM is a {b['qom-type']} ('{b.get('id')}'), which tlm "
                      f"cannot map: use {RAM_FIX}")
    if (b.get("share") or "off").lower() not in TRUE:
        raise Refused(f"the memory-backend-file '{b['id']}' has share=off (private "
                      f"memory: the file is not the guest RAM): add share=on")
    if not b.get("mem-path"):
        raise Refused(f"the memory-backend-file '{b['id']}' has no mem-path")
    path = abspath(b["mem-path"], cwd)
    if os.path.isdir(path):
        raise Refused(f"mem-path {path} is a directory (QEMU makes an unnamed file "
                      f"there): give a file path, e.g. mem-path={path}/vm.ram")
    if check_fs:
        check_ram_fs(path, mode)
    return {"id": b["id"], "mem_path": path, "size": size_bytes(b.get("size"))}


def check_daemonized(argv):
    """A -daemonize'd QEMU chdir()s to / once it opened its files: the relative paths of
    its command line cannot be found any more."""
    opts = options(argv)
    if not any(o == "-daemonize" for o, _ in opts):
        return
    paths = [unix_path(o, v) for o, v in opts]
    paths += [object_props(v)[0].get("mem-path") for o, v in opts if o == "-object"]
    rel = [p for p in paths if p and not p.startswith("/")]
    if rel:
        raise Refused(f"QEMU ran with -daemonize (its directory is / now) and relative "
                      f"paths ({', '.join(rel)}): give it absolute paths")


def fs_type(path):
    """f_type of the file system holding path (or its directory, for a file not made
    yet); None if it cannot be read (os.statvfs has no f_type: read /proc/self/mounts)."""
    best, fstype = "", None
    real = os.path.realpath(path)
    try:
        with open("/proc/self/mounts") as f:
            for line in f:
                w = line.split()
                mnt = w[1].replace("\\040", " ")
                if (real == mnt or real.startswith(mnt.rstrip("/") + "/")) and \
                   len(mnt) >= len(best):
                    best, fstype = mnt, w[2]
    except OSError:
        return None
    return fstype


def check_ram_fs(path, mode):
    fs = fs_type(path)
    if fs == "hugetlbfs" and mode == "tlm":
        raise Refused(f"mem-path {path} is on hugetlbfs: tlm places 4 KiB pages (--mode "
                      f"qemu and precopy take it); put the RAM file on tmpfs (/dev/shm)")
    if fs not in ("tmpfs", "hugetlbfs"):
        raise Refused(f"mem-path {path} is on {fs or 'an unknown file system'}, not "
                      f"tmpfs: put the RAM file on tmpfs (e.g. /dev/shm)")


def vm_name(argv):
    """-name's guest name, or None."""
    for o, v in options(argv):
        if o == "-name":
            return get(v, "guest", "guest")
    return None


# ---- disks and NICs -----------------------------------------------------------------------

DRIVE_OPTS = ("-hda", "-hdb", "-hdc", "-hdd", "")


def disks(argv, cwd):
    """The disk images of a command line, in order: [{"index" (of its option in
    options(argv)), "file" (absolute), "format" (None: QEMU probes it), "readonly",
    "node" (a -blockdev's protocol node name)}]. Refused for a writable -blockdev file node
    that no format node uses (its overlay would need one)."""
    opts, out, files, used = options(argv), [], {}, {}
    for i, (o, v) in enumerate(opts):
        if o == "-drive":
            kv = dict(split_kv(v))
            if kv.get("file"):
                ro = (kv.get("readonly") or "off").lower() in TRUE or \
                    kv.get("media") == "cdrom"
                out.append({"index": i, "file": abspath(kv["file"], cwd),
                            "format": kv.get("format"), "readonly": ro, "node": None})
        elif o in DRIVE_OPTS:
            out.append({"index": i, "file": abspath(v, cwd), "format": None,
                        "readonly": False, "node": None})
        elif o == "-blockdev":
            b = blockdev(v)
            ro = (str(b.get("read-only", "off"))).lower() in TRUE
            f = b.get("file")
            if isinstance(f, dict):     # JSON with an inline protocol node
                out.append({"index": i, "file": abspath(f.get("filename", ""), cwd),
                            "format": b.get("driver"), "readonly": ro, "node": None})
            elif b.get("filename"):
                files[b.get("node-name")] = (i, abspath(b["filename"], cwd), ro)
            elif f:
                used[f] = (b.get("driver"), ro)
    for node, (i, path, ro) in files.items():
        if node not in used:
            if not ro:
                raise Refused(f"-blockdev node {node} ({path}) is used without a format "
                              f"node: add -blockdev driver=raw,file={node},node-name=...")
            continue
        fmt, fro = used[node]
        out.append({"index": i, "file": path, "format": fmt, "readonly": ro or fro,
                    "node": node})
    return sorted(out, key=lambda d: d["index"])


def blockdev(val):
    if val.lstrip().startswith("{"):
        try:
            return json.loads(val)
        except ValueError as e:
            raise Refused(f"-blockdev {val[:40]}...: bad JSON ({e})") from None
    return dict(split_kv(val))


def set_disks(argv, cwd, files):
    """argv with its writable disks (disks()) replaced, in order, by the qcow2 images
    files (a clone's overlays)."""
    opts = options(argv)
    writable = [d for d in disks(argv, cwd) if not d["readonly"]]
    if len(files) != len(writable):
        raise Refused(f"{len(files)} disk images for {len(writable)} writable disks")
    for d, new in zip(writable, files):
        o, v = opts[d["index"]]
        if o == "-drive":
            kv = [[k, x] for k, x in split_kv(v) if k != "format"]
            v = join_kv([[k, new if k == "file" else x] for k, x in kv] +
                        [["format", "qcow2"]])
        elif o in DRIVE_OPTS:
            v = new
        elif v.lstrip().startswith("{"):
            b = json.loads(v)
            if isinstance(b.get("file"), dict):
                b["file"]["filename"] = new
                b["driver"] = "qcow2"
            else:
                b["filename"] = new
            v = json.dumps(b)
        else:
            v = join_kv([[k, new if k == "filename" else x] for k, x in split_kv(v)])
        opts[d["index"]] = [o, v]
        if d["node"]:           # its format node reads qcow2 now
            for j, (o2, v2) in enumerate(opts):
                if o2 == "-blockdev" and blockdev(v2).get("file") == d["node"]:
                    opts[j] = [o2, set_blockdev_driver(v2)]
    return unparse(argv[0], opts)


def set_blockdev_driver(val):
    if val.lstrip().startswith("{"):
        b = json.loads(val)
        b["driver"] = "qcow2"
        return json.dumps(b)
    return join_kv([[k, "qcow2" if k == "driver" else x] for k, x in split_kv(val)])


def nics(argv):
    """The NICs of a command line, in order: [{"index", "mac" (None: QEMU's)}]; a NIC is a
    -device with netdev=, a -nic, or a -net nic."""
    out = []
    for i, (o, v) in enumerate(options(argv)):
        if o == "-device" and get(v, "netdev", "driver"):
            out.append({"index": i, "mac": get(v, "mac", "driver")})
        elif o == "-nic" and get(v, "type", "type") != "none":
            out.append({"index": i, "mac": get(v, "mac", "type")})
        elif o == "-net" and get(v, "type", "type") == "nic":
            out.append({"index": i, "mac": get(v, "macaddr", "type")})
    return out


def set_macs(argv, macs):
    """argv with its NICs' MACs set, in order (None: left as it is)."""
    opts, found = options(argv), nics(argv)
    if len(macs) != len(found):
        raise Refused(f"{len(macs)} MACs for {len(found)} NICs")
    for n, mac in zip(found, macs):
        if mac is None:
            continue
        o, v = opts[n["index"]]
        implied = {"-device": "driver", "-nic": "type", "-net": "type"}[o]
        key = "macaddr" if o == "-net" else "mac"
        kv = [[k, x] for k, x in split_kv(v, implied) if k != key]
        opts[n["index"]] = [o, join_kv(kv + [[key, mac]], implied)]
    return unparse(argv[0], opts)


# ---- sockets ----------------------------------------------------------------------------------

def unix_path(opt, val):
    """The path of a listening unix socket this option makes, else None:
    -qmp/-monitor/-serial/... `unix:PATH,server...`, -chardev socket,path=,server=on."""
    if opt == "-chardev":
        kv = dict((k, v) for k, v in split_kv(val, "backend"))
        if kv.get("backend") == "socket" and kv.get("path") and \
           (kv.get("server", "off") or "on").lower() in TRUE:
            return kv["path"]
        return None
    if opt in ("-qmp", "-qmp-pretty", "-monitor", "-serial", "-parallel", "-gdb",
               "-debugcon") and val.startswith("unix:"):
        kv = split_kv(val[5:], "path")
        flags = {k: v for k, v in kv[1:]}
        if "server" in flags and (flags["server"] or "on").lower() in TRUE:
            return kv[0][1]
    return None


def set_unix_path(opt, val, path):
    if opt == "-chardev":
        kv = split_kv(val, "backend")
        return join_kv([[k, path if k == "path" else v] for k, v in kv], "backend")
    kv = split_kv(val[5:], "path")
    kv[0][1] = path
    return "unix:" + join_kv(kv, "path")


def server_sockets(argv, cwd):
    """Absolute paths of the listening unix sockets of a command line."""
    return [abspath(p, cwd) for p in (unix_path(o, v) for o, v in options(argv)) if p]


def qmp_sockets(argv, cwd):
    """Absolute paths of the -qmp / -qmp-pretty unix sockets, in order."""
    return [abspath(unix_path(o, v), cwd) for o, v in options(argv)
            if o in ("-qmp", "-qmp-pretty") and unix_path(o, v)]


# ---- the destination ---------------------------------------------------------------------------

def dst_argv(argv, cwd, ram, run, qmp=None, drop=(), incoming=None):
    """The destination's command line (see the module's doc): ram = the new RAM file, run
    = the destination's run directory, qmp = the source's QMP socket (absolute; it becomes
    run/qmp.sock; default the first -qmp unix socket, or a new one), drop = absolute
    socket paths whose options go (the source's own qmp-mig.sock)."""
    rid = guest_ram(argv, cwd, check_fs=False)["id"]
    opts, out, names = options(argv), [], {"qmp.sock", "qmp-mig.sock", "ram"}
    main = qmp or next(iter(qmp_sockets(argv, cwd)), None)
    main_done, nfile = False, 0
    for o, v in opts:
        if o in DROPPED or o == "-incoming":
            continue
        if o == "-pidfile":
            v = os.path.join(run, "qemu.pid")
        elif o == "-object" and object_props(v)[0].get("id") == rid:
            v = set_mem_path(v, ram)
        elif unix_path(o, v):
            p = abspath(unix_path(o, v), cwd)
            if p in drop:
                continue
            if p == main and not main_done:
                new, main_done = "qmp.sock", True
            else:
                new = uniq_name(os.path.basename(p), names)
            names.add(new)
            v = set_unix_path(o, v, os.path.join(run, new))
        elif o == "-chardev" and get(v, "backend", "backend") == "file":
            kv = [[k, x] for k, x in split_kv(v, "backend") if k != "append"]
            v = join_kv(kv + [["append", "on"]], "backend")
        elif o in ("-serial", "-parallel") and v.startswith("file:"):
            nfile += 1
            cid = f"tlm-file{nfile}"
            out.append(["-chardev", join_kv([["backend", "file"], ["id", cid],
                                              ["path", v[5:]], ["append", "on"]],
                                             "backend")])
            v = f"chardev:{cid}"
        out.append([o, v])
    if not main_done:
        out.append(["-qmp", f"unix:{run}/qmp.sock,server=on,wait=off"])
    out.append(["-qmp", f"unix:{run}/qmp-mig.sock,server=on,wait=off"])
    if incoming:
        out.append(["-incoming", incoming])
    return unparse(argv[0], out)


def set_mem_path(val, path):
    props, js = object_props(val)
    if js:
        d = json.loads(val)
        d["mem-path"] = path
        return json.dumps(d)
    kv = split_kv(val, "qom-type")
    return join_kv([[k, path if k == "mem-path" else v] for k, v in kv], "qom-type")


def uniq_name(base, taken):
    name, n = base, 1
    while name in taken:
        n += 1
        name = f"{n}-{base}"
    return name


def read_cmdline_file(path):
    """--dst-cmdline: one argument per line (the binary first); empty lines are empty
    arguments only inside, trailing ones are dropped."""
    try:
        with open(path) as f:
            argv = f.read().rstrip("\n").split("\n")
    except OSError as e:
        raise Refused(e.strerror) from None
    if not argv or not argv[0]:
        raise Refused("empty (one argument per line, QEMU first)")
    return argv


def main(argv):
    """python3 -m tlm_qemu.cmdline check-file FILE: is FILE a --dst-cmdline with guest RAM
    tlm can map (exit 1 and why if not)? Run before anything starts."""
    if len(argv) != 2 or argv[0] != "check-file":
        print("usage: python3 -m tlm_qemu.cmdline check-file FILE", file=sys.stderr)
        return 2
    try:
        guest_ram(read_cmdline_file(argv[1]), os.getcwd(), check_fs=False)
    except Refused as e:
        print(f"--dst-cmdline {argv[1]}: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
