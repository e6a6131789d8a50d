#!/usr/bin/env bash
# A libvirtd of the test's own, playing one host: run inside `unshare -m -u` (a private
# mount and UTS namespace). Its configuration, sockets, state and logs live under ROOT
# (bind-mounted over /etc/libvirt, /run, /var/lib/libvirt, /var/cache/libvirt,
# /var/log/libvirt), so it shares nothing with the system's libvirt or the other test
# host; hostname and host UUID differ per host (libvirt refuses to migrate a domain to
# the host it runs on). QEMU runs as root without libvirt's own namespaces, cgroups or
# seccomp: the test is about tlm's path, not libvirt's confinement.
#
#   unshare -m -u --propagation private tests/qemu/libvirtd_private.sh ROOT HOSTNAME UUID
set -euo pipefail
root=$1
mkdir -p "$root"/{etc,run,lib,cache,log,ram}
cat > "$root/etc/qemu.conf" <<CONF
user = "root"
group = "root"
dynamic_ownership = 0
security_driver = "none"
namespaces = [ ]
seccomp_sandbox = 0
cgroup_controllers = [ ]
stdio_handler = "file"
memory_backing_dir = "$root/ram"
CONF
cat > "$root/etc/libvirtd.conf" <<CONF
unix_sock_group = "root"
unix_sock_rw_perms = "0700"
auth_unix_rw = "none"
host_uuid = "$3"
log_outputs = "3:file:$root/log/libvirtd.log"
CONF
# libvirt's QEMU driver looks its default user up at start even when qemu.conf names
# another: a private passwd/group with it, when the system has none (no
# libvirt-daemon-system installed)
cp /etc/passwd "$root/passwd"
cp /etc/group "$root/group"
getent group libvirt-qemu >/dev/null || echo "libvirt-qemu:x:64055:" >> "$root/group"
getent passwd libvirt-qemu >/dev/null ||
	echo "libvirt-qemu:x:64055:64055::/var/lib/libvirt:/usr/sbin/nologin" >> "$root/passwd"
mount --bind "$root/passwd" /etc/passwd
mount --bind "$root/group" /etc/group
hostname "$2"
mount --bind "$root/etc" /etc/libvirt
mount --bind "$root/run" /run
mkdir -p /run/libvirt /var/lib/libvirt /var/cache/libvirt /var/log/libvirt
mount --bind "$root/lib" /var/lib/libvirt
mount --bind "$root/cache" /var/cache/libvirt
mount --bind "$root/log" /var/log/libvirt
exec /usr/sbin/libvirtd -f /etc/libvirt/libvirtd.conf
