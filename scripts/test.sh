#!/usr/bin/env bash
# Install what is missing, build, and run every test with ctest.
#
#   scripts/test.sh [-L LABEL] [--sanitize] [--build-dir DIR]
#
# Tests that cannot run here (no userfaultfd, no QEMU) are reported as skipped by ctest,
# with their reason in the output, never as passed.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build_dir="$here/build"
setup_opts=(--werror)
ctest_opts=()

while [ $# -gt 0 ]; do
	case "$1" in
	-L) ctest_opts+=(-L "$2"); shift ;;
	--sanitize) setup_opts+=(--sanitize); build_dir="$here/build-asan" ;;
	--build-dir) build_dir=$2; shift ;;
	-h|--help) sed -n '2,7p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
	*) echo "test.sh: unknown option '$1' (try --help)" >&2; exit 2 ;;
	esac
	shift
done

"$here/scripts/setup.sh" --build-dir "$build_dir" "${setup_opts[@]}"
# The QEMU tests (label qemu) need QEMU and the test guest: mkguest.sh installs the
# packages and builds the guest once (cached). If it cannot, those tests say SKIPPED.
if [ ${#ctest_opts[@]} -eq 0 ] || [[ "${ctest_opts[1]}" == *qemu* ]]; then
	TLM_GUEST_DIR="$build_dir/guest" "$here/scripts/mkguest.sh" | tail -n 1 ||
		echo "test.sh: the test guest could not be built: the QEMU tests will be skipped"
fi
cd "$build_dir"
ctest --output-on-failure -j2 ${ctest_opts[@]+"${ctest_opts[@]}"}
