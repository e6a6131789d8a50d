#!/usr/bin/env bash
# Runtime benchmark (not a test): one region migrated by tlm-page-server -> tlm-uffd-server
# over loopback into tlm-synth-guest processes, with the docs/ARCHITECTURE.md page mix
# 70 % TEMPLATE, 10 % ZERO, 5 % REF, 15 % DATA, and the figures printed side by side with
# their targets. Everything is measured in this one run, so ratios compare like with like
# on a shared, noisy machine.
#
#   scripts/bench-runtime.sh [--size SIZE] [--bulk-ahead SIZE] [--bulk-lowat SIZE]
#                            [--net-io MODE] [--bulk-rcvbuf KIB] [--fault-around N]
#                            [--tls] [--json FILE] [--keep]
#
#   --size SIZE        region size (default 1G; k/M/G suffixes, multiple of 4 KiB, >= 16M)
#   --bulk-ahead SIZE  passed to tlm-page-server (how much of the background stream may be
#                      ahead of a queued page for a demand to wait for it; default its own)
#   --bulk-lowat SIZE  passed to tlm-page-server (TCP_NOTSENT_LOWAT of the bulk socket)
#   --net-io MODE      passed to tlm-uffd-server (how it receives the bulk stream: uring,
#                      syscall, auto; default its own)
#   --bulk-rcvbuf KIB  passed to tlm-uffd-server (its bulk sockets' SO_RCVBUF; 0: autotuning)
#   --fault-around N   passed to tlm-uffd-server (TEMPLATE pages mapped around a TEMPLATE
#                      fault: an aligned window of N pages; 1: the page alone)
#   --tls              also runs A and C with --tls psk on both daemons (runs AT, CT), and
#                      T over the daemons' TLS layer: TLS vs clear text
#   --json FILE        also write the figures as one JSON object
#   --keep             keep the work directory (/dev/shm/tlm-bench.*)
#
# Binaries: $TLM_BIN_DIR (default build/runtime), $TLM_TEST_BIN_DIR (build/tests), $TLM_GLUE
# (build/qemu-glue/libtlm-glue.so); scripts/setup.sh is run if one is missing.
# Needs /dev/shm space for about 2 x SIZE (template, source RAM) and root (userfaultfd).
#
# Runs:
#   A  demand only: the page server holds its background DATA stream (--bulk-delay) while
#      the destination reads every page once, last page first (against the class-map sweep,
#      so TEMPLATE pages fault too): TEMPLATE faults served locally, every DATA page a
#      demand fault over loopback (no background load).
#   B  the background stream runs while two destinations of the same region read at once
#      (DATA faults under load: vm1 reads last page first, vm2 first page first, just behind
#      the stream); wire bytes and Pss (template frames shared) from this run.
#   C  the background stream alone (the destination reads once complete): its throughput,
#      and each daemon's CPU time from the freeze to the end per DATA page
#      (src_/dst_cpu_us_per_page: classification and the class-map sweep included; the
#      src_/dst_stream_ keys from the class map's arrival on: the DATA stream alone), and
#      the time from the freeze to the region's completion (every page placed, or TEMPLATE
#      left to the kernel: pages.template_left of the destination's stats).
#   AT (--tls) run A again with both daemons on --tls psk, right after A: what TLS adds to
#      a demand fault's round trip (data_fault_p50/p99_us_no_background_tls).
#   CT (--tls) run C again with both daemons on --tls psk, right after C: the stream's
#      throughput and CPU per page over TLS, the data path taken (kTLS or userspace) from
#      the daemons' logs, and the ratio to C's clear-text stream (tls_over_clear).
#   T  plain TCP streams of the same bytes over loopback (tlm-bench-runtime): the baseline;
#      also received into fresh memory (--fresh), as the destination must place its pages;
#      with --tls also over the daemons' TLS layer (--tls: what encryption costs a stream
#      that nothing else limits; tcp_tls_mb_per_s, tcp_tls_over_tcp).
#   P  the same bytes placed by UFFDIO_COPY alone, in 64-page runs, by 1 and by 2 threads
#      (tlm-bench-runtime place): what placement costs, and whether placement threads
#      would scale on this machine.
set -euo pipefail
# shellcheck source=lib/common.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"

