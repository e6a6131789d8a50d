#!/usr/bin/env bash
# Install what is missing, build, and run every test with ctest.
#
#   scripts/test.sh [-L LABEL] [--sanitize] [--build-dir DIR] [--repeat N] [--load]
#
# --repeat N   run the suite N times and list every test that ever failed or skipped
# --load       with one CPU hog per core running meanwhile (tests must not depend on speed)
# Tests that cannot run here (no userfaultfd, no QEMU) are reported as skipped by ctest,
# with their reason in the output, never as passed; TLM_REQUIRE=uffd,qemu,root (CI sets
# it) turns such skips into failures.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build_dir="$here/build"
setup_opts=(--werror)
ctest_opts=()
repeat=1
load=0

while [ $# -gt 0 ]; do
	case "$1" in
	-L) ctest_opts+=(-L "$2"); shift ;;
	--sanitize) setup_opts+=(--sanitize); build_dir="$here/build-asan" ;;
	--build-dir) build_dir=$2; shift ;;
	--repeat)
		repeat=$2; shift
		[[ "$repeat" =~ ^[1-9][0-9]*$ ]] ||
			{ echo "test.sh: --repeat needs a count >= 1, not '$repeat'" >&2; exit 2; } ;;
	--load) load=1 ;;
	-h|--help) sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
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
if [ "$repeat" = 1 ] && [ "$load" = 0 ]; then
	exec ctest --output-on-failure -j2 ${ctest_opts[@]+"${ctest_opts[@]}"}
fi

hogs=()
stop_hogs() { [ ${#hogs[@]} -eq 0 ] || kill "${hogs[@]}" 2>/dev/null || true; }
trap stop_hogs EXIT
if [ "$load" = 1 ]; then
	for _ in $(seq "$(nproc)"); do
		(trap - EXIT; while :; do :; done) &
		hogs+=($!)
	done
	echo "test.sh: ${#hogs[@]} CPU hogs running (--load)"
fi
declare -A failed=() skipped=() seen=()
mkdir -p "$build_dir/Testing"		# ctest makes it only on its first run
for run in $(seq "$repeat"); do
	log="$build_dir/Testing/repeat-$run.log"
	echo "== test.sh: run $run of $repeat (log $log)"
	ctest --output-on-failure -j2 ${ctest_opts[@]+"${ctest_opts[@]}"} > "$log" 2>&1 || true
	grep -E "tests passed|tests failed" "$log" || true
	while read -r t; do
		seen[$t]=1
	done < <(sed -n 's/^.*Test *#[0-9]*: \([^ ]*\) .*/\1/p' "$log")
	while read -r t; do
		failed[$t]+="$run "
	done < <(sed -n 's/^.*Test *#[0-9]*: \([^ ]*\) .*\(Failed\|Timeout\|Exception\|Not Run\).*/\1/p' "$log")
	while read -r t; do
		skipped[$t]+="$run "
	done < <(sed -n 's/^.*Test *#[0-9]*: \([^ ]*\) .*Skipped.*/\1/p' "$log")
done
stop_hogs
echo "== test.sh: $repeat run(s)$([ "$load" = 1 ] && echo ", machine loaded")"
# (empty associative arrays are "unbound" under set -u: expand them only when set)
for t in ${failed[@]+"${!failed[@]}"}; do echo "FAILED  $t in run(s) ${failed[$t]}"; done
for t in ${skipped[@]+"${!skipped[@]}"}; do echo "SKIPPED $t in run(s) ${skipped[$t]}"; done
passed=0      # tests that passed in every run
for t in ${seen[@]+"${!seen[@]}"}; do
	[ -n "${failed[$t]:-}${skipped[$t]:-}" ] || passed=$((passed + 1))
done
echo "repeat: $passed passed, ${#failed[@]} failed, ${#skipped[@]} skipped"
# No test seen at all is a failure, never a pass (a fresh build dir once had no Testing/
# for the logs: every run "passed" with 0 tests).
[ ${#seen[@]} -gt 0 ] || { echo "test.sh: no test ran" >&2; exit 1; }
[ ${#failed[@]} -eq 0 ]
