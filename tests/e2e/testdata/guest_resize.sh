# guest_resize.sh: online grow through the Linux initiator, run inside the
# test guest (tools/guest) by guest_resize_test.go (TestGuestResize). The
# host prepends variable assignments:
#   PORTAL       host:port of the target as the guest sees it
#   CTL_PORT     port of the test's control service on 10.0.2.2
#   IQN          the volume's target
#   SIZE_BEFORE  its size in bytes at login
#   SIZE_AFTER   its size once the host has run `stave volume resize`
# Every check prints a STAVE-STEP marker (lib.sh); the host knows the list
# (guestResizeSteps).
. /usr/lib/stave-guest/lib.sh

# host CMD: ask the test on the host to act (guest_control_test.go).
host() {
	bash -c 'exec 3<>"/dev/tcp/10.0.2.2/$1" && echo "$2" >&3 && read -r reply <&3 && echo "host: $reply" && [ "$reply" = ok ]' host "$CTL_PORT" "$1"
}

# disk: wait for the volume's LUN 0 and print its /dev node.
disk() {
	_link="/dev/disk/by-path/ip-$PORTAL-iscsi-$IQN-lun-0"
	_i=0
	while [ ! -b "$_link" ] && [ $_i -lt 200 ]; do
		sleep 0.1
		_i=$((_i + 1))
	done
	udevadm settle --timeout=10
	[ -b "$_link" ] || {
		echo "no $_link" >&2
		ls -l /dev/disk/by-path >&2
		return 1
	}
	readlink -f "$_link"
}

# size_is DEV BYTES: the kernel's idea of the disk's size, polled for 10 s
# (a rescan updates it asynchronously).
size_is() {
	_i=0
	while [ $_i -lt 100 ]; do
		_got=$(blockdev --getsize64 "$1")
		[ "$_got" = "$2" ] && { echo "size $_got"; return 0; }
		sleep 0.1
		_i=$((_i + 1))
	done
	echo "size: got $_got want $2"
	return 1
}

# fs_bytes_at_least MNT BYTES: df reports a file system of at least BYTES.
fs_bytes_at_least() {
	df -B1 "$1"
	_sz=$(df -B1 --output=size "$1" | tail -1 | tr -d ' ')
	echo "file system size $_sz, want at least $2"
	[ "$_sz" -ge "$2" ]
}

step resize-discovery iscsiadm -m discovery -t sendtargets -p "$PORTAL"
step resize-login iscsiadm -m node -T "$IQN" -p "$PORTAL" --login
dev=$(disk)
value resize-dev "$dev"
step resize-size-before size_is "$dev" "$SIZE_BEFORE"
step resize-mkfs mkfs.ext4 -q -F "$dev"
mkdir -p /mnt/r
step resize-mount mount -t ext4 "$dev" /mnt/r
head -c 8388608 /dev/urandom >/mnt/r/file
sync
before=$(sha256sum </mnt/r/file | cut -d' ' -f1)
value resize-sha-before "$before"
step resize-df-before df -B1 /mnt/r
step resize-host host resize
# The LU raised CAPACITY DATA HAS CHANGED; the kernel logs it but waits
# for a rescan to re-read the capacity.
step resize-rescan iscsiadm -m session -R
step resize-size-after size_is "$dev" "$SIZE_AFTER"
step resize-resize2fs resize2fs "$dev"
# ext4 keeps some space for its metadata: 90% of the device is plenty.
step resize-df-after fs_bytes_at_least /mnt/r $((SIZE_AFTER / 10 * 9))
step resize-file-intact sh -c 'test "$(sha256sum </mnt/r/file | cut -d" " -f1)" = "$0"' "$before"
step resize-write-new-space sh -c 'head -c 67108864 /dev/urandom >/mnt/r/big && sync'
step resize-umount umount /mnt/r
step resize-fsck fsck.ext4 -fn "$dev"
step resize-logout iscsiadm -m node -T "$IQN" -p "$PORTAL" --logout
step no-session-at-end sh -c '! iscsiadm -m session'
