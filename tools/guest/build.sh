#!/bin/bash
# build.sh builds the QEMU guest that runs the Linux kernel iSCSI initiator
# for Stave's end-to-end tests (tests/e2e/guest_test.go).
#
# Output: a directory holding
#   vmlinuz      Debian bookworm's kernel (linux-image-amd64)
#   initrd.gz    the whole root file system as a gzip'd newc cpio: a
#                debootstrap minbase with open-iscsi, multipath-tools,
#                sg3-utils, e2fsprogs, util-linux, kmod, iproute2, udev and
#                only the kernel modules the tests need; /init is ./init
#   cmdline      the kernel command line to boot it with
# and prints that directory's path as its only line on stdout.
#
# The result is cached outside the repository in
#   ${STAVE_GUEST_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/stave/guest}/<key>
# where <key> hashes this script, init and lib.sh: change one and the next
# run rebuilds; otherwise a run costs nothing. Downloaded .debs are kept in
# the cache's debs/ directory.
#
# Needs root, debootstrap, cpio, gzip, apt-get (it runs `apt-get update`
# if the host has no package lists) and kmod's depmod/modprobe on the host. The mirror
# is the first Debian URI of /etc/apt/sources.list*, or $STAVE_GUEST_MIRROR.
#
# Usage: tools/guest/build.sh [-f]     (-f: rebuild even if cached)
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cache=${STAVE_GUEST_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/stave/guest}
suite=bookworm
initiator_iqn=iqn.2026-11.dev.stave.test:guest

die() { echo "tools/guest/build.sh: $*" >&2; exit 1; }

force=0
[[ ${1:-} == -f ]] && force=1

key=$(cat "$here/build.sh" "$here/init" "$here/lib.sh" | sha256sum | cut -c1-16)
out=$cache/$key
cached() { [[ $force == 0 && -s $out/vmlinuz && -s $out/initrd.gz && -s $out/cmdline ]]; }
if cached; then
	touch "$out" # marks it as in use for the pruning below
	echo "$out"
	exit 0
fi

# One build at a time per cache; a concurrent run waits, then finds the result.
mkdir -p "$cache"
exec 9>"$cache/.lock"
flock 9
if cached; then
	echo "$out"
	exit 0
fi
rm -rf "$cache"/tmp.* "$out.new" # left by a killed run

[[ $(id -u) == 0 ]] || die "must run as root (debootstrap)"
for tool in flock debootstrap cpio gzip apt-get apt-cache dpkg-deb depmod modprobe; do
	command -v "$tool" >/dev/null || die "missing $tool (apt-get install debootstrap cpio kmod)"
done

