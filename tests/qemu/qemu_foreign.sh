#!/usr/bin/env bash
# Migrating a VM that tlm_qemu.vm did not start (README "Migrating your own VM"):
#  - a VM whose RAM tlm cannot map (memory-backend-ram, share=off, -mem-path) is refused
#    in one line; nothing is started or recorded;
#  - the test guest, booted by a plain QEMU command line of our own (-daemonize, RAM a
#    memory-backend-file share=on on /dev/shm, one QMP socket, TCG), with a pattern
#    written into its memory (the workload's reseed), migrates by its QMP socket with
#    --mode tlm and a --check-cmd comparing the guest memory's checksum before and after
#    (tests/qemu/foreign_check.sh), then by name with --mode qemu and no check (said so):
#    each time the guest runs at the destination with the same memory, and its console
#    log goes on in the operator's file; the operator's QEMU is gone;
#  - a second such guest, started with the glue preloaded (TLM_TRACK=1), migrates with
#    tlm's live phase (where the kernel offers userfaultfd WP_ASYNC); its --check-cmd
#    fails after the switch: the migration fails naming it, the guest intact at the
#    destination.
# shellcheck source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

migrate() { "$root/scripts/migrate-postcopy.sh" "$@"; }
op=$TLM_RUN_DIR/operator	# the operator's own directory: not a run directory of ours
mkdir "$op"
check=$root/tests/qemu/foreign_check.sh
qemu=$(command -v qemu-system-x86_64)
# KVM where the probe says it runs the guest (TCG on this project's machines): the same
# accelerator tlm_qemu.vm would choose, named in the log.
accel=$(vm probe-accel) || fail "accelerator probe failed"
cpu=$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1])).get("cpu") or "")' \
	"${TLM_GUEST_DIR:-$root/build/guest}/accel")
echo "accelerator: $accel${cpu:+, -cpu $cpu}"

