#!/usr/bin/env bash
# Start clones of a VM template (scripts/template-create.sh) and report their memory.
#
#   scripts/clone-start.sh TEMPLATE CLONE [--count N] [--reseed S] [--reseed-mib M]
#                          [--glue PATH] [--netns NS] [--disk-dir DIR]
#
#   TEMPLATE        a template name (under /dev/shm/tlm/templates/) or its directory
#   CLONE           the clone's VM name; with --count N the clones are CLONE-1..CLONE-N
#   --reseed S      after start, the workload gives part of its memory a new seed (S, S+1,
#                   ... per clone) so that clones diverge from the template and each other
#   --reseed-mib M  how much memory gets the new seed (default: the workload's last quarter)
#   --glue PATH     preload libtlm-glue.so into the clone's QEMU so that it maps the
#                   template pages shared (default: $TLM_GLUE when that file exists);
#                   without it each clone gets a private copy of the template RAM (the
#                   non-shared fallback). With the glue the clone's RAM is also tracked
#                   for writes (TLM_TRACK=1), so that migrate-postcopy.sh --mode tlm
#                   classifies it while it runs (the live phase)
#   --netns NS      run the clones' QEMU in network namespace NS (an emulated host)
#   --disk-dir DIR  a template with disks: each clone's disks go in DIR/CLONE/ (default
#                   TEMPLATE/clones); to migrate the clone, DIR must be shared storage,
#                   mounted at the same path on the destination host, and so must the
#                   template (the overlays name its disks by their absolute paths)
#
# Each clone: QEMU with the template's command line, -incoming from the template's device
# state with x-ignore-shared (its RAM is not in the stream: it is the clone's RAM file),
# then `cont`. The clone must report the template's checksum before it reseeds (a
# template made --from an operator's VM has no checksum: not checked).
#
# Disks and NICs: each disk of the template (TEMPLATE/diskN.qcow2, read-only) becomes,
# for each clone, a qcow2 overlay DIR/CLONE/diskN.qcow2 backed by it (qemu-img create -b
# TEMPLATE/diskN.qcow2 -F qcow2): the clone reads the template's disk as it was when the
# RAM was saved and writes only to its overlay. A clone name whose DIR/CLONE exists is
# refused (its overlays belong to a clone that ran before, not to the template's RAM).
# Each NIC gets the clone's own MAC: 02: (locally administered, unicast) and 5 bytes of
# sha256("CLONE/N"), on the clone's command line and in its copy of the device
# state DIR/CLONE/state (virtio-net keeps the MAC there: loaded as it is, the template's
# MAC would win). The guest itself still holds the template's MAC (and hostname, leases)
# in its memory: a guest that must show the new MAC re-reads it by re-probing its NIC
# (Linux: echo 1 > /sys/bus/pci/devices/ADDR/remove; echo 1 > /sys/bus/pci/rescan).
# Prints one line per clone with its Pss (/proc/PID/smaps_rollup) and the total.
set -euo pipefail
# shellcheck source=lib/common.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"

template=
clone=
count=0
reseed=
reseed_mib=
glue=
netns=
disk_dir=

while [ $# -gt 0 ]; do
	case "$1" in
	--count) count=${2:-}; shift ;;
	--reseed) reseed=${2:-}; shift ;;
	--reseed-mib) reseed_mib=${2:-}; shift ;;
	--glue) glue=${2:-}; shift ;;
	--netns) netns=${2:-}; shift ;;
	--disk-dir) disk_dir=${2:-}; shift ;;
	-h|--help) tlm_usage; exit 0 ;;
	-*) echo "$tlm_prog: unknown option '$1' (try --help)" >&2; exit 2 ;;
	*)
		if [ -z "$template" ]; then template=$1
		elif [ -z "$clone" ]; then clone=$1
		else echo "$tlm_prog: unexpected argument '$1'" >&2; exit 2
		fi ;;
	esac
	shift
done
[ -n "$clone" ] || { echo "$tlm_prog: TEMPLATE and CLONE are required (try --help)" >&2; exit 2; }
for n in "$count" ${reseed:+"$reseed"} ${reseed_mib:+"$reseed_mib"}; do
	[[ "$n" =~ ^[0-9]+$ ]] || { echo "$tlm_prog: not a number: '$n'" >&2; exit 2; }
