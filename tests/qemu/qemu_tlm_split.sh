#!/usr/bin/env bash
# Split migration (remote paging) of a real guest: migrate-postcopy.sh --mode tlm --split
# returns once the destination runs and its guest check passed while part of its RAM is
# still at the source's tlm-page-server (the memory host: its background stream held,
# pages move only as the guest faults on them). The destination region is provably not
# complete (present < total), the source QEMU is gone (a plain RAM file source: the page
# server's mapping keeps the RAM), the checksum is the one from before, and the
# remote-paging fault latency is printed. `--pull` then moves the rest: the region
# completes, the page server and the destination daemon exit, the checksum still holds.
# Then a source whose RAM is the glue's private mapping (a pid source: its QEMU stays,
# paused, as the memory), and a lost memory host: the page server killed while split,
# `--pull` fails in one line, and a read of every destination page (QMP pmemsave) waits
# on the first page the lost host held (the daemon counts a waiting fault; the region
# stays incomplete: no page placed from anywhere else).
# shellcheck source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

migrate() { "$root/scripts/migrate-postcopy.sh" "$@"; }
tlmctl=${TLM_BIN_DIR:-$root/build/runtime}/tlmctl
[ -x "$tlmctl" ] || fail "no $tlmctl (TLM_BIN_DIR)"

# split.json of VM (its destination run directory), field KEY (a.b for nested)
split_get() {
	python3 -c 'import json, sys
v = json.load(open(sys.argv[1]))
for k in sys.argv[2].split("."): v = v[k]
print(v)' "$(vm info "$1" --get dir)/split.json" "$2"
}

# Is PID a live process (not a zombie its reaper has yet to collect: the daemons outlive
# the migrate-postcopy.sh that started them)?
running() {
	local st

	st=$(ps -o stat= -p "$1" 2>/dev/null) && [ "${st:0:1}" != Z ]
}

# "PHASE SETTLED TOTAL P50 P99 WAITING" of VM's region at the destination daemon CTL
# (WAITING: the faults that wait for a page now)
region() {
	"$tlmctl" -s "$1" stats | python3 -c 'import json, sys
r = [r for r in json.load(sys.stdin)["regions"] if r["id"] == sys.argv[1]][0]
p, l = r["pages"], r["latency_demand"]
print(r["phase"], p["present"] + p.get("template_left", 0), p["total"], l["p50_us"],
      l["p99_us"], r["faults"]["waiting"])' "$2"
}

step "boot a 256 MiB guest (64 MiB workload) on a plain share=on RAM file"
vm start g --mem 256 --wl-mem 64 >/dev/null
vm wait-ready g --timeout 120 >/dev/null
before=$(vm cmd g sum)
echo "before: $before"
src_dir=$(vm info g --get dir)

step "migrate --mode tlm --split: the destination runs, the rest stays at the page server"
migrate --mode tlm --split g --json "$TLM_RUN_DIR/split.json" > "$TLM_RUN_DIR/split.log" 2>&1 ||
	{ cat "$TLM_RUN_DIR/split.log"; fail "split migration failed"; }
cat "$TLM_RUN_DIR/split.log"
grep -q "pull the rest with: scripts/migrate-postcopy.sh --pull g" "$TLM_RUN_DIR/split.log" ||
	fail "no pull command printed"
[ "$(vm info g --get gen)" = 2 ] || fail "g is not the destination (generation 2) now"
[ ! -e "$src_dir" ] || fail "the plain source's run directory $src_dir is still there"
ps_pid=$(split_get g ps.pid) ud_pid=$(split_get g ud.pid) dst_ctl=$(split_get g dst_ctl)
running "$ps_pid" || fail "the memory host (tlm-page-server) is not running"
read -r phase present total p50 p99 <<< "$(region "$dst_ctl" g)"
echo "destination region: $phase, $present of $total pages; remote faults p50 $p50 us," \
	"p99 $p99 us"
[ "$phase" = fetching ] || fail "destination region is '$phase', not fetching"
[ "$present" -lt "$total" ] || fail "every page is already at the destination"
same_memory g "$before"
read -r phase present2 _ <<< "$(region "$dst_ctl" g)"
[ "$phase" = fetching ] || fail "the region completed without a pull ($phase)"
echo "after the checksum: $present2 of $total pages"

step "--pull g: the rest moves, the memory host stops"
migrate --pull g || fail "pull failed"
[ ! -e "$(vm info g --get dir)/split.json" ] || fail "split.json left after the pull"
for p in "$ps_pid" "$ud_pid"; do
	! running "$p" || fail "daemon $p still runs after the pull"
done
same_memory g "$before"
vm ticks g --count 1 >/dev/null || fail "g does not TICK after the pull"
rc=0; out=$(migrate --pull g 2>&1) || rc=$?
[ "$rc" = 1 ] && echo "$out" | grep -q "not split" || fail "a second pull: '$out' ($rc)"

step "a glue (pid) source, then a lost memory host: tlm-page-server killed while split"
src_dir=$(vm info g --get dir)
migrate --mode tlm --split g > "$TLM_RUN_DIR/split2.log" 2>&1 ||
	{ cat "$TLM_RUN_DIR/split2.log"; fail "second split migration failed"; }
cat "$TLM_RUN_DIR/split2.log"
# generation 2's RAM is the glue's private mapping: its QEMU is the memory, it stays
st=$(qmp "$src_dir/qmp.sock" query-status --get status) ||
	fail "the pid source's QEMU is gone while split"
[ "$st" = postmigrate ] || fail "the pid source's QEMU is '$st', not postmigrate"
for mode in tlm precopy; do
	rc=0; out=$(migrate --mode "$mode" g 2>&1) || rc=$?
	[ "$rc" = 1 ] && echo "$out" | grep -q "g is split: .*--pull g. first" ||
		fail "a --mode $mode migration of a split VM: exit $rc, '$out'"
done
ps_pid=$(split_get g ps.pid) dst_ctl=$(split_get g dst_ctl)
kill -9 "$ps_pid"
rc=0; out=$(migrate --pull g 2>&1) || rc=$?
echo "pull: $out"
[ "$rc" = 1 ] && echo "$out" | grep -q "memory host.*is gone" ||
	fail "pull with the memory host gone: exit $rc, '$out'"
[ "$(qmp "$(vm info g --get qmp)" query-status --get status)" = running ] ||
	fail "the destination QEMU is not running"
# Touch every page of the destination's RAM (QEMU reads it for pmemsave): the first page
# still at the lost memory host is a fault that waits, and stays waiting.
qmp "$(vm info g --get qmp)" pmemsave \
	"{\"val\": 0, \"size\": $((256 << 20)), \"filename\": \"/dev/null\"}" \
	>/dev/null 2>&1 &
reader=$!
deadline=$((SECONDS + 60))
while read -r phase present3 total _ _ waiting <<< "$(region "$dst_ctl" g)" &&
	[ "$waiting" = 0 ]; do
	[ "$phase" = fetching ] || break
	[ $SECONDS -lt $deadline ] || fail "no fault waits after 60 s of reading every page"
	sleep 0.1
done
kill "$reader" 2>/dev/null || true
echo "destination region: $phase, $present3 of $total pages, $waiting fault(s) waiting"
[ "$phase" = fetching ] && [ "$present3" -lt "$total" ] ||
	fail "the region is '$phase' with $present3 of $total pages: pages from nowhere"
echo "PASS $name"
