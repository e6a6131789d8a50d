# shellcheck shell=bash
# Shared part of the QEMU tests (sourced). Skips (exit 77, reason on stdout) when QEMU is
# missing or the guest cannot be built; gives each test its own run directory and stops
# every VM left in it on exit.
#
# TLM_REQUIRE (comma-separated kinds, e.g. "uffd,qemu"): if it names qemu, a test that
# would skip fails instead (exit 1, "FAIL NAME: required qemu unavailable: REASON" on
# stderr), so that CI, where QEMU must be there, never counts a missing QEMU as a pass.
set -euo pipefail

root=${TLM_SOURCE_DIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}
name=$(basename "$0" .sh)

skip() {
	local req=",${TLM_REQUIRE:-},"

	if [[ "${req//[[:space:]]/}" == *,qemu,* ]]; then
		echo "FAIL $name: required qemu unavailable: $*" >&2
		exit 1
	fi
	echo "SKIP $name: $*"
	exit 77
}

fail() {
	echo "FAIL $name: $*" >&2
	exit 1
}

step() {
	echo "== $name: $*"
}

# shellcheck source=../../scripts/lib/py.sh
. "$root/scripts/lib/py.sh"

vm() {
	tlm_vm "$@"
}

qmp() {
	tlm_qmp "$@"
}

command -v qemu-system-x86_64 >/dev/null || skip "qemu-system-x86_64 is not installed"
command -v python3 >/dev/null || skip "python3 is not installed"
[ -w /dev/shm ] || skip "/dev/shm is not writable (guest RAM lives on tmpfs)"
if ! guest=$("$root/scripts/mkguest.sh" 2>&1); then
	skip "the guest cannot be built: $(echo "$guest" | tail -n 1)"
fi
echo "$guest"

TLM_RUN_DIR=$(mktemp -d /dev/shm/tlm-test.XXXXXX)
TMPDIR=$TLM_RUN_DIR/tmp       # migrate-postcopy.sh's work dirs: daemons left after a failure
mkdir "$TMPDIR"
export TLM_RUN_DIR TMPDIR
test_cleanup() {
	local rc=$? link

	pkill -f "$TMPDIR/tlm-migrate" 2>/dev/null || true

	for link in "$TLM_RUN_DIR"/*; do
		[ -L "$link" ] && vm stop "$link" >/dev/null 2>&1
	done
	for d in "$TLM_RUN_DIR"/*/; do	# destinations that never became current
		[ -e "$d/vm.json" ] && vm stop "$d" >/dev/null 2>&1
	done
	rm -rf "$TLM_RUN_DIR"
	exit "$rc"
}
trap test_cleanup EXIT

# Does this kernel offer userfaultfd WP_ASYNC (Linux 6.7+), which the live phase's
# PAGEMAP_SCAN tracking needs? Prints why not and returns 1 when it does not.
uffd_wp_async() {
	python3 - <<'PY'
import ctypes, errno, fcntl, os, struct, sys
libc = ctypes.CDLL(None, use_errno=True)
fd = libc.syscall(323, os.O_CLOEXEC | os.O_NONBLOCK)     # userfaultfd, x86_64
if fd < 0:
    sys.exit(print(f"userfaultfd: {os.strerror(ctypes.get_errno())}"))
api = bytearray(struct.pack("QQQ", 0xAA, 0, 0))
try:
    fcntl.ioctl(fd, 0xc018aa3f, api)                      # UFFDIO_API, features = 0
except OSError as e:
    sys.exit(print(f"UFFDIO_API: {e.strerror}"))
if not struct.unpack("QQQ", api)[1] & (1 << 15):          # UFFD_FEATURE_WP_ASYNC
    sys.exit(print(f"no userfaultfd WP_ASYNC in kernel {os.uname().release} (Linux 6.7+)"))
PY
}

# Fields of "SUM <hash> <pages> <rewrites> bad=<n>".
sum_hash() { echo "$1" | cut -d' ' -f2; }
sum_rewrites() { echo "$1" | cut -d' ' -f4; }
sum_bad() { echo "$1" | cut -d' ' -f5; }

