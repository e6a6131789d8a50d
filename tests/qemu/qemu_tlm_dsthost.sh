#!/usr/bin/env bash
# Two hosts: the destination is another "host" reached over ssh only
# (migrate-postcopy.sh --dst-host). Two network namespaces joined by a veth pair
# (scripts/lib/netns.sh); the destination namespace runs an sshd of the test's own (host
# key and authorized key made here), and the source side's commands run in the source
# namespace. Each host has its own run, key and template directories: the destination gets
# its key over ssh and its template by scripts/template-push.sh, and uses only those.
# scripts/tlm-hostcheck.sh names what is missing before, and says ready after. A template
# clone migrates through --dst-host: it runs at the destination with the same memory
# (the guest checksum), on the pushed template, and its Pss there is reported.
# shellcheck source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
# shellcheck source=../../scripts/lib/netns.sh
. "$root/scripts/lib/netns.sh"

for c in ssh ssh-keygen rsync; do
	command -v $c >/dev/null || skip "$c is not installed (scripts/setup.sh installs it)"
done
[ "$(id -u)" = 0 ] || skip "needs root (network namespaces, an sshd)"

dst=$(mktemp -d /dev/shm/tlm-dsthost.XXXXXX)   # the destination host's own directories
src=$TLM_RUN_DIR/host                          # the source host's
mkdir -p "$dst/run" "$dst/ssh" "$src/keys" "$src/ssh" "$src/templates"
sshd_pid=
dsthost_cleanup() {
	local rc=$? d f

	for f in "$dst"/run/tlm-dst.*/tlm-uffd-server.pid; do	# a run that failed left it
		[ -e "$f" ] && kill "$(cat "$f")" 2>/dev/null
	done
	for d in "$dst"/run/*/; do
		[ -e "$d/vm.json" ] && TLM_RUN_DIR=$dst/run tlm_vm stop "$d" >/dev/null 2>&1
	done
	[ -z "$sshd_pid" ] || { kill "$sshd_pid" 2>/dev/null; wait "$sshd_pid" 2>/dev/null; }
	tlm_link_down
	rm -rf "$dst"
	(exit "$rc")
	test_cleanup
}
trap dsthost_cleanup EXIT

step "two emulated hosts"
tlm_link_up lan
[ "$TLM_LINK" != loopback ] || skip "no network namespaces: $TLM_LINK_DESC"
echo "$TLM_LINK_DESC"
on_src() {
	ip netns exec "$TLM_SRC_NS" "$@"
}

step "an sshd in the destination namespace ($TLM_DST_ADDR), its keys made here"
dst_sshd "$dst/ssh" "$src/ssh"

mem=128
step "template ($mem MiB guest) and one reseeded clone at the source"
tsrc=$src/templates/base tdst=$dst/templates/base
"$root/scripts/template-create.sh" base --out "$tsrc" --mem $mem --wl-mem 32 >/dev/null ||
	fail "template-create.sh failed"
"$root/scripts/clone-start.sh" "$tsrc" c --count 1 --reseed 20 --reseed-mib 4 \
	--netns "$TLM_SRC_NS" || fail "clone-start.sh failed"
before=$(vm cmd c-1 sum)
head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$src/keys/key"
chmod 600 "$src/keys/key"

step "hostcheck before the key and the template are there: it names both"
if out=$(on_src "$root/scripts/tlm-hostcheck.sh" dsthost --template "$tsrc:$tdst" \
	--key "$src/keys/key:$dst/keys/key"); then
	fail "hostcheck passed without the template and the key: $out"
fi
echo "$out"
grep -q "^dsthost: template $tdst/ram .*missing" <<<"$out" || fail "hostcheck missed the template"
grep -q "^dsthost: key $dst/keys/key is missing" <<<"$out" || fail "hostcheck missed the key"
[ "$(wc -l <<<"$out")" = 2 ] || fail "hostcheck found more than the template and the key"

step "the key over ssh, the template by template-push.sh (twice: the second copies nothing)"
on_src ssh -F "$TLM_SSH_CONFIG" -o BatchMode=yes dsthost \
	"umask 077 && mkdir -p $dst/keys && cat > $dst/keys/key" < "$src/keys/key" ||
	fail "cannot copy the key"
on_src "$root/scripts/template-push.sh" "$tsrc" dsthost --to "$tdst" || fail "template-push.sh failed"
out=$(on_src "$root/scripts/template-push.sh" "$tsrc" dsthost --to "$tdst") ||
	fail "template-push.sh failed the second time"
echo "$out"
grep -q "nothing copied" <<<"$out" || fail "the second push copied again"
on_src "$root/scripts/tlm-hostcheck.sh" dsthost --template "$tsrc:$tdst" \
	--key "$src/keys/key:$dst/keys/key" || fail "hostcheck after the push"
step "a pages file changed here: hostcheck names the digest, the push copies it again"
small=$src/templates/small tbin=${TLM_BIN_DIR:-$root/build/runtime}
head -c 65536 /dev/urandom > "$small"
"$tbin/tlm-template" build --from "$small" >/dev/null || fail "tlm-template build"
on_src "$root/scripts/template-push.sh" "$small" dsthost --to "$dst/templates/small" >/dev/null ||
	fail "template-push.sh of a pages file failed"
head -c 4096 /dev/urandom | dd of="$small" conv=notrunc status=none
"$tbin/tlm-template" build --from "$small" >/dev/null || fail "tlm-template build"
out=$(on_src "$root/scripts/tlm-hostcheck.sh" dsthost --template "$small:$dst/templates/small") &&
	fail "hostcheck passed a template whose digest differs: $out"
echo "$out"
grep -q "^dsthost: template $dst/templates/small has digest .*, $small here has " <<<"$out" ||
	fail "hostcheck did not name the digest"
out=$(on_src "$root/scripts/template-push.sh" "$small" dsthost --to "$dst/templates/small") ||
	fail "template-push.sh of the changed pages failed"
grep -q "pushed digest" <<<"$out" || fail "the changed pages were not copied: $out"
on_src "$root/scripts/tlm-hostcheck.sh" dsthost --template "$small:$dst/templates/small" ||
	fail "hostcheck after pushing the changed pages"

step "hostcheck names a readable key and an install that is not there"
chmod 644 "$dst/keys/key"
out=$(on_src "$root/scripts/tlm-hostcheck.sh" dsthost --key "$src/keys/key:$dst/keys/key" \
	--dst-prefix "$dst/no-tlm") && fail "hostcheck passed a 0644 key and no install: $out"
echo "$out"
chmod 600 "$dst/keys/key"
grep -q "^dsthost: key $dst/keys/key has mode 644, not 0600$" <<<"$out" ||
	fail "hostcheck missed the key's mode"
[ "$(grep -c "^dsthost: missing $dst/no-tlm/" <<<"$out")" = 4 ] ||
	fail "hostcheck did not name the 4 missing files of the install"

migrate() {
	on_src "$root/scripts/migrate-postcopy.sh" --mode tlm c-1 --dst-host dsthost \
		--dst-run-dir "$dst/run" --dst-template "$tdst/ram" --key "$src/keys/key" \
		--dst-key "$dst/keys/key" --src-netns "$TLM_SRC_NS" --src-addr "$TLM_SRC_ADDR" \
		--timeout 150 "$@"
}

step "a failed migration (the destination cannot listen on --dst-addr): the source runs on"
if migrate --dst-addr "$TLM_SRC_ADDR" 2> "$src/fail.err"; then
	fail "a destination QEMU listening on another host's address migrated"
fi
tail -n 3 "$src/fail.err"
grep -q "migrate-incoming" "$src/fail.err" || fail "the failure does not say why"
[ "$(vm info c-1 --get running)" = true ] || fail "the source does not run after the failure"
[ "$(sum_hash "$(vm cmd c-1 sum)")" = "$(sum_hash "$before")" ] ||
	fail "the source's checksum changed after the failed attempt"
left=$(ls "$dst/run")
[ -z "$left" ] || fail "left at the destination: $left"

step "migrate the clone with tlm to dsthost over ssh"
accepted=$(grep -c "Accepted publickey" "$dst/ssh/sshd.log" || true)
# the hook, once the destination runs: what the destination daemon was started with
migrate --dst-addr "$TLM_DST_ADDR" --json "$src/tlm.json" --after-switch \
	"tr '\\0' ' ' < /proc/\$(cat $dst/run/tlm-dst.*/tlm-uffd-server.pid)/cmdline > $src/uffd.argv" ||
	fail "migration to dsthost failed"
