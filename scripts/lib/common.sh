# shellcheck shell=bash
# Shared shell helpers of tlm's scripts (sourced, not run).
#
#   . "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"
#
# Defines: tlm_root, tlm_die, tlm_log, tlm_usage, tlm_need_packages, TLM_RUN_DIR (where
# running VMs live), TLM_GUEST_DIR (guest images), and from lib/py.sh tlm_py, tlm_vm,
# tlm_qmp (python3 -m tlm_qemu.MODULE: the VM, QMP, migration and report helpers).

tlm_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
: "${TLM_RUN_DIR:=/dev/shm/tlm/run}"
: "${TLM_GUEST_DIR:=$tlm_root/build/guest}"
export TLM_RUN_DIR TLM_GUEST_DIR

tlm_prog=$(basename "$0")

tlm_die() {
	echo "$tlm_prog: error: $*" >&2
	exit 1
}

# --help: the script's leading comment block, without the "# ".
tlm_usage() {
	awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"
}

tlm_log() {
	echo "$tlm_prog: $*" >&2
}

# Install the Debian packages that are missing (apt-get update only then). Without root
# it names the command to run and fails.
tlm_need_packages() {
	local p missing=()

	for p in "$@"; do
		dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" ||
			missing+=("$p")
	done
	[ ${#missing[@]} -eq 0 ] && return 0
	if [ "$(id -u)" -ne 0 ]; then
		tlm_die "missing packages: ${missing[*]} (run as root: apt-get install -y ${missing[*]})"
	fi
	tlm_log "installing ${missing[*]}"
	DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
		"${missing[@]}" >/dev/null 2>&1 || {
		apt-get update -q >/dev/null
		DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
			"${missing[@]}" >/dev/null
	} || tlm_die "apt-get install ${missing[*]} failed"
}

# The VM, QMP, migration and report helpers (the package qemu-glue/tlm_qemu).
# shellcheck source=py.sh
. "$tlm_root/scripts/lib/py.sh"
