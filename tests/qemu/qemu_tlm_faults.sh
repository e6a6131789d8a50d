#!/usr/bin/env bash
# Daemon crashes during a tlm migration of a real guest: tlm-page-server killed with
# SIGKILL during the live phase, before the source stops (the restarted page server
# starts the live phase again; skipped, and said, when the kernel has no userfaultfd
# WP_ASYNC), then between the source's stop and its freeze (the restarted page server
# classifies the stopped source), then right after the switch-over (the destination already runs on its faults, pages
# are provably still missing), then tlm-uffd-server killed the same way. migrate-postcopy.sh restarts the daemon; the page
# server re-attaches to the stopped source, the glue in the destination QEMU hands its
# userfaultfd to the new tlm-uffd-server, and the migration finishes with the guest's
# memory checksum unchanged (no page lost, none wrong).
# shellcheck source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

step "boot a tracked 320 MiB guest with a 192 MiB workload (enough DATA to kill mid-way)"
vm start g --mem 320 --wl-mem 192 --dirty 50 --track >/dev/null
vm wait-ready g --timeout 120
before=$(vm cmd g sum)
echo "before: $before"

# The kill happens at the point wanted, whatever the machine's speed: migrate-postcopy.sh
# runs it as its --after-switch hook (hook_kill_daemon.sh), once the destination guest
# runs on its faults and before it looks for completion, and the page server holds its
# background stream until the hook returns (--bulk-hold; a restarted page server streams
# at once), so DATA pages move only as the guest demands them, a small part of its
# 192 MiB. The hook proves that pages were missing at the kill, or says "HOOK FAIL".
tlmctl=${TLM_BIN_DIR:-$root/build/runtime}/tlmctl
[ -x "$tlmctl" ] || fail "no $tlmctl (TLM_BIN_DIR)"

# The live phase: at --live-rate 32 the first pass over 320 MiB takes ~10 s, and the
# hook runs right after the destination is armed (migrate-postcopy.sh --before-stop).
if why=$(uffd_wp_async); then
	step "kill -9 tlm-page-server during the live phase (the source still runs)"
	hook=$(printf 'bash %q %q %q' "$root/tests/qemu/hook_kill_daemon.sh" \
		tlm-page-server@live "$tlmctl")
	rc=0
	"$root/scripts/migrate-postcopy.sh" --mode tlm g --json "$TLM_RUN_DIR/r.json" \
		--live-rate 32 --before-stop "$hook" > "$TLM_RUN_DIR/mig.log" 2>&1 || rc=$?
	cat "$TLM_RUN_DIR/mig.log"
	if grep -q "^HOOK FAIL" "$TLM_RUN_DIR/mig.log"; then
		fail "tlm-page-server was not killed during the live phase:" \
			"$(grep "^HOOK FAIL" "$TLM_RUN_DIR/mig.log")"
	fi
	grep -q "^hook: killed tlm-page-server during the live phase" "$TLM_RUN_DIR/mig.log" ||
		fail "tlm-page-server was never killed"
	[ "$rc" = 0 ] || fail "the migration did not survive the live-phase crash (exit $rc)"
	grep -q "tlm-page-server exited .* restarting" "$TLM_RUN_DIR/mig.log" ||
		fail "no restart of tlm-page-server in the log"
	[ "$(grep -c "tlm-page-server: g live: " "$TLM_RUN_DIR/mig.log")" = 2 ] ||
		fail "the restarted page server did not start the live phase again"
	python3 -c 'import json, sys; r = json.load(open(sys.argv[1]))["vms"][0]
assert r["live_method"] not in (None, "none"), r' "$TLM_RUN_DIR/r.json" ||
		fail "the switch-over did not use the restarted live phase"
	same_memory g "$before"
	vm ticks g --count 1 >/dev/null || fail "the guest does not TICK after the crash"
else
	echo "(skipping the live-phase kill: $why)"
fi

gen=$(( $(vm info g --get gen) + 1 ))
step "kill -9 tlm-page-server after the source stopped, before its freeze (generation $gen)"
hook=$(printf 'bash %q %q %q' "$root/tests/qemu/hook_kill_daemon.sh" tlm-page-server@freeze \
	"$tlmctl")
rc=0
"$root/scripts/migrate-postcopy.sh" --mode tlm g --before-freeze "$hook" \
	> "$TLM_RUN_DIR/mig.log" 2>&1 || rc=$?
cat "$TLM_RUN_DIR/mig.log"
grep -q "^HOOK FAIL" "$TLM_RUN_DIR/mig.log" &&
	fail "not killed before the freeze: $(grep "^HOOK FAIL" "$TLM_RUN_DIR/mig.log")"
grep -q "^hook: killed tlm-page-server before the freeze" "$TLM_RUN_DIR/mig.log" ||
	fail "tlm-page-server was never killed"
[ "$rc" = 0 ] || fail "the migration did not survive a page server lost at the freeze (exit $rc)"
grep -q "the freeze failed .* the restarted page server froze it" "$TLM_RUN_DIR/mig.log" ||
	fail "the freeze was not redone by a restarted page server"
same_memory g "$before"

for daemon in tlm-page-server tlm-uffd-server; do
	gen=$(( $(vm info g --get gen) + 1 ))
	step "kill -9 $daemon after the switch-over to generation $gen, pages still missing"
	hook=$(printf 'bash %q %q %q' "$root/tests/qemu/hook_kill_daemon.sh" "$daemon" "$tlmctl")
	rc=0
	"$root/scripts/migrate-postcopy.sh" --mode tlm g --json "$TLM_RUN_DIR/r.json" \
		--after-switch "$hook" > "$TLM_RUN_DIR/mig.log" 2>&1 || rc=$?
	cat "$TLM_RUN_DIR/mig.log"
	if grep -q "^HOOK FAIL" "$TLM_RUN_DIR/mig.log"; then
		fail "$daemon was not killed with pages missing:" \
			"$(grep "^HOOK FAIL" "$TLM_RUN_DIR/mig.log")"
	fi
	grep -q "^hook: killed $daemon" "$TLM_RUN_DIR/mig.log" || fail "$daemon was never killed"
	[ "$rc" = 0 ] || fail "the migration did not survive the $daemon crash (exit $rc)"
	grep -q "$daemon exited .* restarting" "$TLM_RUN_DIR/mig.log" ||
		fail "no restart of $daemon in the log"
	same_memory g "$before"
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
