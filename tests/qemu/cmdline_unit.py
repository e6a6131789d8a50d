#!/usr/bin/env python3
"""tlm_qemu.cmdline without QEMU (ctest cmdline_unit, label unit): which guest RAM an
operator's command line has and what is refused (one line each), the destination's
command line made from it, and its disks and NICs as a clone replaces them."""

import json
import os
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.join(os.environ.get("TLM_SOURCE_DIR", os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "..", "..")), "qemu-glue"))
from tlm_qemu import cmdline as C  # noqa: E402

SHM = tempfile.mkdtemp(prefix="tlm-cmdline.", dir="/dev/shm")
RAM = f"{SHM}/vm.ram"
GOOD = ["qemu-system-x86_64", "-name", "vm1,debug-threads=on", "-S", "-m", "256M",
        "-machine", "q35,memory-backend=ram0",
        "-object", f"memory-backend-file,id=ram0,size=256M,mem-path={RAM},share=on",
        "--nodefaults", "-daemonize", "-pidfile", f"{SHM}/vm.pid",
        "-qmp", f"unix:{SHM}/qmp.sock,server=on,wait=off",
        "-qmp", f"unix:{SHM}/other.sock,server,nowait",
        "-chardev", f"socket,id=ctl,path={SHM}/ctl.sock,server=on,wait=off",
        "-chardev", "socket,id=ext,path=/run/agent.sock",
        "-serial", f"file:{SHM}/console.log",
        "-chardev", f"file,id=log,path={SHM}/extra.log,append=off",
        "-incoming", "tcp:0:4444", "-drive", "file=disk.img,if=virtio",
        "-device", "virtio-balloon-pci,id=b0,free-page-reporting=on"]


def refused(argv, mode="tlm", cwd="/"):
    try:
        C.guest_ram(argv, cwd, mode)
    except C.Refused as e:
        assert "\n" not in str(e), e
        return str(e)
    raise AssertionError(f"not refused: {argv}")


def with_ram(obj, machine="pc,memory-backend=ram0", extra=()):
    return ["qemu", "-m", "64M", "-machine", machine, "-object", obj, *extra]


class GuestRam(unittest.TestCase):
    def test_accepted(self):
        r = C.guest_ram(GOOD, "/")
        self.assertEqual((r["id"], r["mem_path"], r["size"]), ("ram0", RAM, 256 << 20))
        js = json.dumps({"qom-type": "memory-backend-file", "id": "m", "size": 1 << 26,
                         "mem-path": RAM, "share": True})
        self.assertEqual(C.guest_ram(with_ram(js, "pc,memory-backend=m"), "/")["id"], "m")
        numa = with_ram(f"memory-backend-file,id=n0,size=64M,mem-path=vm.ram,share=yes",
                        "pc", ["-numa", "node,memdev=n0"])
        self.assertEqual(C.guest_ram(numa, SHM)["mem_path"], RAM)   # relative to cwd

    def test_refused(self):
        ok = f"memory-backend-file,id=ram0,size=64M,mem-path={RAM},share=on"
        self.assertIn("anonymous memory", refused(["qemu", "-m", "1G"]))
        self.assertIn("anonymous memory", refused(with_ram(ok, "pc")))
        self.assertIn("memory-backend-ram", refused(with_ram("memory-backend-ram,id=ram0")))
        self.assertIn("memory-backend-memfd",
                      refused(with_ram("memory-backend-memfd,id=ram0,share=on")))
        self.assertIn("add share=on", refused(with_ram(ok.replace("share=on", "share=off"))))
        self.assertIn("add share=on", refused(with_ram(ok.replace(",share=on", ""))))
        self.assertIn("-mem-path", refused(["qemu", "-m", "64M", "-mem-path", RAM]))
        self.assertIn("2 memory backends", refused(with_ram(ok, extra=[
            "-object", "memory-backend-ram,id=dimm0,size=64M"])))
        self.assertIn("not the backend", refused(with_ram(ok, "pc,memory-backend=other")))
        self.assertIn("is a directory", refused(with_ram(ok.replace(RAM, SHM))))
        if C.fs_type("/") not in ("tmpfs", "hugetlbfs"):
            self.assertIn("not tmpfs", refused(with_ram(ok.replace(RAM, "/vm.ram"))))
        self.assertIn("has no value", refused(["qemu", "-object"]))

    def test_daemonized_relative(self):
        argv = with_ram("memory-backend-file,id=ram0,size=64M,mem-path=vm.ram,share=on",
                        extra=["-daemonize"])
        with self.assertRaisesRegex(C.Refused, "absolute paths"):
            C.check_daemonized(argv)
        C.check_daemonized(GOOD)

    def test_name(self):
        self.assertEqual(C.vm_name(GOOD), "vm1")
        self.assertEqual(C.vm_name(["qemu", "-name", "guest=a,process=b"]), "a")
        self.assertIsNone(C.vm_name(["qemu"]))

    def test_kv(self):
        kv = C.split_kv("file,id=x,path=/a,,b,server", "backend")
        self.assertEqual(kv, [["backend", "file"], ["id", "x"], ["path", "/a,b"],
                              ["server", None]])
        self.assertEqual(C.join_kv(kv, "backend"), "file,id=x,path=/a,,b,server")


