#!/usr/bin/env bash
# Migrate a libvirt domain with tlm: libvirt moves the domain (device state, its
# configuration, the destination QEMU started by the destination's libvirtd), tlm moves
# the guest RAM (template pages mapped at the destination, the rest on demand and in the
# background). The domain needs its RAM as a shared file on tmpfs:
#   <memoryBacking><source type='file'/><access mode='shared'/></memoryBacking>
# with memory_backing_dir on tmpfs in the source host's /etc/libvirt/qemu.conf.
#
#   scripts/virsh-migrate-tlm.sh [options] DOMAIN DESTURI
#
#   DESTURI              the destination libvirtd, as for `virsh migrate`
#   --src-uri URI        the source libvirtd (default: $LIBVIRT_DEFAULT_URI, else virsh's)
#   --dst-addr ADDR      where the destination QEMU listens for QEMU's own stream
#                        (required; virsh migrate --listen-address)
#   --relay-addr ADDR    where the source QEMU's stream enters the relay that holds it
#                        until x-ignore-shared is on at the destination (default
#                        127.0.0.1; virsh migrate --migrateuri)
#   --migrate-port N     the port of both (default: a free one here)
#   --template PATH      the domain's RAM is a clone of this template (tlm-template build)
#   --dst-template PATH  the destination host's copy of it (default: the same path)
#   --dst-ctl PATH       an already running tlm-uffd-server's control socket (default: one
#   --dst-sock PATH      is started here, for a destination on this host) and its glue
#                        socket as the destination QEMU sees it
#   --src-addr ADDR      address tlm-page-server listens on, reachable from the
#                        destination (default 127.0.0.1)
#   --dst-host [USER@]HOST  the destination host, over ssh (as migrate-postcopy.sh
#                        --dst-host: one ControlMaster connection, BatchMode):
#                        tlm-uffd-server is started there, its control socket and the
#                        destination QEMU's QMP monitor are forwarded here
#   --dst-prefix TREE    tlm's source tree (with build/) on HOST (default: the same paths)
#   --dst-run-dir DIR    where the run's files go on HOST (default: its $TMPDIR or /tmp)
#   --ssh-config FILE    passed to ssh as -F (default: $TLM_SSH_CONFIG)
#   --timeout S          for the migration and for every page to arrive (default 300)
#   --log-level L        of the daemons (default warn)
#
# Runs on the source host, as root. Binaries: $TLM_BIN_DIR (default build/runtime) and
# $TLM_GLUE (build/qemu-glue/libtlm-glue.so; the same path must exist at the destination).
# Exit status: 0 migrated, every page present at the destination; 1 failed (the line
# says where; before libvirt's switch the source keeps running).
set -euo pipefail
# shellcheck source=lib/common.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"
# shellcheck source=lib/py.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib/py.sh"

case " $* " in *" -h "*|*" --help "*) tlm_usage; exit 0 ;; esac
[ "$(id -u)" = 0 ] || tlm_die "needs root (it reads the domain's RAM file, and virsh)"
command -v virsh >/dev/null || tlm_die "virsh is missing (apt-get install libvirt-clients)"
bin=${TLM_BIN_DIR:-$tlm_root/build/runtime}
glue=${TLM_GLUE:-$tlm_root/build/qemu-glue/libtlm-glue.so}
for f in "$bin/tlm-page-server" "$bin/tlm-uffd-server" "$glue"; do
	[ -e "$f" ] || tlm_die "$f is missing (scripts/setup.sh builds it)"
done
mkdir -p "$TLM_RUN_DIR"
exec env PYTHONPATH="$tlm_py_path${PYTHONPATH:+:$PYTHONPATH}" PYTHONDONTWRITEBYTECODE=1 \
	python3 -m tlm_qemu.virsh --bin-dir "$bin" --glue "$glue" --run-dir "$TLM_RUN_DIR" "$@"
