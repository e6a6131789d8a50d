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
		# only this test's daemon: its command line names our TMPDIR (other tests run)
		if [ "$(qmp "$src/qmp.sock" query-status --get status 2>/dev/null)" = postmigrate ] &&
			pkill -9 -f "^[^ ]*/$daemon .*$TMPDIR/"; then
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
proxy=${TLM_TEST_BIN_DIR:-}/faults/tlm-fault-proxy
[ -x "$proxy" ] || fail "no $proxy (TLM_TEST_BIN_DIR)"
for seed in 12 13; do    # seed 11 draws a 50-400 ms lag per chunk: 75 s, too long for CI
	gen=$(( $(vm info g --get gen) + 1 ))
	step "link faults (tlm-fault-proxy seed $seed, 50 MB/s) during migration to generation $gen"
	port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
	coproc PROXY { exec "$proxy" --listen 127.0.0.1:0 --upstream "127.0.0.1:$port" \
		--seed "$seed" --faults 4 --prob 80 --rate 50 2>&1; }
	read -r -t 5 word pport <&"${PROXY[0]}" && [ "$word" = port ] || fail "proxy did not start"
	rc=0
	"$root/scripts/migrate-postcopy.sh" --mode tlm g --src-port "$port" \
		--src-reach "127.0.0.1:$pport" > "$TLM_RUN_DIR/mig.log" 2>&1 || rc=$?
	kill "$PROXY_PID"
	faults=$(grep -m1 "^faults" <&"${PROXY[0]}" || true)
	cat "$TLM_RUN_DIR/mig.log"
	echo "proxy: $faults"
	[ "$rc" = 0 ] || fail "the migration did not survive the link faults (exit $rc)"
	[ "$(sum_hash "$(vm cmd g sum)")" = "$(sum_hash "$before")" ] || fail "checksum changed"
	echo "$faults" | grep -Eq "(cut|truncate|drop)=[1-9]" || echo "(no breaking fault landed)"
done
echo "PASS $name"
