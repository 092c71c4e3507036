# guest-initiator.sh: the Linux initiator scenario, run inside the test
# guest (tools/guest) by guest_test.go. The host prepends variable
# assignments:
#   PORTAL          host:port of the target as the guest sees it
#   SIZE            volume size in bytes
#   IQN_PLAIN       a volume open to any initiator, no CHAP
#   IQN_CHAP        one-way CHAP (CHAP_USER / CHAP_SECRET)
#   IQN_MUTUAL      mutual CHAP (CHAP_USER / CHAP_SECRET, target MUTUAL_USER / MUTUAL_SECRET)
#   IQN_DENIED      ACL that does not list this guest's initiator name
#   PATTERN_MIB     MiB offset of the 16 MiB O_DIRECT pattern on IQN_PLAIN
#   DISC_PORTAL     (optional) a second target that requires discovery CHAP
#   DISC_USER, DISC_SECRET, DISC_IQN
#   MP_IQN          (optional) a target served on two portals, MP_PORTAL1 and
#                   MP_PORTAL2: dm-multipath
#   CTL_PORT        (optional) port of the test's control service on 10.0.2.2
#                   (restart the target under a session)
#   NODE_NEW=1      create node records by hand (tgt advertises its listen
#                   address, which the guest cannot reach)
#   LUN             the disk's LUN (0 for stave; tgt puts its controller there)
# Every check prints a STAVE-STEP marker (lib.sh); the host knows the list.
. /usr/lib/stave-guest/lib.sh

AUTH_FAILED=24  # ISCSI_ERR_LOGIN_AUTH_FAILED: the target refused us
FATAL_LOGIN=19  # ISCSI_ERR_FATAL_LOGIN: iscsid gave up, e.g. the target failed mutual CHAP
LUN=${LUN:-0}

value initiator "$(sed -n 's/^InitiatorName=//p' /etc/iscsi/initiatorname.iscsi)"

# node IQN OP...: iscsiadm on IQN's node record at PORTAL.
node() {
	_iqn=$1
	shift
	iscsiadm -m node -T "$_iqn" -p "$PORTAL" "$@"
}

# set_auth IQN METHOD [USER SECRET [USER_IN SECRET_IN]]
set_auth() {
	node "$1" -o update -n node.session.auth.authmethod -v "$2" &&
		node "$1" -o update -n node.session.auth.username -v "${3:-}" &&
		node "$1" -o update -n node.session.auth.password -v "${4:-}" &&
		node "$1" -o update -n node.session.auth.username_in -v "${5:-}" &&
		node "$1" -o update -n node.session.auth.password_in -v "${6:-}"
}

# disk IQN: wait for IQN's LUN 0 and print its /dev node.
disk() {
	_link="/dev/disk/by-path/ip-$PORTAL-iscsi-$1-lun-$LUN"
	_i=0
	while [ ! -b "$_link" ] && [ $_i -lt 200 ]; do
		sleep 0.1
		_i=$((_i + 1))
	done
	udevadm settle --timeout=10
	[ -b "$_link" ] || {
		echo "no $_link" >&2
		ls -l /dev/disk/by-path >&2
		iscsiadm -m session -P 3 >&2
		return 1
	}
	readlink -f "$_link"
}

# size_is DEV: DEV has SIZE bytes.
size_is() {
	_got=$(blockdev --getsize64 "$1")
	echo "size $_got want $SIZE"
	[ "$_got" = "$SIZE" ]
}

# roundtrip DEV MIB: write 1 MiB of random data with O_DIRECT at MIB and read it back.
roundtrip() {
	head -c 1048576 /dev/urandom >/tmp/rt.in &&
		dd if=/tmp/rt.in of="$1" bs=1M seek="$2" count=1 oflag=direct conv=notrunc,fsync status=none &&
		dd if="$1" of=/tmp/rt.out bs=1M skip="$2" count=1 iflag=direct status=none &&
		cmp /tmp/rt.in /tmp/rt.out
}

