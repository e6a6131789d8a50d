#!/usr/bin/env bash
# Benchmark: tlm against stock QEMU postcopy-ram and precopy, on the same link, for N VMs
# migrated at once, for one or more guest RAM sizes.
#
#   scripts/bench-migrate.sh [--scenario clones|diverged] [--counts 1,2,4,8]
#                            [--mem LIST] [--dirty-mib MiB] [--dirty-rate P]
#                            [--link lan|wan|loopback] [--link-mbit N]
#                            [--modes tlm,qemu,precopy]
#                            [--out DIR] [--plots-dir DIR] [--quick]
#
#   --scenario S     clones (default): N clones of one template (scripts/clone-start.sh;
#                    tracked by the glue), each reseeding --dirty-mib MiB after start;
#                    diverged: N plain VMs started with `tlm_qemu.vm start --track`, no
#                    template, whose workload fills most of the RAM with unique pages
#                    (RAM - 80 MiB - RAM/16) and keeps rewriting --dirty-rate pages/s
#                    during the migration (the live switch-over's case: downtime against
#                    RAM size)
#   --counts LIST    numbers of VMs (default 1,2,4,8 for clones, 1 for diverged)
#   --mem LIST       guest RAM sizes, MiB (default 192 for clones, 256,1024 for diverged;
#                    up to 2048 and more works: a 2 GiB TCG guest boots and fills in ~20 s)
#   --dirty-mib M    clones: how much of its memory each clone rewrites after start
#                    (default 8): the part that differs from the template (the DATA a
#                    migration must send); the clones' workload is a quarter of the RAM
#   --dirty-rate P   diverged: the workload's rewrites, pages/s (default 1000)
#   --hot-mib M      diverged: the set those rewrites go to, MiB (default: the guest's,
#                    workload / 8); a small hot set at a high rate is the write-heavy
#                    guest of the policy comparison (modes tlm-post,tlm-hybrid,tlm-auto)
#   --link-mbit N    the link's rate in Mbit/s instead of the preset's (TLM_LINK_MBIT)
#   --link L         wan (default: 1 Gbit/s, 20 ms RTT), lan (10 Gbit/s, 0.1 ms) or
#                    loopback: two emulated hosts, scripts/lib/netns.sh (which says what the
#                    kernel allowed: no sch_netem = wan through tunlink.py, lan rate only;
#                    no namespaces = loopback)
#   --modes LIST     which migrations (default tlm,qemu,precopy; tlm gives the lower bound;
#                    tlm-nolive = tlm with --no-live, the classification after the stop;
#                    tlm-post, tlm-hybrid, tlm-auto = tlm with that --policy)
#   --out DIR        results directory (default build/bench-results/<link>-<date>)
#   --plots-dir DIR  also copy the plots there (docs/img: the ones the README shows):
#                    clones: bench-{bytes,memory,progress}.png + bench-results.md;
#                    diverged: bench-downtime.png + bench-results-diverged.md
#   --quick          --counts 1 --mem 160 --dirty-mib 4 (the CI smoke test)
#
# For every RAM size, N and mode: fresh VMs started in the source namespace (clones: with
# the same reseeds; diverged: the same seeds, so every mode moves the same guest content),
# migrated to the destination namespace with scripts/migrate-postcopy.sh, checked there
# (checksum, TICKs), stopped. While they migrate, their consoles are followed: the
# longest interval between two TICKs (one per guest second) is the guest's worst stall
# (1 s = no stall).
# Writes in DIR: results.csv (one row per run), results.md (the table and the ratios
# tlm / baseline per RAM size and N), bytes.png, memory.png, progress.png (clones, the
# first RAM size), downtime.png (downtime against RAM size, one line per mode; the
# first N), trace.csv, runs.jsonl, and logs/. Columns: see docs/BENCHMARKS.md.
# TCG guests on 2 cores: N=8 at 192 MiB takes minutes per mode.
set -euo pipefail
# shellcheck source=lib/common.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"
# shellcheck source=lib/netns.sh
. "$tlm_root/scripts/lib/netns.sh"