[ "$(grep -c "Accepted publickey" "$dst/ssh/sshd.log")" = $((accepted + 1)) ] ||
	fail "the migration did not use one ssh connection: $(grep -c "Accepted publickey" \
	"$dst/ssh/sshd.log") accepted in all, $accepted before it"
argv=$(cat "$src/uffd.argv")
[[ "$argv" == *" --template $tdst/ram "* && "$argv" == *" --key $dst/keys/key "* ]] ||
	fail "the destination daemon does not use the pushed template and key: $argv"
[[ "$argv" != *"$src/"* ]] || fail "the destination daemon names a source-side path: $argv"

step "the guest runs at the destination on what was pushed, with the same memory"
dvm() {
	TLM_RUN_DIR=$dst/run tlm_vm "$@"
}
[ "$(dvm info c-1 --get running)" = true ] || fail "c-1 does not run at the destination"
[ "$(vm info c-1 --get running 2>/dev/null || echo gone)" != true ] ||
	fail "the source QEMU still runs"
grep -q "template=$tdst/ram " "$(dvm info c-1 --get dir)/region" ||
	fail "the destination does not use the pushed template: $(cat "$(dvm info c-1 --get dir)/region")"
after=$(dvm cmd c-1 sum)
[ "$(sum_hash "$after")" = "$(sum_hash "$before")" ] ||
	fail "checksum differs: before '$before', after '$after'"
dvm ticks c-1 --count 1 >/dev/null || fail "c-1 does not TICK at the destination"
python3 - "$src/tlm.json" $mem <<'PY' || fail "report"
import json, sys
r = json.load(open(sys.argv[1]))
row, ram_kb = r["vms"][0], int(sys.argv[2]) << 10
print(f"dsthost: {row['vm']} downtime {row['downtime_ms']} ms, {row['time_s']} s to every "
      f"page, {r['total']['wire_bytes'] / 1e6:.1f} MB on the wire, destination Pss "
      f"{row['dst_pss_kb'] >> 10} MiB, checksum {row['checksum']}")
assert row["checksum"].endswith(" ok"), row["checksum"]
assert 0 < row["dst_pss_kb"] < 2 * ram_kb, row["dst_pss_kb"]
PY
[ -z "$(ls -d "$dst"/run/tlm-dst.* 2>/dev/null)" ] || fail "the remote work directory is left"
echo "PASS $name"