size=1G
json_out=
keep=0
ps_opts=()
ud_opts=()
ahead=
lowat=
tls=0
ud_run=()	# tlm-uffd-server options of one run (migrate)
need_arg() { [ $# -ge 2 ] && [ -n "$2" ] || { echo "$tlm_prog: $1 needs a value" >&2; exit 2; }; }
while [ $# -gt 0 ]; do
	case "$1" in
	--size) need_arg "$@"; size=$2; shift ;;
	--json) need_arg "$@"; json_out=$2; shift ;;
	--bulk-ahead) need_arg "$@"; ahead=$2; shift ;;
	--bulk-lowat) need_arg "$@"; lowat=$2; shift ;;
	--net-io|--bulk-rcvbuf|--fault-around) need_arg "$@"; ud_opts+=("$1" "$2"); shift ;;
	--tls) tls=1 ;;
	--keep) keep=1 ;;
	-h|--help) tlm_usage; exit 0 ;;
	*) echo "$tlm_prog: unknown option '$1' (try --help)" >&2; exit 2 ;;
	esac
	shift
done
bytes=${size^^}
bytes=$(numfmt --from=iec "${bytes%IB}" 2>/dev/null) ||
	{ echo "$tlm_prog: --size: not a size: '$size'" >&2; exit 2; }
[ $((bytes % 4096)) = 0 ] && [ "$bytes" -ge $((16 << 20)) ] ||
	{ echo "$tlm_prog: --size: a multiple of 4 KiB, at least 16M" >&2; exit 2; }
for o in ahead lowat; do
	[ -z "${!o}" ] || [[ ${!o} =~ ^[0-9]+[kKmMgG]?$ ]] ||
		{ echo "$tlm_prog: --bulk-$o: not a size: '${!o}'" >&2; exit 2; }
	[ -z "${!o}" ] || ps_opts+=("--bulk-$o" "${!o}")
done

bin=${TLM_BIN_DIR:-$tlm_root/build/runtime}
tbin=${TLM_TEST_BIN_DIR:-$tlm_root/build/tests}
glue=${TLM_GLUE:-$tlm_root/build/qemu-glue/libtlm-glue.so}
[ "$(id -u)" = 0 ] || tlm_die "needs root (userfaultfd of other processes' memory)"
for f in "$bin/tlm-page-server" "$bin/tlm-uffd-server" "$bin/tlm-template" "$bin/tlmctl" \
	 "$bin/tlm-bench-runtime" "$glue" "$tbin/e2e/tlm-synth-guest"; do
	[ -e "$f" ] || "$tlm_root/scripts/setup.sh" >/dev/null
	[ -e "$f" ] || tlm_die "$f is missing"
done

