#!/usr/bin/env bash
# Stock QEMU postcopy baseline (scripts/migrate-postcopy.sh --mode qemu) on a real guest:
# the guest's memory checksum survives the migration, the guest runs on (TICKs, rewrites)
# at the destination, the report is complete, a second migration works, and a migration
# that fails before the switch to postcopy leaves the source running.
# shellcheck source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

step "boot a 192 MiB guest (48 MiB workload, 200 rewrites/s)"
vm start g --mem 192 --wl-mem 48 --dirty 200 >/dev/null
echo "$(vm wait-ready g --timeout 120)"
before=$(vm cmd g sum)
echo "before: $before"
[ "$(sum_bad "$before")" = bad=0 ] || fail "bad pages before migration: $before"

step "migrate --mode qemu"
"$root/scripts/migrate-postcopy.sh" --mode qemu g --json "$TLM_RUN_DIR/report.json" ||
	fail "migrate-postcopy.sh failed"
[ "$(vm info g --get gen)" = 2 ] || fail "g is not the destination (generation 2) now"
[ ! -e "$TLM_RUN_DIR/g.1" ] || fail "the source run directory g.1 is still there"
python3 - "$TLM_RUN_DIR/report.json" <<'PY' || fail "bad report"
import json, sys
r = json.load(open(sys.argv[1]))["vms"][0]
assert r["qemu_bytes"] > 48 << 20, r               # the workload buffer went over
assert r["postcopy_bytes"] > 0, r                  # it was a postcopy migration
assert r["dst_pss_shmem_kb"] > 48 << 10, r          # the guest RAM is at the destination
assert r["checksum"].endswith(" ok"), r
PY
tick=$(vm ticks g --count 2 --timeout 30) || fail "no TICK at the destination"
after=$(vm cmd g sum)
echo "after: $after ($tick)"
[ "$(sum_hash "$after")" = "$(sum_hash "$before")" ] || fail "checksum changed: $after"
[ "$(sum_bad "$after")" = bad=0 ] || fail "bad pages after migration: $after"
[ "$(sum_rewrites "$after")" -gt "$(sum_rewrites "$before")" ] ||
	fail "the workload stopped rewriting: $before -> $after"

step "migrate again (generation 3)"
"$root/scripts/migrate-postcopy.sh" --mode qemu g >/dev/null || fail "second migration failed"
again=$(vm cmd g sum)
[ "$(sum_hash "$again")" = "$(sum_hash "$before")" ] || fail "checksum changed: $again"

step "kill the destination during precopy: the source must keep running"
# 16 KiB/s and --precopy 600: neither the switch nor the end of precopy can come before
# the kill, however slow a loaded machine is. The source's QMP socket is held by the
# script's wait for the whole precopy (one client at a time), so "precopy runs" is read
# on the destination's.
"$root/scripts/migrate-postcopy.sh" --mode qemu --precopy 600 --bandwidth 16k g \
	> "$TLM_RUN_DIR/fail.log" 2>&1 &
mig=$!
deadline=$((SECONDS + 180))
until dst=$(ls -d "$TLM_RUN_DIR"/g.4 2>/dev/null) && [ -S "$dst/qmp.sock" ] &&
	[ "$(qmp "$dst/qmp.sock" query-migrate --get status 2>/dev/null)" = active ]; do
	[ "$SECONDS" -lt "$deadline" ] || fail "precopy to g.4 did not start in 180 s"
	kill -0 "$mig" 2>/dev/null || break	# ended on its own: judged below all the same
	sleep 0.1
done
# The destination may already be gone (it can die on its own under load before we get
# here): what follows checks the same outcome either way.
! kill -0 "$mig" 2>/dev/null || kill "$(vm info "$dst" --get pid)" 2>/dev/null ||
	echo "the destination had already exited"
rc=0
wait "$mig" || rc=$?
cat "$TLM_RUN_DIR/fail.log"
[ "$rc" = 1 ] || fail "migrate-postcopy.sh exited $rc after losing its destination, not 1"
grep -q "source keeps running" "$TLM_RUN_DIR/fail.log" || fail "no 'source keeps running'"
[ "$(qmp "$(vm info g --get qmp)" query-status --get status)" = running ] ||
	fail "the source is not running"
[ "$(vm info g --get gen)" = 3 ] || fail "g is no longer generation 3"
[ ! -e "$TLM_RUN_DIR/g.4" ] || fail "the failed destination g.4 was not removed"
vm ticks g --count 1 >/dev/null || fail "the source does not TICK"
last=$(vm cmd g sum)
[ "$(sum_hash "$last")" = "$(sum_hash "$before")" ] || fail "checksum changed: $last"

step "usage errors"
rc=0; "$root/scripts/migrate-postcopy.sh" --mode qemu no-such-vm 2>/dev/null || rc=$?
[ "$rc" = 1 ] || fail "unknown VM: exit $rc, not 1"
rc=0; "$root/scripts/migrate-postcopy.sh" --mode bogus g 2>/dev/null || rc=$?
[ "$rc" = 2 ] || fail "bad --mode: exit $rc, not 2"
for bw in 0 fast 1x; do
	rc=0; "$root/scripts/migrate-postcopy.sh" --mode qemu --bandwidth "$bw" g 2>/dev/null || rc=$?
	[ "$rc" = 2 ] || fail "--bandwidth $bw: exit $rc, not 2"
done
echo "PASS $name"
