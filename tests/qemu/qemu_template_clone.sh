#!/usr/bin/env bash
# Templates and clones on a real guest: template-create.sh saves the device state without
# the RAM (x-ignore-shared), clone-start.sh starts clones from it that hold the template's
# memory (same checksum), diverge after "reseed", keep running, and migrate with stock
# postcopy (x-ignore-shared switched off again). A clone with the glue stays an ordinary
# VM: x-ignore-shared off once loaded, its RAM file a stub that QEMU refuses to map, stock
# precopy moves its memory from the process.
# shellcheck source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

tdir=$TLM_RUN_DIR/templates/base
step "template-create.sh (192 MiB guest, 32 MiB workload)"
"$root/scripts/template-create.sh" base --out "$tdir" --mem 192 --wl-mem 32 ||
	fail "template-create.sh failed"
for f in ram state vm.json template.json; do
	[ -s "$tdir/$f" ] || fail "template has no $f"
done
[ "$(stat -c %s "$tdir/ram")" = $((192 << 20)) ] || fail "template RAM is not 192 MiB"
state=$(stat -c %s "$tdir/state")
[ "$state" -lt $((4 << 20)) ] || fail "device state is $state bytes: guest RAM went into it"
if [ -x "${TLM_BIN_DIR:-/nonexistent}/tlm-template" ]; then
	[ -s "$tdir/ram.tlmi" ] || fail "tlm-template exists but no index was built"
fi
for d in "$TLM_RUN_DIR"/tmpl-base*; do
	[ ! -e "$d" ] || fail "the template VM was left behind: $d"
done
tsum=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["sum"])' \
	"$tdir/template.json")

step "clone-start.sh: two clones, reseeded (private RAM copies: no glue)"
TLM_GLUE='' "$root/scripts/clone-start.sh" "$tdir" c --count 2 --reseed 50 ||
	fail "clone-start.sh failed"
s1=$(vm cmd c-1 sum) s2=$(vm cmd c-2 sum)
echo "template: $tsum"; echo "c-1: $s1"; echo "c-2: $s2"
for s in "$s1" "$s2"; do
	[ "$(sum_bad "$s")" = bad=0 ] || fail "bad pages in a clone: $s"
	[ "$(sum_hash "$s")" != "$(sum_hash "$tsum")" ] || fail "a clone did not diverge: $s"
done
[ "$(sum_hash "$s1")" != "$(sum_hash "$s2")" ] || fail "the clones did not diverge"
vm ticks c-2 --count 2 >/dev/null || fail "c-2 does not TICK"

step "error cases"
rc=0; "$root/scripts/clone-start.sh" "$tdir" x --glue /nonexistent/libtlm-glue.so \
	2>/dev/null || rc=$?
[ "$rc" = 1 ] || fail "missing glue: exit $rc, not 1"
rc=0; "$root/scripts/clone-start.sh" no-such-template x 2>/dev/null || rc=$?
[ "$rc" = 1 ] || fail "unknown template: exit $rc, not 1"
rc=0; "$root/scripts/template-create.sh" base --out "$tdir" 2>/dev/null || rc=$?
[ "$rc" = 1 ] || fail "existing template without --force: exit $rc, not 1"
rc=0; "$root/scripts/clone-start.sh" "$tdir" c --count 1 2>/dev/null || rc=$?
[ "$rc" = 1 ] || fail "starting a clone under the name of a running VM: exit $rc, not 1"

step "a clone with the glue stays an ordinary VM (its RAM file is a stub)"
[ -e "${TLM_GLUE:-/nonexistent}" ] || fail "TLM_GLUE=${TLM_GLUE:-} is not built"
"$root/scripts/clone-start.sh" "$tdir" g --reseed 51 || fail "clone-start.sh (glue) failed"
gsum=$(vm cmd g sum)
ordinary_vm g
ram=$(vm info g --get ram_file)
# A stock x-ignore-shared migration on this host needs a QEMU mapping the same file: QEMU
# itself refuses the stub (the guest memory is not in it).
out=$(timeout 60 qemu-system-x86_64 -machine pc,memory-backend=m0 -m 192M -display none \
	-nodefaults -S -incoming defer -object \
	memory-backend-file,id=m0,size=192M,mem-path="$ram",share=on 2>&1 </dev/null) &&
	fail "a QEMU started on the stub $ram"
echo "QEMU on the stub: $out"
[[ "$out" == *"backing store size 0x1000 does not match"* ]] ||
	fail "QEMU on the stub did not refuse it for its size: $out"
"$root/scripts/migrate-postcopy.sh" --mode precopy g || fail "stock precopy of the clone failed"
after=$(vm cmd g sum)
[ "$(sum_hash "$after")" = "$(sum_hash "$gsum")" ] || fail "g changed: $gsum -> $after"

step "migrate a clone with stock postcopy"
"$root/scripts/migrate-postcopy.sh" --mode qemu c-1 || fail "migrating c-1 failed"
after=$(vm cmd c-1 sum)
[ "$(sum_hash "$after")" = "$(sum_hash "$s1")" ] || fail "c-1 changed: $s1 -> $after"
echo "PASS $name"