class Destination(unittest.TestCase):
    def test_dst_argv(self):
        run = "/dev/shm/run/vm1.2"
        argv = C.dst_argv(GOOD, "/", f"{run}/ram", run, qmp=f"{SHM}/qmp.sock",
                          drop=[f"{SHM}/other.sock"], incoming="defer")
        opts = C.options(argv)
        flat = [f"{o} {v}" for o, v in opts]
        self.assertNotIn("-S None", flat)
        self.assertNotIn("-daemonize None", flat)
        self.assertEqual([v for o, v in opts if o == "-incoming"], ["defer"])
        self.assertIn(f"-pidfile {run}/qemu.pid", flat)
        self.assertEqual(C.guest_ram(argv, "/", check_fs=False)["mem_path"], f"{run}/ram")
        self.assertEqual(C.qmp_sockets(argv, "/"), [f"{run}/qmp.sock", f"{run}/qmp-mig.sock"])
        self.assertEqual(C.server_sockets(argv, "/"),
                         [f"{run}/qmp.sock", f"{run}/ctl.sock", f"{run}/qmp-mig.sock"])
        self.assertIn("-chardev socket,id=ext,path=/run/agent.sock", flat)   # a client
        self.assertIn(f"-chardev file,id=tlm-file1,path={SHM}/console.log,append=on", flat)
        self.assertIn("-serial chardev:tlm-file1", flat)
        self.assertIn(f"-chardev file,id=log,path={SHM}/extra.log,append=on", flat)
        self.assertIn("-drive file=disk.img,if=virtio", flat)
        # devices stay as they are (their state migrates): free page reporting too
        self.assertIn("-device virtio-balloon-pci,id=b0,free-page-reporting=on", flat)
        self.assertEqual(argv[0], GOOD[0])
        # again from the destination's own command line: nothing doubles up
        run3 = "/dev/shm/run/vm1.3"
        again = C.dst_argv(argv, "/", f"{run3}/ram", run3, qmp=f"{run}/qmp.sock",
                           drop=[f"{run}/qmp-mig.sock"])
        self.assertEqual(C.qmp_sockets(again, "/"),
                         [f"{run3}/qmp.sock", f"{run3}/qmp-mig.sock"])
        self.assertEqual(len(again), len(argv) - 2)      # no -incoming this time

    def test_json_object_and_new_qmp(self):
        js = json.dumps({"qom-type": "memory-backend-file", "id": "m", "size": 1 << 26,
                         "mem-path": RAM, "share": True})
        argv = C.dst_argv(with_ram(js, "pc,memory-backend=m"), "/", "/r/ram", "/r")
        self.assertEqual(json.loads(argv[argv.index("-object") + 1])["mem-path"], "/r/ram")
        self.assertEqual(C.qmp_sockets(argv, "/"), ["/r/qmp.sock", "/r/qmp-mig.sock"])

    def test_cmdline_file(self):
        with tempfile.NamedTemporaryFile("w", dir=SHM, delete=False) as f:
            f.write("\n".join(GOOD) + "\n")
        self.assertEqual(C.read_cmdline_file(f.name), GOOD)
        with self.assertRaisesRegex(C.Refused, "No such file"):
            C.read_cmdline_file(f"{SHM}/none")


