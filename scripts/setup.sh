#!/usr/bin/env bash
# Install tlm's build dependencies (Debian 12 packages only) and build it.
#
#   scripts/setup.sh [--build-dir DIR] [--sanitize] [--werror] [--debug] [--no-build]
#                    [--install [PREFIX]]
#
# Idempotent: installs only what is missing (apt-get update only then). Needs root for the
# install step; when not root and something is missing it prints the command to run.
# --install: then `cmake --install` into PREFIX (default /usr/local): the daemons, tlmctl,
# tlm-template, libtlm-glue.so, the docs and the systemd units of both daemons (reloaded
# when systemd runs; enabling them is left to the operator, see README "Services").
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build_dir="$here/build"
build_type=RelWithDebInfo
cmake_opts=()
do_build=1
install_prefix=

# Why each package: compiler/build tools; liburing (io_uring, probed by the daemons);
# libxxhash (XXH3 page hashes); libcmocka (tests); libssl (HMAC-SHA256 authentication,
# TLS 1.3 of --tls psk); libjansson (tests read the daemons' stats JSON with a real
# parser); openssh-client, openssh-server and rsync (--dst-host: the destination over ssh,
# template-push.sh; the two-host test runs an sshd of its own in the destination
# namespace, never the system's); libvirt-daemon, its QEMU driver and libvirt-clients
# (virsh-migrate-tlm.sh; the libvirt test runs two libvirtd of its own in private mount
# namespaces, never the system's).
packages=(gcc make cmake ninja-build pkg-config liburing-dev libxxhash-dev libcmocka-dev
	  libssl-dev libjansson-dev openssh-client openssh-server rsync
	  libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients)

while [ $# -gt 0 ]; do
	case "$1" in
	--build-dir) build_dir=$2; shift ;;
	--sanitize) cmake_opts+=(-DTLM_SANITIZE=ON) ;;
	--werror) cmake_opts+=(-DTLM_WERROR=ON) ;;
	--debug) build_type=Debug ;;
	--no-build) do_build=0 ;;
	--install)
		install_prefix=/usr/local
		if [ $# -gt 1 ] && [[ "$2" != -* ]]; then install_prefix=$2; shift; fi ;;
	-h|--help) sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
	*) echo "setup.sh: unknown option '$1' (try --help)" >&2; exit 2 ;;
	esac
	shift
done

missing=()
for p in "${packages[@]}"; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" ||
		missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
	if [ "$(id -u)" -ne 0 ]; then
		echo "setup.sh: missing packages: ${missing[*]}" >&2
		echo "setup.sh: run as root: apt-get update && apt-get install -y ${missing[*]}" >&2
		exit 1
	fi
	echo "setup.sh: installing ${missing[*]}"
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -q >/dev/null
	apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
fi

[ "$do_build" = 1 ] || exit 0
cmake -S "$here" -B "$build_dir" -G Ninja -DCMAKE_BUILD_TYPE="$build_type" \
	${cmake_opts[@]+"${cmake_opts[@]}"} >/dev/null
ninja -C "$build_dir"
[ -n "$install_prefix" ] || exit 0
cmake --install "$build_dir" --prefix "$install_prefix"
if [ -d /run/systemd/system ]; then
	systemctl daemon-reload
	echo "setup.sh: units installed; enable with: systemctl enable --now tlm-page-server" \
		"(source host) / tlm-uffd-server (destination host)"
else
	echo "setup.sh: systemd is not running here: units installed, not loaded"
fi