# The operator's QEMUs that tlm never adopted (or that failed) go with the test: by their
# pidfile, if that pid is still a QEMU of ours.
kill_own() {
	local f pid

	for f in "$op"/*.pid; do
		[ -e "$f" ] || continue
		pid=$(cat "$f")
		grep -qs "$op" "/proc/$pid/cmdline" && kill "$pid" 2>/dev/null || true
	done
}
trap 'rc=$?; kill_own; (exit $rc); test_cleanup' EXIT

# NAME RAM-OPTIONS...: a QEMU of our own that stays paused (-S), no guest: enough for a
# refusal, which reads its command line only.
start_paused() {
	local n=$1

	shift
	"$qemu" -name "$n" -S -nodefaults -no-user-config -display none \
		-accel "$accel" ${cpu:+-cpu "$cpu"} "$@" \
		-qmp "unix:$op/$n.sock,server=on,wait=off" -daemonize -pidfile "$op/$n.pid" ||
		fail "$n: QEMU did not start"
}

step "refused before anything starts: memory-backend-ram, share=off, -mem-path"
start_paused ram -m 64M -object memory-backend-ram,id=m,size=64M -machine pc,memory-backend=m
start_paused priv -m 64M -machine pc,memory-backend=m \
	-object "memory-backend-file,id=m,size=64M,mem-path=$op/priv.ram,share=off"
start_paused mempath -m 64M -mem-path "$op/mempath.ram"
refused() {	# NAME MODE WANT: exit 1, one line naming what to change, nothing started
	local n=$1 mode=$2 want=$3 rc=0 err

	err=$(migrate --mode "$mode" "$op/$n.sock" 2>&1 >/dev/null) || rc=$?
	echo "$n: $err"
	[ "$rc" = 1 ] || fail "$n: exit $rc, not 1"
	[ "$(echo "$err" | wc -l)" = 1 ] || fail "$n: not one line: $err"
	echo "$err" | grep -q -- "$want" || fail "$n: no '$want' in: $err"
	! ls -d "$TLM_RUN_DIR/$n"* >/dev/null 2>&1 || fail "$n: a run directory was made"
	! grep -qs "$TLM_RUN_DIR/$n" /proc/[0-9]*/cmdline || fail "$n: a QEMU was started"
	[ "$(qmp "$op/$n.sock" query-status --get status)" = prelaunch ] ||
		fail "$n: the operator's QEMU changed state"
}
refused ram tlm "memory-backend-ram.*use -object memory-backend-file"
refused priv qemu "share=off.*add share=on"
refused mempath precopy "mem-path gives the guest private file memory"
kill_own
rm -f "$op"/*.pid

# NAME [VAR=VALUE...]: the test guest (160 MiB, 16 MiB workload), started by a QEMU
# command line of our own with that environment, in the background (-daemonize); its
# files are the operator's: $op/NAME.ram, NAME-qmp.sock, NAME.pid, NAME/console.log and
# NAME/ctl.sock (the workload port, which foreign_check.sh finds next to the QMP socket).
start_guest() {
	local n=$1

	shift
	mkdir "$op/$n"
	env "$@" "$qemu" -name "$n" -nodefaults -no-user-config -display none -no-reboot \
		-machine pc,memory-backend=mem -accel "$accel" ${cpu:+-cpu "$cpu"} -m 160M \
		-object "memory-backend-file,id=mem,size=160M,mem-path=$op/$n.ram,share=on" \
		-kernel "$TLM_GUEST_DIR/vmlinuz" -initrd "$TLM_GUEST_DIR/initrd.gz" \
		-append "console=ttyS0 quiet loglevel=3 panic=-1 tlm.mem=16 tlm.seed=5 tlm.dirty=50" \
		-serial "file:$op/$n/console.log" \
		-chardev "socket,id=ctl,path=$op/$n/ctl.sock,server=on,wait=off" \
		-serial chardev:ctl -qmp "unix:$op/$n/qmp.sock,server=on,wait=off" \
		-monitor "unix:$op/$n/hmp.sock,server=on,wait=off" \
		-daemonize -pidfile "$op/$n.pid" 2> "$op/$n.log" ||
		fail "$n: QEMU did not start: $(cat "$op/$n.log")"
}
wait_ready() {	# NAME
	local deadline=$((SECONDS + 120)) pid

	pid=$(cat "$op/$1.pid")
	until grep -qs '^READY' "$op/$1/console.log"; do
		kill -0 "$pid" 2>/dev/null || fail "$1: the guest's QEMU exited"
		[ "$SECONDS" -lt "$deadline" ] ||
			fail "$1: no READY in 120 s: $(tail -n 2 "$op/$1/console.log")"
		sleep 0.2
	done
}
guest_cmd() {	# NAME LINE: a workload command on the operator's ctl.sock
	PYTHONPATH=$tlm_py_path PYTHONDONTWRITEBYTECODE=1 python3 -c '
import sys
from tlm_qemu import vm
print(vm.guest_cmd({"name": sys.argv[1], "dir": sys.argv[2]}, sys.argv[3], 60))' \
		"$1" "$op/$1" "$2"
}

step "two test guests, each started by a QEMU command line of our own; live1 with the glue"
start_guest guest1
# dirty tracking by the glue preloaded into the operator's QEMU: tlm's live phase
start_guest live1 LD_PRELOAD="$TLM_GLUE" TLM_RAM_PATH="$op/live1.ram" TLM_TRACK=1 \
	TLM_REGION_FILE="$op/live1/region"
wait_ready guest1
wait_ready live1
src_pid=$(cat "$op/guest1.pid")
reseeded=$(guest_cmd guest1 "reseed 4242 4") || fail "reseed failed"
echo "pattern: $reseeded"
before=$(guest_cmd guest1 sum)
echo "before: $before"
[ "$(sum_bad "$before")" = bad=0 ] || fail "bad pages before migration: $before"

step "its human monitor's socket is not a QMP socket: refused, nothing recorded"
rc=0
err=$(migrate --mode tlm "$op/guest1/hmp.sock" 2>&1 >/dev/null) || rc=$?
echo "$err"
[ "$rc" = 1 ] && [ "$(echo "$err" | wc -l)" = 1 ] || fail "HMP socket: exit $rc, $err"
echo "$err" | grep -q "give the QMP socket of the VM" || fail "HMP socket: no hint"
! ls -d "$TLM_RUN_DIR/guest1"* >/dev/null 2>&1 || fail "HMP socket: a run directory was made"

step "migrate --mode tlm by its QMP socket, --check-cmd"
ticks0=$(grep -c '^TICK' "$op/guest1/console.log" || true)
migrate --mode tlm "$op/guest1/qmp.sock" --check-cmd "$check" \
	--json "$TLM_RUN_DIR/tlm.json" || fail "tlm migration failed"
python3 - "$TLM_RUN_DIR/tlm.json" $((160 << 20)) <<'PY' || fail "bad tlm report"
import json, sys
r, ram = json.load(open(sys.argv[1]))["vms"][0], int(sys.argv[2])
assert r["vm"] == "guest1" and r["checksum"] == "check-cmd ok", r
assert sum(r["pages"].values()) == ram // 4096, r["pages"]     # tlm moved the RAM
assert r["pages"]["data"] > 16 << 8, r["pages"]                 # the workload went over
assert r["qemu_bytes"] < 4 << 20, r                              # QEMU carried no RAM
PY
[ "$(vm info guest1 --get gen)" = 2 ] || fail "guest1 is not the destination (generation 2)"
[ "$(vm info guest1 --get foreign)" = true ] || fail "the destination is not foreign"
[ -S "$(vm info guest1 --get dir)/hmp.sock" ] || fail "no human monitor at the destination"
[ "$(qmp "$(vm info guest1 --get qmp)" query-status --get status)" = running ] ||
	fail "the destination is not running"
! kill -0 "$src_pid" 2>/dev/null || fail "the operator's QEMU $src_pid still runs"
[ -e "$op/guest1.ram" ] || fail "the operator's RAM file was removed"
same_memory guest1 "$before"
deadline=$((SECONDS + 60))	# the destination writes the operator's console log on
until [ "$(grep -c '^TICK' "$op/guest1/console.log")" -ge $((ticks0 + 2)) ]; do
	[ "$SECONDS" -lt "$deadline" ] || fail "no new TICK in $op/guest1/console.log"
	sleep 0.2
done

step "live1 (the glue tracks its writes): --mode tlm, a live phase; a check failing after"
# The check fails after the switch: the migration fails, naming it, and leaves both QEMUs
# as they are; the destination (live1.2) runs the guest with its memory intact.
live_before=$(guest_cmd live1 sum)
rc=0
# shellcheck disable=SC2016  # expanded by the check's sh, not here
migrate --mode tlm "$op/live1/qmp.sock" --check-cmd \
	'[ "$TLM_CHECK_PHASE" = before ] || { echo "pattern gone" >&2; exit 3; }' \
	2> "$TLM_RUN_DIR/live.err" || rc=$?
cat "$TLM_RUN_DIR/live.err"
[ "$rc" = 1 ] || fail "a failed check: exit $rc, not 1"
grep -q "live1: guest check failed after the migration (--check-cmd exit 3): pattern gone" \
	"$TLM_RUN_DIR/live.err" || fail "the failed check is not named"
if why=$(uffd_wp_async); then
	grep -q "live1: live (pagemap-scan" "$TLM_RUN_DIR/live.err" || fail "no live phase"
else
	echo "no live phase expected: $why"
fi
same_memory "$TLM_RUN_DIR/live1.2" "$live_before"
vm stop "$TLM_RUN_DIR/live1.2"
vm stop live1

step "migrate on --mode qemu by name, --dst-cmdline, no --check-cmd: no check, said so"
# the destination's command line: the current one with another -name (debug threads)
vm info guest1 --get cmdline | python3 -c '
import json, sys
argv = json.load(sys.stdin)
argv[argv.index("-name") + 1] = "guest1,debug-threads=on"
print("\n".join(argv))' > "$TLM_RUN_DIR/dst.cmdline"
migrate --mode qemu guest1 --dst-cmdline "$TLM_RUN_DIR/dst.cmdline" \
	--json "$TLM_RUN_DIR/qemu.json" 2> "$TLM_RUN_DIR/qemu.err" ||
	{ cat "$TLM_RUN_DIR/qemu.err"; fail "qemu migration failed"; }
tr '\0' '\n' < "/proc/$(vm info guest1 --get pid)/cmdline" | grep -qx "guest1,debug-threads=on" ||
	fail "the destination does not run the --dst-cmdline"
cat "$TLM_RUN_DIR/qemu.err"
grep -q "guest1: no guest check" "$TLM_RUN_DIR/qemu.err" || fail "no 'no guest check' line"
python3 - "$TLM_RUN_DIR/qemu.json" <<'PY' || fail "bad qemu report"
import json, sys
r = json.load(open(sys.argv[1]))["vms"][0]
assert r["checksum"] == "not checked" and r["postcopy_bytes"] > 0, r
PY
[ "$(vm info guest1 --get gen)" = 3 ] || fail "guest1 is not generation 3"
[ ! -e "$TLM_RUN_DIR/guest1.2" ] || fail "the source run directory guest1.2 is still there"
same_memory guest1 "$before"

echo "PASS $name"
