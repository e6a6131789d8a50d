#!/usr/bin/env bash
# `cmake --install` into a scratch prefix: the daemons, tools, glue, docs and both systemd
# units land where they should; the units' ExecStart names the installed binaries
# (systemd-analyze verify, which also checks the syntax, when the machine has systemd);
# and each unit's command line, with its default options, starts its daemon, which
# answers `tlmctl stats` and exits 0 on SIGTERM as systemd stops it. Only /run and the
# key file are moved under the scratch directory (root-owned paths this test must not
# touch), and the page server's port is made 0 (7070 may be taken).
#   install_units.sh BUILD_DIR
set -euo pipefail
build=${1:?usage: install_units.sh BUILD_DIR}
tmp=$(mktemp -d /tmp/tlm-install.XXXXXX)
pids=()
cleanup() {
	local p
	for p in ${pids[@]+"${pids[@]}"}; do kill -KILL "$p" 2>/dev/null || true; done
	rm -rf "$tmp"
}
trap cleanup EXIT
fail() { echo "FAIL install_units: $*" >&2; exit 1; }

prefix=$tmp/prefix
cmake --install "$build" --prefix "$prefix" > "$tmp/install.log" || fail "cmake --install failed"
for f in bin/tlm-page-server bin/tlm-uffd-server bin/tlm-template bin/tlmctl \
	 lib/libtlm-glue.so lib/systemd/system/tlm-page-server.service \
	 lib/systemd/system/tlm-uffd-server.service share/doc/tlm/README.md; do
	[ -e "$prefix/$f" ] || fail "$f was not installed"
done
units=$prefix/lib/systemd/system
if command -v systemd-analyze >/dev/null; then
	systemd-analyze verify "$units"/*.service || fail "systemd-analyze verify refused a unit"
	echo "systemd-analyze verify: both units accepted"
else
	echo "note: no systemd-analyze on this machine: the units' syntax is not verified"
fi

(umask 077; head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$tmp/key")
ctl_of() { sed -n 's/.*--ctl \([^ ]*\).*/\1/p' <<< "$1"; }
# UNIT: run its ExecStart with its Environment= default, as systemd would (unbraced $VAR
# splits at whitespace), then check it and stop it.
run_unit() {
	local unit=$units/$1.service exec env var val args ctl n rc=0

	exec=$(sed -n 's/^ExecStart=//p' "$unit")
	env=$(sed -n 's/^Environment="\([^=]*\)=\(.*\)"$/\1 \2/p' "$unit")
	var=${env%% *} val=${env#* }
	[[ "$exec" == "$prefix/bin/$1 "* ]] || fail "$1: ExecStart does not run $prefix/bin/$1: $exec"
	exec=${exec//\/run\//$tmp/run/}
	val=${val//\/etc\/tlm\/key/$tmp/key}
	val=${val//0.0.0.0:7070/127.0.0.1:0}
	read -ra args <<< "${exec//\$$var/$val}"
	ctl=$(ctl_of "${args[*]}")
	mkdir -p "$(dirname "$ctl")"
	"${args[@]}" > "$tmp/$1.out" 2> "$tmp/$1.err" &
	pids+=($!)
	for n in $(seq 200); do
		[ -S "$ctl" ] || ! kill -0 "${pids[-1]}" 2>/dev/null && break
		sleep 0.05
	done
	[ -S "$ctl" ] || fail "$1: no control socket $ctl: $(tail -n 3 "$tmp/$1.err")"
	"$prefix/bin/tlmctl" -s "$ctl" stats | grep -q '"regions"' ||
		fail "$1: tlmctl stats gave no regions list"
	kill -TERM "${pids[-1]}"
	wait "${pids[-1]}" || rc=$?
	[ "$rc" = 0 ] || fail "$1: exit $rc after SIGTERM: $(tail -n 3 "$tmp/$1.err")"
	echo "$1: started from its unit's command line, answered stats, stopped cleanly"
}
run_unit tlm-page-server
run_unit tlm-uffd-server
echo "PASS install_units"