# reread_pattern DEV: read the 16 MiB pattern back with O_DIRECT and compare.
reread_pattern() {
	rm -f /tmp/readback
	dd if="$1" of=/tmp/readback bs=1M skip="$PATTERN_MIB" count=16 iflag=direct status=none &&
		cmp /tmp/pattern /tmp/readback
}

# fs_files MNT: write files, remount cold, verify checksums.
fs_files() {
	_dev=$1
	_mnt=$2
	mkdir -p "$_mnt/dir" &&
		for i in 1 2 3 4 5 6 7 8; do head -c $((i * 131072 + 17)) /dev/urandom >"$_mnt/dir/f$i" || return 1; done &&
		head -c 8388608 /dev/urandom >"$_mnt/big" &&
		(cd "$_mnt" && sha256sum big dir/*) >/tmp/sums &&
		sync &&
		umount "$_mnt" &&
		blockdev --flushbufs "$_dev" &&
		echo 3 >/proc/sys/vm/drop_caches &&
		mount -t ext4 "$_dev" "$_mnt" &&
		(cd "$_mnt" && sha256sum -c --quiet /tmp/sums)
}

# ---- discovery -------------------------------------------------------------
step discovery sh -c 'iscsiadm -m discovery -t sendtargets -p "$0" >/tmp/disc; rc=$?; cat /tmp/disc; exit $rc' "$PORTAL"
step discovery-lists-plain grep -q "^$PORTAL,[0-9]* $IQN_PLAIN\$" /tmp/disc
step discovery-lists-chap grep -q "^$PORTAL,[0-9]* $IQN_CHAP\$" /tmp/disc
step discovery-lists-mutual grep -q "^$PORTAL,[0-9]* $IQN_MUTUAL\$" /tmp/disc
step discovery-hides-denied sh -c '! grep -q " $0\$" /tmp/disc' "$IQN_DENIED"

if [ "${NODE_NEW:-0}" = 1 ]; then
	for iqn in "$IQN_PLAIN" "$IQN_CHAP" "$IQN_MUTUAL"; do node "$iqn" -o new >/dev/null; done
fi

# ---- plain volume: O_DIRECT pattern, ext4, fsck ----------------------------
step login-plain node "$IQN_PLAIN" --login
dev=$(disk "$IQN_PLAIN")
step disk-plain test -b "$dev"
value dev-plain "$dev"
step size-plain size_is "$dev"
step sg-inq sg_inq "$dev"
step sg-readcap sg_readcap -l "$dev"
step sg-vpd-di sg_vpd -p di "$dev"
head -c 16777216 /dev/urandom >/tmp/pattern
value pattern-sha256 "$(sha256sum </tmp/pattern | cut -d' ' -f1)"
step pattern-write dd if=/tmp/pattern of="$dev" bs=1M seek="$PATTERN_MIB" count=16 oflag=direct conv=notrunc,fsync status=none
step pattern-read dd if="$dev" of=/tmp/readback bs=1M skip="$PATTERN_MIB" count=16 iflag=direct status=none
step pattern-cmp cmp /tmp/pattern /tmp/readback
# The file system ends below the pattern; mkfs discards (UNMAP) its range.
step mkfs mkfs.ext4 -q -F -b 4096 "$dev" $((PATTERN_MIB * 1024 / 4))
mkdir -p /mnt/plain
step mount mount -t ext4 "$dev" /mnt/plain
step fs-files fs_files "$dev" /mnt/plain
step umount umount /mnt/plain
step fsck fsck.ext4 -fn "$dev"
step pattern-after-fs reread_pattern "$dev"
step logout-plain node "$IQN_PLAIN" --logout

# ---- CRC32C header and data digests ------------------------------------------
set_digest() {
	node "$IQN_PLAIN" -o update -n 'node.conn[0].iscsi.HeaderDigest' -v "$1" &&
		node "$IQN_PLAIN" -o update -n 'node.conn[0].iscsi.DataDigest' -v "$1"
}
set_digest CRC32C
step login-digest node "$IQN_PLAIN" --login
dev=$(disk "$IQN_PLAIN")
step digest-negotiated sh -c 'iscsiadm -m session -P 2 | tee /tmp/sess | grep -i digest; grep -q "HeaderDigest: CRC32C" /tmp/sess && grep -q "DataDigest: CRC32C" /tmp/sess'
io_digest() { reread_pattern "$1" && roundtrip "$1" 62; }
step io-digest io_digest "$dev"
step logout-digest node "$IQN_PLAIN" --logout
set_digest None
step no-session-left sh -c '! iscsiadm -m session'

# ---- one-way CHAP ------------------------------------------------------------
set_auth "$IQN_CHAP" None
expect_rc chap-none-refused $AUTH_FAILED node "$IQN_CHAP" --login
set_auth "$IQN_CHAP" CHAP "$CHAP_USER" "wrong-$CHAP_SECRET"
expect_rc chap-wrong-refused $AUTH_FAILED node "$IQN_CHAP" --login
set_auth "$IQN_CHAP" CHAP "$CHAP_USER" "$CHAP_SECRET"
step login-chap node "$IQN_CHAP" --login
dev=$(disk "$IQN_CHAP")
step io-chap roundtrip "$dev" 3

# ---- thin provisioning and persistent reservations (on the CHAP volume) ------
discard_max() { cat "/sys/block/$(basename "$1")/queue/discard_max_bytes"; }
value discard-max-bytes "$(discard_max "$dev")"
value max-sectors-kb "$(cat "/sys/block/$(basename "$dev")/queue/max_sectors_kb")"
step unmap-supported sh -c 'test "$(cat "/sys/block/$(basename "$0")/queue/discard_max_bytes")" -gt 0' "$dev"
step unmap blkdiscard -o 3145728 -l 1048576 "$dev"
step unmap-reads-zero sh -c 'dd if="$0" of=/tmp/um.out bs=1M skip=3 count=1 iflag=direct status=none && cmp -n 1048576 /tmp/um.out /dev/zero' "$dev"
# grep_out NAME PATTERN CMD...: run CMD, show its output, and require PATTERN in it.
grep_out() {
	_pat=$1
	shift
	"$@" >/tmp/out 2>&1
	_rc=$?
	cat /tmp/out
	[ $_rc -eq 0 ] && grep -qi -- "$_pat" /tmp/out
}
step pr-register sg_persist --out --register --param-sark=0xabc "$dev"
step pr-keys grep_out 0xabc sg_persist --in --read-keys "$dev"
step pr-reserve sg_persist --out --reserve --param-rk=0xabc --prout-type=1 "$dev"
step pr-read grep_out "Key=0xabc" sg_persist --in --read-reservation "$dev"
step pr-type grep_out "Write Exclusive" sg_persist --in --read-reservation "$dev"
step pr-holder-writes roundtrip "$dev" 4
step pr-release sg_persist --out --release --param-rk=0xabc --prout-type=1 "$dev"
step pr-unregister sg_persist --out --register --param-rk=0xabc --param-sark=0 "$dev"
step pr-no-keys grep_out "no registered reservation keys" sg_persist --in --read-keys "$dev"
step logout-chap node "$IQN_CHAP" --logout

# ---- mutual CHAP -------------------------------------------------------------
set_auth "$IQN_MUTUAL" CHAP "$CHAP_USER" "$CHAP_SECRET" "$MUTUAL_USER" "wrong-$MUTUAL_SECRET"
expect_rc mutual-wrong-target-secret $FATAL_LOGIN node "$IQN_MUTUAL" --login
set_auth "$IQN_MUTUAL" CHAP "$CHAP_USER" "wrong-$CHAP_SECRET" "$MUTUAL_USER" "$MUTUAL_SECRET"
expect_rc mutual-wrong-initiator-secret $AUTH_FAILED node "$IQN_MUTUAL" --login
set_auth "$IQN_MUTUAL" CHAP "$CHAP_USER" "$CHAP_SECRET" "$MUTUAL_USER" "$MUTUAL_SECRET"
step login-mutual node "$IQN_MUTUAL" --login
dev=$(disk "$IQN_MUTUAL")
step io-mutual roundtrip "$dev" 5
step logout-mutual node "$IQN_MUTUAL" --logout

# ---- ACL -----------------------------------------------------------------------
step denied-node-new node "$IQN_DENIED" -o new
expect_rc denied-refused $AUTH_FAILED node "$IQN_DENIED" --login

# ---- discovery CHAP (second target) ------------------------------------------
if [ -n "${DISC_PORTAL:-}" ]; then
	dd_() { iscsiadm -m discoverydb -t sendtargets -p "$DISC_PORTAL" "$@"; }
	dd_ -o new >/dev/null
	dd_ -o update -n discovery.sendtargets.auth.authmethod -v None
	expect_rc disc-chap-none-refused $AUTH_FAILED dd_ --discover
	dd_ -o update -n discovery.sendtargets.auth.authmethod -v CHAP
	dd_ -o update -n discovery.sendtargets.auth.username -v "$DISC_USER"
	dd_ -o update -n discovery.sendtargets.auth.password -v "wrong-$DISC_SECRET"
	expect_rc disc-chap-wrong-refused $AUTH_FAILED dd_ --discover
	dd_ -o update -n discovery.sendtargets.auth.password -v "$DISC_SECRET"
	step disc-chap sh -c 'iscsiadm -m discoverydb -t sendtargets -p "$0" --discover >/tmp/disc2; rc=$?; cat /tmp/disc2; exit $rc' "$DISC_PORTAL"
	step disc-chap-lists grep -q "^$DISC_PORTAL,[0-9]* $DISC_IQN\$" /tmp/disc2
fi

# ---- dm-multipath over two portals of one target --------------------------------
# mp_map: print the dm-multipath map of MP_IQN's LUN once it has $1 active paths.
mp_map() {
	_end=$(($(cut -d. -f1 /proc/uptime) + 30))
	while [ "$(cut -d. -f1 /proc/uptime)" -lt $_end ]; do
		multipath -ll >/tmp/mp 2>/dev/null
		if [ "$(grep -c 'active ready running' /tmp/mp)" -eq "$1" ]; then
			_wwid=$(sed -n '1s/^\([^ ]*\) .*/\1/p' /tmp/mp)
			cat /tmp/mp >&2
			[ -b "/dev/mapper/$_wwid" ] && echo "/dev/mapper/$_wwid" && return 0
		fi
		sleep 0.5
	done
	cat /tmp/mp >&2
	return 1
}
mp_paths() { mp_map "$1" >/dev/null; }
# mp_flush DEV: remove the map once udev and multipathd let go of it.
mp_flush() {
	for _i in 1 2 3 4 5 6 7 8 9 10; do
		udevadm settle --timeout=5
		multipath -f "$(basename "$1")" && return 0
		sleep 0.5
	done
	return 1
}
if [ -n "${MP_IQN:-}" ]; then
	cat >/etc/multipath.conf <<-EOF
		defaults {
			user_friendly_names no
			find_multipaths no
			no_path_retry 5
			polling_interval 2
		}
	EOF
	multipathd
	step mp-discovery sh -c 'iscsiadm -m discovery -t sendtargets -p "$0" >/tmp/disc3; rc=$?; cat /tmp/disc3; exit $rc' "$MP_PORTAL1"
	step mp-lists-both sh -c 'grep -q "^$0,[0-9]* $2\$" /tmp/disc3 && grep -q "^$1,[0-9]* $2\$" /tmp/disc3' "$MP_PORTAL1" "$MP_PORTAL2" "$MP_IQN"
	step mp-login iscsiadm -m node -T "$MP_IQN" --login
	step mp-sessions sh -c 'test "$(iscsiadm -m session | grep -c " $0 ")" -eq 2' "$MP_IQN"
	step mp-map mp_paths 2
	mpdev=$(mp_map 2 2>/dev/null)
	value mp-dev "$mpdev"
	step mp-io roundtrip "$mpdev" 10
	# Persistent reservations across the two I_T nexuses: path 1 holds
	# Write Exclusive, so path 2 may read but not write.
	pa=$(readlink -f "/dev/disk/by-path/ip-$MP_PORTAL1-iscsi-$MP_IQN-lun-$LUN")
	pb=$(readlink -f "/dev/disk/by-path/ip-$MP_PORTAL2-iscsi-$MP_IQN-lun-$LUN")
	value mp-paths "$pa $pb"
	step mp-pr-reserve sh -c 'sg_persist --out --register --param-sark=0x5a "$0" && sg_persist --out --reserve --param-rk=0x5a --prout-type=1 "$0"' "$pa"
	head -c 65536 /dev/urandom >/tmp/pr.in
	# RESERVATION CONFLICT reaches user space as EBADE ("Invalid exchange").
	pr_conflict() {
		dd if=/tmp/pr.in of="$1" bs=64k seek=200 count=1 oflag=direct conv=notrunc status=none 2>/tmp/err
		_rc=$?
		cat /tmp/err
		[ $_rc -ne 0 ] && grep -q "Invalid exchange" /tmp/err
	}
	step mp-pr-conflict pr_conflict "$pb"
	step mp-pr-other-reads dd if="$pb" of=/dev/null bs=64k skip=200 count=1 iflag=direct status=none
	step mp-pr-holder-writes dd if=/tmp/pr.in of="$pa" bs=64k seek=200 count=1 oflag=direct conv=notrunc status=none
	step mp-pr-clear sg_persist --out --clear --param-rk=0x5a "$pa"
	step mp-pr-cleared dd if=/tmp/pr.in of="$pb" bs=64k seek=201 count=1 oflag=direct conv=notrunc status=none
	step mp-logout-one iscsiadm -m node -T "$MP_IQN" -p "$MP_PORTAL2" --logout
	step mp-one-path mp_paths 1
	step mp-io-one-path roundtrip "$mpdev" 11
	step mp-flush mp_flush "$mpdev"
	step mp-logout iscsiadm -m node -T "$MP_IQN" -p "$MP_PORTAL1" --logout
	multipathd shutdown >/dev/null 2>&1
fi

# ---- target restart under a logged-in session ---------------------------------
# host CMD: ask the test on the host to act (guest_control_test.go).
host() {
	bash -c 'exec 3<>"/dev/tcp/10.0.2.2/$1" && echo "$2" >&3 && read -r reply <&3 && echo "host: $reply" && [ "$reply" = ok ]' host "$CTL_PORT" "$1"
}
if [ -n "${CTL_PORT:-}" ]; then
	step login-restart node "$IQN_PLAIN" --login
	dev=$(disk "$IQN_PLAIN")
	step host-sees-session host sessions
	head -c 4194304 /dev/urandom >/tmp/rs.in
	step restart-write dd if=/tmp/rs.in of="$dev" bs=1M seek=58 count=4 oflag=direct conv=notrunc,fsync status=none
	step restart-daemon host restart
	step restart-read sh -c 'dd if="$0" of=/tmp/rs.out bs=1M skip=58 count=4 iflag=direct status=none && cmp /tmp/rs.in /tmp/rs.out' "$dev"
	step restart-pattern reread_pattern "$dev"
	step restart-session-recovered sh -c 'iscsiadm -m session -P 1 | tee /tmp/sess | grep -E "State|Reason"; grep -q "iSCSI Session State: LOGGED_IN" /tmp/sess'
	# SIGKILL: no logout request; the initiator sees the connection drop.
	head -c 2097152 /dev/urandom >/tmp/cr.in
	step crash-write dd if=/tmp/cr.in of="$dev" bs=1M seek=56 count=2 oflag=direct conv=notrunc,fsync status=none
	step crash-daemon host crash
	step crash-read sh -c 'dd if="$0" of=/tmp/cr.out bs=1M skip=56 count=2 iflag=direct status=none && cmp /tmp/cr.in /tmp/cr.out' "$dev"
	step crash-write-after roundtrip "$dev" 63
	step crash-session-recovered sh -c 'iscsiadm -m session -P 1 | tee /tmp/sess | grep -E "State|Reason"; grep -q "iSCSI Session State: LOGGED_IN" /tmp/sess'
	step logout-restart node "$IQN_PLAIN" --logout
fi

step no-session-at-end sh -c '! iscsiadm -m session'