work=$(mktemp -d /dev/shm/tlm-bench.XXXXXX)
pids=()
cleanup() {
	local rc=$? p
	# A guest whose daemon is gone waits in its page faults for good (by design): after
	# SIGTERM (and SIGCONT for the stopped source), SIGKILL what is left.
	for p in "${pids[@]}"; do kill "$p" 2>/dev/null && kill -CONT "$p" 2>/dev/null || true; done
	sleep 0.3
	for p in "${pids[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
	wait 2>/dev/null || true
	[ "$keep" = 1 ] || rm -rf "$work"
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 1' INT TERM

# ---- helpers --------------------------------------------------------------------------------

bg() {		# NAME CMD...: start in the background, stdout/stderr to $work/NAME.{out,err}
	local name=$1
	shift
	"$@" > "$work/$name.out" 2> "$work/$name.err" &
	pids+=($!)
}

wait_line() {	# FILE PREFIX [TIMEOUT_S]: print the first line starting with PREFIX
	local i line
	for i in $(seq $((${3:-30} * 20))); do
		line=$(grep -m1 "^$2" "$1" 2>/dev/null) && { echo "$line"; return 0; }
		sleep 0.05
	done
	tlm_die "no '$2' in $1 after ${3:-30} s: $(tail -n 2 "${1%.out}.err" 2>/dev/null)"
}

ctl() { "$bin/tlmctl" -s "$@"; }

# Phase of region ID (no python in polling loops: it would load the machine being measured).
phase_of() {
	ctl "$1" stats "$2" 2>/dev/null | grep -o -m1 '"phase":"[a-z]*"' | cut -d'"' -f4
}

wait_phase() {	# CTL ID PHASE... : until the region is in one of the phases
	local ctlp=$1 id=$2 i ph
	shift 2
	for i in $(seq 1200); do
		ph=$(phase_of "$ctlp" "$id") || ph=none
		case " $* " in *" $ph "*) return 0 ;; esac
		[ "$ph" != failed ] || tlm_die "$id: region failed: $(ctl "$ctlp" stats "$id")"
		sleep 0.05
	done
	tlm_die "$id: phase '$ph' after 60 s, want $*"
}

# CPU time of a daemon so far, us: "cpu_us" of its stats (getrusage: every thread, ended
# ones too). CTL: its control socket.
cpu_us() {
	ctl "$1" stats | grep -o '"cpu_us":[0-9]*' | cut -d: -f2
}

# "Pss Pss_Shmem" of PID in kB (template frames are tmpfs pages: Pss_Shmem)
pss_kb() { awk '/^Pss:/ { p = $2 } /^Pss_Shmem:/ { s = $2 } END { print p, s }' "/proc/$1/smaps_rollup"; }

# ---- setup: template, key, source guest -------------------------------------------------------

