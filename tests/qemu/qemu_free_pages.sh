#!/usr/bin/env bash
# Free memory is not sent: the same guest (384 MiB, 32 MiB workload) writes unique data
# to 224 MiB more and frees it, once with a virtio-balloon doing free page reporting
# (QEMU punches the reported pages out of the RAM file) and once without; each is then
# migrated with --mode tlm. With reporting the freed pages are holes, which the page
# server classifies ZERO without reading them (zero_holes): far fewer bytes cross the
# wire, and the source's RAM file keeps its holes (reading a hole through a tmpfs mapping
# would allocate it). Both guests keep their memory (checksum) and run at the
# destination, where free page reporting goes on working. Prints the bytes on the wire of both (the figure in README.md "Results").
# shellcheck source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

migrate() { "$root/scripts/migrate-postcopy.sh" "$@"; }
mem=384 wl=32 scratch=224

# The guest memory QEMU holds, in KiB: the RAM file's allocated blocks at the source
# (the file is the guest RAM), QEMU's Pss at a destination (its RAM is the glue's
# private mapping; the file is a stub).
ram_file_kb() { echo $(($(stat -c %b "$(vm info "$1" --get ram_file)") / 2)); }
pss_kb() { vm pss "$1" | python3 -c 'import json, sys; print(json.load(sys.stdin)["pss_kb"])'; }

# Guest VM ($1) frees $scratch MiB of unique data; with reporting ($2 = 1), wait until
# QEMU has discarded at least 3/4 of it (measured by $3: ram_file_kb | pss_kb; the guest
# reports free blocks of 2 MiB and more, 2 s after they are freed).
touch_and_free() {
	local vm=$1 fpr=$2 held=$3 before want reply left

	before=$($held "$vm")
	reply=$(vm cmd "$vm" "scratch $scratch" --timeout 300) || fail "$vm: scratch: $reply"
	echo "$vm: $reply (QEMU held $((before >> 10)) MiB of guest memory before, $held)"
	[ "$fpr" = 1 ] || return 0
	want=$((before + scratch * 1024 / 4))
	left=600		# 0.1 s polls: the guest runs under TCG on a busy machine
	while [ "$($held "$vm")" -gt "$want" ]; do
		left=$((left - 1))
		[ "$left" -gt 0 ] ||
			fail "$vm: QEMU still holds $(($($held "$vm") >> 10)) MiB after 60 s (want <= $((want >> 10))): no free page reporting"
		sleep 0.1
	done
	echo "$vm: QEMU holds $(($($held "$vm") >> 10)) MiB once the guest reported its free pages"
}

run() {     # NAME FPR(0|1): boot, touch and free, migrate; the report in $TLM_RUN_DIR/NAME.json
	local vm=$1 fpr=$2 before ram b0 b1 opt=()

	[ "$fpr" = 1 ] && opt=(--free-page-reporting)
	step "$vm: guest ${mem} MiB${opt:+ with free page reporting}, ${scratch} MiB touched and freed"
	vm start "$vm" --mem "$mem" --wl-mem "$wl" --track "${opt[@]}" >/dev/null
	vm wait-ready "$vm" --timeout 180 >/dev/null
	if [ "$fpr" = 1 ]; then
		grep -aq "TLM-INIT virtio: virtio_balloon" "$(vm info "$vm" --get dir)/console.log" ||
			fail "$vm: the guest has no virtio_balloon driver (scripts/mkguest.sh modules)"
	fi
	touch_and_free "$vm" "$fpr" ram_file_kb
	before=$(vm cmd "$vm" sum)
	ram=$(vm info "$vm" --get ram_file) b0=$(($(ram_file_kb "$vm") * 2))
	# once the destination runs, the source RAM has been classified (live phase and
	# freeze): its allocated size then
	migrate --mode tlm "$vm" --json "$TLM_RUN_DIR/$vm.json" \
		--after-switch "stat -c %b '$ram' > '$TLM_RUN_DIR/$vm.blocks'" ||
		fail "$vm: migration failed"
	b1=$(cat "$TLM_RUN_DIR/$vm.blocks")
	echo "$vm: source RAM file $((b0 / 2048)) MiB allocated before the migration," \
		"$((b1 / 2048)) MiB once classified"
	[ "$b1" -le $((b0 + 16 * 2048)) ] ||
		fail "$vm: the page server filled the holes of the source's RAM file"
	same_memory "$vm" "$before"
	vm ticks "$vm" --count 1 >/dev/null || fail "$vm: no TICK at the destination"
	[ "$fpr" = 1 ] || return 0
	# the balloon's state came along: the destination reports and discards too
	touch_and_free "$vm" 1 pss_kb
	vm sum-check "$before" "$(vm cmd "$vm" sum)" || fail "$vm: memory differs after freeing"
}

run fpr 1
run plain 0

step "bytes on the wire"
python3 - "$TLM_RUN_DIR/fpr.json" "$TLM_RUN_DIR/plain.json" "$scratch" <<'PY' ||
import json, sys
fpr, plain = (json.load(open(p))["vms"][0] for p in sys.argv[1:3])
freed = int(sys.argv[3]) << 20
for r in (fpr, plain):
    assert r["checksum"].endswith(" ok"), r
    print(f"{r['vm']}: tlm {r['tlm_bytes'] / 1e6:.1f} MB on the wire, pages {r['pages']}, "
          f"{r['zero_holes']} classified from holes of the RAM file")
saved = plain["tlm_bytes"] - fpr["tlm_bytes"]
print(f"free page reporting: {fpr['tlm_bytes'] / 1e6:.1f} MB instead of "
      f"{plain['tlm_bytes'] / 1e6:.1f} MB, {saved / 1e6:.1f} MB saved "
      f"({100 * saved / freed:.0f} % of the {freed >> 20} MiB the guest freed)")
# the freed pages were holes, classified without reading...
assert fpr["zero_holes"] >= 3 * freed // 4 // 4096, fpr
# ...and not sent: at least 3/4 of them saved, against the guest that kept them
assert saved >= 3 * freed // 4, (fpr["tlm_bytes"], plain["tlm_bytes"])
# without reporting the freed memory is still the guest's data: it goes
assert plain["pages"]["data"] * 4096 >= freed, plain
PY
	fail "free memory was sent"
echo "PASS $name"
