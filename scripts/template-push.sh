#!/usr/bin/env bash
# Copy a VM template to a destination host once (migrate-postcopy.sh --dst-host).
#
#   scripts/template-push.sh TEMPLATE [USER@]HOST [--to PATH] [--dst-prefix DIR]
#                            [--ssh-config FILE]
#
#   TEMPLATE           a template directory (scripts/template-create.sh: the whole
#                      directory goes, its disks too, not the clones' overlays in
#                      clones/) or a pages file (it and its index PAGES.tlmi go)
#   --to PATH          where on HOST (default: the same path)
#   --dst-prefix DIR   HOST's tlm source tree with its build/ (default: the paths here)
#   --ssh-config FILE  ssh -F FILE (default $TLM_SSH_CONFIG)
#
# Nothing is copied when HOST already has an index with the template's digest. Else
# HOST's index goes first (a copy cut short leaves no index that could claim pages it
# does not have), then the pages (rsync, sparse), the index last, and HOST's
# tlm-template verify rehashes every page against it. Migrate with
# --dst-template THERE (THERE/ram for a directory) when PATH differs.
set -euo pipefail
# shellcheck source=lib/common.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"
# shellcheck source=lib/ssh.sh
. "$tlm_root/scripts/lib/ssh.sh"

args=() to='' prefix='' cfg=''
while [ $# -gt 0 ]; do
	case "$1" in
	--to|--dst-prefix|--ssh-config)
		[ $# -ge 2 ] || { echo "$tlm_prog: $1 needs a value" >&2; exit 2; }
		case "$1" in --to) to=$2 ;; --dst-prefix) prefix=$2 ;; *) cfg=$2 ;; esac
		shift ;;
	-h|--help) tlm_usage; exit 0 ;;
	-*) echo "$tlm_prog: unknown option '$1' (try --help)" >&2; exit 2 ;;
	*) args+=("$1") ;;
	esac
	shift
done
[ ${#args[@]} = 2 ] || { echo "$tlm_prog: TEMPLATE and HOST, please (try --help)" >&2; exit 2; }
src=${args[0]%/} host=${args[1]}
[ -e "$src" ] || tlm_die "no template $src"
src=$(realpath "$src")
to=${to:-$src}
tlm_ssh_init "$host" "$cfg" "$prefix"
pages=$(tlm_tmpl_pages "$src")
[ -d "$src" ] && rpages=$to/ram || rpages=$to
digest=$(tlm_tmpl_digest "$pages") ||
	tlm_die "$pages has no index $pages.tlmi (tlm-template build --from $pages)"
err=$(tlm_ssh true 2>&1) || tlm_die "cannot ssh to $host: $(tail -n 1 <<<"$err")"

if [ "$(tlm_tmpl_digest --remote "$rpages" || true)" = "$digest" ]; then
	echo "$host:$to: digest $digest already there, nothing copied"
	exit 0
fi
t0=$(date +%s.%N)
q() { printf %q "$1"; }
tlm_ssh "rm -f $(q "$rpages.tlmi") && mkdir -p $(q "$(dirname "$rpages")")" ||
	tlm_die "$host: cannot prepare $(dirname "$rpages")"
# --ignore-times: the digests differ, so the pages do even where size and mtime agree
rs=(rsync --sparse --times --ignore-times --partial -e "$(tlm_ssh_e)")
if [ -d "$src" ]; then
	# clones/: the overlays of clones started here (clone-start.sh's default --disk-dir)
	"${rs[@]}" --recursive --exclude=ram.tlmi --exclude=/clones/ "$src/" "$host:$to/" ||
		tlm_die "rsync to $host failed"
else
	"${rs[@]}" "$pages" "$host:$rpages" || tlm_die "rsync to $host failed"
fi
"${rs[@]}" "$pages.tlmi" "$host:$rpages.tlmi" || tlm_die "rsync of the index to $host failed"
tlm_ssh "$(q "$tlm_rbin/tlm-template") verify $(q "$rpages") >/dev/null" ||
	tlm_die "$host: $rpages does not verify against its index after the copy"
echo "$host:$to: pushed digest $digest ($(du -k --apparent-size -s "$src" | cut -f1) KiB" \
	"in $(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }') s), verified"
