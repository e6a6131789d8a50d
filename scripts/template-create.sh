#!/usr/bin/env bash
# Create a VM template: boot a guest whose RAM is a tmpfs file, let the workload fill its
# memory, stop it and save its device state without the RAM (x-ignore-shared), and its
# disks as they are at that instant. Or do the same with an operator's running VM.
#
#   scripts/template-create.sh NAME [--out DIR] [--mem MiB] [--wl-mem MiB] [--seed N]
#                              [--dirty N] [--disk FILE]... [--nic]... [--force]
#   scripts/template-create.sh NAME --from QMP_SOCKET [--out DIR] [--force]
#
#   --out DIR      template directory (default /dev/shm/tlm/templates/NAME)
#   --mem MiB      guest RAM (default 256)
#   --wl-mem MiB   workload buffer (default 64); --seed N (1), --dirty pages/s (100)
#   --disk FILE    the test guest gets this image (qcow2 or raw) as a virtio-blk disk
#                  (/dev/vda, /dev/vdb, ... in order); it writes to it while it runs
#   --nic          the test guest gets a virtio-net NIC (QEMU's MAC; clones get their own)
#   --from SOCK    the template is the running QEMU serving this QMP socket (-qmp
#                  unix:PATH,server=on): its RAM must be one memory-backend-file,share=on
#                  on tmpfs (README "Migrating your own VM"); it is paused while its state
#                  and disks are saved, then goes on running (`cont`)
#   --force        replace an existing template
#
# The template directory holds:
#   ram          the guest RAM = the template pages (memory-backend-file, share=on)
#   ram.tlmi     the tlm index, when tlm-template is built ($TLM_BIN_DIR or build/runtime)
#   state        QEMU device state (a migration stream with x-ignore-shared: no guest RAM)
#   diskN.qcow2  each disk QEMU writes (read-only ones, a CD-ROM, stay shared), as it was
#                when the state was saved: standalone qcow2 (no backing file), read-only
#   vm.json      the machine configuration clones must use (tlm_qemu.vm start --like)
#   template.json  what was made: sizes, disks, NIC MACs, the guest checksum at save
#                time (none for --from: no workload to ask), timings
# Clones start from it with scripts/clone-start.sh. NICs must be virtio-net (each clone
# gets its own MAC, written into its copy of the device state); other models are refused.
set -euo pipefail
# shellcheck source=lib/common.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"

name=
out=
mem=256
wl_mem=64
seed=1
dirty=100
force=0
from=
vm_args=()

while [ $# -gt 0 ]; do
	case "$1" in
	--out) out=${2:-}; shift ;;
	--mem) mem=${2:-}; shift ;;
	--wl-mem) wl_mem=${2:-}; shift ;;
	--seed) seed=${2:-}; shift ;;
	--dirty) dirty=${2:-}; shift ;;
	--force) force=1 ;;
	--from) from=${2:-}; shift ;;
	--disk) [ -r "${2:-}" ] || { echo "$tlm_prog: --disk ${2:-}: no such file" >&2; exit 2; }
		vm_args+=(--disk "$2"); shift ;;
	--nic) vm_args+=(--mac auto) ;;
	-h|--help) tlm_usage; exit 0 ;;
	-*) echo "$tlm_prog: unknown option '$1' (try --help)" >&2; exit 2 ;;
	*) [ -z "$name" ] || { echo "$tlm_prog: one NAME only" >&2; exit 2; }; name=$1 ;;
	esac
	shift
done
[ -n "$name" ] || { echo "$tlm_prog: NAME is required (try --help)" >&2; exit 2; }
[[ "$name" =~ ^[A-Za-z0-9][A-Za-z0-9_-]*$ ]] ||
	{ echo "$tlm_prog: NAME '$name': letters, digits, _ and - only" >&2; exit 2; }
