# shellcheck shell=bash
# Two emulated hosts on this machine: network namespaces joined by a veth pair shaped by
# tc, or (no netem in the kernel) by two tun devices and tunlink.py. Sourced by scripts (after lib/common.sh), or run to get a shell-less try:
#
#   scripts/lib/netns.sh lan|wan|loopback [CMD...]    make the link, measure it, run CMD
#                                                     (default: print the link), remove it
#
#   . scripts/lib/netns.sh
#   tlm_link_up lan|wan|loopback     make it; the caller's EXIT trap must call tlm_link_down
#   tlm_link_down                    remove the namespaces (idempotent)
#
# After tlm_link_up: TLM_LINK (the link actually made: lan, wan or loopback), TLM_SRC_NS,
# TLM_DST_NS (empty on loopback), TLM_SRC_ADDR, TLM_DST_ADDR, TLM_LINK_BPS (shaped rate,
# bit/s; 0 on loopback: unshaped), TLM_LINK_RTT_MS (the emulated round trip), TLM_LINK_DESC
# (one line: what was made and what was measured), tlm_link_bytes (bytes through the link
# so far, both directions).
#
# Presets: lan = 10 Gbit/s, 0.1 ms RTT; wan = 1 Gbit/s, 20 ms RTT (inter-DC migration);
# TLM_LINK_MBIT=N sets another rate with the preset's delay (e.g. a 200 Mbit/s WAN).
# With netem: a veth pair, netem (delay RTT/2 per direction, loss $TLM_LINK_LOSS percent,
# default 0) + tbf (rate; queue: one RTT, at least 5 ms) on both ends. Without netem (this
# project's kernel): an RTT of 1 ms or more goes through tunlink.py (rate, delay, queue,
# loss per direction, in user space; ~0.9 Gbit/s with 20 ms measured here), a shorter one
# (lan) is a veth pair shaped by tbf alone, and TLM_LINK_DESC says "delay not emulated".
# Without namespaces (not root, no iproute2, no veth) the link is loopback, and it says so.
# Namespace names: ${TLM_NETNS_PREFIX:-tlm}-src and -dst, addresses 10.77.0.1 and .2/24.

[ -n "${tlm_root:-}" ] || . "$(dirname "${BASH_SOURCE[0]}")/common.sh"

tlm_link_made=0
tlm_link_pid=

tlm_link_down() {
	[ "$tlm_link_made" = 1 ] || return 0
	if [ -n "$tlm_link_pid" ]; then        # tunlink.py: its tun devices go with it
		kill "$tlm_link_pid" 2>/dev/null || true
		wait "$tlm_link_pid" 2>/dev/null || true
		tlm_link_pid=
	fi
	ip netns del "$TLM_SRC_NS" 2>/dev/null || true     # takes the veth pair with it
	ip netns del "$TLM_DST_NS" 2>/dev/null || true
	[ -z "${TLM_LINK_READY:-}" ] || rm -f "$TLM_LINK_READY"
	tlm_link_made=0
}

tlm_link_loopback() {
	TLM_LINK=loopback TLM_SRC_NS='' TLM_DST_NS='' TLM_SRC_ADDR=127.0.0.1 TLM_DST_ADDR=127.0.0.1
	TLM_LINK_BPS=0 TLM_LINK_RTT_MS=0
	TLM_LINK_DESC="loopback (one host, unshaped)${1:+: $1}"
	[ -z "${1:-}" ] || tlm_log "no emulated hosts: $1; using plain loopback"
}

# tbf for the rate, netem (when the kernel has it) for delay and loss, on one veth end.
tlm_link_shape() {
	local ns=$1 dev=$2 bps=$3 delay_us=$4 burst queue_ms

	burst=$((bps / 8 / 1000))       # 1 ms at line rate (tbf needs >= rate / HZ)
	[ "$burst" -ge 262144 ] || burst=262144
	# the queue: one RTT at line rate, 5 ms at least (a deep queue would delay demand
	# faults behind bulk data: 100 ms gave tlm fault p50 of 15-100 ms on the wan preset)
	queue_ms=$((delay_us * 2 / 1000))
	[ "$queue_ms" -ge 5 ] || queue_ms=5
	if tc -n "$ns" qdisc add dev "$dev" root handle 1: netem delay "${delay_us}us" \
		loss "${TLM_LINK_LOSS:-0}%" limit 100000 2>/dev/null; then
		tc -n "$ns" qdisc add dev "$dev" parent 1: handle 2: tbf rate "${bps}bit" \
			burst "$burst" latency "${queue_ms}ms" || return 1
		echo netem
	else
		tc -n "$ns" qdisc add dev "$dev" root tbf rate "${bps}bit" burst "$burst" \
			latency "${queue_ms}ms" || return 1
		echo tbf
	fi
}

