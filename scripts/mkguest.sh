#!/usr/bin/env bash
# Build tlm's test guest from Debian packages only: a Debian 6.1 kernel and a
# busybox-static initramfs whose /init runs the memload workload (qemu-glue/guest/).
#
#   scripts/mkguest.sh [--out DIR] [--flavour cloud|standard] [--new-kernel] [--no-probe]
#
#   --out DIR      build directory (default build/guest/)
#   --flavour F    kernel flavour: cloud (default, fewer drivers, boots faster) or standard
#   --new-kernel   look for a newer linux-image-6.1.0-* package even if one is cached
#   --no-probe     do not run the KVM/TCG probe (tlm_qemu.vm probe-accel)
#
# Produces DIR/vmlinuz, DIR/initrd.gz, DIR/memload, DIR/accel (probe result), and
# DIR/modules/: the kernel's virtio-balloon and virtio-blk drivers and what they need
# (modules in Debian's kernels), which /init loads when QEMU gives the guest a virtio
# device (free page reporting: tlm_qemu.vm start --free-page-reporting; disks: --disk).
# Idempotent: each step is skipped when its inputs (recorded in DIR/*.stamp) are unchanged;
# a cached kernel is reused without asking apt. Installs the Debian packages it needs.
set -euo pipefail
# shellcheck source=lib/common.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"

out=$TLM_GUEST_DIR
flavour=cloud
new_kernel=0
probe=1

# Why each package: QEMU to run the guest; busybox-static for the initramfs userland;
# cpio+gzip to pack it; gcc+libc6-dev to link memload statically; python3 for the
# QMP/VM helpers; qemu-utils (qemu-img) for template disks and clone overlays; apt/dpkg
# (always present) fetch and unpack the kernel.
packages=(qemu-system-x86 qemu-utils busybox-static cpio gzip gcc libc6-dev python3)

while [ $# -gt 0 ]; do
	case "$1" in
	--out) out=$2; shift ;;
	--flavour) flavour=$2; shift ;;
	--new-kernel) new_kernel=1 ;;
	--no-probe) probe=0 ;;
	-h|--help) tlm_usage; exit 0 ;;
	*) tlm_die "unknown option '$1' (try --help)" ;;
	esac
	shift
done
case "$flavour" in
cloud) pkg_re='^linux-image-6\.1\.0-[0-9]+-cloud-amd64$' ;;
standard) pkg_re='^linux-image-6\.1\.0-[0-9]+-amd64$' ;;
*) tlm_die "--flavour must be cloud or standard, not '$flavour'" ;;
esac

tlm_need_packages "${packages[@]}"
mkdir -p "$out"
out=$(cd "$out" && pwd)
exec 9>"$out/.lock"
flock 9		# concurrent callers (parallel tests) wait for one build
src=$tlm_root/qemu-glue/guest

# The newest linux-image-6.1.0-N-<flavour> that apt can install.
newest_kernel_pkg() {
	apt-cache pkgnames linux-image-6.1.0- | grep -E "$pkg_re" | sort -V | tail -n 1
}

# virtio-balloon, virtio-blk and their dependencies, in load order (modinfo depends= of
# each .ko).
guest_modules=(virtio_ring virtio virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci
	virtio_balloon virtio_blk)

have_modules() {
	local m

	for m in "${guest_modules[@]}"; do
		[ -s "$out/modules/$m.ko" ] || return 1
	done
	[ "$(cat "$out/modules/order" 2>/dev/null)" = "$(printf '%s\n' "${guest_modules[@]}")" ]
}

# The modules of the unpacked kernel package ROOT into DIR/modules (a .ko.xz/.zst would
# need decompressing: Debian 12's 6.1 kernels ship plain .ko).
copy_modules() {
	local root=$1 m ko

	rm -rf "$out/modules.new" && mkdir -p "$out/modules.new"
	for m in "${guest_modules[@]}"; do
		ko=$(find "$root/lib/modules" -name "$m.ko" | head -n 1)
		[ -n "$ko" ] || tlm_die "$pkg has no $m.ko (needed for virtio devices)"
		cp "$ko" "$out/modules.new/"
	done
	printf '%s\n' "${guest_modules[@]}" > "$out/modules.new/order"	# for /init
	rm -rf "$out/modules" && mv "$out/modules.new" "$out/modules"
}

# Download PKG, take its vmlinuz and the guest modules (DIR/kernel.stamp names it).
# Returns 1 (apt's reason printed) when the download fails.
fetch_kernel() {
	local pkg=$1 tmp vmlinuz

	tlm_log "fetching $pkg"
	tmp=$(mktemp -d "$out/kernel.XXXXXX")
	if ! (cd "$tmp" && apt-get download "$pkg" >/dev/null 2>"$tmp/apt.err"); then
		tlm_log "apt-get download $pkg failed: $(tail -n 1 "$tmp/apt.err")"
		rm -rf "$tmp"
		return 1
	fi
	dpkg-deb -x "$tmp"/*.deb "$tmp/root"
	vmlinuz=$(ls "$tmp"/root/boot/vmlinuz-* 2>/dev/null | head -n 1)
	[ -n "$vmlinuz" ] || tlm_die "$pkg has no boot/vmlinuz-*"
	copy_modules "$tmp/root"
	cp "$vmlinuz" "$out/vmlinuz.new" && mv "$out/vmlinuz.new" "$out/vmlinuz"
	printf 'package=%s\nflavour=%s\nrelease=%s\n' "$pkg" "$flavour" \
		"${vmlinuz##*/vmlinuz-}" > "$out/kernel.stamp"
	rm -rf "$tmp"
}

