#!/usr/bin/env bash
# Fault-injection campaign on synthetic guests: builds tlm if needed, then runs
# tests/faults/test_faults (seeded proxy faults between the daemons, kill -9 of either
# daemon, a stalled link, an outage past --outage-limit then `resume`; and runs through
# the page server's live phase, where the source guest keeps writing under dirty tracking
# until its stop while the page server is killed and restarted, the link is cut, or the
# uffd server is killed and restarted), and prints its summary: runs by kind, faults
# injected, live-phase writes and re-reads, migrations completed, pages compared,
# mismatches (must be 0). Live runs draw the page server's policy (post, hybrid, auto), so
# the live class map, pre-sent DATA and the fix map go through the same faults.
#
#   scripts/faults.sh [--runs N] [--seed S] [--keep] [--build-dir DIR]
#
# The same seed replays the same guests, kinds of run and proxy plans. --keep keeps the
# logs (their directory is printed). Exit status 0 only if every run completed with zero
# differing pages. Needs root and userfaultfd (else it says SKIP and exits 77).
set -euo pipefail
# shellcheck source=lib/common.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"

build_dir="$tlm_root/build"
args=()
while [ $# -gt 0 ]; do
	case "$1" in
	--runs|--seed) [ $# -ge 2 ] || tlm_die "$1 needs a value"
		[[ "$2" =~ ^[0-9]+$ ]] || tlm_die "$1 '$2': expected a number"
		args+=("$1" "$2"); shift ;;
	--keep) args+=(--keep) ;;
	--build-dir) [ $# -ge 2 ] || tlm_die "--build-dir needs a value"; build_dir=$2; shift ;;
	-h|--help) tlm_usage; exit 0 ;;
	*) tlm_die "unknown option '$1' (try --help)" ;;
	esac
	shift
done

"$tlm_root/scripts/setup.sh" --build-dir "$build_dir" >/dev/null
export TLM_BIN_DIR="$build_dir/runtime" TLM_TEST_BIN_DIR="$build_dir/tests"
export TLM_GLUE="$build_dir/qemu-glue/libtlm-glue.so"
exec "$build_dir/tests/faults/test_faults" ${args[@]+"${args[@]}"}
