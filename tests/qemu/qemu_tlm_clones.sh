#!/usr/bin/env bash
# Three clones of one template migrated together to one destination with tlm, then the
# same three with stock postcopy-ram: all keep running with their checksums, the
# destination holds the template's frames once (Pss well below 3 x RAM), and tlm puts far
# fewer bytes on the wire than stock postcopy for the same VMs.
# shellcheck source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

mem=192
tdir=$TLM_RUN_DIR/templates/base
step "template ($mem MiB guest, 48 MiB workload), three reseeded clones with the glue"
"$root/scripts/template-create.sh" base --out "$tdir" --mem $mem --wl-mem 48 >/dev/null ||
	fail "template-create.sh failed"
"$root/scripts/clone-start.sh" "$tdir" c --count 3 --reseed 20 --reseed-mib 4 ||
	fail "clone-start.sh failed"
declare -A sums
for c in c-1 c-2 c-3; do sums[$c]=$(vm cmd $c sum); done

check_all() {
	for c in c-1 c-2 c-3; do
		[ "$(sum_hash "$(vm cmd $c sum)")" = "$(sum_hash "${sums[$c]}")" ] ||
			fail "$1: $c checksum changed"
		vm ticks $c --count 1 >/dev/null || fail "$1: $c does not TICK"
	done
}

step "migrate all three with tlm"
"$root/scripts/migrate-postcopy.sh" --mode tlm c-1 c-2 c-3 --json "$TLM_RUN_DIR/tlm.json" ||
	fail "tlm migration failed"
check_all tlm
step "the same three with stock postcopy-ram"
"$root/scripts/migrate-postcopy.sh" --mode qemu c-1 c-2 c-3 --json "$TLM_RUN_DIR/qemu.json" ||
	fail "stock postcopy migration failed"
check_all qemu
python3 - "$TLM_RUN_DIR/tlm.json" "$TLM_RUN_DIR/qemu.json" $mem <<'PY' || fail "comparison"
import json, sys
t, q = (json.load(open(p))["total"] for p in sys.argv[1:3])
ram_kb = int(sys.argv[3]) << 10
print(f"tlm:  {t['wire_bytes'] / 1e6:.1f} MB on the wire, destination Pss "
      f"{t['dst_pss_kb'] >> 10} MiB")
print(f"qemu: {q['wire_bytes'] / 1e6:.1f} MB on the wire, destination Pss "
      f"{q['dst_pss_kb'] >> 10} MiB (3 x RAM = {3 * ram_kb >> 10} MiB)")
assert t["vms"] == q["vms"] == 3
assert t["dst_pss_kb"] < 0.75 * 3 * ram_kb, "the template is not shared at the destination"
assert t["dst_pss_kb"] < q["dst_pss_kb"], "tlm's destination is not smaller than stock's"
assert 4 * t["wire_bytes"] < q["wire_bytes"], "tlm is not far below stock postcopy"
PY
echo "PASS $name"
