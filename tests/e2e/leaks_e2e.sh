#!/usr/bin/env bash
# Leak check of the daemons over whole migrations: test_e2e (synthetic guests migrated by
# tlm-page-server -> tlm-uffd-server over loopback TCP, daemons ended with SIGTERM) runs
# with LeakSanitizer on and every process's report written to a file. Any leak report
# fails the test and is printed. lsan_probe (a planted leak) must be reported first, so a
# LeakSanitizer that cannot work here (e.g. ptrace denied) fails instead of passing.
#
# Registered only in --sanitize builds (scripts/test.sh --sanitize -L leaks).
#
#   leaks_e2e.sh TEST_E2E LSAN_PROBE
set -u
test_e2e=$1 probe=$2
dir=$(mktemp -d "${TMPDIR:-/tmp}/tlm-leaks.XXXXXX")
trap 'rm -rf "$dir"' EXIT
opts="verify_asan_link_order=0:detect_leaks=1:log_path=$dir"

ASAN_OPTIONS="$opts/probe" "$probe"
if ! grep -qs "Direct leak of 4096 byte" "$dir"/probe.*; then
	cat "$dir"/probe.* 2>/dev/null
	echo "leaks_e2e: LeakSanitizer did not report the planted leak: cannot check" >&2
	exit 1
fi

ASAN_OPTIONS="$opts/run" "$test_e2e"
rc=$?
reports=$(grep -ls "LeakSanitizer" "$dir"/run.* 2>/dev/null)
if [ -n "$reports" ]; then
	cat $reports
	echo "leaks_e2e: FAILED: $(echo "$reports" | wc -l) process(es) leaked (reports above)" >&2
	exit 1
fi
if [ "$rc" -ne 0 ]; then
	cat "$dir"/run.* 2>/dev/null
	echo "leaks_e2e: test_e2e failed (exit $rc)" >&2
	exit "$rc"
fi
echo "leaks_e2e: no leak reported by the daemons, guests or test over the migrations"