for n in "$mem" "$wl_mem" "$seed" "$dirty"; do
	[[ "$n" =~ ^[0-9]+$ ]] || { echo "$tlm_prog: not a number: '$n'" >&2; exit 2; }
done
: "${out:=/dev/shm/tlm/templates/$name}"
bin_dir=${TLM_BIN_DIR:-$tlm_root/build/runtime}

[ -z "$from" ] || [ ${#vm_args[@]} = 0 ] ||
	{ echo "$tlm_prog: --disk and --nic are for the test guest, not with --from" >&2; exit 2; }
[ -z "$from" ] || [ -S "$from" ] || tlm_die "--from $from: not a unix socket"
if [ -e "$out" ]; then
	[ "$force" = 1 ] || tlm_die "template $out exists (use --force to replace it)"
	chmod -R u+w "$out" 2>/dev/null || true
	rm -rf "$out"
fi
command -v qemu-img >/dev/null || tlm_die "qemu-img is missing (apt-get install qemu-utils)"
[ -n "$from" ] || "$tlm_root/scripts/mkguest.sh" >/dev/null
mkdir -p "$out"
vm=tmpl-$name
adopted=0

# The test guest is ours: it goes. The operator's VM stays: resumed (or left paused, if
# the failure came before its state was saved), only our record of it goes.
finish_vm() {
	local d

	if [ -z "$from" ]; then
		tlm_vm stop "$vm" >/dev/null 2>&1 || true
		return 0
	fi
	tlm_qmp "$from" migrate-set-capabilities \
		'{"capabilities":[{"capability":"x-ignore-shared","state":false}]}' >/dev/null 2>&1 || true
	[ "$(tlm_qmp "$from" query-status --get status 2>/dev/null)" = running ] ||
		tlm_qmp "$from" cont >/dev/null || tlm_log "$from: cont failed: the VM stays paused"
	if [ "$adopted" = 1 ]; then
		d=$(tlm_vm info "$vm" --get dir 2>/dev/null) && rm -rf "$d"
		rm -f "$TLM_RUN_DIR/$vm"
	fi
}
failed() {
	finish_vm
	chmod -R u+w "$out" 2>/dev/null || true
	rm -rf "$out"
}
on_exit() {
	local rc=$?

	[ "$rc" = 0 ] || failed
	exit "$rc"
}
trap on_exit EXIT		# tlm_die too

t0=$(date +%s.%N)
if [ -n "$from" ]; then
	if d=$(tlm_vm info "$from" --get dir 2>/dev/null); then
		vm=$d		# migrate-postcopy.sh adopted it before: its record stays
	else
		tlm_vm adopt "$from" --name "$vm" >/dev/null || exit 1
		adopted=1
	fi
	ready="operator's VM $(tlm_vm info "$vm" --get name), pid $(tlm_vm info "$vm" --get pid)"
	sum=
else
	tlm_vm start "$vm" --mem "$mem" --wl-mem "$wl_mem" --seed "$seed" --dirty "$dirty" \
		--ram-file "$out/ram" ${vm_args[@]+"${vm_args[@]}"} >/dev/null
	ready=$(tlm_vm wait-ready "$vm" --timeout 120)
	tlm_log "$vm: $ready"
	sum=$(tlm_vm cmd "$vm" sum)
fi
qmp=$(tlm_vm info "$vm" --get qmp_sock)
devs=$(tlm_vm devices "$vm")
# The NICs' MACs, from QEMU (virtio-net reports them; its device state carries them, and
# clone-start.sh rewrites them there). A NIC of another model would give every clone
# the template's MAC: refused before anything stops.
macs=$(tlm_qmp "$qmp" query-rx-filter | python3 -c '
import json, sys
f, want = json.load(sys.stdin), json.loads(sys.argv[1])["nics"]
if len(f) != want:
    sys.exit(f"{want} NICs, {len(f)} of them virtio-net: clones get their own MAC on "
             f"virtio-net NICs only")
print(json.dumps([n["main-mac"] for n in f]))' "$devs") || tlm_die "$vm: $macs"

# Stop the guest, then save everything but the share=on RAM (it stays in $out/ram, or is
# copied there from the operator's RAM file while the VM is stopped).
tlm_qmp "$qmp" stop >/dev/null
tlm_qmp "$qmp" migrate-set-capabilities \
	'{"capabilities":[{"capability":"x-ignore-shared","state":true}]}' >/dev/null
tlm_qmp "$qmp" migrate "{\"uri\":\"exec:cat > '$out/state'\"}" >/dev/null
mig=$(tlm_vm wait-migration "$vm" --until completed --timeout 60)
cp "$(tlm_vm info "$vm" --get dir)/vm.json" "$out/vm.json"
if [ -n "$from" ]; then
	cp --sparse=always "$(tlm_vm info "$vm" --get ram_file)" "$out/ram"
fi

# The disks, at the instant of the state: the VM is stopped and its migration completed,
# so QEMU has flushed every disk and inactivated it (released its image locks: qemu-img
# gets them, no -U needed, and fails if anything still writes). qemu-img convert copies
# each one whole into the template (a standalone qcow2; a backing chain is flattened),
# and the VM resumes only after that. Why a copy and not blockdev-snapshot-sync (the VM
# writing to a new overlay, the template keeping the frozen image): the frozen image
# would stay the operator's file, used as the backing file of their VM's disk from then
# on, and the template would depend on it; the copy costs the time of reading the disk,
# once, while the VM is stopped anyway.
i=0
while read -r file format; do
	[ -n "$file" ] || continue
	qemu-img convert -f "$format" -O qcow2 "$file" "$out/disk$i.qcow2" ||
		tlm_die "qemu-img convert of $file failed"
	chmod a-w "$out/disk$i.qcow2"
	i=$((i + 1))
done < <(python3 -c 'import json, sys
for d in json.loads(sys.argv[1])["disks"]:
    print(d["file"], d["format"])' "$devs")
finish_vm
trap - EXIT

index=none
if [ -x "$bin_dir/tlm-template" ]; then
	"$bin_dir/tlm-template" build --from "$out/ram" >/dev/null ||
		tlm_die "tlm-template build --from $out/ram failed"
	index=$out/ram.tlmi
else
	tlm_log "no $bin_dir/tlm-template: template without a tlm index"
fi

python3 - "$out" "$name" "$sum" "$mig" "$index" "$t0" "$ready" "$devs" "$macs" <<'EOF'
import json, os, sys, time
out, name, sum_line, mig, index, t0, ready, devs, macs = sys.argv[1:]
mig = json.loads(mig)
st = os.stat(f"{out}/ram")
disks = [{"file": f"{out}/disk{i}.qcow2", "format": "qcow2", "source": d["file"],
          "source_format": d["format"]} for i, d in enumerate(json.loads(devs)["disks"])]
info = {"name": name, "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "ram": f"{out}/ram", "state": f"{out}/state", "index": None if index == "none" else index,
        "vm": f"{out}/vm.json", "sum": sum_line or None, "disks": disks,
        "macs": json.loads(macs),
        "ram_size": st.st_size, "ram_allocated": st.st_blocks * 512,
        "state_size": os.path.getsize(f"{out}/state"),
        "state_ram_transferred": mig.get("ram", {}).get("transferred"),
        "boot": ready, "create_s": round(time.time() - float(t0), 2)}
json.dump(info, open(f"{out}/template.json", "w"), indent=2)
print(f"template {name}: {out}; RAM {st.st_size >> 20} MiB ({info['ram_allocated'] >> 20} MiB"
      f" allocated), device state {info['state_size']} bytes, index {index},"
      f" {len(disks)} disk(s), {len(info['macs'])} NIC(s); guest {sum_line or 'not checked'};"
      f" made in {info['create_s']} s")
EOF