tlm_link_has_netem() {
	tc -n "$TLM_SRC_NS" qdisc add dev lo root netem delay 1ms 2>/dev/null || return 1
	tc -n "$TLM_SRC_NS" qdisc del dev lo root
}

# No netem and a delay worth emulating: tunlink.py forwards between two tun devices with
# rate, delay, queue and loss (64000-byte MTU: ~2000 packets/s at 1 Gbit/s).
tlm_link_tun() {
	local p=$1 bps=$2 delay_us=$3 queue_us=$4 _

	python3 "$tlm_root/scripts/lib/tunlink.py" "$TLM_SRC_NS" "$p-s0" "$TLM_DST_NS" "$p-d0" \
		"$bps" "$delay_us" "$queue_us" "${TLM_LINK_LOSS:-0}" > "$TLM_LINK_READY" &
	tlm_link_pid=$!
	for _ in $(seq 1 100); do
		grep -q ready "$TLM_LINK_READY" 2>/dev/null && break
		kill -0 "$tlm_link_pid" 2>/dev/null || return 1
		sleep 0.05
	done
	grep -q ready "$TLM_LINK_READY" || return 1
	ip -n "$TLM_SRC_NS" link set "$p-s0" mtu 64000 up &&
		ip -n "$TLM_DST_NS" link set "$p-d0" mtu 64000 up
}

