#!/usr/bin/env bash
# Fuzz every decoder with libFuzzer (clang, -fsanitize=fuzzer,address,undefined): wire
# frames, the handshake and key files, the local glue messages, the template index loader.
#
#   scripts/fuzz.sh [--seconds N] [--target T]... [--build-dir DIR] [--keep]
#
#   --seconds N      run each target N seconds (default 60)
#   --target T       wire, auth, local or template (repeatable; default all)
#   --build-dir DIR  clang build tree (default build-fuzz)
#   --keep           keep the work directory (new corpus entries, artifacts)
#
# Each target starts from tests/fuzz/corpus/T (new inputs go to a scratch copy, the repo
# corpus stays small). One summary line per target; fails on any crash, leak, timeout or
# sanitizer report, with the reproducer's path. A reproducer that shows a fixed bug goes into
# tests/fuzz/corpus/T/crash-<what>, where ctest fuzz_replay_T runs it in every build.
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"

seconds=60
targets=()
build_dir="$tlm_root/build-fuzz"
keep=0
all_targets=(wire auth local template)

while [ $# -gt 0 ]; do
	case "$1" in
	--seconds) seconds=$2; shift ;;
	--target) targets+=("$2"); shift ;;
	--build-dir) build_dir=$2; shift ;;
	--keep) keep=1 ;;
	-h|--help) tlm_usage; exit 0 ;;
	*) tlm_die "unknown option '$1' (try --help)" ;;
	esac
	shift
done
[[ "$seconds" =~ ^[1-9][0-9]*$ ]] || tlm_die "--seconds '$seconds': need a positive integer"
[ ${#targets[@]} -gt 0 ] || targets=("${all_targets[@]}")
for t in "${targets[@]}"; do
	[[ " ${all_targets[*]} " == *" $t "* ]] ||
		tlm_die "--target '$t': unknown (one of: ${all_targets[*]})"
done

# The build dependencies, then clang and its libFuzzer runtime (libclang_rt.fuzzer).
"$tlm_root/scripts/setup.sh" --no-build
tlm_need_packages clang libclang-rt-14-dev
CC=clang cmake -S "$tlm_root" -B "$build_dir" -G Ninja -DTLM_FUZZ=ON \
	-DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
ninja -C "$build_dir" "${targets[@]/#/fuzz_}" >/dev/null

work=$(mktemp -d "${TMPDIR:-/tmp}/tlm-fuzz.XXXXXX")
[ "$keep" = 1 ] || trap 'rm -rf "$work"' EXIT

# Inputs larger than any valid message of the target are not interesting.
max_len() {
	case "$1" in
	wire) echo 16384 ;;
	auth) echo 2048 ;;
	local) echo 1024 ;;
	template) echo 512 ;;
	esac
}

failed=0
for t in "${targets[@]}"; do
	mkdir -p "$work/$t/corpus"
	log="$work/$t/log"
	rc=0
	"$build_dir/tests/fuzz/fuzz_$t" -max_total_time="$seconds" -max_len="$(max_len "$t")" \
		-timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
		-artifact_prefix="$work/$t/" "$work/$t/corpus" "$tlm_root/tests/fuzz/corpus/$t" \
		>"$log" 2>&1 || rc=$?
	execs=$(awk '/stat::number_of_executed_units/ { print $2 }' "$log" | tail -n 1)
	cov=$(grep -o 'cov: [0-9]*' "$log" | tail -n 1 | cut -d' ' -f2)
	ft=$(grep -o 'ft: [0-9]*' "$log" | tail -n 1 | cut -d' ' -f2)
	artifact=$(ls "$work/$t"/crash-* "$work/$t"/leak-* "$work/$t"/timeout-* \
		"$work/$t"/oom-* 2>/dev/null | head -n 1 || true)
	if [ "$rc" -eq 0 ] && [ -z "$artifact" ]; then
		result=ok
	else
		result="FAILED (exit $rc${artifact:+, reproducer $artifact})"
		failed=1
		keep=1
		trap - EXIT
		grep -m 5 -E 'ERROR|SUMMARY|fuzz: ' "$log" >&2 || tail -n 20 "$log" >&2
	fi
	printf 'fuzz.sh: %-8s %6ss  %10s execs  cov %5s  ft %6s  %s\n' "$t" "$seconds" \
		"${execs:-?}" "${cov:-?}" "${ft:-?}" "$result"
done
if [ "$failed" = 1 ]; then
	echo "fuzz.sh: logs and reproducers kept in $work" >&2
	exit 1
fi
