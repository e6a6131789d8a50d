#!/usr/bin/env bash
# Libvirt domains migrated with tlm (scripts/virsh-migrate-tlm.sh) between two emulated
# hosts: two network namespaces (scripts/lib/netns.sh), each with a libvirtd of the test's
# own in a private mount and UTS namespace (tests/qemu/libvirtd_private.sh: its own
# configuration, sockets, state, RAM directory, hostname and host UUID); the script runs
# in the source namespace:
#   - the test guest as two libvirt domains (<memoryBacking> file, shared), booted by the
#     source libvirtd; their workloads' checksums;
#   - a domain without shared file RAM is refused in one line naming the XML to add, and
#     keeps running;
#   - lvt moves with the destination's daemon started by the script itself (a destination
#     libvirtd on the same machine), lvd with --dst-host: tlm-uffd-server started over
#     one ssh connection to an sshd of the test's own in the destination namespace, its
#     sockets forwarded;
#   - libvirt moves each domain (virsh migrate --live, the destination QEMU started by the
#     destination libvirtd with the glue in its environment), tlm its RAM: each runs at
#     the destination only, with the same checksum, x-ignore-shared off there, its RAM
#     file the glue's stub;
#   - moving it on by tlm is refused in one line (libvirt would stop that QEMU before tlm
#     had read its private memory), and it keeps running.
# Skips where libvirtd, virsh or network namespaces are missing (fails instead under
# TLM_REQUIRE=qemu).
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
# shellcheck source=../../scripts/lib/netns.sh
. "$root/scripts/lib/netns.sh"

for b in /usr/sbin/libvirtd virsh unshare; do
	command -v "$b" >/dev/null || skip "$b is not installed (scripts/setup.sh installs libvirt)"
done
accel=$(vm probe-accel) || fail "accelerator probe failed"
guest_dir=${TLM_GUEST_DIR:-$root/build/guest}
lv=$TLM_RUN_DIR/libvirt
mkdir -p "$lv"
lvpids=()
sshd_pid=
uri() { echo "qemu:///system?socket=$lv/$1/run/libvirt/libvirt-sock"; }
src=$(uri src) dst=$(uri dst)

libvirt_cleanup() {
	local rc=$? h p

	for h in src dst; do
		for d in lvt lvd lvplain; do
			virsh -c "$(uri $h)" destroy "$d" >/dev/null 2>&1 || true
		done
	done
	for p in "${lvpids[@]}"; do kill "$p" 2>/dev/null || true; done
	for p in "${lvpids[@]}"; do wait "$p" 2>/dev/null || true; done
	[ -z "$sshd_pid" ] || { kill "$sshd_pid" 2>/dev/null; wait "$sshd_pid" 2>/dev/null; }
	tlm_link_down
	test_cleanup
	exit "$rc"
}
trap libvirt_cleanup EXIT

step "two emulated hosts, a libvirtd in each"
tlm_link_up lan
[ "$TLM_LINK" != loopback ] || skip "no network namespaces: $TLM_LINK_DESC"
echo "$TLM_LINK_DESC"
on_src() {
	ip netns exec "$TLM_SRC_NS" "$@"
}
for h in src dst; do
	ns=$TLM_SRC_NS
	[ $h = src ] || ns=$TLM_DST_NS
	ip netns exec "$ns" unshare -m -u --propagation private \
		"$root/tests/qemu/libvirtd_private.sh" "$lv/$h" "tlm-$h" \
		"$(cat /proc/sys/kernel/random/uuid)" > "$lv/$h.out" 2>&1 &
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
# and workload port under /run/tlm-guest/NAME, which is each host's own directory
# ($lv/HOST/run/...: libvirtd_private.sh mounts it over /run), so the domain XML stays
# the same on both hosts and neither QEMU's socket hides the other's.
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
    <serial type='file'><source path='/run/tlm-guest/$1/console.log'/><target port='0'/></serial>
    <serial type='unix'><source mode='bind' path='/run/tlm-guest/$1/ctl.sock'/><target port='1'/></serial>
    <memballoon model='none'/>
  </devices>
</domain>
XML
}
for h in src dst; do	# vm cmd's view of a guest on each host: a dir with ctl.sock
	for d in lvt lvd lvplain; do
		mkdir -p "$lv/$h/run/tlm-guest/$d"
		echo "{\"name\": \"$d\", \"dir\": \"$lv/$h/run/tlm-guest/$d\", \"foreign\": true}" \
			> "$lv/$h/run/tlm-guest/$d/vm.json"
	done