done
tdir=$template
[ -d "$tdir" ] || tdir=/dev/shm/tlm/templates/$template
for f in ram state vm.json template.json; do
	[ -e "$tdir/$f" ] || tlm_die "template '$template': no $tdir/$f (scripts/template-create.sh)"
done
tdir=$(cd "$tdir" && pwd)
if [ -n "$glue" ] && [ ! -e "$glue" ]; then
	tlm_die "--glue $glue: no such file"
fi
if [ -z "$glue" ] && [ -n "${TLM_GLUE:-}" ]; then
	if [ -e "$TLM_GLUE" ]; then
		glue=$TLM_GLUE
	else
		tlm_log "TLM_GLUE=$TLM_GLUE does not exist: clones get private RAM copies"
	fi
fi

# The template's disks (one per line) and NIC MACs (one per line), from template.json.
tdisks=$(python3 -c 'import json,sys; [print(d["file"]) for d in
json.load(open(sys.argv[1])).get("disks") or []]' "$tdir/template.json")
tmacs=$(python3 -c 'import json,sys; [print(m) for m in
json.load(open(sys.argv[1])).get("macs") or []]' "$tdir/template.json")
disk_dir=$(realpath -m "${disk_dir:-$tdir/clones}")
if [ -n "$tdisks" ]; then
	command -v qemu-img >/dev/null || tlm_die "qemu-img is missing (apt-get install qemu-utils)"
fi

# A clone's MAC for its NIC N: sha256 of "CLONE/N", first byte 02 (locally administered,
# unicast): the same clone name always gets the same MAC.
clone_mac() {
	local h

	h=$(printf '%s/%s' "$1" "$2" | sha256sum)
	echo "02:${h:2:2}:${h:4:2}:${h:6:2}:${h:8:2}:${h:10:2}"
}

# CLONE: its overlays and MAC-patched device state in DIR/CLONE; prints its `vm start`
# arguments (--disk ... --mac ..., one per line) and, last, the state file to load.
clone_devices() {
	local name=$1 cdir=$disk_dir/$1 i=0 d macs=()

	if [ -z "$tdisks$tmacs" ]; then
		echo "$tdir/state"
		return 0
	fi
	[ ! -e "$cdir" ] || tlm_die "$name: $cdir exists (disks of a clone that ran before):" \
		"remove it or name the clone otherwise"
	mkdir -p "$cdir"
	while read -r d; do
		[ -n "$d" ] || continue
		qemu-img create -q -f qcow2 -b "$d" -F qcow2 "$cdir/disk$i.qcow2" || {
			rm -rf "$cdir"
			tlm_die "$name: qemu-img create of an overlay on $d failed"
		}
		echo "--disk"; echo "$cdir/disk$i.qcow2"
		i=$((i + 1))
	done <<< "$tdisks"
	i=0
	while read -r d; do
		[ -n "$d" ] || continue
		macs+=("$d" "$(clone_mac "$name" "$i")")
		echo "--mac"; echo "${macs[-1]}"
		i=$((i + 1))
	done <<< "$tmacs"
	# Every byte string of the template's MAC in its device state (virtio-net's mac field:
	# loaded unchanged, it overrides the command line's mac=, seen with QEMU 7.2) becomes
	# the clone's; a state without guest RAM holds those 6 bytes nowhere else by chance
	# (a MAC not found there is an error).
	python3 - "$tdir/state" "$cdir/state" ${macs[@]+"${macs[@]}"} <<'EOF' || {
import sys
src, dst, pairs = sys.argv[1], sys.argv[2], sys.argv[3:]
data = open(src, "rb").read()
for old, new in zip(pairs[::2], pairs[1::2]):
    o, n = bytes.fromhex(old.replace(":", "")), bytes.fromhex(new.replace(":", ""))
    if o not in data:
        sys.exit(f"clone-start.sh: error: MAC {old} is not in {src}")
    data = data.replace(o, n)
open(dst, "wb").write(data)
EOF
		rm -rf "$cdir"
		exit 1
	}
	echo "$cdir/state"
}

