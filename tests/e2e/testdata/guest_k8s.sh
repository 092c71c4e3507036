# guest_k8s.sh: replays, inside the test guest (tools/guest), what the
# kubelet's in-tree iSCSI volume plugin (kubernetes pkg/volume/iscsi,
# iscsi_util.go AttachDisk/DetachDisk, and mount-utils' formatAndMount)
# runs for a PersistentVolume, with the values guest_k8s_test.go took from
# `stave k8s pv` and `stave k8s secret`. The host prepends:
#   TARGET_PORTAL   spec.iscsi.targetPortal
#   PORTALS         spec.iscsi.portals, space separated (may be empty)
#   IQN, LUN, FSTYPE                 spec.iscsi.iqn, lun, fsType
#   CHAP_DISCOVERY, CHAP_SESSION     spec.iscsi.chapAuthDiscovery, chapAuthSession ("true"/"false")
#   SECRET_<K>      the Secret's data (base64, as in the manifest) of key K
#                   with '.' turned into '_'; absent keys are unset
#   CTL_PORT        the test's control service on 10.0.2.2 ("sessions N")
# Every check prints a STAVE-STEP marker (lib.sh); the host knows the list.
. /usr/lib/stave-guest/lib.sh

IFACE=default
AUTH_FAILED=24 # ISCSI_ERR_LOGIN_AUTH_FAILED
NO_SESSIONS=21 # ISCSI_ERR_NO_OBJS_FOUND
ALL="$TARGET_PORTAL $PORTALS"

# secret KEY: the Secret's value of KEY (decoded, as the kubelet reads
# it), or "".
secret() {
	_v=$(eval "printf '%s' \"\${SECRET_$(echo "$1" | tr . _):-}\"")
	[ -z "$_v" ] || printf '%s' "$_v" | base64 -d
}

# host CMD: ask the test on the host (guest_control_test.go).
host() {
	bash -c 'exec 3<>"/dev/tcp/10.0.2.2/$1" && echo "$2" >&3 && read -r reply <&3 && echo "host: $reply" && [ "$reply" = ok ]' host "$CTL_PORT" "$1"
}

# disc_auth PORTAL: updateISCSIDiscoverydb: CHAP, then every
# discovery.sendtargets.auth.* key the Secret has.
disc_auth() {
	iscsiadm -m discoverydb -t sendtargets -p "$1" -I "$IFACE" -o update -n discovery.sendtargets.auth.authmethod -v CHAP || return
	for k in discovery.sendtargets.auth.username discovery.sendtargets.auth.password \
		discovery.sendtargets.auth.username_in discovery.sendtargets.auth.password_in; do
		v=$(secret "$k")
		[ -z "$v" ] || iscsiadm -m discoverydb -t sendtargets -p "$1" -I "$IFACE" -o update -n "$k" -v "$v" || return
	done
}

# node_auth PORTAL: updateISCSINode: CHAP, then every node.session.auth.*
# key the Secret has.
node_auth() {
	iscsiadm -m node -p "$1" -T "$IQN" -I "$IFACE" -o update -n node.session.auth.authmethod -v CHAP || return
	for k in node.session.auth.username node.session.auth.password \
		node.session.auth.username_in node.session.auth.password_in; do
		v=$(secret "$k")
		[ -z "$v" ] || iscsiadm -m node -p "$1" -T "$IQN" -I "$IFACE" -o update -n "$k" -v "$v" || return
	done
}