tlm_link_up() {
	local preset=$1 bps rtt_us p=${TLM_NETNS_PREFIX:-tlm} how meas

	case "$preset" in
	lan) bps=10000000000 rtt_us=100 ;;
	wan) bps=1000000000 rtt_us=20000 ;;
	loopback) tlm_link_loopback; return 0 ;;
	*) tlm_die "link preset must be lan, wan or loopback, not '$preset'" ;;
	esac
	if [ -n "${TLM_LINK_MBIT:-}" ]; then     # the preset's delay at another rate
		[[ "$TLM_LINK_MBIT" =~ ^[1-9][0-9]*$ ]] ||
			tlm_die "TLM_LINK_MBIT: Mbit/s, a whole number, not '$TLM_LINK_MBIT'"
		bps=$((TLM_LINK_MBIT * 1000000))
	fi
	if [ "$(id -u)" != 0 ] || ! command -v ip >/dev/null || ! command -v tc >/dev/null; then
		tlm_link_loopback "needs root, ip and tc"; return 0
	fi
	TLM_SRC_NS=$p-src TLM_DST_NS=$p-dst TLM_SRC_ADDR=10.77.0.1 TLM_DST_ADDR=10.77.0.2
	ip netns del "$TLM_SRC_NS" 2>/dev/null || true     # a leftover of a killed run
	ip netns del "$TLM_DST_NS" 2>/dev/null || true
	if ! { ip netns add "$TLM_SRC_NS" && ip netns add "$TLM_DST_NS"; } 2>/dev/null; then
		ip netns del "$TLM_SRC_NS" 2>/dev/null || true
		tlm_link_loopback "ip netns add failed"; return 0
	fi
	tlm_link_made=1
	ip -n "$TLM_SRC_NS" link set lo up
	ip -n "$TLM_DST_NS" link set lo up
	if [ "$rtt_us" -ge 1000 ] && ! tlm_link_has_netem; then
		: "${TLM_LINK_READY:=$(mktemp "${TMPDIR:-/tmp}/tlm-tunlink.XXXXXX")}"
		tlm_link_tun "$p" "$bps" $((rtt_us / 2)) "$rtt_us" ||
			{ tlm_link_down; tlm_die "tunlink.py did not start: $(cat "$TLM_LINK_READY")"; }
		how=tunlink
	elif ip -n "$TLM_SRC_NS" link add "$p-s0" type veth peer name "$p-d0" \
		netns "$TLM_DST_NS" 2>/dev/null; then
		ip -n "$TLM_SRC_NS" link set "$p-s0" up
		ip -n "$TLM_DST_NS" link set "$p-d0" up
		how=$(tlm_link_shape "$TLM_SRC_NS" "$p-s0" "$bps" $((rtt_us / 2))) &&
			tlm_link_shape "$TLM_DST_NS" "$p-d0" "$bps" $((rtt_us / 2)) >/dev/null ||
			{ tlm_link_down; tlm_die "tc could not shape the veth pair"; }
	else
		tlm_link_down
		tlm_link_loopback "no veth pair"; return 0
	fi
	ip -n "$TLM_SRC_NS" addr add "$TLM_SRC_ADDR/24" dev "$p-s0"
	ip -n "$TLM_DST_NS" addr add "$TLM_DST_ADDR/24" dev "$p-d0"
	TLM_LINK=$preset TLM_LINK_BPS=$bps TLM_LINK_RTT_MS=$(awk "BEGIN{print $rtt_us/1000}")
	meas=$(tlm_link_measure $((bps >= 10000000000 ? 1024 : 256))) ||
		{ tlm_link_down; tlm_die "the emulated link does not carry TCP"; }
	TLM_LINK_DESC="$preset: namespaces $TLM_SRC_NS ($TLM_SRC_ADDR) <-> $TLM_DST_NS"
	TLM_LINK_DESC+=" ($TLM_DST_ADDR), rate $((bps / 1000000)) Mbit/s"
	if [ "$how" = netem ]; then
		TLM_LINK_DESC+=", RTT $TLM_LINK_RTT_MS ms, loss ${TLM_LINK_LOSS:-0}% (netem)"
	elif [ "$how" = tunlink ]; then
		TLM_LINK_DESC+=", RTT $TLM_LINK_RTT_MS ms, loss ${TLM_LINK_LOSS:-0}% (tun devices"
		TLM_LINK_DESC+=" joined by tunlink.py: this kernel has no sch_netem)"
	else
		TLM_LINK_DESC+=" (tbf); delay not emulated: this kernel has no sch_netem"
		[ "${TLM_LINK_LOSS:-0}" = 0 ] || TLM_LINK_DESC+=", nor loss"
	fi
	TLM_LINK_DESC+="; measured $meas"
}

# "<Mbit/s> Mbit/s, RTT <ms> ms": a TCP bulk transfer of MIB MiB and a ping-pong, src -> dst.
tlm_link_measure() {
	local mib=$1 port=5999 probe=$tlm_root/scripts/lib/linkprobe.py out rc=0

	ip netns exec "$TLM_DST_NS" python3 "$probe" server "$TLM_DST_ADDR" "$port" &
	local pid=$!
	out=$(timeout 60 ip netns exec "$TLM_SRC_NS" python3 "$probe" client "$TLM_DST_ADDR" \
		"$port" "$mib") || rc=1
	wait "$pid" || rc=1
	[ "$rc" = 0 ] || return 1
	read -r mbit rtt <<< "$out"
	echo "$mbit Mbit/s, RTT $rtt ms"
}

tlm_link_bytes() {
	local p=${TLM_NETNS_PREFIX:-tlm}

	[ -n "$TLM_SRC_NS" ] || { echo 0; return; }
	ip -n "$TLM_SRC_NS" -s -j link show dev "$p-s0" |
		python3 -c 'import json,sys; s=json.load(sys.stdin)[0]["stats64"];
print(s["rx"]["bytes"] + s["tx"]["bytes"])'
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then       # run, not sourced
	set -euo pipefail
	[ $# -ge 1 ] && [ "$1" != -h ] && [ "$1" != --help ] || { tlm_usage; exit 0; }
	trap tlm_link_down EXIT
	trap 'exit 1' INT TERM
	tlm_link_up "$1"
	shift
	echo "$TLM_LINK_DESC"
	if [ $# -gt 0 ]; then
		export TLM_LINK TLM_SRC_NS TLM_DST_NS TLM_SRC_ADDR TLM_DST_ADDR TLM_LINK_BPS \
			TLM_LINK_RTT_MS
		"$@"
	fi
fi