build_kernel() {
	local pkg

	# a cached kernel of this flavour is reused without asking apt (works offline)
	if [ "$new_kernel" = 0 ] && [ -s "$out/vmlinuz" ] && [ -s "$out/kernel.stamp" ] &&
	   grep -qx "flavour=$flavour" "$out/kernel.stamp"; then
		have_modules && return 0
		# cached before the guest carried modules: its own package once more; offline,
		# the guest works without them (no free page reporting)
		pkg=$(sed -n 's/^package=//p' "$out/kernel.stamp")
		[ -n "$pkg" ] && fetch_kernel "$pkg" && return 0
		tlm_log "warning: no virtio modules for the guest: no free page reporting, no disks"
		return 0
	fi
	pkg=$(newest_kernel_pkg)
	if [ -z "$pkg" ]; then
		tlm_log "no $flavour 6.1 kernel in the apt lists; running apt-get update"
		apt-get update -q >/dev/null || tlm_die "apt-get update failed"
		pkg=$(newest_kernel_pkg)
		[ -n "$pkg" ] || tlm_die "apt knows no package matching $pkg_re"
	fi
	if [ -s "$out/kernel.stamp" ] && grep -qx "package=$pkg" "$out/kernel.stamp" &&
	   [ -s "$out/vmlinuz" ] && have_modules; then
		return 0
	fi
	fetch_kernel "$pkg" || tlm_die "cannot fetch the guest kernel $pkg"
	rm -f "$out/accel"	# a new kernel: probe KVM again
}

# Rebuild TARGET when the digest of the listed inputs differs from TARGET.stamp.
stamp_of() {
	cat "$@" | sha256sum | cut -d' ' -f1
}

up_to_date() {
	local target=$1 digest=$2

	[ -s "$target" ] && [ -s "$target.stamp" ] && [ "$(cat "$target.stamp")" = "$digest" ]
}

build_memload() {
	local cflags="-O2 -static -Wall -Wextra -Wshadow -Wstrict-prototypes -Wmissing-prototypes -Werror"
	local digest

	digest=$(echo "$cflags $(gcc -dumpfullversion)" | cat - "$src/memload.c" | stamp_of)
	up_to_date "$out/memload" "$digest" && return 0
	tlm_log "compiling memload (static)"
	# shellcheck disable=SC2086
	gcc $cflags -o "$out/memload.new" "$src/memload.c" || tlm_die "memload does not compile"
	mv "$out/memload.new" "$out/memload"
	echo "$digest" > "$out/memload.stamp"
}

build_initrd() {
	local bb=/bin/busybox digest tmp mods=()

	have_modules && mods=("$out"/modules/*)
	digest=$(stamp_of "$bb" "$out/memload" "$src/init" "${mods[@]}")
	up_to_date "$out/initrd.gz" "$digest" && return 0
	tlm_log "packing initramfs"
	tmp=$(mktemp -d "$out/initrd.XXXXXX")
	mkdir -p "$tmp/bin" "$tmp/dev" "$tmp/proc" "$tmp/sys" "$tmp/tmp" "$tmp/lib/modules"
	[ ${#mods[@]} = 0 ] || cp "${mods[@]}" "$tmp/lib/modules/"
	cp "$bb" "$tmp/bin/busybox"
	ln -s busybox "$tmp/bin/sh"
	cp "$out/memload" "$tmp/bin/memload"
	cp "$src/init" "$tmp/init"
	mkdir "$tmp/modules"
	cp "$out"/modules/* "$tmp/modules/"
	chmod 755 "$tmp/init" "$tmp/bin/busybox" "$tmp/bin/memload"
	find "$tmp" -exec touch -h -d @0 {} +		# reproducible archive
	(cd "$tmp" && find . | LC_ALL=C sort | cpio -o -H newc --owner=0:0 --quiet) |
		gzip -9n > "$out/initrd.gz.new"
	mv "$out/initrd.gz.new" "$out/initrd.gz"
	echo "$digest" > "$out/initrd.gz.stamp"
	rm -rf "$tmp"
}

build_kernel
build_memload
build_initrd
accel="(not probed)"
if [ "$probe" = 1 ]; then
	accel=$(tlm_vm probe-accel --guest-dir "$out") || tlm_die "accelerator probe failed"
fi
echo "guest: kernel $(sed -n 's/^release=//p' "$out/kernel.stamp") ($out/vmlinuz)," \
	"initrd $out/initrd.gz ($(stat -c %s "$out/initrd.gz") bytes), accel $accel"
