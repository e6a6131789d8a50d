# shellcheck shell=bash
# ssh to a destination host, for the two-host scripts (sourced after lib/common.sh):
# tlm-hostcheck.sh, template-push.sh (migrate-postcopy.sh --dst-host: tlm_qemu/remote.py).
#
#   tlm_ssh_init HOST [CONFIG] [PREFIX]
#       HOST ([USER@]HOST or an alias of CONFIG); CONFIG: ssh -F (default $TLM_SSH_CONFIG);
#       PREFIX: the host's tlm source tree with its build/ (default: the paths here).
#       Sets tlm_ssh_host, tlm_ssh_opts, tlm_rbin (its build/runtime), tlm_rglue, tlm_rpkg
#       and tlm_bin (ours: $TLM_BIN_DIR or build/runtime).
#   tlm_ssh CMD...        run a shell command line on the host (BatchMode: keys only)
#   tlm_ssh_e             the ssh command line as one string (rsync -e)
#   tlm_tmpl_pages PATH   a template directory (scripts/template-create.sh) -> its pages
#                         file (DIR/ram); a pages file stays itself
#   tlm_tmpl_digest [--remote] PAGES
#                         the digest in the index PAGES.tlmi (tlm-template inspect), here
#                         or on the host; nothing (status 1) without a readable index

# shellcheck disable=SC2034  # tlm_rglue, tlm_rpkg: for the scripts that source this
tlm_ssh_init() {
	local cfg=${2:-${TLM_SSH_CONFIG:-}} prefix=${3:-}

	tlm_ssh_host=$1
	tlm_ssh_opts=(-o BatchMode=yes -o ConnectTimeout=15)
	[ -z "$cfg" ] || tlm_ssh_opts=(-F "$cfg" "${tlm_ssh_opts[@]}")
	tlm_bin=${TLM_BIN_DIR:-$tlm_root/build/runtime}
	if [ -n "$prefix" ]; then
		tlm_rbin=$prefix/build/runtime tlm_rglue=$prefix/build/qemu-glue/libtlm-glue.so
		tlm_rpkg=$prefix/qemu-glue
	else
		tlm_rbin=$tlm_bin tlm_rpkg=$tlm_root/qemu-glue
		tlm_rglue=${TLM_GLUE:-$(dirname "$tlm_bin")/qemu-glue/libtlm-glue.so}
	fi
}

tlm_ssh() {
	ssh "${tlm_ssh_opts[@]}" "$tlm_ssh_host" -- "$@"
}

tlm_ssh_e() {
	printf 'ssh'
	printf ' %q' "${tlm_ssh_opts[@]}"
}

tlm_tmpl_pages() {
	if [ -d "$1" ]; then echo "$1/ram"; else echo "$1"; fi
}

tlm_tmpl_digest() {
	local out

	if [ "$1" = --remote ]; then
		out=$(tlm_ssh "test -r $(printf %q "$2.tlmi") &&" \
			"$(printf %q "$tlm_rbin/tlm-template") inspect $(printf %q "$2")" \
			2>/dev/null) || return 1
	else
		[ -r "$1.tlmi" ] || return 1
		out=$("$tlm_bin/tlm-template" inspect "$1" 2>/dev/null) || return 1
	fi
	awk '$1 == "digest:" { print $2; found = 1 } END { exit !found }' <<<"$out"
}
