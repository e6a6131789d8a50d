#!/usr/bin/env bash
# The --check-cmd of tests/qemu/qemu_foreign.sh (scripts/migrate-postcopy.sh runs it with
# TLM_CHECK_PHASE, TLM_VM_NAME, TLM_VM_QMP, TLM_CHECK_BEFORE). The test's own QEMU command
# line puts the guest's workload port, ctl.sock, next to its QMP socket; the destination's
# keeps that file name in its run directory, so it is next to TLM_VM_QMP on both sides.
#   before: the guest runs (QMP); prints the workload's checksum of its memory
#   after:  the guest runs; its checksum equals the one before (same pages, no bad page,
#           the workload went on), else exit 1 and why
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
# shellcheck source=../../scripts/lib/py.sh
. "$root/scripts/lib/py.sh"

st=$(tlm_qmp "$TLM_VM_QMP" query-status --get status)
[ "$st" = running ] || { echo "$TLM_VM_NAME is '$st', not running" >&2; exit 1; }
# the workload command of tlm_qemu.vm, on the port next to the QMP socket
sum=$(PYTHONPATH=$tlm_py_path PYTHONDONTWRITEBYTECODE=1 python3 -c '
import sys
from tlm_qemu import vm
print(vm.guest_cmd({"name": sys.argv[1], "dir": sys.argv[2]}, "sum", 60))' \
	"$TLM_VM_NAME" "$(dirname "$TLM_VM_QMP")")
case "$TLM_CHECK_PHASE" in
before) echo "$sum" ;;
after) tlm_vm sum-check "$TLM_CHECK_BEFORE" "$sum" >&2 && echo "$sum" ;;
*) echo "TLM_CHECK_PHASE is '$TLM_CHECK_PHASE'" >&2; exit 2 ;;
esac