scenario=clones
counts=
mems=
dirty_mib=8
dirty_rate=1000
hot_mib=
link=wan
modes=tlm,qemu,precopy
out=
plots_dir=
while [ $# -gt 0 ]; do
	case "$1" in
	--scenario) scenario=${2:-}; shift ;;
	--counts) counts=${2:-}; shift ;;
	--mem) mems=${2:-}; shift ;;
	--dirty-mib) dirty_mib=${2:-}; shift ;;
	--dirty-rate) dirty_rate=${2:-}; shift ;;
	--hot-mib) hot_mib=${2:-}; shift ;;
	--link) link=${2:-}; shift ;;
	--link-mbit) export TLM_LINK_MBIT=${2:-}; shift ;;
	--modes) modes=${2:-}; shift ;;
	--out) out=${2:-}; shift ;;
	--plots-dir) plots_dir=${2:-}; shift ;;
	--quick) counts=1 mems=160 dirty_mib=4 ;;
	-h|--help) tlm_usage; exit 0 ;;
	*) echo "$tlm_prog: unknown option '$1' (try --help)" >&2; exit 2 ;;
	esac
	shift
done
case "$scenario" in
clones) : "${counts:=1,2,4,8}" "${mems:=192}" ;;
diverged) : "${counts:=1}" "${mems:=256,1024}" ;;
*) tlm_die "--scenario: clones or diverged, not '$scenario'" ;;
esac
[[ "$counts" =~ ^[1-9][0-9]?(,[1-9][0-9]?)*$ ]] || tlm_die "--counts: e.g. 1,2,4, not '$counts'"
[[ "$mems" =~ ^[0-9]+(,[0-9]+)*$ ]] || tlm_die "--mem: e.g. 256,2048, not '$mems'"
min_mem=
for m in ${mems//,/ }; do
	[ "$m" -ge 160 ] || tlm_die "--mem: RAM sizes >= 160 MiB, not '$m'"
	[ -n "$min_mem" ] && [ "$min_mem" -le "$m" ] || min_mem=$m
done
[[ "$dirty_mib" =~ ^[0-9]+$ ]] && [ "$dirty_mib" -le $((min_mem / 4)) ] ||
	tlm_die "--dirty-mib: a whole number up to the workload's $((min_mem / 4)) MiB, not '$dirty_mib'"
[[ "$dirty_rate" =~ ^[0-9]+$ ]] || tlm_die "--dirty-rate: pages/s, not '$dirty_rate'"
[ -z "$hot_mib" ] || [[ "$hot_mib" =~ ^[1-9][0-9]*$ ]] ||
	tlm_die "--hot-mib: MiB, a whole number, not '$hot_mib'"
mode_re='(tlm|tlm-nolive|tlm-post|tlm-hybrid|tlm-auto|qemu|precopy)'
[[ "$modes" =~ ^$mode_re(,$mode_re)*$ ]] ||
	tlm_die "--modes: a list of tlm, tlm-nolive, tlm-post, tlm-hybrid, tlm-auto, qemu, precopy, not '$modes'"
case "$link" in lan|wan|loopback) ;; *) tlm_die "--link: lan, wan or loopback, not '$link'" ;; esac
: "${out:=$tlm_root/build/bench-results/$link-$(date -u +%Y%m%dT%H%M%SZ)}"
mkdir -p "$out/logs"
out=$(cd "$out" && pwd)

export TLM_BIN_DIR=${TLM_BIN_DIR:-$tlm_root/build/runtime}
export TLM_GLUE=${TLM_GLUE:-$tlm_root/build/qemu-glue/libtlm-glue.so}
for f in "$TLM_BIN_DIR/tlm-page-server" "$TLM_BIN_DIR/tlm-uffd-server" "$TLM_GLUE"; do
	[ -e "$f" ] || tlm_die "$f is missing: build tlm first (scripts/setup.sh)"
