# shellcheck shell=bash
# The Python orchestration package qemu-glue/tlm_qemu for shell scripts (sourced).
#
#   . "$(dirname "${BASH_SOURCE[0]}")/lib/py.sh"
#   tlm_py MODULE ARGS...     python3 -m tlm_qemu.MODULE ARGS... (vm, qmp, migrate, report)
#   tlm_vm ARGS...            tlm_py vm ARGS...
#   tlm_qmp ARGS...           tlm_py qmp ARGS...
#
# The package is found through PYTHONPATH (qemu-glue, ahead of the caller's); no
# __pycache__ is written into the source tree.

tlm_py_path=$(cd "$(dirname "${BASH_SOURCE[0]}")/../../qemu-glue" && pwd)

tlm_py() {
	local mod=$1

	shift
	PYTHONPATH="$tlm_py_path${PYTHONPATH:+:$PYTHONPATH}" PYTHONDONTWRITEBYTECODE=1 \
		python3 -m "tlm_qemu.$mod" "$@"
}

tlm_vm() {
	tlm_py vm "$@"
}

tlm_qmp() {
	tlm_py qmp "$@"
}
