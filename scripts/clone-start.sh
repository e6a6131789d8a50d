#!/usr/bin/env bash
# Start clones of a VM template (scripts/template-create.sh) and report their memory.
#
#   scripts/clone-start.sh TEMPLATE CLONE [--count N] [--reseed S] [--reseed-mib M]
#                          [--glue PATH] [--netns NS]
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
#
# Each clone: QEMU with the template's command line, -incoming from the template's device
# state with x-ignore-shared (its RAM is not in the stream: it is the clone's RAM file),
# then `cont`. The clone must report the template's checksum before it reseeds.
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

while [ $# -gt 0 ]; do
	case "$1" in
	--count) count=${2:-}; shift ;;
	--reseed) reseed=${2:-}; shift ;;
	--reseed-mib) reseed_mib=${2:-}; shift ;;
	--glue) glue=${2:-}; shift ;;
	--netns) netns=${2:-}; shift ;;
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
	local name=$1 seed=$2 qmp st sum h p b th tp

	# shellcheck disable=SC2046
	tlm_vm start "$name" --like "$tdir/vm.json" --incoming defer $(ram_args) \
		${netns:+--netns "$netns"} >/dev/null
	qmp=$(tlm_vm info "$name" --get qmp)
	tlm_qmp "$qmp" migrate-set-capabilities \
		'{"capabilities":[{"capability":"x-ignore-shared","state":true}]}' >/dev/null
	tlm_qmp "$qmp" migrate-incoming "{\"uri\":\"exec:cat '$tdir/state'\"}" >/dev/null
	tlm_vm wait-migration "$name" --until completed --timeout 60 >/dev/null
	# Loaded: x-ignore-shared off again, so that a later stock migration or savevm of
	# the clone takes its RAM from the process (its RAM file is the glue's stub).
	tlm_qmp "$qmp" migrate-set-capabilities \
		'{"capabilities":[{"capability":"x-ignore-shared","state":false}]}' >/dev/null
	st=$(tlm_qmp "$qmp" query-status --get status)
	[ "$st" = paused ] || [ "$st" = running ] || tlm_die "$name: state '$st' after loading"
	[ "$st" = running ] || tlm_qmp "$qmp" cont >/dev/null
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

tsum=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["sum"])' \
	"$tdir/template.json")

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
		"$((shmem / 1024)) MiB), RAM file $((file / 1024)) MiB allocated; $(tlm_vm cmd "$n" sum)"
done
echo "total: ${#names[@]} clone(s), Pss $((total / 1024)) MiB, RAM files" \
	"$((total_file / 1024)) MiB allocated"
