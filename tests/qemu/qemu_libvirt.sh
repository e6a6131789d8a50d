#!/usr/bin/env bash
# A libvirt domain migrated with tlm (scripts/virsh-migrate-tlm.sh) between two libvirtd
# of the test's own, each in a private mount and UTS namespace (tests/qemu/libvirtd_private.sh:
# its own configuration, sockets, state, RAM directory, hostname and host UUID):
#   - the test guest as a libvirt domain (<memoryBacking> file, shared), booted by the
#     source libvirtd; its workload's checksum;
#   - virsh-migrate-tlm.sh: libvirt moves the domain (virsh migrate --live, the destination
#     QEMU started by the destination libvirtd with the glue in its environment), tlm its
#     RAM; the domain runs at the destination only, the same checksum, x-ignore-shared off
#     there, its RAM file the glue's stub;
#   - a domain without shared file RAM is refused in one line naming the XML to add.
# Skips where libvirtd or virsh is missing (fails instead under TLM_REQUIRE=qemu).
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

for b in /usr/sbin/libvirtd virsh unshare; do
	command -v "$b" >/dev/null || skip "$b is not installed (scripts/setup.sh installs libvirt)"
done
accel=$(vm probe-accel) || fail "accelerator probe failed"
guest_dir=${TLM_GUEST_DIR:-$root/build/guest}
lv=$TLM_RUN_DIR/libvirt
mkdir -p "$lv"
lvpids=()
uri() { echo "qemu:///system?socket=$lv/$1/run/libvirt/libvirt-sock"; }
src=$(uri src) dst=$(uri dst)

libvirt_cleanup() {
	local rc=$? h p

	for h in src dst; do
		for d in lvt lvplain; do virsh -c "$(uri $h)" destroy "$d" >/dev/null 2>&1 || true; done
	done
	for p in "${lvpids[@]}"; do kill "$p" 2>/dev/null || true; done
	for p in "${lvpids[@]}"; do wait "$p" 2>/dev/null || true; done
	test_cleanup
	exit "$rc"
}
trap libvirt_cleanup EXIT

step "two libvirtd, one per emulated host"
for h in src dst; do
	unshare -m -u --propagation private "$root/tests/qemu/libvirtd_private.sh" "$lv/$h" \
		"tlm-$h" "$(cat /proc/sys/kernel/random/uuid)" > "$lv/$h.out" 2>&1 &
	lvpids+=($!)
done
for h in src dst; do
	for _ in $(seq 600); do
		virsh -q -c "$(uri $h)" version >/dev/null 2>&1 && continue 2
		kill -0 "${lvpids[0]}" "${lvpids[1]}" 2>/dev/null ||
			skip "libvirtd cannot run here: $(tail -n 1 "$lv/$h/log/libvirtd.log" 2>/dev/null)"
		sleep 0.1
	done
	fail "libvirtd ($h) does not answer: $(tail -n 2 "$lv/$h/log/libvirtd.log" 2>/dev/null)"
done

# The test guest as a domain. RAM: a shared file (memory_backing_dir on tmpfs); console
# and workload port under /run/tlm-guest, which is each host's own directory
# ($lv/HOST/run/tlm-guest: libvirtd_private.sh mounts it over /run), so the domain XML
# stays the same on both hosts and neither QEMU's socket hides the other's.
domain_xml() {	# NAME MEMORY_BACKING
	local type=qemu
	[ "$accel" != kvm ] || type=kvm
	cat <<XML
<domain type='$type'>
  <name>$1</name>
  <memory unit='MiB'>192</memory>
  $2
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type>
    <kernel>$guest_dir/vmlinuz</kernel><initrd>$guest_dir/initrd.gz</initrd>
    <cmdline>console=ttyS0 quiet loglevel=3 panic=-1 tlm.mem=32 tlm.seed=3 tlm.dirty=100</cmdline>
  </os>
  <on_reboot>destroy</on_reboot>
  <devices>
    <emulator>$(command -v qemu-system-x86_64)</emulator>
    <serial type='file'><source path='/run/tlm-guest/$1.console'/><target port='0'/></serial>
    <serial type='unix'><source mode='bind' path='/run/tlm-guest/ctl.sock'/><target port='1'/></serial>
    <memballoon model='none'/>
  </devices>
</domain>
XML
}
for h in src dst; do	# vm cmd's view of the guest on each host: a dir with ctl.sock
	mkdir -p "$lv/$h/run/tlm-guest"
	echo "{\"name\": \"lvt\", \"dir\": \"$lv/$h/run/tlm-guest\", \"foreign\": true}" \
		> "$lv/$h/run/tlm-guest/vm.json"
done
shared="<memoryBacking><source type='file'/><access mode='shared'/></memoryBacking>"

step "refusal: a domain whose RAM is not a shared file"
domain_xml lvplain "" > "$lv/plain.xml"
virsh -q -c "$src" create "$lv/plain.xml" >/dev/null || fail "virsh create lvplain failed"
out=$("$root/scripts/virsh-migrate-tlm.sh" --src-uri "$src" --dst-addr 127.0.0.2 \
	lvplain "$dst" 2>&1) && fail "a domain without shared file RAM was migrated"
echo "$out"
[ "$(echo "$out" | wc -l)" = 1 ] || fail "the refusal is not one line"
echo "$out" | grep -q "<memoryBacking><source type='file'/><access mode='shared'/>" ||
	fail "the refusal does not say what to add"
virsh -q -c "$src" domstate lvplain | grep -qx running || fail "lvplain is not running"
virsh -q -c "$src" destroy lvplain >/dev/null

step "the test guest as a libvirt domain"
domain_xml lvt "$shared" > "$lv/lvt.xml"
virsh -q -c "$src" create "$lv/lvt.xml" >/dev/null || fail "virsh create lvt failed"
before=$(vm cmd "$lv/src/run/tlm-guest" sum) || fail "no checksum from the guest"
echo "before: $before"

step "virsh-migrate-tlm.sh"
"$root/scripts/virsh-migrate-tlm.sh" --src-uri "$src" --dst-addr 127.0.0.2 \
	--log-level info lvt "$dst" || fail "virsh-migrate-tlm.sh failed"
virsh -q -c "$dst" domstate lvt | grep -qx running || fail "lvt does not run at the destination"
virsh -q -c "$src" domstate lvt >/dev/null 2>&1 && fail "lvt is still defined at the source"
same_memory "$lv/dst/run/tlm-guest" "$before"
virsh -q -c "$dst" qemu-monitor-command lvt '{"execute":"query-migrate-capabilities"}' |
	python3 -c '
import json, sys
caps = {c["capability"]: c["state"] for c in json.load(sys.stdin)["return"]}
sys.exit(caps["x-ignore-shared"])' || fail "x-ignore-shared is still on at the destination"
ram=$(find "$lv/dst/ram" -name pc.ram) || true
[ -n "$ram" ] && [ "$(stat -c %s "$ram")" = 4096 ] && head -n 1 "$ram" | grep -q tlm-ram-stub ||
	fail "the destination's RAM file is not the glue's stub: ${ram:-none}"
echo "PASS $name"