# scsi_host PORTAL: the SCSI host number of our session through PORTAL
# (GetISCSIPortalHostMapForTarget: targetname, persistent_address and
# persistent_port of the sessions under /sys/class/iscsi_host).
scsi_host() {
	for h in /sys/class/iscsi_host/host*; do
		n=${h##*/host}
		for s in "$h"/device/session*; do
			[ -d "$s" ] || continue
			[ "$(cat "$s"/iscsi_session/session*/targetname 2>/dev/null)" = "$IQN" ] || continue
			for c in "$s"/connection*/iscsi_connection/connection*; do
				a=$(cat "$c/persistent_address" 2>/dev/null)
				p=$(cat "$c/persistent_port" 2>/dev/null)
				if [ "$a:$p" = "$1" ]; then
					echo "$n"
					return 0
				fi
			done
		done
	done
	return 1
}

# wait_path PATH: waitForPathToExist, 10 tries a second apart.
wait_path() {
	i=0
	while [ ! -e "$1" ] && [ $i -lt 10 ]; do
		sleep 1
		i=$((i + 1))
	done
	[ -e "$1" ] || {
		ls -l /dev/disk/by-path >&2
		return 1
	}
}

# ---- discovery CHAP is enforced -----------------------------------------------
if [ "$CHAP_DISCOVERY" = true ]; then
	expect_rc discovery-needs-chap $AUTH_FAILED iscsiadm -m discovery -t sendtargets -p "$TARGET_PORTAL"
	iscsiadm -m discoverydb -t sendtargets -p "$TARGET_PORTAL" -o delete >/dev/null 2>&1
fi

# ---- AttachDisk ----------------------------------------------------------------
step iface-show sh -c 'iscsiadm -m iface -I "$0" -o show >/tmp/iface; rc=$?; cat /tmp/iface; exit $rc' "$IFACE"
step iface-tcp grep -q '^iface.transport_name = tcp$' /tmp/iface

n=0
first_dev=
for P in $ALL; do
	n=$((n + 1))
	# The kubelet ignores the outcome of "-o new" (the record may exist).
	iscsiadm -m discoverydb -t sendtargets -p "$P" -I "$IFACE" -o new
	if [ "$CHAP_DISCOVERY" = true ]; then
		step "disc-auth-p$n" disc_auth "$P"
	fi
	step "discover-p$n" sh -c 'iscsiadm -m discoverydb -t sendtargets -p "$0" -I "$1" --discover >/tmp/disc; rc=$?; cat /tmp/disc; exit $rc' "$P" "$IFACE"
	step "discover-lists-p$n" grep -q "^$P,[0-9]* $IQN\$" /tmp/disc
	step "scan-manual-p$n" iscsiadm -m node -p "$P" -T "$IQN" -I "$IFACE" -o update -n node.session.scan -v manual
	if [ "$CHAP_SESSION" = true ]; then
		step "node-auth-p$n" node_auth "$P"
	fi
	step "login-p$n" iscsiadm -m node -p "$P" -T "$IQN" -I "$IFACE" --login
	step "startup-manual-p$n" iscsiadm -m node -p "$P" -T "$IQN" -o update -n node.startup -v manual
	link="/dev/disk/by-path/ip-$P-iscsi-$IQN-lun-$LUN"
	udevadm settle --timeout=10
	# node.session.scan=manual: no LUN until the kubelet scans for it.
	step "no-auto-scan-p$n" test ! -e "$link"
	h=$(scsi_host "$P")
	step "scsi-host-p$n" test -n "$h"
	value "scsi-host-p$n" "$h"
	step "lun-scan-p$n" sh -c 'echo "0 0 $1" >"/sys/class/scsi_host/host$0/scan"' "$h" "$LUN"
	step "device-p$n" wait_path "$link"
	[ -n "$first_dev" ] || first_dev=$(readlink -f "$link")
done
step host-sees-sessions host "sessions $n"

# ---- formatAndMount ------------------------------------------------------------
dev=$first_dev
value dev "$dev"
# blkid exit status 2: nothing found, so the kubelet formats.
expect_rc blkid-unformatted 2 blkid -p -s TYPE -s PTTYPE -o export "$dev"
case "$FSTYPE" in
ext3 | ext4) mkfs_args="-F -m0" ;;
xfs) mkfs_args="-f" ;;
*) mkfs_args= ;;
esac
# shellcheck disable=SC2086
step mkfs mkfs -t "$FSTYPE" $mkfs_args "$dev"
mkdir -p /mnt/pv
step mount mount -t "$FSTYPE" -o defaults "$dev" /mnt/pv
step write-file sh -c 'head -c 3145728 /dev/urandom >/mnt/pv/data && sha256sum /mnt/pv/data >/tmp/data.sum && sync'
step umount umount /mnt/pv

# A second mount (pod restarted): the file system is found, not remade.
step blkid-formatted sh -c 'blkid -p -s TYPE -s PTTYPE -o export "$0" | grep -qx "TYPE=$1"' "$dev" "$FSTYPE"
echo 3 >/proc/sys/vm/drop_caches
step remount mount -t "$FSTYPE" -o defaults "$dev" /mnt/pv
step read-file sha256sum -c /tmp/data.sum
step umount-again umount /mnt/pv

# ---- DetachDisk ------------------------------------------------------------------
n=0
for P in $ALL; do
	n=$((n + 1))
	d=$(readlink -f "/dev/disk/by-path/ip-$P-iscsi-$IQN-lun-$LUN")
	step "flush-p$n" blockdev --flushbufs "$d"
	step "delete-device-p$n" sh -c 'echo 1 >"/sys/block/${0##*/}/device/delete"' "$d"
	step "logout-p$n" iscsiadm -m node -p "$P" -T "$IQN" -I "$IFACE" --logout
	step "delete-node-p$n" iscsiadm -m node -p "$P" -T "$IQN" -I "$IFACE" -o delete
done
expect_rc no-session-left $NO_SESSIONS iscsiadm -m session
step host-sees-no-session host "sessions 0"