done
gdir() { echo "$lv/$1/run/tlm-guest/$2"; }
shared="<memoryBacking><source type='file'/><access mode='shared'/></memoryBacking>"

step "refusal: a domain whose RAM is not a shared file"
domain_xml lvplain "" > "$lv/plain.xml"
virsh -q -c "$src" create "$lv/plain.xml" >/dev/null || fail "virsh create lvplain failed"
out=$(on_src "$root/scripts/virsh-migrate-tlm.sh" --src-uri "$src" --dst-addr "$TLM_DST_ADDR" \
	lvplain "$dst" 2>&1) && fail "a domain without shared file RAM was migrated"
echo "$out"
[ "$(echo "$out" | wc -l)" = 1 ] || fail "the refusal is not one line"
echo "$out" | grep -q "<memoryBacking><source type='file'/><access mode='shared'/>" ||
	fail "the refusal does not say what to add"
virsh -q -c "$src" domstate lvplain | grep -qx running || fail "lvplain is not running"
virsh -q -c "$src" destroy lvplain >/dev/null

step "the test guest as two libvirt domains"
for d in lvt lvd; do
	domain_xml $d "$shared" > "$lv/$d.xml"
	virsh -q -c "$src" create "$lv/$d.xml" >/dev/null || fail "virsh create $d failed"
done
for d in lvt lvd; do
	sum=$(vm cmd "$(gdir src $d)" sum) || fail "$d: no checksum from the guest"
	echo "$d before: $sum"
	eval "before_$d=\$sum"
done

# DOMAIN ARGS...: migrate with tlm from the source namespace
migrate() {
	local d=$1
	shift
	on_src "$root/scripts/virsh-migrate-tlm.sh" --src-uri "$src" --src-addr "$TLM_SRC_ADDR" \
		--dst-addr "$TLM_DST_ADDR" --log-level info "$@" "$d" "$dst" ||
		fail "virsh-migrate-tlm.sh $d failed"
}

# DOMAIN BEFORE: it runs at the destination only, same memory, an ordinary domain
migrated() {
	local d=$1 ram

	virsh -q -c "$dst" domstate $d | grep -qx running || fail "$d does not run at the destination"
	virsh -q -c "$src" domstate $d >/dev/null 2>&1 && fail "$d is still defined at the source"
	same_memory "$(gdir dst $d)" "$2"
	virsh -q -c "$dst" qemu-monitor-command $d '{"execute":"query-migrate-capabilities"}' |
		python3 -c '
import json, sys
caps = {c["capability"]: c["state"] for c in json.load(sys.stdin)["return"]}
sys.exit(caps["x-ignore-shared"])' || fail "$d: x-ignore-shared is still on at the destination"
	ram=$(find "$lv/dst/ram" -path "*-$d/pc.ram")
	[ -n "$ram" ] && [ "$(stat -c %s "$ram")" = 4096 ] && head -n 1 "$ram" | grep -q tlm-ram-stub ||
		fail "$d: the destination's RAM file is not the glue's stub: ${ram:-none}"
}

step "lvt: the destination's daemon started by the script"
migrate lvt
migrated lvt "$before_lvt"

step "lvd: --dst-host, the destination's daemon started over ssh"
mkdir -p "$lv/ssh-dst" "$lv/ssh-src" "$lv/dsthost-run"
dst_sshd "$lv/ssh-dst" "$lv/ssh-src"
accepted=$(grep -c "Accepted publickey" "$lv/ssh-dst/sshd.log" || true)
migrate lvd --dst-host dsthost --dst-run-dir "$lv/dsthost-run"
[ "$(grep -c "Accepted publickey" "$lv/ssh-dst/sshd.log")" = $((accepted + 1)) ] ||
	fail "lvd: the migration did not use one ssh connection"
migrated lvd "$before_lvd"

step "a domain that arrived by tlm does not leave by tlm (its RAM is the glue's mapping)"
out=$(ip netns exec "$TLM_DST_NS" "$root/scripts/virsh-migrate-tlm.sh" --src-uri "$dst" \
	--src-addr "$TLM_DST_ADDR" --dst-addr "$TLM_SRC_ADDR" lvt "$src" 2>&1) &&
	fail "lvt left by tlm with its RAM in the glue's private mapping"
echo "$out"
[ "$(echo "$out" | wc -l)" = 1 ] && echo "$out" | grep -q "is a stub" ||
	fail "the refusal is not the one line about the stub"
virsh -q -c "$dst" domstate lvt | grep -qx running || fail "lvt does not run after the refusal"
same_memory "$(gdir dst lvt)" "$before_lvt"
echo "PASS $name"
