#!/usr/bin/env bash
# Is HOST ready to be a migration destination (migrate-postcopy.sh --dst-host HOST)?
#
#   scripts/tlm-hostcheck.sh [USER@]HOST [--template PATH[:THERE]]... [--key FILE[:THERE]]
#                            [--dst-prefix DIR] [--ssh-config FILE]
#
#   --template P[:T]   a template (its directory or pages file) that HOST must hold at T
#                      (default: the same path) with the same digest (its index, .tlmi)
#   --key F[:T]        the daemons' key: at T on HOST (default: the same path), mode 0600
#                      on both hosts, the same content (SHA-256)
#   --dst-prefix DIR   HOST's tlm source tree with its build/ (default: the paths here)
#   --ssh-config FILE  ssh -F FILE (default $TLM_SSH_CONFIG)
#
# Checks over ssh (BatchMode: a key, no password): HOST answers; it has tlm-uffd-server,
# tlm-template, libtlm-glue.so, the tlm_qemu package, python3 and qemu-system-x86_64;
# its tlm-uffd-server's --version equals ours (tlm-page-server, the peer it talks to);
# then every --template and --key. Prints one line per problem and exits 1 if any, else
# "HOST: ready" and exits 0; 2 on bad usage.
set -euo pipefail
# shellcheck source=lib/common.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"
# shellcheck source=lib/ssh.sh
. "$tlm_root/scripts/lib/ssh.sh"

host='' cfg='' prefix='' key=''
templates=()
while [ $# -gt 0 ]; do
	case "$1" in
	--template|--key|--dst-prefix|--ssh-config)
		[ $# -ge 2 ] || { echo "$tlm_prog: $1 needs a value" >&2; exit 2; }
		case "$1" in
		--template) templates+=("$2") ;;
		--key) key=$2 ;;
		--dst-prefix) prefix=$2 ;;
		--ssh-config) cfg=$2 ;;
		esac
		shift ;;
	-h|--help) tlm_usage; exit 0 ;;
	-*) echo "$tlm_prog: unknown option '$1' (try --help)" >&2; exit 2 ;;
	*) [ -z "$host" ] || { echo "$tlm_prog: one HOST only, not '$1' too" >&2; exit 2; }
	   host=$1 ;;
	esac
	shift
done
[ -n "$host" ] || { echo "$tlm_prog: no HOST given (try --help)" >&2; exit 2; }
tlm_ssh_init "$host" "$cfg" "$prefix"

problems=0
problem() {
	echo "$host: $*"
	problems=$((problems + 1))
}

err=$(tlm_ssh true 2>&1) || { echo "$host: cannot ssh there: $(tail -n 1 <<<"$err")"; exit 1; }

# what the destination side runs: one ssh round trip names every missing piece
absent=$(tlm_ssh "for f in $(printf '%q ' "$tlm_rbin/tlm-uffd-server" "$tlm_rbin/tlm-template" \
	"$tlm_rglue" "$tlm_rpkg/tlm_qemu/vm.py"); do [ -e \"\$f\" ] || echo \"\$f\"; done;" \
	"for c in python3 qemu-system-x86_64; do command -v \$c >/dev/null || echo \$c; done")
while read -r m; do
	[ -z "$m" ] || problem "missing $m"
done <<<"$absent"

here=$("$tlm_bin/tlm-page-server" --version 2>/dev/null) || here="(no $tlm_bin/tlm-page-server)"
if there=$(tlm_ssh "$(printf %q "$tlm_rbin/tlm-uffd-server")" --version 2>/dev/null); then
	[ "${there#* }" = "${here#* }" ] ||
		problem "version differs: $there there, $here here"
elif [ -n "$there" ] || ! grep -qx "$tlm_rbin/tlm-uffd-server" <<<"$absent"; then
	problem "$tlm_rbin/tlm-uffd-server has no --version (an older tlm): here $here"
fi

for t in ${templates[@]+"${templates[@]}"}; do
	src=${t%%:*} dst=${t#*:}
	[ "$t" != "$src" ] || dst=$src
	pages=$(tlm_tmpl_pages "$src")
	[ -d "$src" ] && rpages=$dst/ram || rpages=$dst
	if ! want=$(tlm_tmpl_digest "$pages"); then
		problem "template $pages has no index here ($pages.tlmi: tlm-template build)"
	elif ! got=$(tlm_tmpl_digest --remote "$rpages"); then
		problem "template $rpages (or its index) missing: scripts/template-push.sh $src $host"
	elif [ "$got" != "$want" ]; then
		problem "template $rpages has digest $got, $pages here has $want"
	fi
done

if [ -n "$key" ]; then
	src=${key%%:*} dst=${key#*:}
	[ "$key" != "$src" ] || dst=$src
	if [ ! -r "$src" ]; then
		problem "key $src is missing here"
	else
		[ "$(stat -c %a "$src")" = 600 ] || problem "key $src has mode $(stat -c %a "$src") here, not 0600"
		if ! there=$(tlm_ssh "stat -c %a $(printf %q "$dst") && sha256sum <$(printf %q "$dst")" \
			2>/dev/null); then
			problem "key $dst is missing"
		else
			[ "$(head -n 1 <<<"$there")" = 600 ] ||
				problem "key $dst has mode $(head -n 1 <<<"$there"), not 0600"
			[ "$(tail -n 1 <<<"$there" | cut -d' ' -f1)" = "$(sha256sum <"$src" | cut -d' ' -f1)" ] ||
				problem "key $dst differs from $src here"
		fi
	fi
fi
[ "$problems" = 0 ] || exit 1
echo "$host: ready"