# VM's RAM is the glue's private mapping and the VM stays ordinary: its RAM file is the
# glue's stub naming its QEMU (which any QEMU mapping the file refuses), and x-ignore-shared
# is off, so a later stock migration or savevm takes the RAM from the process.
ordinary_vm() {
	local ram pid

	ram=$(vm info "$1" --get ram_file) pid=$(vm info "$1" --get pid)
	head -n 2 "$ram" | grep -qx "pid $pid" || fail "$1: $ram is not a RAM stub naming $pid"
	[ "$(stat -c %s "$ram")" = 4096 ] || fail "$1: $ram is $(stat -c %s "$ram") bytes"
	qmp "$(vm info "$1" --get qmp)" query-migrate-capabilities | python3 -c '
import json, sys
caps = {c["capability"]: c["state"] for c in json.load(sys.stdin)}
sys.exit(caps["x-ignore-shared"])' || fail "$1: x-ignore-shared is still on"
}

# VM's memory after a migration is the one BEFORE (a SUM reply): `vm sum-check`, the one
# comparison of the project (same hash and pages, no bad page, rewrites went on).
same_memory() {
	local after

	after=$(vm cmd "$1" sum) || fail "$1: no checksum from the guest"
	echo "after: $after"
	vm sum-check "$2" "$after" || fail "$1: memory differs after the migration"
}

# An sshd of the test's own in the destination namespace (after tlm_link_up), host
# "dsthost" for ssh: DSTSSH holds its host key, config and log, SRCSSH the client's key,
# known_hosts and config (exported as TLM_SSH_CONFIG, which the scripts pass to ssh as
# -F). Sets sshd_pid (the caller's cleanup kills it); waits until ssh from the source
# namespace gets in.
dst_sshd() {
	local d=$1 s=$2 sshd err deadline

	sshd=$(command -v sshd || echo /usr/sbin/sshd)
	[ -x "$sshd" ] || skip "sshd is not installed (scripts/setup.sh installs openssh-server)"
	ssh-keygen -q -t ed25519 -N '' -C tlm-test-host -f "$d/host_key"
	ssh-keygen -q -t ed25519 -N '' -C tlm-test-user -f "$s/id"
	cp "$s/id.pub" "$d/authorized_keys"
	echo "dsthost $(cut -d' ' -f1,2 "$d/host_key.pub")" > "$s/known_hosts"
	cat > "$d/sshd_config" <<CFG
ListenAddress $TLM_DST_ADDR
Port 22
HostKey $d/host_key
AuthorizedKeysFile $d/authorized_keys
PidFile $d/sshd.pid
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
AllowStreamLocalForwarding yes
CFG
	cat > "$s/config" <<CFG
Host dsthost
  HostName $TLM_DST_ADDR
  User $(id -un)
  IdentityFile $s/id
  IdentitiesOnly yes
  UserKnownHostsFile $s/known_hosts
  HostKeyAlias dsthost
  StrictHostKeyChecking yes
CFG
	export TLM_SSH_CONFIG=$s/config
	mkdir -p /run/sshd          # sshd's privilege separation directory (the package's too)
	err=$("$sshd" -t -f "$d/sshd_config" 2>&1) || skip "sshd refuses its config: $err"
	ip netns exec "$TLM_DST_NS" "$sshd" -D -e -f "$d/sshd_config" 2> "$d/sshd.log" &
	sshd_pid=$!
	deadline=$((SECONDS + 20))
	until ip netns exec "$TLM_SRC_NS" ssh -F "$TLM_SSH_CONFIG" -o BatchMode=yes dsthost \
		true 2>/dev/null; do
		kill -0 "$sshd_pid" 2>/dev/null || fail "sshd exited: $(tail -n 2 "$d/sshd.log")"
		[ $SECONDS -lt $deadline ] ||
			fail "no ssh to dsthost in 20 s: $(tail -n 2 "$d/sshd.log")"
		sleep 0.1
	done
}
