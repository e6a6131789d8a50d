#!/usr/bin/env bash
# The tlm demo: on a fresh Debian 12 machine (as root) install what is missing, build tlm
# and the test guest, create a template from the built-in guest, start three clones of it
# that share the template's memory, migrate them post-copy to a second local "host" with
# tlm, then the same three VMs with stock QEMU postcopy-ram, and print the comparison.
#
#   scripts/demo.sh [--mem MiB] [--clones N] [--keep]
#
#   --mem MiB     guest RAM (default 256; the workload fills a quarter of it)
#   --clones N    how many clones (default 3)
#   --keep        leave the VMs running afterwards (in $TLM_RUN_DIR, default
#                 /dev/shm/tlm-demo/run; stop them with TLM_RUN_DIR=/dev/shm/tlm-demo/run
#                 PYTHONPATH=qemu-glue python3 -m tlm_qemu.vm stop NAME)
#
# The "hosts" are two run directories on this machine and the link is loopback; for
# emulated hosts with a shaped link see scripts/bench-migrate.sh.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
: "${TLM_RUN_DIR:=/dev/shm/tlm-demo/run}"
export TLM_RUN_DIR
# shellcheck source=lib/common.sh
. "$here/scripts/lib/common.sh"

mem=256
clones=3
keep=0
while [ $# -gt 0 ]; do
	case "$1" in
	--mem) mem=${2:-}; shift ;;
	--clones) clones=${2:-}; shift ;;
	--keep) keep=1 ;;
	-h|--help) tlm_usage; exit 0 ;;
	*) echo "$tlm_prog: unknown option '$1' (try --help)" >&2; exit 2 ;;
	esac
	shift
done
[[ "$mem" =~ ^[0-9]+$ ]] && [ "$mem" -ge 160 ] || tlm_die "--mem: a whole number >= 160, not '$mem'"
[[ "$clones" =~ ^[1-9][0-9]?$ ]] || tlm_die "--clones: 1..99, not '$clones'"

tdir=$(dirname "$TLM_RUN_DIR")/templates/demo
work=$(mktemp -d /tmp/tlm-demo.XXXXXX)
names=()
for i in $(seq 1 "$clones"); do names+=("demo-$i"); done
cleanup() {
	local rc=$? n
	if [ "$keep" = 0 ] || [ "$rc" != 0 ]; then
		for n in "${names[@]}"; do tlm_vm stop "$n" >/dev/null 2>&1 || true; done
		rm -rf "$tdir"
	fi
	rm -rf "$work"
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 1' INT TERM

echo "== install and build (scripts/setup.sh, scripts/mkguest.sh)"
"$here/scripts/setup.sh" >/dev/null
"$here/scripts/mkguest.sh" | tail -n 1
export TLM_BIN_DIR=$here/build/runtime TLM_GLUE=$here/build/qemu-glue/libtlm-glue.so
for n in "${names[@]}"; do tlm_vm stop "$n" >/dev/null 2>&1 || true; done

echo "== template: a $mem MiB guest booted, filled, stopped and saved (scripts/template-create.sh)"
"$here/scripts/template-create.sh" demo --out "$tdir" --mem "$mem" --wl-mem $((mem / 4)) --force |
	tail -n 1
echo "== $clones clones sharing the template's frames, each rewriting 8 MiB (scripts/clone-start.sh)"
"$here/scripts/clone-start.sh" "$tdir" demo --count "$clones" --reseed 100 --reseed-mib 8

echo "== migrate them with tlm (scripts/migrate-postcopy.sh --mode tlm)"
"$here/scripts/migrate-postcopy.sh" --mode tlm "${names[@]}" --json "$work/tlm.json"
echo "== the same VMs with stock QEMU postcopy-ram (scripts/migrate-postcopy.sh --mode qemu)"
"$here/scripts/migrate-postcopy.sh" --mode qemu "${names[@]}" --json "$work/qemu.json"

echo
tlm_py report compare "$work/tlm.json" "$work/qemu.json"