echo "== template: $size of random pages on tmpfs, indexed"
head -c "$bytes" /dev/urandom > "$work/tmpl"
cp "$work/tmpl" "$work/dtmpl"	# the destination host's own copy (its frames are not the source's)
for f in tmpl dtmpl; do "$bin/tlm-template" build --from "$work/$f" >/dev/null; done
(umask 077; head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$work/key")
echo "== source guest: 70 % template, 10 % zero, 5 % ref, 15 % data"
bg src env LD_PRELOAD="$glue" TLM_RAM_PATH="$work/src.ram" TLM_TEMPLATE="$work/tmpl" \
	"$tbin/e2e/tlm-synth-guest" source --ram "$work/src.ram" --size "$bytes" \
	--template "$work/tmpl" --seed 7 --mix template=70,zero=10,ref=5,data=15 \
	--manifest "$work/manifest"
read -r _ _ addr _ _ _ spid < <(wait_line "$work/src.out" "ready addr=" 120 | tr '=' ' ')
kill -STOP "$spid"		# the source "VM" is stopped before freeze, as QEMU would be

# ---- one migration ----------------------------------------------------------------------------

# LABEL NDEST WHEN [page-server options...]: daemons, NDEST destination guests of the same
# region (vm1..vmN), freeze; WHEN=now: the guests read and check every page at once (vm1
# last page first, against the class-map sweep and the stream; vm2 first page first, just
# behind the stream), the run ends when they are done (and, unless the stream is held back,
# the regions complete); WHEN=after: they read only once the regions are complete.
# Stats in $work/LABEL.{dst,src}.json, Pss of the guests / the uffd-server in LABEL.pss.
migrate() {
	local label=$1 n=$2 when=$3 k port first=${#pids[@]} held=0
	local regions=() dst=() order
	shift 3
	case " $* " in *" --bulk-delay "*) held=1 ;; esac
	for k in $(seq "$n"); do
		regions+=(--region "vm$k,pid=$spid,addr=$addr,size=$bytes,template=$work/tmpl")
	done
	bg "$label.ps" "$bin/tlm-page-server" --listen 127.0.0.1:0 --key "$work/key" \
		--ctl "$work/$label.ps.ctl" "${regions[@]}" --log-level warn "$@"
	port=$(wait_line "$work/$label.ps.out" "port " | cut -d' ' -f2)
	bg "$label.ud" "$bin/tlm-uffd-server" --sock "$work/$label.glue" \
		--ctl "$work/$label.ud.ctl" --key "$work/key" --source "127.0.0.1:$port" \
		--template "$work/dtmpl" --log-level warn "${ud_opts[@]}" "${ud_run[@]}"
	local udpid=${pids[-1]}
	until [ -S "$work/$label.glue" ]; do sleep 0.05; done
	for k in $(seq "$n"); do
		order=()
		[ "$k" != 1 ] || order=(--reverse)
		bg "$label.dst$k" env LD_PRELOAD="$glue" TLM_RAM_PATH="$work/$label.dst$k.ram" \
			TLM_TEMPLATE="$work/dtmpl" TLM_SOCK="$work/$label.glue" TLM_VM_ID="vm$k" \
			TLM_ARM=map "$tbin/e2e/tlm-synth-guest" dest --ram "$work/$label.dst$k.ram" \
			--size "$bytes" --manifest "$work/manifest" --wait-signal --hold "${order[@]}"
		dst+=("${pids[-1]}")
		wait_line "$work/$label.dst$k.out" "mapped addr=" >/dev/null
		wait_phase "$work/$label.ud.ctl" "vm$k" mapping fetching complete
	done
	# Both daemons' CPU time from the freeze to the end (run C: the whole migration after
	# the stop, classification and the class-map sweep included), per DATA page.
	local cpu0="$(cpu_us "$work/$label.ps.ctl") $(cpu_us "$work/$label.ud.ctl")"
	date +%s.%N > "$work/$label.freeze"
	ctl "$work/$label.ps.ctl" freeze all >/dev/null
	if [ "$when" = after ]; then
		# ... and from the class map's arrival at the destination (the DATA stream's start)
		local i cpu1="- -"
		for i in $(seq 6000); do
			ctl "$work/$label.ud.ctl" stats vm1 2>/dev/null |
				grep -q '"map_received_ms":[1-9]' || { sleep 0.01; continue; }
			cpu1="$(cpu_us "$work/$label.ps.ctl") $(cpu_us "$work/$label.ud.ctl")"
			break
		done
		for k in $(seq "$n"); do wait_phase "$work/$label.ud.ctl" "vm$k" complete; done
		echo "$cpu0 $cpu1 $(cpu_us "$work/$label.ps.ctl") $(cpu_us "$work/$label.ud.ctl")" \
			> "$work/$label.cpu"
	fi
	kill -USR1 "${dst[@]}"
	for k in $(seq "$n"); do
		wait_line "$work/$label.dst$k.out" "holding" 600 >/dev/null
		grep -q "^verify: .* mismatches=0 " "$work/$label.dst$k.out" ||
			tlm_die "$label: vm$k: $(grep -m1 '^verify:' "$work/$label.dst$k.out")"
		[ "$held" = 1 ] || wait_phase "$work/$label.ud.ctl" "vm$k" complete
	done
	for k in "${dst[@]}"; do echo "vm $(pss_kb "$k")"; done > "$work/$label.pss"
	echo "daemon $(pss_kb "$udpid")" >> "$work/$label.pss"
	ctl "$work/$label.ud.ctl" stats > "$work/$label.dst.json"
	ctl "$work/$label.ps.ctl" stats > "$work/$label.src.json"
	for k in "${pids[@]:$first}"; do kill "$k" 2>/dev/null || true; done
	for k in "${pids[@]:$first}"; do wait "$k" 2>/dev/null || true; done
	pids=("${pids[@]:0:$first}")
}

# Median of 3 plain TCP streams of BYTES over loopback (MB/s); with --fresh, received into
# newly mapped memory (a destination places pages into memory nothing has touched).
tcp_baseline() {
	local i
	for i in 1 2 3; do
		"$bin/tlm-bench-runtime" tcp --bytes "$@" | sed -n 's/^tcp_mb_per_s=\([0-9.]*\).*/\1/p'
	done | sort -n | sed -n 2p
}

# ---- the runs -------------------------------------------------------------------------------

echo "== run A: demand only (background DATA stream held back), one destination"
migrate A 1 now --bulk-delay 3600000 "${ps_opts[@]}"
if [ "$tls" = 1 ]; then
	echo "== run AT: run A again over TLS (--tls psk on both daemons)"
	ud_run=(--tls psk)
	migrate AT 1 now --bulk-delay 3600000 "${ps_opts[@]}" --tls psk
	ud_run=()
fi
echo "== run B: background stream on, two destinations of the same region read at once"
migrate B 2 now "${ps_opts[@]}"
echo "== run C: background stream alone (the destination reads once complete)"
migrate C 1 after "${ps_opts[@]}"
if [ "$tls" = 1 ]; then
	echo "== run CT: run C again over TLS (--tls psk on both daemons)"
	ud_run=(--tls psk --log-level info)
	migrate CT 1 after "${ps_opts[@]}" --tls psk --log-level info
	ud_run=()
	# The data path the sessions took, as the daemons logged it (tlm_tls.h).
	grep -h -o -m1 'channel: tls: .*' "$work/CT.ud.err" | sed 's/^channel: tls: //' \
		> "$work/CT.path" || tlm_die "run CT: no 'tls:' line in the destination's log"
fi
payload=$(python3 -c 'import json,sys
print(json.load(open(sys.argv[1]))["regions"][0]["data_sent_bulk"] * 4096)' "$work/C.src.json")
echo "== run T: plain TCP streams of the same $payload bytes over loopback (median of 3),"
echo "   into a reused buffer and into fresh memory"
tcp=$(tcp_baseline "$payload")
tcp_fresh=$(tcp_baseline "$payload" --fresh)
[ -n "$tcp" ] && [ -n "$tcp_fresh" ] || tlm_die "the TCP baseline failed"
tcp_tls=0
if [ "$tls" = 1 ]; then
	tcp_tls=$(tcp_baseline "$payload" --tls)
	[ -n "$tcp_tls" ] || tlm_die "the TCP baseline over TLS failed"
fi
echo "== run P: the same bytes placed with UFFDIO_COPY alone (64-page runs), 1 and 2 threads"
for t in 1 2; do
	"$bin/tlm-bench-runtime" place --bytes "$payload" --threads "$t" ||
		tlm_die "the placement baseline failed"
done > "$work/place.out"

python3 - "$work" "$bytes" "$tcp" "$json_out" "${ahead:-8M}" "$tcp_fresh" "${lowat:-0}" \
	"$tls" "$tcp_tls" <<'PY'
import json, sys
work, size, tcp_mbs, json_out, ahead = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), \
    sys.argv[4], sys.argv[5]
tcp_fresh, lowat, tls = float(sys.argv[6]), sys.argv[7], sys.argv[8] == "1"
tcp_tls = float(sys.argv[9])
load = lambda n: json.load(open(f"{work}/{n}.json"))["regions"]
a_dst, b_dst, b_src = load("A.dst")[0], load("B.dst"), load("B.src")
c_src, c_dst = load("C.src")[0], load("C.dst")[0]
lat = lambda r, c: r["latency_by_class"][c]
bvm = {r["id"]: r for r in b_dst}
pages = b_src[0]["pages"]
# Destination memory: the template file (tmpfs, resident once, its frames shared by every
# clone) + everything else the VMs and the uffd-server hold (Pss - Pss_Shmem).
pss = [l.split() for l in open(f"{work}/B.pss")]
pss_kb = sum(int(p[1]) for p in pss if p[0] == "vm")
own_kb = sum(int(p[1]) - int(p[2]) for p in pss)
dst_mem_kb = size // 1024 + own_kb
data_payload = len(b_dst) * pages["data"] * 4096        # what the destinations need
wire = sum(r["wire"]["in_bytes"] + r["wire"]["out_bytes"] for r in b_dst)
bound_kb = size // 1024 + len(b_dst) * (pages["data"] + pages["ref"]) * 4
# The stream carries the class map, then the DATA pages (the destination places the map's
# TEMPLATE/ZERO/REF runs in the background meanwhile): DATA throughput is timed there from
# the last map frame received to DONE; the whole stream from the end of classification.
bulk_bytes = c_src["data_sent_bulk"] * 4096
data_s = (c_dst["done_ms"] - c_dst["map_received_ms"]) / 1e3
stream_s = (c_src["stream_ms"] - c_src["classify_ms"]) / 1e3
fig = {
    "size_bytes": size, "pages": {k: pages[k] for k in ("template", "zero", "ref", "data")},
    "bulk_ahead": ahead, "bulk_lowat": lowat,
    "net_io": json.load(open(f"{work}/C.dst.json"))["net_io"],
    "template_fault_p50_us": lat(a_dst, "template")["p50_us"],
    "template_fault_p99_us": lat(a_dst, "template")["p99_us"],
    "template_faults": lat(a_dst, "template")["count"],
    "data_fault_p50_us_no_background": lat(a_dst, "data")["p50_us"],
    "data_fault_p99_us_no_background": lat(a_dst, "data")["p99_us"],
    "data_faults_no_background": lat(a_dst, "data")["count"],
    # run B: every TEMPLATE page the readers touch before completion is a fault, or is
    # mapped around one (--fault-around)
    "template_faults_background": sum(lat(r, "template")["count"] for r in b_dst),
    "fault_around_pages_background": sum(r.get("fault_around", 0) for r in b_dst),
    "template_fault_p50_us_background": max(lat(r, "template")["p50_us"] for r in b_dst),
    "data_fault_p50_us_background": max(lat(r, "data")["p50_us"] for r in b_dst),
    "data_fault_p99_us_background": max(lat(r, "data")["p99_us"] for r in b_dst),
    "data_faults_background": sum(lat(r, "data")["count"] for r in b_dst),
    # vm1 reads last page first (against the stream), vm2 first page first (behind it)
    "data_fault_background_by_vm": {r["id"]: lat(r, "data") for r in b_dst},
    "duplicate_pages_background": sum(r["data_sent_bulk"] + r["data_sent_urgent"] -
                                      r["pages"]["data"] for r in b_src),
    "demands_left_to_bulk": sum(r["demand_on_bulk"] for r in b_src),
    "bulk_mb_per_s": bulk_bytes / 1e6 / data_s, "tcp_mb_per_s": tcp_mbs,
    "stream_with_map_mb_per_s": bulk_bytes / 1e6 / stream_s,
    "data_stream_ms": data_s * 1e3,
    "wire_bytes": wire, "data_payload_bytes": data_payload,
    "wire_over_payload": wire / data_payload,
    "pss_two_vms_kb": pss_kb, "dst_memory_kb": dst_mem_kb,
    "template_plus_data_kb": bound_kb, "dst_memory_over_bound": dst_mem_kb / bound_kb,
    "pss_processes": pss,
}
# CPU us of each daemon per DATA page of run LABEL (C, CT): from the freeze, and from the
# class map's arrival (the DATA stream alone), to the end
def cpu_per_page(label):
    src0, dst0, src1, dst1, src2, dst2 = open(f"{work}/{label}.cpu").read().split()
    per = lambda a, b: (int(b) - int(a)) / pages["data"] if a != "-" else None
    return per(src0, src2), per(dst0, dst2), per(src1, src2), per(dst1, dst2)
(fig["src_cpu_us_per_page"], fig["dst_cpu_us_per_page"], fig["src_stream_cpu_us_per_page"],
 fig["dst_stream_cpu_us_per_page"]) = cpu_per_page("C")
# Freeze -> region complete, run C: the daemon's REGION time on the wall clock (from the
# class map's arrival, both clocks) + its elapsed time to completion.
c_start = c_dst["map_received_wall"] - c_dst["map_received_ms"] / 1e3
fig["complete_ms_after_freeze"] = (c_start + c_dst["elapsed_ms"] / 1e3 -
                                   float(open(f"{work}/C.freeze").read())) * 1e3
fig["template_left"] = c_dst["pages"].get("template_left", 0)
if tls:
    ct_src, ct_dst = load("CT.src")[0], load("CT.dst")[0]
    fig["bulk_mbps_tls"] = ct_src["data_sent_bulk"] * 4096 / 1e6 / \
        ((ct_dst["done_ms"] - ct_dst["map_received_ms"]) / 1e3)
    fig["tls_over_clear"] = fig["bulk_mbps_tls"] / fig["bulk_mb_per_s"]
    fig["tls_path"] = open(f"{work}/CT.path").read().strip()
    at_dst = load("AT.dst")[0]
    fig["data_fault_p50_us_no_background_tls"] = lat(at_dst, "data")["p50_us"]
    fig["data_fault_p99_us_no_background_tls"] = lat(at_dst, "data")["p99_us"]
    fig["tcp_tls_mb_per_s"] = tcp_tls
    fig["tcp_tls_over_tcp"] = tcp_tls / tcp_mbs
    (fig["src_cpu_us_per_page_tls"], fig["dst_cpu_us_per_page_tls"],
     fig["src_stream_cpu_us_per_page_tls"], fig["dst_stream_cpu_us_per_page_tls"]) = \
        cpu_per_page("CT")
place = {int(kv["threads"]): kv for kv in (dict(w.split("=") for w in l.split())
                                           for l in open(f"{work}/place.out"))}
fig["place_mb_per_s_1_thread"] = float(place[1]["place_mb_per_s"])
fig["place_mb_per_s_2_threads"] = float(place[2]["place_mb_per_s"])
fig["place_us_per_page"] = float(place[1]["us_per_page"])
fig["bulk_over_tcp"] = fig["bulk_mb_per_s"] / tcp_mbs
fig["tcp_fresh_mb_per_s"] = tcp_fresh
fig["bulk_over_tcp_fresh"] = fig["bulk_mb_per_s"] / tcp_fresh
f = fig
rows = [
    ("TEMPLATE fault p50 / p99, us", f"{f['template_fault_p50_us']:.1f} / "
     f"{f['template_fault_p99_us']:.1f} ({f['template_faults']} faults)", "p50 < 5"),
    ("DATA fault p50 / p99, no background, us", f"{f['data_fault_p50_us_no_background']:.0f} / "
     f"{f['data_fault_p99_us_no_background']:.0f} ({f['data_faults_no_background']} faults)",
     "-"),
] + [
    (f"DATA fault p50 / p99, background on, {name}, us",
     f"{l['p50_us']:.0f} / {l['p99_us']:.0f} ({l['count']} faults, max {l['max_us']:.0f})",
     "p99 < 200")
    for name, l in (("reverse reads", lat(bvm["vm1"], "data")),
                    ("forward reads", lat(bvm["vm2"], "data")))
] + [
    ("TEMPLATE faults, background on: count / mapped around / p50 us",
     f"{f['template_faults_background']} / {f['fault_around_pages_background']} / "
     f"{f['template_fault_p50_us_background']:.1f}", "-"),
    ("  pages sent twice / demands left to bulk", f"{f['duplicate_pages_background']} / "
     f"{f['demands_left_to_bulk']} (--bulk-ahead {ahead})", "-"),
    ("background DATA stream vs plain TCP, MB/s", f"{f['bulk_mb_per_s']:.0f} vs {tcp_mbs:.0f} = "
     f"{f['bulk_over_tcp']:.2f}x", ">= 0.8x"),
    ("  vs TCP into fresh memory (what placing costs here)", f"{f['bulk_mb_per_s']:.0f} vs "
     f"{tcp_fresh:.0f} = {f['bulk_over_tcp_fresh']:.2f}x", "-"),
    ("  whole stream incl. class map, MB/s", f"{f['stream_with_map_mb_per_s']:.0f} "
     f"(DATA part {f['data_stream_ms']:.0f} ms)", "-"),
] + ([
    ("background DATA stream over TLS vs clear, MB/s", f"{f['bulk_mbps_tls']:.0f} vs "
     f"{f['bulk_mb_per_s']:.0f} = {f['tls_over_clear']:.2f}x", "-"),
    ("  TLS data path", f["tls_path"][:46], "-"),
    ("  DATA fault p50 / p99, no background, TLS, us",
     f"{f['data_fault_p50_us_no_background_tls']:.0f} / "
     f"{f['data_fault_p99_us_no_background_tls']:.0f} (clear: "
     f"{f['data_fault_p50_us_no_background']:.0f} / "
     f"{f['data_fault_p99_us_no_background']:.0f})", "-"),
    ("  plain TCP stream over TLS vs clear, MB/s", f"{f['tcp_tls_mb_per_s']:.0f} vs "
     f"{tcp_mbs:.0f} = {f['tcp_tls_over_tcp']:.2f}x", "-"),
    ("  CPU per DATA page over TLS, stream, src / dst, us", " / ".join(
        "-" if v is None else f"{v:.2f}"
        for v in (f["src_stream_cpu_us_per_page_tls"], f["dst_stream_cpu_us_per_page_tls"])),
     "-"),
] if tls else []) + [
    ("UFFDIO_COPY alone, 1 / 2 threads, MB/s", f"{f['place_mb_per_s_1_thread']:.0f} / "
     f"{f['place_mb_per_s_2_threads']:.0f} ({f['place_us_per_page']:.2f} us per page)", "-"),
    ("CPU per DATA page, freeze to end, src / dst, us",
     f"{f['src_cpu_us_per_page']:.2f} / {f['dst_cpu_us_per_page']:.2f}", "<= 1.5"),
    ("  over the DATA stream only (from the class map)", " / ".join(
        "-" if v is None else f"{v:.2f}"
        for v in (f["src_stream_cpu_us_per_page"], f["dst_stream_cpu_us_per_page"])), "-"),
    ("freeze -> region complete, stream alone, ms", f"{f['complete_ms_after_freeze']:.0f} "
     f"({f['template_left']} TEMPLATE pages left to the kernel)", "-"),
    ("bytes on the wire / DATA payload, MB", f"{wire / 1e6:.1f} / {data_payload / 1e6:.1f} = "
     f"{f['wire_over_payload']:.3f}x", "<= 1.02x"),
    ("dst memory, 2 VMs / (template + DATA + REF), MiB", f"{dst_mem_kb >> 10} / "
     f"{bound_kb >> 10} = {f['dst_memory_over_bound']:.3f}x", "<= 1.05x"),
]
print(f"\nregion {size >> 20} MiB, pages: {fig['pages']}; Pss of the 2 VMs {pss_kb >> 10} MiB; "
      "dst memory = template file + Pss - Pss_Shmem of the VMs and tlm-uffd-server")
print(f"| {'figure':48} | {'measured':46} | target |")
print(f"|{'-' * 50}|{'-' * 48}|--------|")
for name, val, target in rows:
    print(f"| {name:48} | {val:46} | {target} |")
if json_out:
    with open(json_out, "w") as out:
        json.dump(fig, out, indent=2)
        out.write("\n")
PY
