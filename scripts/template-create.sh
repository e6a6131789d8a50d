#!/usr/bin/env bash
# Create a VM template: boot a guest whose RAM is a tmpfs file, let the workload fill its
# memory, stop it and save its device state without the RAM (x-ignore-shared).
#
#   scripts/template-create.sh NAME [--out DIR] [--mem MiB] [--wl-mem MiB] [--seed N]
#                              [--dirty N] [--force]
#
#   --out DIR      template directory (default /dev/shm/tlm/templates/NAME)
#   --mem MiB      guest RAM (default 256)
#   --wl-mem MiB   workload buffer (default 64); --seed N (1), --dirty pages/s (100)
#   --force        replace an existing template
#
# The template directory holds:
#   ram          the guest RAM = the template pages (memory-backend-file, share=on)
#   ram.tlmi     the tlm index, when tlm-template is built ($TLM_BIN_DIR or build/runtime)
#   state        QEMU device state (a migration stream with x-ignore-shared: no guest RAM)
#   vm.json      the machine configuration clones must use (tlm_qemu.vm start --like)
#   template.json  what was made: sizes, the guest checksum at save time, timings
# Clones start from it with scripts/clone-start.sh.
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

while [ $# -gt 0 ]; do
	case "$1" in
	--out) out=${2:-}; shift ;;
	--mem) mem=${2:-}; shift ;;
	--wl-mem) wl_mem=${2:-}; shift ;;
	--seed) seed=${2:-}; shift ;;
	--dirty) dirty=${2:-}; shift ;;
	--force) force=1 ;;
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

if [ -e "$out" ]; then
	[ "$force" = 1 ] || tlm_die "template $out exists (use --force to replace it)"
	rm -rf "$out"
fi
"$tlm_root/scripts/mkguest.sh" >/dev/null
mkdir -p "$out"
vm=tmpl-$name

failed() {
	tlm_vm stop "$vm" >/dev/null 2>&1 || true
	rm -rf "$out"
}
trap 'failed' ERR

t0=$(date +%s.%N)
tlm_vm start "$vm" --mem "$mem" --wl-mem "$wl_mem" --seed "$seed" --dirty "$dirty" \
	--ram-file "$out/ram" >/dev/null
ready=$(tlm_vm wait-ready "$vm" --timeout 120)
tlm_log "$vm: $ready"
qmp=$(tlm_vm info "$vm" --get qmp)
sum=$(tlm_vm cmd "$vm" sum)

# Stop the guest, then save everything but the share=on RAM (it stays in $out/ram).
tlm_qmp "$qmp" stop >/dev/null
tlm_qmp "$qmp" migrate-set-capabilities \
	'{"capabilities":[{"capability":"x-ignore-shared","state":true}]}' >/dev/null
tlm_qmp "$qmp" migrate "{\"uri\":\"exec:cat > '$out/state'\"}" >/dev/null
mig=$(tlm_vm wait-migration "$vm" --until completed --timeout 60)
cp "$(tlm_vm info "$vm" --get dir)/vm.json" "$out/vm.json"
tlm_vm stop "$vm"
trap - ERR

index=none
if [ -x "$bin_dir/tlm-template" ]; then
	"$bin_dir/tlm-template" build --from "$out/ram" >/dev/null ||
		tlm_die "tlm-template build --from $out/ram failed"
	index=$out/ram.tlmi
else
	tlm_log "no $bin_dir/tlm-template: template without a tlm index"
fi

python3 - "$out" "$name" "$sum" "$mig" "$index" "$t0" "$ready" <<'EOF'
import json, os, sys, time
out, name, sum_line, mig, index, t0, ready = sys.argv[1:]
mig = json.loads(mig)
st = os.stat(f"{out}/ram")
info = {"name": name, "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "ram": f"{out}/ram", "state": f"{out}/state", "index": None if index == "none" else index,
        "vm": f"{out}/vm.json", "sum": sum_line,
        "ram_size": st.st_size, "ram_allocated": st.st_blocks * 512,
        "state_size": os.path.getsize(f"{out}/state"),
        "state_ram_transferred": mig.get("ram", {}).get("transferred"),
        "boot": ready, "create_s": round(time.time() - float(t0), 2)}
json.dump(info, open(f"{out}/template.json", "w"), indent=2)
print(f"template {name}: {out}; RAM {st.st_size >> 20} MiB ({info['ram_allocated'] >> 20} MiB"
      f" allocated), device state {info['state_size']} bytes, index {index};"
      f" guest {sum_line}; made in {info['create_s']} s")
EOF
