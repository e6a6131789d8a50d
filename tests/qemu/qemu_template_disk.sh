#!/usr/bin/env bash
# Templates and clones with disks (README "Templates and clones"):
#  - template-create.sh of the test guest with a raw data disk (holding a marker) and a
#    NIC: the template gets the disk as a standalone, read-only qcow2 and the NIC's MAC;
#  - clone-start.sh: two clones, each on a qcow2 overlay backed by the template's disk
#    and with its own MAC (02:..., QEMU's NIC as the device state left it); each reads the
#    template's marker, writes its own (O_DIRECT: on the disk) and reads it back;
#  - the destination cannot open a clone's disk (its overlay moved away): the migration
#    is refused in one line, the clone runs on;
#  - a clone migrates with --mode tlm (same host: the destination opens the same overlay,
#    QEMU hands the image over at the switch): its memory is the same, it reads its own
#    marker and writes on; the other clone still reads its own, and so after its own
#    migration with stock postcopy-ram; the template's disk is unchanged (checksum);
#  - template-create.sh --from an operator's VM (our own QEMU command line, -drive qcow2
#    and a virtio-net NIC): the VM goes on running with its disk; a clone of it holds the
#    VM's memory and reads the VM's disk as it was when the template was made.
# shellcheck source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

command -v qemu-img >/dev/null || skip "qemu-img is not installed (qemu-utils)"
tdir=$TLM_RUN_DIR/templates/base
ddir=$TLM_RUN_DIR/disks
qmp_of() { vm info "$1" --get qmp; }
mac_of() { qmp "$(qmp_of "$1")" query-rx-filter --get 0.main-mac; }
dread() {	# VM WANT: the marker on VM's disk is WANT
	local got

	got=$(vm cmd "$1" dread) || fail "$1: dread failed"
	[ "$got" = "DREAD $2" ] || fail "$1: disk holds '$got', not '$2'"
}
dwrite() {
	[ "$(vm cmd "$1" "dwrite $2")" = "DWROTE $2" ] || fail "$1: dwrite $2 failed"
	dread "$1" "$2"
}

# The operator's VM boots now, while the test guest's template is made (TCG is slow).
op=$TLM_RUN_DIR/operator
mkdir -p "$op/vm"
accel=$(vm probe-accel) || fail "accelerator probe failed"
qemu-img create -q -f qcow2 "$op/disk.qcow2" 16M
kill_op() {	# the operator's QEMU, if its pidfile still names it
	local pid

	pid=$(cat "$op/vm.pid" 2>/dev/null) || return 0
	grep -qs "$op" "/proc/$pid/cmdline" && kill "$pid" 2>/dev/null || true
}
trap 'rc=$?; kill_op; (exit $rc); test_cleanup' EXIT
qemu-system-x86_64 -name opvm -nodefaults -no-user-config -display none -no-reboot \
	-machine pc,memory-backend=mem -accel "$accel" -m 160M \
	-object "memory-backend-file,id=mem,size=160M,mem-path=$op/vm.ram,share=on" \
	-kernel "$TLM_GUEST_DIR/vmlinuz" -initrd "$TLM_GUEST_DIR/initrd.gz" \
	-append "console=ttyS0 quiet loglevel=3 panic=-1 tlm.mem=16 tlm.seed=7 tlm.dirty=50" \
	-serial "file:$op/vm/console.log" \
	-chardev "socket,id=ctl,path=$op/vm/ctl.sock,server=on,wait=off" -serial chardev:ctl \
	-drive "file=$op/disk.qcow2,format=qcow2,if=virtio" \
	-netdev user,id=n0,restrict=on -device virtio-net-pci,netdev=n0,romfile= \
	-qmp "unix:$op/vm/qmp.sock,server=on,wait=off" -daemonize -pidfile "$op/vm.pid" ||
	fail "the operator's QEMU did not start"

step "template-create.sh: test guest with a raw data disk (marker 'template') and a NIC"
truncate -s 16M "$TLM_RUN_DIR/data.raw"
printf 'TLMDISK template\n' | dd of="$TLM_RUN_DIR/data.raw" conv=notrunc status=none
"$root/scripts/template-create.sh" base --out "$tdir" --mem 160 --wl-mem 16 \
	--disk "$TLM_RUN_DIR/data.raw" --nic || fail "template-create.sh failed"
[ -s "$tdir/disk0.qcow2" ] || fail "the template has no disk0.qcow2"
[ ! -w "$tdir/disk0.qcow2" ] || [ "$(id -u)" = 0 ] || fail "the template disk is writable"
[ "$(stat -c %a "$tdir/disk0.qcow2")" = 444 ] || fail "the template disk is not read-only"
info=$(qemu-img info --output=json "$tdir/disk0.qcow2")
python3 -c 'import json, sys; d = json.loads(sys.argv[1])
sys.exit(d["format"] != "qcow2" or "backing-filename" in d)' "$info" ||
	fail "the template disk is not a standalone qcow2: $info"
tmac=$(python3 -c 'import json, sys; print(*json.load(open(sys.argv[1]))["macs"])' \
	"$tdir/template.json")