mirror=${STAVE_GUEST_MIRROR:-}
if [[ -z $mirror ]]; then
	# One-line (deb URI suite ...) and deb822 (URIs: URI) sources alike.
	mirror=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources 2>/dev/null |
		grep -Eo '(https?|file)://[^ ]*/debian/?( |$)' | grep -v security | head -n1 | tr -d ' ' || true)
	mirror=${mirror:-http://deb.debian.org/debian}
fi

mkdir -p "$cache/debs"
work=$(mktemp -d "$cache/tmp.XXXXXX")
trap 'rm -rf "$work"' EXIT
root=$work/root
log=$work/build.log

# run CMD...: run quietly; on failure show the log's tail and stop.
run() {
	if ! "$@" >>"$log" 2>&1; then
		echo "tools/guest/build.sh: failed: $*" >&2
		tail -n 40 "$log" >&2
		exit 1
	fi
}

# 1. The user space.
packages=open-iscsi,multipath-tools,sg3-utils,e2fsprogs,util-linux,kmod,iproute2,udev,procps
run debootstrap --variant=minbase --include="$packages" --cache-dir="$cache/debs" \
	"$suite" "$root" "$mirror"

# 2. The kernel: the package linux-image-amd64 points at, unpacked (its
# postinst would build an initramfs we do not want).
kernel_pkg() { apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/ {print $2; exit}'; }
kpkg=$(kernel_pkg)
if [[ -z $kpkg ]]; then # no package lists yet (fresh machine)
	run apt-get update -qq
	kpkg=$(kernel_pkg)
fi
[[ -n $kpkg ]] || die "cannot resolve linux-image-amd64 from the host's apt lists"
(cd "$work" && run apt-get download "$kpkg")
kroot=$work/kernel
run dpkg-deb -x "$work"/"$kpkg"_*.deb "$kroot"
kver=$(ls "$kroot/lib/modules")
[[ -f $kroot/boot/vmlinuz-$kver ]] || die "no vmlinuz-$kver in $kpkg"
run depmod -b "$kroot" "$kver"

# 3. Only the modules the guest loads, with their dependencies.
modules="virtio_pci virtio_net virtio_blk virtio_rng qemu_fw_cfg af_packet
	crc32c_generic crc32c_intel crc32c libcrc32c
	scsi_transport_iscsi libiscsi libiscsi_tcp iscsi_tcp
	sd_mod sg scsi_dh_alua ext4
	dm_mod dm_multipath dm_round_robin dm_service_time dm_queue_length"
mdir=$root/lib/modules/$kver
mkdir -p "$mdir"
cp "$kroot/lib/modules/$kver"/modules.{order,builtin,builtin.modinfo} "$mdir"/
for m in $modules; do
	modprobe -d "$kroot" -S "$kver" --show-depends "$m" 2>>"$log" || true
done | awk '$1 == "insmod" {print $2}' | sort -u | while read -r ko; do
	rel=${ko#"$kroot"/lib/modules/"$kver"/}
	mkdir -p "$mdir/$(dirname "$rel")"
	cp "$ko" "$mdir/$rel"
done
run depmod -b "$root" "$kver"
for m in iscsi_tcp virtio_net ext4 qemu_fw_cfg; do
	modprobe -d "$root" -S "$kver" --show-depends "$m" >/dev/null 2>&1 || die "module $m missing from the guest"
done

# 4. Configuration.
install -m 0755 "$here/init" "$root/init"
install -d "$root/usr/lib/stave-guest"
install -m 0644 "$here/lib.sh" "$root/usr/lib/stave-guest/lib.sh"
echo "InitiatorName=$initiator_iqn" >"$root/etc/iscsi/initiatorname.iscsi"
echo stave-guest >"$root/etc/hostname"
conf=$root/etc/iscsi/iscsid.conf
# set KEY VALUE in iscsid.conf, whether commented out or not.
setconf() {
	sed -i -E "s|^#?[[:space:]]*$1[[:space:]]*=.*|$1 = $2|" "$conf"
	grep -q "^$1 = $2\$" "$conf" || echo "$1 = $2" >>"$conf"
}
setconf node.startup manual
setconf node.session.timeo.replacement_timeout 15
setconf node.conn\\[0\\].timeo.login_timeout 15
setconf node.conn\\[0\\].timeo.logout_timeout 15
setconf node.conn\\[0\\].timeo.noop_out_interval 5
setconf node.conn\\[0\\].timeo.noop_out_timeout 10
setconf node.session.initial_login_retry_max 2
setconf node.session.scan auto

# 5. Slim down and pack.
# Everything here is for package management, hardware naming or languages;
# a smaller initramfs unpacks faster under TCG.
rm -rf "$root"/usr/share/{doc,man,info,locale,i18n,zoneinfo,lintian,bash-completion,perl5,common-licenses} \
	"$root"/usr/lib/udev/hwdb.bin "$root"/usr/lib/udev/hwdb.d "$root"/usr/lib/x86_64-linux-gnu/gconv \
	"$root"/usr/lib/x86_64-linux-gnu/perl-base "$root"/usr/bin/perl* "$root"/usr/lib/apt \
	"$root"/var/lib/dpkg/info "$root"/var/cache/* "$root"/var/lib/apt/lists/* "$root"/var/log/* "$root"/boot
rm -rf "${root:?}"/dev/*
mknod -m 600 "$root/dev/console" c 5 1
mknod -m 666 "$root/dev/null" c 1 3
mkdir -p "$out.new"
cp "$kroot/boot/vmlinuz-$kver" "$out.new/vmlinuz"
(cd "$root" && find . -xdev -print0 | cpio --null -o -H newc --quiet | gzip -1) >"$out.new/initrd.gz"
echo "console=ttyS0 panic=-1 net.ifnames=0 mitigations=off quiet loglevel=4 rdinit=/init" >"$out.new/cmdline"
rm -rf "$out"
mv "$out.new" "$out"
# Forget images of other versions of these scripts unused for a week.
find "$cache" -mindepth 1 -maxdepth 1 -type d -regextype egrep -regex '.*/[0-9a-f]{16}' -mtime +7 \
	-exec rm -rf {} + 2>/dev/null || true
echo "$out"
