#!/usr/bin/env bash
# Daemon crashes during a tlm migration of a real guest: tlm-page-server killed with
# SIGKILL right after the switch-over (the destination already runs on its faults), then
# tlm-uffd-server killed the same way. migrate-postcopy.sh restarts the daemon; the page
# server re-attaches to the stopped source, the glue in the destination QEMU hands its
# userfaultfd to the new tlm-uffd-server, and the migration finishes with the guest's
# memory checksum unchanged (no page lost, none wrong).
# shellcheck source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

step "boot a plain 320 MiB guest with a 192 MiB workload (enough DATA to kill mid-way)"
vm start g --mem 320 --wl-mem 192 --dirty 50 >/dev/null
vm wait-ready g --timeout 120
before=$(vm cmd g sum)
echo "before: $before"

# Kill DAEMON as soon as generation GEN's source has stopped (the switch-over is on).
kill_after_switch() {
	local daemon=$1 gen=$2 src i

	src=$TLM_RUN_DIR/g.$((gen - 1))
	for i in $(seq 1000); do
		if [ "$(qmp "$src/qmp.sock" query-status --get status 2>/dev/null)" = postmigrate ] &&
			pkill -9 -x "$daemon"; then
			echo "killed $daemon after $((i * 10)) ms of watching"
			return 0
		fi
		sleep 0.01
	done
	return 1
}

for daemon in tlm-page-server tlm-uffd-server; do
	gen=$(( $(vm info g --get gen) + 1 ))
	step "kill -9 $daemon during migration to generation $gen"
	"$root/scripts/migrate-postcopy.sh" --mode tlm g --json "$TLM_RUN_DIR/r.json" \
		> "$TLM_RUN_DIR/mig.log" 2>&1 &
	mig=$!
	killed=0
	kill_after_switch "$daemon" "$gen" && killed=1
	rc=0
	wait "$mig" || rc=$?
	cat "$TLM_RUN_DIR/mig.log"
	[ "$killed" = 1 ] || fail "$daemon was never seen to kill"
	[ "$rc" = 0 ] || fail "the migration did not survive the $daemon crash (exit $rc)"
	grep -q "$daemon exited .* restarting" "$TLM_RUN_DIR/mig.log" ||
		fail "no restart of $daemon in the log (killed after the end?)"
	after=$(vm cmd g sum)
	echo "after: $after"
	[ "$(sum_hash "$after")" = "$(sum_hash "$before")" ] || fail "checksum changed: $after"
	[ "$(sum_bad "$after")" = bad=0 ] || fail "bad pages: $after"
	vm ticks g --count 1 >/dev/null || fail "the guest does not TICK after the $daemon crash"
done
echo "PASS $name"
