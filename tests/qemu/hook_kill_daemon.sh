#!/usr/bin/env bash
# The --after-switch / --before-stop hook of qemu_tlm_faults.sh (not a test by itself):
#
#   migrate-postcopy.sh --mode tlm VM \
#       --after-switch "bash tests/qemu/hook_kill_daemon.sh DAEMON TLMCTL"
#   migrate-postcopy.sh --mode tlm VM --live-rate 32 \
#       --before-stop "bash tests/qemu/hook_kill_daemon.sh tlm-page-server@live TLMCTL"
#   migrate-postcopy.sh --mode tlm VM \
#       --before-freeze "bash tests/qemu/hook_kill_daemon.sh tlm-page-server@freeze TLMCTL"
#
# tlm-page-server@freeze (as --before-freeze): SIGKILLs the page server once the VM's
# source is stopped and before its freeze, and proves it: the region is not frozen yet.
# Prints "hook: killed tlm-page-server before the freeze (phase ...)".
#
# tlm-page-server@live (as --before-stop): SIGKILLs the page server while the VM's first
# live pass is under way (the source still runs), and proves it: the region's live
# method is not none and its first pass is not done. Prints "hook: killed tlm-page-server
# during the live phase ...".
#
# SIGKILLs DAEMON (tlm-page-server | tlm-uffd-server: TLM_*_PID from migrate-postcopy.sh)
# and proves that not every page of the VM (TLM_MIGRATE_VMS, one) was present at the
# destination at that moment:
#   - before the kill, the page server has sent no DATA page on its background stream
#     (tlm-page-server --bulk-hold holds it until the hook returns): DATA pages have moved only as the guest demanded them;
#   - once the daemon is dead (its sockets closed), the survivor counts fewer pages than
#     the VM has: tlm-uffd-server fewer present pages, and not "complete" (it can get no
#     more from a dead page server); the page server fewer DATA pages sent (an upper bound
#     of what the dead tlm-uffd-server received).
# Prints "hook: killed DAEMON ..." with the counts; "HOOK FAIL: why" and exit 1 if a proof
# does not hold (the migration then fails, and the test says why).
set -euo pipefail
daemon=$1 tlmctl=$2

no() {			# stderr: also from within $(...)
	echo "HOOK FAIL: $*" >&2
	exit 1
}

# The VM's region at control socket CTL: page server "DATA BULK URGENT" (DATA pages, sent
# on the background stream, sent on demand), tlm-uffd-server "SETTLED TOTAL PHASE"
# (settled: present, or TEMPLATE left to the kernel).
stats() {
	local out

	out=$("$tlmctl" -s "$1" stats) || no "no stats from $1"
	python3 -c 'import json, sys
r = [r for r in json.load(sys.stdin)["regions"] if r["id"] == sys.argv[1]][0]
print(*([r["pages"]["data"], r["data_sent_bulk"], r["data_sent_urgent"]]
        if "data_sent_bulk" in r else
        [r["pages"]["present"] + r["pages"].get("template_left", 0), r["pages"]["total"],
         r["phase"]]))
' "$TLM_MIGRATE_VMS" <<< "$out" || no "no region $TLM_MIGRATE_VMS in the stats of $1"
}

# SIGKILL PID and return once it is dead: gone, or a zombie (migrate-postcopy.sh reaps it
# after the hook), so its sockets are closed and it sends or receives nothing more.
kill9() {
	local i st

	kill -9 "$1"
	for i in $(seq 3000); do
		st=$(sed -E 's/.*\) (.).*/\1/' "/proc/$1/stat" 2>/dev/null) || return 0
		[ "$st" != Z ] || return 0
		sleep 0.01
	done
	no "pid $1 still alive $((i / 100)) s after SIGKILL"
}

if [ "$daemon" = tlm-page-server@freeze ]; then
	out=$("$tlmctl" -s "$TLM_PAGE_SERVER_CTL" stats) || no "no stats from the page server"
	phase=$(python3 -c 'import json, sys
print([r for r in json.load(sys.stdin)["regions"] if r["id"] == sys.argv[1]][0]["state"])
' "$TLM_MIGRATE_VMS" <<< "$out") || no "no region $TLM_MIGRATE_VMS in the page server's stats"
	case $phase in configured|live) ;; *) no "the region is $phase already" ;; esac
	kill9 "$TLM_PAGE_SERVER_PID"
	echo "hook: killed tlm-page-server before the freeze (phase $phase)"
	exit 0
fi
if [ "$daemon" = tlm-page-server@live ]; then
	out=$("$tlmctl" -s "$TLM_PAGE_SERVER_CTL" stats) || no "no stats from the page server"
	s=$(python3 -c 'import json, sys
r = [r for r in json.load(sys.stdin)["regions"] if r["id"] == sys.argv[1]][0]
lv = r.get("live") or {}
print(r["state"], lv.get("method", "none"), str(lv.get("pass_done")).lower(),
      lv.get("classified", 0))
' "$TLM_MIGRATE_VMS" <<< "$out") || no "no region $TLM_MIGRATE_VMS in the page server's stats"
	read -r phase method done classified <<< "$s"
	[ "$phase" = live ] && [ "$method" != none ] ||
		no "the region is not in a live phase (phase $phase, method $method)"
	[ "$done" = false ] || no "the first live pass was done already"
	kill9 "$TLM_PAGE_SERVER_PID"
	echo "hook: killed tlm-page-server during the live phase ($method, first pass not" \
		"done: $classified pages classified)"
	exit 0
fi
s=$(stats "$TLM_PAGE_SERVER_CTL")
read -r data bulk urgent <<< "$s"
[ "$bulk" = 0 ] || no "the background stream runs already ($bulk DATA pages sent on it)"
case $daemon in
tlm-page-server)
	kill9 "$TLM_PAGE_SERVER_PID"
	s=$(stats "$TLM_UFFD_SERVER_CTL")
	read -r present total phase <<< "$s"
	echo "hook: killed tlm-page-server after it sent $urgent of $data DATA pages (demand" \
		"only); destination: $present of $total pages settled, $phase"
	if [ "$phase" = complete ] || [ "$present" -ge "$total" ]; then
		no "the destination was complete"
	fi ;;
tlm-uffd-server)
	kill9 "$TLM_UFFD_SERVER_PID"
	s=$(stats "$TLM_PAGE_SERVER_CTL")
	read -r data bulk urgent <<< "$s"
	echo "hook: killed tlm-uffd-server; the page server had sent $((bulk + urgent)) of" \
		"$data DATA pages ($bulk on the background stream)"
	[ $((bulk + urgent)) -lt "$data" ] || no "every DATA page was sent" ;;
*)
	no "unknown daemon '$daemon'" ;;
esac