DISKS = ["qemu", "-drive", "file=a.qcow2,if=virtio,format=qcow2",
         "-drive", "file=cd.iso,media=cdrom", "-drive", "file=/ro.img,readonly=on",
         "-blockdev", "driver=file,filename=/x/b,,c.raw,node-name=f1",
         "-blockdev", "driver=raw,file=f1,node-name=d1", "-device", "virtio-blk-pci,drive=d1",
         "-blockdev", json.dumps({"driver": "qcow2", "node-name": "d2",
                                  "file": {"driver": "file", "filename": "/y/c.qcow2"}}),
         "-netdev", "user,id=n0", "-device", "virtio-net-pci,netdev=n0",
         "-nic", "user,model=virtio-net-pci,mac=52:54:00:00:00:09",
         "-net", "nic,macaddr=52:54:00:00:00:0a", "-device", "virtio-blk-pci,drive=d2",
         "/z/hd.img"]


class Disks(unittest.TestCase):
    def test_disks(self):
        d = C.disks(DISKS, "/cwd")
        self.assertEqual([(x["file"], x["format"], x["readonly"]) for x in d], [
            ("/cwd/a.qcow2", "qcow2", False), ("/cwd/cd.iso", None, True),
            ("/ro.img", None, True), ("/x/b,c.raw", "raw", False),
            ("/y/c.qcow2", "qcow2", False), ("/z/hd.img", None, False)])
        with self.assertRaisesRegex(C.Refused, "without a format node"):
            C.disks(["qemu", "-blockdev", "driver=file,filename=/a,node-name=f"], "/")

    def test_set_disks(self):
        new = C.set_disks(DISKS, "/cwd", ["/o/1", "/o/2,x", "/o/3", "/o/4"])
        opts = C.options(new)
        self.assertEqual([(x["file"], x["format"]) for x in C.disks(new, "/")
                          if not x["readonly"]],
                         [("/o/1", "qcow2"), ("/o/2,x", "qcow2"), ("/o/3", "qcow2"),
                          ("/o/4", None)])
        self.assertIn(["-drive", "file=cd.iso,media=cdrom"], opts)     # read-only: kept
        with self.assertRaisesRegex(C.Refused, "1 disk images for 4 writable disks"):
            C.set_disks(DISKS, "/cwd", ["/o/1"])

    def test_macs(self):
        self.assertEqual([n["mac"] for n in C.nics(DISKS)],
                         [None, "52:54:00:00:00:09", "52:54:00:00:00:0a"])
        new = C.set_macs(DISKS, ["02:00:00:00:00:01", "02:00:00:00:00:02", None])
        self.assertEqual([n["mac"] for n in C.nics(new)],
                         ["02:00:00:00:00:01", "02:00:00:00:00:02", "52:54:00:00:00:0a"])
        with self.assertRaisesRegex(C.Refused, "1 MACs for 3 NICs"):
            C.set_macs(DISKS, [None])


if __name__ == "__main__":
    try:
        unittest.main(verbosity=1)
    finally:
        for e in os.listdir(SHM):
            os.unlink(os.path.join(SHM, e))
        os.rmdir(SHM)
