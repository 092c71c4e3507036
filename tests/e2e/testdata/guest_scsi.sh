# guest_scsi.sh: SCSI features through the Linux initiator, run inside the
# test guest (tools/guest) by guest_scsi_test.go (TestGuestSCSI). The host
# prepends variable assignments:
#   PORTAL       host:port of the target as the guest sees it
#   CTL_PORT     port of the test's control service on 10.0.2.2
#   IQN_PR       volume for persistent reservations (two I_T nexuses)
#   IQN_THIN     fresh volume for ext4 + fstrim
#   IQN_WS       fresh volume for WRITE SAME / UNMAP
#   SECOND_IQN   initiator name of the second iface (if2)
# Every check prints a STAVE-STEP marker (lib.sh); the host knows the list
# (guestSCSISteps). "host alloc LABEL" asks the host to record the
# allocated bytes of a volume's data file; the host checks the differences.
. /usr/lib/stave-guest/lib.sh

# host CMD: ask the test on the host to act (guest_control_test.go).
host() {
	bash -c 'exec 3<>"/dev/tcp/10.0.2.2/$1" && echo "$2" >&3 && read -r reply <&3 && echo "host: $reply" && [ "$reply" = ok ]' host "$CTL_PORT" "$1"
}

# sess_disk IFACE IQN: wait for the disk of IQN's session on IFACE and
# print its /dev node. Two sessions to one target share one by-path link,
# so this reads iscsiadm's session tree instead.
sess_disk() {
	_i=0
	while [ $_i -lt 100 ]; do
		_d=$(iscsiadm -m session -P 3 2>/dev/null | awk -v ifc="$1" -v iqn="$2" '
			/^Target: / { t = $2 }
			/Iface Name:/ { i = $3 }
			/Attached scsi disk/ { if (t == iqn && i == ifc) { print "/dev/" $4; exit } }')
		if [ -n "$_d" ] && [ -b "$_d" ]; then
			udevadm settle --timeout=10
			echo "$_d"
			return 0
		fi
		sleep 0.2
		_i=$((_i + 1))
	done
	echo "no disk for $2 on iface $1" >&2
	iscsiadm -m session -P 3 >&2
	return 1
}

# sgp ARGS...: sg_persist -n ARGS, retried on UNIT ATTENTION (exit 6): the
# kernel hands pass-through commands the unit attentions a preemption or a
# restart queues.
sgp() {
	_n=0
	while :; do
		sg_persist -n "$@"
		_rc=$?
		if [ $_rc -ne 6 ] || [ $_n -ge 3 ]; then
			return $_rc
		fi
		_n=$((_n + 1))
		echo "sg_persist: unit attention, retrying"
	done
}

# keys_are DEV KEY...: PERSISTENT RESERVE IN READ KEYS lists exactly KEYs.
keys_are() {
	_dev=$1
	shift
	sgp -i -k "$_dev" >/tmp/keys || return 1
	cat /tmp/keys
	_got=$(grep -E '^ +0x[0-9a-f]+$' /tmp/keys | tr -d ' ' | sort | tr '\n' ' ')
	_want=$(for k in "$@"; do echo "$k"; done | sort | tr '\n' ' ')
	echo "keys: got [$_got] want [$_want]"
	[ "$_got" = "$_want" ]
}

# held_by DEV KEY: READ RESERVATION shows a Write Exclusive reservation
# (LU scope) held by KEY.
held_by() {
	sgp -i -r "$1" >/tmp/resv || return 1
	cat /tmp/resv
	grep -Eq "^ +Key=$2\$" /tmp/resv && grep -Eq 'scope: LU_SCOPE, +type: Write Exclusive *$' /tmp/resv
}

# aptpl_is DEV 0|1: REPORT CAPABILITIES shows PTPL_A.
aptpl_is() {
	sgp -i -c "$1" >/tmp/caps || return 1
	cat /tmp/caps
	grep -q "(PTPL_A): $2\$" /tmp/caps
}

# conflict_write DEV: an O_DIRECT write of one block fails, and the kernel
# logs a reservation conflict for it.
conflict_write() {
	_before=$(dmesg | grep -c 'reservation conflict')
	if dd if=/tmp/blk of="$1" bs=512 count=1 seek=100 oflag=direct conv=notrunc status=none; then
		echo "write to $1 succeeded; want RESERVATION CONFLICT"
		return 1
	fi
	_after=$(dmesg | grep -c 'reservation conflict')
	dmesg | grep 'reservation conflict' | tail -n 2
	[ "$_after" -gt "$_before" ] || {
		echo "write failed without a reservation conflict in dmesg"
		dmesg | tail -n 10
		return 1
	}
}

# write_ok DEV / read_ok DEV: one-block O_DIRECT write / read succeeds.
write_ok() {
	dd if=/tmp/blk of="$1" bs=512 count=1 seek=200 oflag=direct conv=notrunc status=none
}
read_ok() {
	dd if="$1" of=/dev/null bs=512 count=1 skip=100 iflag=direct status=none
}

# sessions_up IQN N: wait until N sessions to IQN are LOGGED_IN.
sessions_up() {
	_i=0
	while [ $_i -lt 120 ]; do
		_n=$(iscsiadm -m session -P 1 2>/dev/null | awk -v iqn="$1" '
			/^Target: / { t = $2 }
			/iSCSI Session State: LOGGED_IN/ { if (t == iqn) n++ }
			END { print n + 0 }')
		[ "$_n" -eq "$2" ] && return 0
		sleep 0.5
		_i=$((_i + 1))
	done
	iscsiadm -m session -P 1
	return 1
}

# initiators_are IQN NAME...: the sessions to IQN use exactly these initiator names.
initiators_are() {
	_t=$1
	shift
	_got=$(iscsiadm -m session -P 3 2>/dev/null | awk -v iqn="$_t" '
		/^Target: / { t = $2 }
		/Iface Initiatorname:/ { if (t == iqn) print $3 }' | sort | tr '\n' ' ')
	_want=$(for n in "$@"; do echo "$n"; done | sort | tr '\n' ' ')
	echo "initiators: got [$_got] want [$_want]"
	[ "$_got" = "$_want" ]
}

# zeros DEV MIB COUNT: COUNT MiB at MIB read back as zeros (O_DIRECT).
zeros() {
	dd if="$1" of=/tmp/z.out bs=1M skip="$2" count="$3" iflag=direct status=none &&
		head -c $(($3 * 1048576)) /dev/zero | cmp - /tmp/z.out
}

# same_as DEV MIB FILE: the MiBs at MIB hold FILE (O_DIRECT).
same_as() {
	_sz=$(stat -c %s "$3")
	dd if="$1" of=/tmp/s.out bs=1M skip="$2" count=$((_sz / 1048576)) iflag=direct status=none &&
		cmp "$3" /tmp/s.out
}

# put DEV MIB FILE: write FILE at MIB with O_DIRECT and fsync.
put() {
	_sz=$(stat -c %s "$3")
	dd if="$3" of="$1" bs=1M seek="$2" count=$((_sz / 1048576)) oflag=direct conv=notrunc,fsync status=none
}

head -c 512 /dev/urandom >/tmp/blk
initiator=$(sed -n 's/^InitiatorName=//p' /etc/iscsi/initiatorname.iscsi)
value initiator "$initiator"

# ---- discovery on two ifaces: two I_T nexuses per target -----------------------
iscsiadm -m iface -I if2 -o new >/dev/null
iscsiadm -m iface -I if2 -o update -n iface.initiatorname -v "$SECOND_IQN" >/dev/null
step discovery-two-ifaces sh -c 'iscsiadm -m discovery -t sendtargets -p "$0" -I default -I if2 >/tmp/disc; rc=$?; cat /tmp/disc; exit $rc' "$PORTAL"

# ---- persistent reservations from two initiators ---------------------------------
step pr-login iscsiadm -m node -T "$IQN_PR" -p "$PORTAL" --login
step pr-two-sessions sessions_up "$IQN_PR" 2
step pr-two-nexuses initiators_are "$IQN_PR" "$initiator" "$SECOND_IQN"
da=$(sess_disk default "$IQN_PR")
db=$(sess_disk if2 "$IQN_PR")
value pr-dev-a "$da"
value pr-dev-b "$db"
step pr-two-disks sh -c 'test -b "$0" && test -b "$1" && test "$0" != "$1"' "$da" "$db"
step pr-no-keys keys_are "$da"
step pr-register-a sgp -o -G -S 0xa "$da"
step pr-register-b sgp -o -G -S 0xb "$db"
step pr-keys-ab keys_are "$db" 0xa 0xb
step pr-reserve-a sgp -o -R -K 0xa -T 1 "$da"
step pr-held-by-a held_by "$db" 0xa
step pr-write-b-conflict conflict_write "$db"
step pr-read-b read_ok "$db"
step pr-write-a write_ok "$da"
step pr-preempt-abort-b sgp -o -A -K 0xb -S 0xa -T 1 "$db"
step pr-held-by-b held_by "$da" 0xb
step pr-a-gone keys_are "$da" 0xb
step pr-write-a-conflict conflict_write "$da"
step pr-write-b write_ok "$db"
step pr-register-a-aptpl sgp -o -G -S 0xa -Z "$da"
step pr-aptpl aptpl_is "$db" 1
step pr-keys-before-restart keys_are "$db" 0xa 0xb
step pr-held-before-restart held_by "$da" 0xb
step pr-restart host restart
step pr-sessions-recovered sessions_up "$IQN_PR" 2
step pr-read-a-after-restart read_ok "$da"
step pr-keys-after-restart keys_are "$da" 0xa 0xb
step pr-held-after-restart held_by "$db" 0xb
step pr-aptpl-after-restart aptpl_is "$da" 1
step pr-write-a-conflict-after-restart conflict_write "$da"
step pr-write-b-after-restart write_ok "$db"
step pr-clear sgp -o -C -K 0xb "$db"
step pr-no-keys-after-clear keys_are "$da"
step pr-logout iscsiadm -m node -T "$IQN_PR" -p "$PORTAL" --logout

# ---- thin provisioning through ext4 and fstrim ---------------------------------------
step thin-login iscsiadm -m node -T "$IQN_THIN" -p "$PORTAL" -I default --login
dt=$(sess_disk default "$IQN_THIN")
value thin-dev "$dt"
# nodiscard: mkfs must not UNMAP the (already unmapped) device, so the
# first measurement counts only what mkfs wrote; no lazy init, so no
# kernel thread writes inode tables between the measurements.
step thin-mkfs mkfs.ext4 -q -F -b 4096 -E nodiscard,lazy_itable_init=0,lazy_journal_init=0 "$dt"
mkdir -p /mnt/thin
step thin-mount mount -t ext4 -o nodiscard "$dt" /mnt/thin
sync
step thin-alloc-mkfs host "alloc thin-mkfs"
head -c 8388608 /dev/urandom >/tmp/f8m
write_files() {
	for i in 1 2 3 4 5 6; do cp /tmp/f8m "/mnt/thin/f$i" || return 1; done
	sync
	df -k /mnt/thin
}
step thin-write-48m write_files
step thin-alloc-written host "alloc thin-written"
step thin-rm sh -c 'rm /mnt/thin/f1 /mnt/thin/f2 /mnt/thin/f3 /mnt/thin/f4 /mnt/thin/f5 /mnt/thin/f6 && sync'
step thin-fstrim fstrim -v /mnt/thin
sync
step thin-alloc-trimmed host "alloc thin-trimmed"
step thin-umount umount /mnt/thin
step thin-fsck fsck.ext4 -fn "$dt"
step thin-logout iscsiadm -m node -T "$IQN_THIN" -p "$PORTAL" -I default --logout

# ---- WRITE SAME, UNMAP, provisioning VPD ----------------------------------------------
step ws-login iscsiadm -m node -T "$IQN_WS" -p "$PORTAL" -I default --login
dw=$(sess_disk default "$IQN_WS")
value ws-dev "$dw"
step ws-readcap-lbpme sh -c 'sg_readcap -l "$0" | tee /tmp/rc; grep -q "lbpme=1, lbprz=1" /tmp/rc' "$dw"
step ws-vpd-lbpv sh -c 'sg_vpd -p lbpv "$0" | tee /tmp/lbpv; grep -q "(LBPU): 1" /tmp/lbpv && grep -q "(LBPWS): 1" /tmp/lbpv && grep -q "(LBPRZ): 1" /tmp/lbpv' "$dw"
step ws-vpd-bl sh -c 'sg_vpd -p bl "$0" | tee /tmp/bl; grep -Eq "Maximum unmap LBA count: (0x)?[1-9a-f]" /tmp/bl && grep -Eq "Maximum write same length: (0x)?[1-9a-f]" /tmp/bl' "$dw"
sysq=/sys/block/$(basename "$dw")
for f in queue/discard_max_bytes queue/discard_granularity queue/write_zeroes_max_bytes queue/write_same_max_bytes; do
	echo "$f: $(cat "$sysq/$f" 2>/dev/null)"
done
step ws-kernel-unmap-mode sh -c 'cat "$0"/device/scsi_disk/*/provisioning_mode | tee /dev/stderr | grep -qx unmap' "$sysq"

# blkdiscard -z: BLKZEROOUT, which sd sends as WRITE SAME (no UNMAP).
head -c 3145728 /dev/urandom >/tmp/r3m
step ws-zeroout-prep put "$dw" 1 /tmp/r3m
step ws-zeroout blkdiscard -z -o $((2 * 1048576)) -l 1048576 "$dw"
step ws-zeroout-reads-zero zeros "$dw" 2 1
step ws-zeroout-neighbours sh -c 'head -c 1048576 "$1" >/tmp/r1 && tail -c 1048576 "$1" >/tmp/r3 && dd if="$0" of=/tmp/n1 bs=1M skip=1 count=1 iflag=direct status=none && dd if="$0" of=/tmp/n3 bs=1M skip=3 count=1 iflag=direct status=none && cmp /tmp/r1 /tmp/n1 && cmp /tmp/r3 /tmp/n3' "$dw" /tmp/r3m
# The kernel turns WRITE SAME off (write_zeroes_max_bytes 0) when the
# target rejects it and then writes zeros itself.
step ws-zeroout-used-write-same sh -c 'v=$(cat "$0/queue/write_zeroes_max_bytes"); echo "write_zeroes_max_bytes $v"; [ "$v" -gt 0 ]' "$sysq"

# blkdiscard: UNMAP; LBPRZ=1, so the range reads back as zeros.
head -c 4194304 /dev/urandom >/tmp/r4m
step ws-discard-prep put "$dw" 8 /tmp/r4m
step ws-alloc-discard-before host "alloc ws-discard-before"
step ws-discard blkdiscard -o $((8 * 1048576)) -l 4194304 "$dw"
step ws-discard-reads-zero zeros "$dw" 8 4
step ws-alloc-discard-after host "alloc ws-discard-after"

# sg_write_same: one 512-byte block written 2048 times at LBA 32768 (16 MiB).
cp /tmp/blk /tmp/ws.exp
for i in 1 2 3 4 5 6 7 8 9 10 11; do cat /tmp/ws.exp /tmp/ws.exp >/tmp/ws.tmp && mv /tmp/ws.tmp /tmp/ws.exp; done
step ws-write-same sg_write_same --lba=32768 --num=2048 --in=/tmp/blk "$dw"
step ws-write-same-readback same_as "$dw" 16 /tmp/ws.exp
step ws-alloc-unmap-before host "alloc ws-unmap-before"
step ws-write-same-unmap sg_write_same --16 --unmap --lba=32768 --num=2048 "$dw"
step ws-unmap-reads-zero zeros "$dw" 16 1
step ws-alloc-unmap-after host "alloc ws-unmap-after"
step ws-logout iscsiadm -m node -T "$IQN_WS" -p "$PORTAL" -I default --logout

step no-session-at-end sh -c '! iscsiadm -m session'