done
base=$(mktemp -d /dev/shm/tlm-benchmig.XXXXXX)
export TLM_RUN_DIR=$base/run TMPDIR=$base/tmp
mkdir -p "$TMPDIR"
watcher=

# VMs of this run dir, daemons a failed tlm run left (their control sockets are ours),
# the namespaces: everything this script made goes.
cleanup() {
	local rc=$? d s

	[ -z "$watcher" ] || { kill "$watcher" 2>/dev/null; wait "$watcher" 2>/dev/null; } || true
	for d in "$TLM_RUN_DIR"/*/; do
		[ -L "${d%/}" ] || [ ! -e "$d/vm.json" ] || tlm_vm stop "$d" >/dev/null 2>&1 || true
	done
	for s in "$TMPDIR"/*/src/ctl.sock "$TMPDIR"/*/dst/ctl.sock; do
		[ -S "$s" ] || continue
		python3 -c 'import socket,sys; s=socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]);
s.sendall(b"shutdown\n")' "$s" 2>/dev/null || true
	done
	tlm_link_down
	rm -rf "$base"
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 1' INT TERM

( tlm_need_packages gnuplot-nox ) || tlm_log "no gnuplot: the plots are left out"
"$tlm_root/scripts/mkguest.sh" >/dev/null
tlm_link_up "$link"
echo "link: $TLM_LINK_DESC" | tee "$out/link.txt"
link=$TLM_LINK

# clones: one template per RAM size (the workload fills a quarter of the RAM)
template() {
	local mem=$1

	tdir=$base/template-$mem
	[ ! -e "$tdir/template.json" ] || return 0
	echo "== template: $mem MiB guest, workload $((mem / 4)) MiB (scripts/template-create.sh)"
	"$tlm_root/scripts/template-create.sh" bench --out "$tdir" --mem "$mem" \
		--wl-mem $((mem / 4)) --force 2>"$out/logs/template-$mem.log" | tail -n 1
}

net_opts() {
	[ -n "$TLM_SRC_NS" ] || return 0
	case "$1" in
	tlm*) echo --src-netns "$TLM_SRC_NS" --src-addr "$TLM_SRC_ADDR" ;;
	esac
	echo --dst-netns "$TLM_DST_NS" --dst-addr "$TLM_DST_ADDR"
}

# The largest workload a guest of $1 MiB holds (tlm_qemu.vm max_wl_mem).
max_wl_mem() {
	echo $(($1 - 80 - $1 / 16))
}

# The N VMs of one run, started in the source namespace: clones of the template, or
# plain tracked VMs whose workload fills most of the RAM and keeps writing.
start_vms() {
	local n=$1 mem=$2 tag=$3 i

	if [ "$scenario" = clones ]; then
		"$tlm_root/scripts/clone-start.sh" "$tdir" bm --count "$n" --reseed 100 \
			--reseed-mib "$dirty_mib" ${TLM_SRC_NS:+--netns "$TLM_SRC_NS"} \
			> "$out/logs/$tag.vms.log" 2>&1 || return 1
		return 0
	fi
	for i in $(seq 1 "$n"); do
		tlm_vm start "bm-$i" --mem "$mem" --wl-mem "$(max_wl_mem "$mem")" --seed "$i" \
			--dirty "$dirty_rate" ${hot_mib:+--hot "$hot_mib"} --track \
			${TLM_SRC_NS:+--netns "$TLM_SRC_NS"} \
			>> "$out/logs/$tag.vms.log" 2>&1 || return 1
	done
	for i in $(seq 1 "$n"); do
		tlm_vm wait-ready "bm-$i" --timeout $((120 + mem / 8)) \
			>> "$out/logs/$tag.vms.log" 2>&1 || return 1
	done
}

# One run: N fresh VMs, one migration mode, one row of runs.jsonl.
bench_one() {
	local n=$1 mode=$2 mem=$3 tag="$scenario-m$3-n$1-$2" names=() i b0 b1 t0 t1 rc=0
	local mode_opts=(--mode "$mode") tr=${trace_n:+$base/trace.csv}

	case "$mode" in
	tlm-nolive) mode_opts=(--mode tlm --no-live) tr= ;;	# tlm's is traced
	tlm-post|tlm-hybrid|tlm-auto) mode_opts=(--mode tlm --policy "${mode#tlm-}") ;;
	esac
	for i in $(seq 1 "$n"); do names+=("bm-$i"); done
	start_vms "$n" "$mem" "$tag" || { cat "$out/logs/$tag.vms.log" >&2
		tlm_die "$scenario mem=$mem N=$n $mode: the VMs did not start"; }
	: > "$base/ticks.csv"
	python3 "$tlm_root/scripts/lib/bench_report.py" ticks "$TLM_RUN_DIR" bm- \
		"$base/ticks.csv" &
	watcher=$!
	b0=$(tlm_link_bytes)
	t0=$(date +%s.%N)
	# shellcheck disable=SC2046
	"$tlm_root/scripts/migrate-postcopy.sh" "${mode_opts[@]}" $(net_opts "$mode") \
		--json "$out/logs/$tag.json" ${tr:+--trace "$tr"} \
		"${names[@]}" > "$out/logs/$tag.log" 2>&1 || rc=$?
	t1=$(date +%s.%N)
	b1=$(tlm_link_bytes)
	sleep 0.1
	kill "$watcher"
	wait "$watcher" || true
	watcher=
	cp "$base/ticks.csv" "$out/logs/$tag.ticks.csv"
	if [ "$rc" != 0 ]; then
		cat "$out/logs/$tag.log" >&2
		tlm_die "$scenario mem=$mem N=$n $mode: migration failed (logs in $out/logs)"
	fi
	tail -n 1 "$out/logs/$tag.log"
	python3 "$tlm_root/scripts/lib/bench_report.py" row "$out/runs.jsonl" "$link" "$n" \
		"$mode" "$out/logs/$tag.json" "$base/ticks.csv" "$t0" "$t1" $((b1 - b0)) \
		"$TLM_LINK_BPS" "$mem" "$dirty_mib" "$scenario" "$dirty_rate" "$hot_mib"
	for i in "${names[@]}"; do tlm_vm stop "$i" >/dev/null; done
}

: > "$out/runs.jsonl"
trace_first=${counts%%,*} mem_first=${mems%%,*}
for mem in ${mems//,/ }; do
	[ "$scenario" != clones ] || template "$mem"
	for n in ${counts//,/ }; do
		trace_n=		# the progress plot: one run per mode, the first N and RAM size
		[ "$n" != "$trace_first" ] || [ "$mem" != "$mem_first" ] || trace_n=$n
		for mode in ${modes//,/ }; do
			echo "== $scenario, $mem MiB, N=$n: $mode"
			bench_one "$n" "$mode" "$mem"
		done
	done
done
[ -e "$base/trace.csv" ] && cp "$base/trace.csv" "$out/trace.csv"
echo
python3 "$tlm_root/scripts/lib/bench_report.py" report "$out/runs.jsonl" "$out" \
	"$out/trace.csv"
echo
echo "results: $out/results.csv, $out/results.md; plots: $out/*.png"
if [ -n "$plots_dir" ]; then
	mkdir -p "$plots_dir"
	# clones: the bytes, memory and progress plots; diverged: downtime against RAM size
	# (a clones run's downtime plot has one RAM size and would replace it)
	plots="bytes memory progress" tag=
	[ "$scenario" = clones ] || plots=downtime tag=-$scenario
	for p in $plots; do
		[ -e "$out/$p.png" ] && cp "$out/$p.png" "$plots_dir/bench-$p.png"
	done
	cp "$out/results.md" "$plots_dir/bench-results$tag.md"
	echo "plots copied to $plots_dir"
fi
