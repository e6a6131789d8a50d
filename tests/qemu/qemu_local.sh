#!/usr/bin/env bash
# Co-located migration (--mode local): the destination QEMU on this host maps the
# source's RAM file (a hard link), QEMU's stream carries the device state only, the guest
# keeps its memory and runs on; the same VM with stock precopy moves its RAM. A VM whose
# RAM is the glue's private mapping (its RAM file is a stub) is refused before anything
# starts, and keeps running.
# shellcheck source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

mem=128
step "a plain VM ($mem MiB, 24 MiB workload), migrated locally, then by stock precopy"
vm start p --mem $mem --wl-mem 24 >/dev/null || fail "vm start failed"
vm wait-ready p --timeout 300 >/dev/null || fail "the guest did not become ready"
ram=$(vm info p --get ram_file)
ino=$(stat -c %i "$ram")
"$root/scripts/migrate-postcopy.sh" --mode local p --json "$TLM_RUN_DIR/local.json" ||
	fail "local migration failed"
[ "$(vm info p --get gen)" = 2 ] || fail "p is not the destination (generation 2) now"
dram=$(vm info p --get ram_file)
[ "$dram" != "$ram" ] || fail "the destination uses the source's path $ram"
[ "$(stat -c %i "$dram")" = "$ino" ] || fail "$dram is not the source's RAM file"
[ ! -e "$ram" ] || fail "the source's link $ram was left behind"
vm ticks p --count 2 >/dev/null || fail "no TICK after the local migration"
"$root/scripts/migrate-postcopy.sh" --mode precopy p --json "$TLM_RUN_DIR/precopy.json" ||
	fail "stock precopy after the local migration failed"
python3 - "$TLM_RUN_DIR/local.json" "$TLM_RUN_DIR/precopy.json" $mem <<'PY' || fail "report"
import json, sys
loc, pre = (json.load(open(p))["vms"][0] for p in sys.argv[1:3])
wl = 24 << 20
print(f"local:   QEMU sent {loc['qemu_bytes'] / 1e6:.2f} MB, downtime {loc['downtime_ms']} ms")
print(f"precopy: QEMU sent {pre['qemu_bytes'] / 1e6:.2f} MB, downtime {pre['downtime_ms']} ms")
assert loc["checksum"].endswith(" ok") and pre["checksum"].endswith(" ok")
assert loc["qemu_bytes"] < 4 << 20, loc                   # no guest RAM in QEMU's stream
assert pre["qemu_bytes"] > wl, pre                         # stock moved the workload's RAM
PY

step "a VM whose RAM is the glue's private mapping is refused, and keeps running"
vm start q --mem 128 --wl-mem 8 --env "LD_PRELOAD=$TLM_GLUE" --env "TLM_RAM_PATH={ram_file}" \
	>/dev/null || fail "vm start (glue) failed"
vm wait-ready q --timeout 300 >/dev/null || fail "the glue guest did not become ready"
rc=0
out=$("$root/scripts/migrate-postcopy.sh" --mode local q 2>&1) || rc=$?
echo "$out"
[ "$rc" = 1 ] || fail "local migration of a stubbed VM: exit $rc, not 1"
[[ "$out" == *"is a tlm RAM stub"*"--mode tlm"* ]] || fail "no stub line: $out"
[ "$(vm info q --get gen)" = 1 ] || fail "q changed generation"
vm ticks q --count 1 >/dev/null || fail "q does not TICK after the refusal"
for d in "$TLM_RUN_DIR"/q.*; do
	[ "$d" = "$TLM_RUN_DIR/q.1" ] || fail "a destination was left behind: $d"
done
echo "PASS $name"
