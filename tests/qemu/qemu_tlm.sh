#!/usr/bin/env bash
# scripts/migrate-postcopy.sh --mode tlm on real guests: a clone of a template migrates
# with its RAM moved by tlm (template pages never cross the wire), keeps running at the
# destination with the same memory checksum, and migrates again from there, over TLS
# (--tls psk); a plain VM (no template: ZERO and DATA pages only) migrates too; the
# destination daemon missing, a wrong key, TLS on one side only and a template missing
# at the destination each fail with a clear error before the switch, leaving the source
# running with its memory intact.
# shellcheck source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

migrate() { "$root/scripts/migrate-postcopy.sh" "$@"; }
tdir=$TLM_RUN_DIR/templates/base

step "template (192 MiB guest, 32 MiB workload) and one clone with the glue"
"$root/scripts/template-create.sh" base --out "$tdir" --mem 192 --wl-mem 32 >/dev/null ||
	fail "template-create.sh failed"
"$root/scripts/clone-start.sh" "$tdir" c --reseed 9 --reseed-mib 4 || fail "clone-start.sh failed"
before=$(vm cmd c sum)
echo "before: $before"

step "migrate --mode tlm"
migrate --mode tlm c --json "$TLM_RUN_DIR/tlm.json" || fail "tlm migration failed"
[ "$(vm info c --get gen)" = 2 ] || fail "c is not the destination (generation 2) now"
[ ! -e "$TLM_RUN_DIR/c.1" ] || fail "the source run directory c.1 is still there"
python3 - "$TLM_RUN_DIR/tlm.json" $((192 << 20)) <<'PY' || fail "bad report"
import json, sys
r, ram = json.load(open(sys.argv[1]))["vms"][0], int(sys.argv[2])
p = r["pages"]
assert sum(p.values()) == ram // 4096, p                  # every page classified
assert p["template"] > ram // 4096 // 2, p                # mostly the template's pages
assert 0 < p["data"] < ram // 4096 // 4, p                # the reseeded part travelled
# DATA pages are the payload, plus the copies pre-sent again because the guest wrote the
# page after its copy had gone (the live phase's re-sent pages)
assert r["tlm_payload_bytes"] == p["data"] * 4096 + r["resent_bytes"], r
assert r["tlm_bytes"] <= 1.02 * r["tlm_payload_bytes"] + (1 << 20), r
assert r["qemu_bytes"] < 4 << 20, r                       # QEMU carried no guest RAM
assert r["checksum"].endswith(" ok"), r
PY
same_memory c "$before"
ordinary_vm c
vm ticks c --count 2 >/dev/null || fail "no TICK at the destination"
[ "$(sum_rewrites "$(vm cmd c sum)")" -gt "$(sum_rewrites "$before")" ] ||
	fail "the workload stopped rewriting"

step "migrate the destination on over TLS (generation 3: RAM is the glue's private mapping)"
migrate --mode tlm c --tls psk >/dev/null || fail "second tlm migration (--tls psk) failed"
[ "$(sum_hash "$(vm cmd c sum)")" = "$(sum_hash "$before")" ] || fail "checksum changed"

step "failures before the switch leave the source running"
expect_fail() {     # WHAT GREP ARGS...: exit 1, the message, source intact
	local what=$1 want=$2 rc=0 out
	shift 2
	out=$(migrate --mode tlm c "$@" 2>&1) || rc=$?
	echo "$what: $out" | tail -n 2
	[ "$rc" = 1 ] || fail "$what: exit $rc, not 1"
	echo "$out" | grep -q "$want" || fail "$what: no '$want' in the error"
	[ "$(qmp "$(vm info c --get qmp)" query-status --get status)" = running ] ||
		fail "$what: the source is not running"
	[ "$(vm info c --get gen)" = 3 ] || fail "$what: c is no longer generation 3"
	[ "$(sum_hash "$(vm cmd c sum)")" = "$(sum_hash "$before")" ] ||
		fail "$what: checksum changed"
}
expect_fail "daemon not running" "tlm-uffd-server is not running" \
	--dst-ctl "$TLM_RUN_DIR/none/ctl.sock" --dst-sock "$TLM_RUN_DIR/none/glue.sock"
expect_fail "template missing" "No such file" --dst-template "$TLM_RUN_DIR/no-template"
kd=$(mktemp -d "$TLM_RUN_DIR/keys.XXXXXX")
(umask 077; head -c 32 /dev/urandom > "$kd/a"; head -c 32 /dev/urandom > "$kd/b")
"$TLM_BIN_DIR/tlm-uffd-server" --sock "$kd/glue.sock" --ctl "$kd/ctl.sock" --key "$kd/b" \
	--template "$tdir/ram" 2> "$kd/uffd.log" &
ud=$!
for _ in $(seq 50); do [ -S "$kd/ctl.sock" ] && break; sleep 0.1; done
expect_fail "wrong key" "authentication" --key "$kd/a" --dst-ctl "$kd/ctl.sock" \
	--dst-sock "$kd/glue.sock"
expect_fail "TLS on one side only" "requires TLS" --tls psk --key "$kd/b" \
	--dst-ctl "$kd/ctl.sock" --dst-sock "$kd/glue.sock"
kill "$ud"; wait "$ud" || true
[ ! -e "$TLM_RUN_DIR/c.4" ] || fail "a failed destination was left behind"

step "a plain VM (share=on RAM file, no template, no glue)"
vm start p --mem 160 --wl-mem 24 >/dev/null
vm wait-ready p --timeout 120 >/dev/null
psum=$(vm cmd p sum)
migrate --mode tlm p --json "$TLM_RUN_DIR/plain.json" || fail "plain VM migration failed"
python3 - "$TLM_RUN_DIR/plain.json" <<'PY' || fail "bad plain report"
import json, sys
p = json.load(open(sys.argv[1]))["vms"][0]["pages"]
assert p["template"] == 0 and p["ref"] == 0, p            # no template: ZERO/DATA only
assert p["zero"] > 0 and p["data"] > 24 << 8, p
PY
[ "$(sum_hash "$(vm cmd p sum)")" = "$(sum_hash "$psum")" ] || fail "plain VM checksum changed"
vm ticks p --count 1 >/dev/null || fail "the plain VM does not TICK at the destination"
echo "PASS $name"