ram_args() {
	if [ -n "$glue" ]; then
		# Shared template frames: the glue maps TLM_TEMPLATE privately where QEMU maps
		# its RAM file, and says where in TLM_REGION_FILE (tlm's page server reads
		# the guest RAM there when the clone migrates); TLM_TRACK=1: it also registers
		# the RAM for dirty tracking (the page server's live phase; a glue without
		# tracking ignores it).
		echo "--env" "LD_PRELOAD=$glue" "--env" "TLM_RAM_PATH={ram_file}" \
			"--env" "TLM_TEMPLATE=$tdir/ram" "--env" "TLM_REGION_FILE={dir}/region" \
			"--env" "TLM_TRACK=1"
	else
		# Non-shared fallback: a private copy of the template RAM per clone.
		echo "--ram-copy-from" "$tdir/ram"
	fi
}

start_clone() {
	local name=$1 seed=$2 qmp st sum h p b th tp devs=() state

	state=$(clone_devices "$name") || exit 1	# it said why
	mapfile -t devs <<< "$state"
	state=${devs[-1]}
	unset 'devs[-1]'
	# shellcheck disable=SC2046
	tlm_vm start "$name" --like "$tdir/vm.json" --incoming defer $(ram_args) \
		${netns:+--netns "$netns"} ${devs[@]+"${devs[@]}"} >/dev/null || {
		[ "$state" = "$tdir/state" ] || rm -rf "${state%/state}"
		exit 1
	}
	qmp=$(tlm_vm info "$name" --get qmp)
	tlm_qmp "$qmp" migrate-set-capabilities \
		'{"capabilities":[{"capability":"x-ignore-shared","state":true}]}' >/dev/null
	tlm_qmp "$qmp" migrate-incoming "{\"uri\":\"exec:cat '$state'\"}" >/dev/null
	tlm_vm wait-migration "$name" --until completed --timeout 60 >/dev/null
	# Loaded: x-ignore-shared off again, so that a later stock migration or savevm of
	# the clone takes its RAM from the process (its RAM file is the glue's stub).
	tlm_qmp "$qmp" migrate-set-capabilities \
		'{"capabilities":[{"capability":"x-ignore-shared","state":false}]}' >/dev/null
	st=$(tlm_qmp "$qmp" query-status --get status)
	[ "$st" = paused ] || [ "$st" = running ] || tlm_die "$name: state '$st' after loading"
	[ "$st" = running ] || tlm_qmp "$qmp" cont >/dev/null
	[ -n "$tsum" ] || return 0		# an operator's VM: no workload to ask
	# "SUM <hash> <pages> <rewrites> bad=<n>": the template's hash and size, no bad page
	sum=$(tlm_vm cmd "$name" sum)
	read -r _ h p _ b <<< "$sum"
	read -r _ th tp _ <<< "$tsum"
	if [ "$h" != "$th" ] || [ "$p" != "$tp" ] || [ "$b" != bad=0 ]; then
		tlm_die "$name: guest memory differs from the template: '$sum' vs '$tsum'"
	fi
	if [ -n "$seed" ]; then
		tlm_vm cmd "$name" "reseed $seed${reseed_mib:+ $reseed_mib}" >/dev/null
	fi
}

tsum=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["sum"] or "")' \
	"$tdir/template.json")
[ -n "$tsum" ] || [ -z "$reseed" ] ||
	tlm_die "--reseed: template $(basename "$tdir") is an operator's VM (no workload)"

names=()
if [ "$count" -gt 0 ]; then
	for i in $(seq 1 "$count"); do names+=("$clone-$i"); done
else
	names=("$clone")
fi
i=0
for n in "${names[@]}"; do
	start_clone "$n" "${reseed:+$((reseed + i))}"
	i=$((i + 1))
done

total=0
total_file=0
for n in "${names[@]}"; do
	pss=$(tlm_vm pss "$n")
	read -r kb shmem file < <(python3 -c 'import json,sys; d=json.loads(sys.argv[1]);
print(d["pss_kb"], d["pss_shmem_kb"], d["ram_file_kb"] or 0)' "$pss")
	total=$((total + kb))
	total_file=$((total_file + file))
	echo "$n: running from template $(basename "$tdir")$([ -n "$glue" ] && echo " (glue)" ||
		echo " (private RAM copy)"); Pss $((kb / 1024)) MiB (guest RAM mapped" \
		"$((shmem / 1024)) MiB), RAM file $((file / 1024)) MiB allocated;" \
		"$([ -n "$tsum" ] && tlm_vm cmd "$n" sum || echo "no workload")"
done
echo "total: ${#names[@]} clone(s), Pss $((total / 1024)) MiB, RAM files" \
	"$((total_file / 1024)) MiB allocated"