echo "template MAC: $tmac"
tdisk_sum=$(sha256sum < "$tdir/disk0.qcow2")

step "clone-start.sh: two clones on overlays of the template's disk, their own MACs"
"$root/scripts/clone-start.sh" "$tdir" c --count 2 --disk-dir "$ddir" ||
	fail "clone-start.sh failed"
for c in c-1 c-2; do
	back=$(qemu-img info -U --output=json "$ddir/$c/disk0.qcow2" | python3 -c '
import json, sys; print(json.load(sys.stdin).get("full-backing-filename", ""))')
	[ "$back" = "$tdir/disk0.qcow2" ] || fail "$c: its overlay's backing file is '$back'"
	m=$(mac_of "$c")
	echo "$c: MAC $m, overlay $ddir/$c/disk0.qcow2"
	[[ "$m" == 02:* ]] || fail "$c: MAC $m is not locally administered 02:..."
	[ "$m" != "$tmac" ] || fail "$c: has the template's MAC"
	[[ "$(vm info "$c" --get argv)" == *"mac=$m"* ]] || fail "$c: MAC $m is not on its command line"
	dread "$c" template
	dwrite "$c" "$c"
done
[ "$(mac_of c-1)" != "$(mac_of c-2)" ] || fail "the clones share a MAC"
[ "$(sha256sum < "$tdir/disk0.qcow2")" = "$tdisk_sum" ] || fail "the template disk changed"

step "a destination that cannot open the clone's disk: refused in one line"
mv "$ddir/c-1/disk0.qcow2" "$ddir/c-1/away.qcow2"
rc=0
err=$("$root/scripts/migrate-postcopy.sh" --mode tlm c-1 2>&1 >/dev/null) || rc=$?
mv "$ddir/c-1/away.qcow2" "$ddir/c-1/disk0.qcow2"
echo "$err"
[ "$rc" = 1 ] || fail "exit $rc, not 1"
[ "$(grep -c error: <<< "$err")" = 1 ] || fail "not one error line"
grep -q "disk $ddir/c-1/disk0.qcow2: no such file here.*shared storage" <<< "$err" ||
	fail "the error does not name the disk and shared storage"
dread c-1 c-1

step "migrate c-1 with --mode tlm: the destination opens the same overlay"
before_pid=$(vm info c-1 --get pid)
"$root/scripts/migrate-postcopy.sh" --mode tlm c-1 || fail "migrating c-1 failed"
[ "$(vm info c-1 --get pid)" != "$before_pid" ] || fail "c-1 did not move"
# gone, or a zombie its parent has not reaped yet (an empty command line)
! grep -qs qemu "/proc/$before_pid/cmdline" || fail "the source QEMU of c-1 runs on"
blk=$(qmp "$(qmp_of c-1)" query-block)
grep -q "\"file\": \"$ddir/c-1/disk0.qcow2\"" <<< "$blk" ||
	fail "c-1's destination does not run on its overlay: $blk"
dread c-1 c-1
dwrite c-1 c-1-after
dread c-2 c-2

step "migrate c-2 with --mode qemu (stock postcopy-ram): the image moves the same way"
"$root/scripts/migrate-postcopy.sh" --mode qemu c-2 || fail "migrating c-2 failed"
dread c-2 c-2
dwrite c-2 c-2-after
dread c-1 c-1-after
[ "$(sha256sum < "$tdir/disk0.qcow2")" = "$tdisk_sum" ] || fail "the template disk changed"

step "template-create.sh --from the operator's VM (a qcow2 disk and a NIC)"
opcmd() {	# LINE: a workload command on the operator's VM (its ctl.sock)
	PYTHONPATH=$tlm_py_path PYTHONDONTWRITEBYTECODE=1 python3 -c '
import sys
from tlm_qemu import vm
print(vm.guest_cmd({"name": "opvm", "dir": sys.argv[1]}, sys.argv[2], 120))' "$op/vm" "$1"
}
[ "$(opcmd "dwrite operator")" = "DWROTE operator" ] || fail "operator VM: dwrite failed"
opsum=$(opcmd sum)
"$root/scripts/template-create.sh" opt --from "$op/vm/qmp.sock" --out "$TLM_RUN_DIR/templates/opt" ||
	fail "template-create.sh --from failed"
[ "$(qmp "$op/vm/qmp.sock" query-status --get status)" = running ] ||
	fail "the operator's VM does not run after the template"
[ "$(opcmd "dwrite operator-after")" = "DWROTE operator-after" ] ||
	fail "the operator's VM cannot write its disk after the template"
! ls -d "$TLM_RUN_DIR"/tmpl-opt* >/dev/null 2>&1 || fail "the adoption record was left"
"$root/scripts/clone-start.sh" "$TLM_RUN_DIR/templates/opt" oc --disk-dir "$ddir" ||
	fail "clone-start.sh of the operator's template failed"
dread oc operator
dwrite oc oc
[ "$(opcmd dread)" = "DREAD operator-after" ] || fail "the clone wrote to the operator's disk"
vm sum-check "$opsum" "$(vm cmd oc sum)" || fail "the clone does not hold the VM's memory"
echo "PASS $name"
