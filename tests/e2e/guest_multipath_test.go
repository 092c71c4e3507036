package e2e

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"stave.dev/stave/internal/adminapi"
)

// The kernel-initiator failover test (issue 6): three daemons form a
// cluster (etcd keeps its quorum when one dies), a 2-replica volume lives
// on two of them, and the QEMU guest reaches it through dm-multipath over
// both holders' portals with the ALUA settings a Linux host would use for
// Stave. The guest mounts ext4 on the map and writes files with fsync in a
// loop; the host kills the owner with SIGKILL when the guest asks; the
// load must go on through the other holder, fsck must find the file
// system clean, and every file whose fsync returned must hold its content.
//
// The guest runs guestFailoverScript; it reports the stall it saw (the
// gap between completed writes across the kill) as STAVE-VALUE lines and
// prints `multipath -ll` before and after the kill between STAVE-MPLL
// markers, which the test logs.

const (
	gfVolume     = "mpfail"
	gfVolumeSize = "256MiB"
	// gfKillAfter is how long the guest writes before it asks for the
	// kill; gfLoadAfter how long it keeps writing after the kill.
	gfKillAfter = 8
	gfLoadAfter = 25
	// gfReplacementTimeout is open-iscsi's node.session.timeo.replacement_timeout
	// for the test's sessions (seconds): how long the SCSI layer holds the
	// commands of a dead session before dm-multipath may retry them on
	// another path. The guest image's default, 15 s, is for single-path
	// hosts; multipath hosts use a few seconds.
	gfReplacementTimeout = 5
	// gfNoPathRetry is multipath's no_path_retry with polling_interval 1:
	// with every path down, I/O is queued this many seconds, then failed.
	gfNoPathRetry = 30
	gfMaxFiles    = 1500 // 64 KiB each: at most ~94 MiB of the 256 MiB volume
	// gfWatchdog bounds the guest script (seconds; a run takes about 70):
	// then the guest reports a "watchdog" step, prints its kernel log and
	// powers off, well within go test's default 10 minutes.
	gfWatchdog = 300
)

// guestFailoverSteps are the STAVE-STEP names guestFailoverScript prints.
var guestFailoverSteps = []string{
	"discovery", "discovery-lists-holders", "replacement-timeout", "login", "sessions", "map", "path-groups",
	"alua-before", "mkfs", "mount", "load-before", "kill-owner", "writer-stopped", "no-write-errors",
	"load-continues", "alua-after", "one-path-ready", "sync", "umount", "fsck", "mount-ro", "files-intact", "umount-ro",
}

// guestFailoverScript is the guest half of TestGuestMultipathFailover,
// run by tools/guest/init with sh. The host prepends: IQN, DISC_PORTAL
// (a holder's portal), HOLDERS (every holder's portal, space separated),
// OWNER_PORTAL (the owner's at boot), CTL_PORT, KILL_AFTER, LOAD_AFTER,
// REPLACEMENT_TIMEOUT, NO_PATH_RETRY, MAX_FILES, WATCHDOG. Portals are as
// the guest sees them (10.0.2.2:PORT).
const guestFailoverScript = `
. /usr/lib/stave-guest/lib.sh

# host CMD: ask the test on the host to act (guest_control_test.go).
host() {
	bash -c 'exec 3<>"/dev/tcp/10.0.2.2/$1" && echo "$2" >&3 && read -r reply <&3 && echo "host: $reply" && [ "$reply" = ok ]' host "$CTL_PORT" "$1"
}
now() { cut -d' ' -f1 /proc/uptime; }
secs() { cut -d. -f1 /proc/uptime; }
# path PORTAL: the sd device of the LUN through PORTAL.
path() { basename "$(readlink -f "/dev/disk/by-path/ip-$1-iscsi-$IQN-lun-0")"; }
# alua_state PORTAL: the kernel's ALUA state of the path through PORTAL.
alua_state() { cat "/sys/block/$(path "$1")/device/access_state" 2>/dev/null; }
# mpll LABEL: multipath -ll and each path's state, between markers.
mpll() {
	echo "STAVE-MPLL begin $1 t=$(now)"
	multipath -ll 2>&1
	for _p in $HOLDERS; do
		_d=$(path "$_p")
		echo "$_p $_d alua=$(alua_state "$_p") sdev=$(cat "/sys/block/$_d/device/state" 2>/dev/null)"
	done
	iscsiadm -m session 2>&1
	echo "STAVE-MPLL end $1"
}

# The watchdog: I/O that dm-multipath queues for ever (a path that fails
# every command yet passes its checker) would hang the script in an
# uninterruptible sleep; print what the guest sees and power off.
(
	sleep "$WATCHDOG"
	echo "STAVE-STEP watchdog FAIL t=$(now)"
	timeout 10 multipath -ll
	cat /tmp/wr.err
	echo "STAVE-DMESG begin"
	dmesg --color=never
	echo "STAVE-DMESG end"
	echo o >/proc/sysrq-trigger
) &
wdpid=$!

mkdir -p /etc/multipath /mnt/stave
cat >/etc/multipath.conf <<EOF
defaults {
	user_friendly_names yes
	find_multipaths no
	polling_interval 1
}
devices {
	device {
		vendor "STAVE"
		product "VOLUME"
		path_grouping_policy group_by_prio
		prio alua
		path_checker tur
		hardware_handler "1 alua"
		failback immediate
		no_path_retry $NO_PATH_RETRY
		path_selector "service-time 0"
	}
}
EOF
multipathd

step discovery sh -c 'iscsiadm -m discovery -t sendtargets -p "$0" >/tmp/disc; rc=$?; cat /tmp/disc; exit $rc' "$DISC_PORTAL" || exit 1
lists_holders() {
	_n=0
	for _p in $HOLDERS; do
		grep -q "^$_p,[0-9]* $IQN\$" /tmp/disc || { echo "discovery does not list $_p"; return 1; }
		_n=$((_n + 1))
	done
	[ "$(grep -c " $IQN\$" /tmp/disc)" -eq $_n ] || { echo "discovery lists other portals of $IQN"; return 1; }
}
step discovery-lists-holders lists_holders
step replacement-timeout iscsiadm -m node -T "$IQN" -o update -n node.session.timeo.replacement_timeout -v "$REPLACEMENT_TIMEOUT"
step login iscsiadm -m node -T "$IQN" --login || exit 1
npaths=$(echo $HOLDERS | wc -w)
step sessions sh -c 'iscsiadm -m session; test "$(iscsiadm -m session | grep -c " $0 ")" -eq "$1"' "$IQN" "$npaths"

# map_ready N: wait until the map has N usable paths (a standby path is
# "ghost" to the tur checker); the map's name goes to /tmp/map.
map_ready() {
	_end=$(($(secs) + 30))
	while [ "$(secs)" -lt $_end ]; do
		multipath -ll >/tmp/mp 2>/dev/null
		if [ "$(grep -cE 'active +(ready|ghost) +running' /tmp/mp)" -eq "$1" ]; then
			_mp=$(sed -n '1s/ .*//p' /tmp/mp)
			if [ -b "/dev/mapper/$_mp" ]; then
				echo "$_mp" >/tmp/map
				cat /tmp/mp
				return 0
			fi
		fi
		sleep 0.5
	done
	cat /tmp/mp
	return 1
}
step map map_ready "$npaths" || exit 1
map=$(cat /tmp/map 2>/dev/null)
dev=/dev/mapper/$map
value map "$map"
# One path group per holder: the owner's active (prio 50), the others enabled.
step path-groups sh -c 'multipath -ll "$0" >/tmp/mp; cat /tmp/mp; test "$(grep -c "policy=" /tmp/mp)" -eq "$1" && grep -q "prio=50 status=active" /tmp/mp' "$map" "$npaths"
alua_before() {
	for _p in $HOLDERS; do
		_want=standby
		[ "$_p" = "$OWNER_PORTAL" ] && _want=active/optimized
		_got=$(alua_state "$_p")
		echo "$_p: $_got (want $_want)"
		[ "$_got" = "$_want" ] || return 1
	done
}
step alua-before alua_before

step mkfs mkfs.ext4 -q -F "$dev" || exit 1
step mount mount "$dev" /mnt/stave || exit 1

# The load: files of 64 KiB plus a header naming the file, each written
# with dd conv=fsync; a file is listed in /tmp/done (on the guest's tmpfs)
# with its completion time only once its fsync returned.
head -c 1048576 /dev/urandom >/tmp/src
k=0
while [ $k -lt 16 ]; do
	dd if=/tmp/src of=/tmp/slice.$k bs=64k skip=$k count=1 status=none
	k=$((k + 1))
done
: >/tmp/done
: >/tmp/failed
writer() {
	_i=0
	while [ ! -e /tmp/stop ] && [ $_i -lt "$MAX_FILES" ]; do
		_i=$((_i + 1))
		_k=$((_i % 16))
		if { printf 'file %08d\n' $_i; cat /tmp/slice.$_k; } |
			dd of=/mnt/stave/f$_i bs=64k iflag=fullblock conv=fsync status=none 2>>/tmp/wr.err; then
			echo "$_i $_k $(now)" >>/tmp/done
		else
			echo "$_i $_k $(now)" >>/tmp/failed
		fi
	done
}
writer &
wpid=$!
sleep "$KILL_AFTER"
step load-before test "$(wc -l </tmp/done)" -gt 0
mpll before
t_kill=$(now)
step kill-owner host kill
t_killed=$(now)
value kill-at "$t_kill"
value killed-at "$t_killed"
sleep "$LOAD_AFTER"
mpll after
t_stop=$(now)
touch /tmp/stop
wait_writer() {
	_end=$(($(secs) + 60))
	while kill -0 $wpid 2>/dev/null; do
		[ "$(secs)" -lt $_end ] || return 1
		sleep 0.2
	done
}
step writer-stopped wait_writer
step no-write-errors sh -c 'cat /tmp/wr.err /tmp/failed 2>/dev/null; test ! -s /tmp/failed'

# Completed writes around the kill: the stall is the gap between the last
# completion before the host reported the owner dead and the first after.
awk -v kill="$t_killed" -v stop="$t_stop" '
	{ t = $3 + 0 }
	NR > 1 && t - prev > maxgap { maxgap = t - prev; gapat = prev }
	t <= kill { before++; lastbefore = t }
	t > kill { after++; if (first == "") first = t }
	{ prev = t; last = t }
	END {
		printf "STAVE-VALUE files-before %d\n", before
		printf "STAVE-VALUE files-after %d\n", after
		if (first != "") printf "STAVE-VALUE stall %.2f\n", first - lastbefore
		printf "STAVE-VALUE max-gap %.2f\n", maxgap
		printf "STAVE-VALUE max-gap-at %.2f\n", gapat
		printf "STAVE-VALUE last-done-before-stop %.2f\n", stop - last
	}' /tmp/done
# The load went on after the kill, up to the end of the window.
step load-continues awk -v kill="$t_killed" -v stop="$t_stop" '
	$3 + 0 > kill { after++; last = $3 + 0 }
	END { printf "%d writes completed after the kill, the last %.2fs before the stop\n", after, stop - last; exit !(after >= 5 && stop - last < 5) }' /tmp/done

# The surviving holder's path is now active/optimized, the owner's failed.
alua_after() {
	_end=$(($(secs) + 15))
	while :; do
		_ok=1
		for _p in $HOLDERS; do
			[ "$_p" = "$OWNER_PORTAL" ] && continue
			[ "$(alua_state "$_p")" = active/optimized ] || _ok=0
		done
		[ $_ok = 1 ] && break
		[ "$(secs)" -lt $_end ] || break
		sleep 0.5
	done
	for _p in $HOLDERS; do echo "$_p: $(alua_state "$_p")"; done
	[ $_ok = 1 ]
}
step alua-after alua_after
step one-path-ready sh -c 'multipath -ll "$0" >/tmp/mp; cat /tmp/mp; test "$(grep -cE "active +ready +running" /tmp/mp)" -eq $(($1 - 1))' "$map" "$npaths"

step sync timeout 60 sync
step umount timeout 60 umount /mnt/stave
step fsck timeout 120 fsck.ext4 -fn "$dev"
step mount-ro mount -o ro "$dev" /mnt/stave
verify() {
	_n=0
	_bad=0
	while read -r _i _k _t; do
		_n=$((_n + 1))
		_want=$({ printf 'file %08d\n' "$_i"; cat /tmp/slice.$_k; } | md5sum)
		_got=$(md5sum <"/mnt/stave/f$_i") || _got=unreadable
		if [ "$_want" != "$_got" ]; then
			[ $_bad -lt 20 ] && echo "f$_i: md5 $_got, want $_want"
			_bad=$((_bad + 1))
		fi
	done </tmp/done
	value files-checked $_n
	value files-bad $_bad
	[ $_n -gt 0 ] && [ $_bad -eq 0 ]
}
step files-intact verify
step umount-ro umount /mnt/stave
kill $wdpid
multipathd shutdown >/dev/null 2>&1
exit 0
`

// gfKill is what the guest's "kill" request did, guarded by mu.
type gfKill struct {
	mu        sync.Mutex
	requested bool         // the guest asked; takeover is closed once the watcher ends
	node      *clusterNode // the owner killed; nil until then
	at        time.Time
	epoch     uint64 // the owner's epoch before the kill
	takeover  chan struct{}
	// Set by the takeover watcher before it closes takeover.
	newOwner *clusterNode
	newEpoch uint64
	tookOver time.Duration // kill to a new owner in volume show
	err      error
}

// TestGuestMultipathFailover is issue 6's kernel-initiator check: the QEMU
// guest mounts ext4 on a dm-multipath map over two nodes' portals (ALUA:
// group_by_prio, prio alua, tur, the alua hardware handler), writes files
// with fsync in a loop, the host kills the owner with SIGKILL when the
// guest asks, and the load must continue through the other node; then
// fsck is clean and every file whose fsync returned has its content. The
// stall the guest saw is logged, not asserted.
func TestGuestMultipathFailover(t *testing.T) {
	requireE2E(t)
	qemu := requireTool(t, "qemu-system-x86_64")
	img := buildGuest(t)
	ips := []string{"127.0.0.2", "127.0.0.3", "127.0.0.4"}
	for _, ip := range ips {
		requireLoopbackAlias(t, ip)
	}
	staveBinary(t)
	testStart := time.Now()

	// Three nodes, so that etcd keeps its quorum when the owner dies.
	// etcd and replication listen on the node's own 127.0.0.x; the portal
	// on 127.0.0.1 (the only host address the guest reaches, as 10.0.2.2)
	// with a port per node, advertised as 10.0.2.2:PORT.
	ns := make([]*clusterNode, len(ips))
	var initial []string
	for i := range ns {
		ns[i] = newClusterNode(t, fmt.Sprintf("n%d", i+1), ips[i])
		ns[i].portal = net.JoinHostPort("127.0.0.1", strconv.Itoa(ns[i].port))
		initial = append(initial, ns[i].name+"="+ns[i].peer)
	}
	guestPortal := func(n *clusterNode) string { return net.JoinHostPort(guestHostAlias, strconv.Itoa(n.port)) }
	for i, n := range ns {
		n.setArgs("--initial-cluster", strings.Join(initial, ","),
			"--advertise", guestPortal(n),
			"--replication-listen", net.JoinHostPort(ips[i], strconv.Itoa(freePort(t))))
	}
	startTogether(t, ns, func(_ int, n *clusterNode) error { return n.startErr() })
	ns[0].waitStates(t, map[string]string{"n1": "up", "n2": "up", "n3": "up"})
	ns[0].MustCLI("volume", "create", gfVolume, "--size", gfVolumeSize, "--replicas", "2")
	if _, err := waitInSync(ns[0], gfVolume, 2, clusterWaitTimeout); err != nil {
		t.Fatal(err)
	}
	holders, err := gfHolders(ns[0], ns, gfVolume)
	if err != nil {
		t.Fatal(err)
	}
	owner, epoch, err := gfOwner(ns, nil, gfVolume, clusterWaitTimeout)
	if err != nil {
		t.Fatal(err)
	}
	var holderPortals []string
	for _, h := range holders {
		holderPortals = append(holderPortals, guestPortal(h))
	}
	t.Logf("cluster up and volume %s in sync after %v: holders %v (portals %v), owner %s at epoch %d",
		gfVolume, time.Since(testStart).Round(time.Millisecond), gfNames(holders), holderPortals, owner.name, epoch)

	kill := &gfKill{takeover: make(chan struct{})}
	ctl := startGuestControl(t, map[string]func() error{
		"kill": func() error { return kill.run(ns, holders) },
	})

	vars := map[string]string{
		"IQN":                 staveIQN(gfVolume),
		"DISC_PORTAL":         guestPortal(owner),
		"HOLDERS":             strings.Join(holderPortals, " "),
		"OWNER_PORTAL":        guestPortal(owner),
		"CTL_PORT":            fmt.Sprint(ctl.Port()),
		"KILL_AFTER":          fmt.Sprint(gfKillAfter),
		"LOAD_AFTER":          fmt.Sprint(gfLoadAfter),
		"REPLACEMENT_TIMEOUT": fmt.Sprint(gfReplacementTimeout),
		"NO_PATH_RETRY":       fmt.Sprint(gfNoPathRetry),
		"MAX_FILES":           fmt.Sprint(gfMaxFiles),
		"WATCHDOG":            fmt.Sprint(gfWatchdog),
	}
	run, console, elapsed := runGuestScriptText(t, qemu, img, "guest-multipath-failover", guestFailoverScript, vars)
	t.Logf("guest run: %v, ready after %.1fs of guest uptime, %d steps reported\n%s",
		elapsed.Round(time.Second), run.readyAt, len(run.steps), guestStepSummary(run, nil))
	for _, s := range gfSections(console) {
		t.Logf("%s", s)
	}

	if !run.ready {
		t.Errorf("guest never reported STAVE-GUEST ready (boot or image problem)")
	}
	if !run.done {
		t.Errorf("guest never reported STAVE-GUEST done (hung or crashed)")
	}
	if run.scriptRC != 0 {
		t.Errorf("guest script exit status %d", run.scriptRC)
	}
	for _, s := range checkGuestSteps(run, guestFailoverSteps, nil) {
		t.Errorf("%s", s)
	}
	v := run.values
	for _, k := range []string{"stall", "files-before", "files-after", "max-gap", "max-gap-at", "files-checked", "files-bad"} {
		if v[k] == "" {
			v[k] = "?"
		}
	}
	t.Logf("guest I/O around the kill: stall %ss (last write completed before the owner was dead to the first after), "+
		"%s files before the kill and %s after, longest gap between completed writes %ss at t=%s; "+
		"host kill took %.2fs of guest time (t=%s to %s); %s files verified, %s bad",
		v["stall"], v["files-before"], v["files-after"], v["max-gap"], v["max-gap-at"],
		gfSub(v["killed-at"], v["kill-at"]), v["kill-at"], v["killed-at"], v["files-checked"], v["files-bad"])

	if at, err := strconv.ParseFloat(v["kill-at"], 64); err == nil {
		t.Logf("guest kernel log from the kill on (path and ALUA events):\n%s", gfKernelLog(console, at, 40))
	}

	// The host's side: the owner the guest saw at boot was killed, and the
	// other holder took over with a higher epoch.
	kill.mu.Lock()
	requested := kill.requested
	kill.mu.Unlock()
	if requested {
		select {
		case <-kill.takeover: // the watcher gives up after a minute
		case <-time.After(2 * time.Minute):
			t.Fatalf("the takeover watcher did not finish")
		}
	}
	kill.mu.Lock()
	defer kill.mu.Unlock()
	switch {
	case !kill.requested:
		t.Errorf("the guest never asked for the owner to be killed")
	case kill.err != nil:
		t.Errorf("killing the owner: %v", kill.err)
	default:
		if kill.node != owner {
			t.Errorf("killed %s, but the guest was told the owner is %s", kill.node.name, owner.name)
		}
		t.Logf("killed owner %s (epoch %d); %s serves at epoch %d, %v after the kill (volume show)",
			kill.node.name, kill.epoch, kill.newOwner.name, kill.newEpoch, kill.tookOver.Round(time.Millisecond))
		if kill.newEpoch <= kill.epoch {
			t.Errorf("new owner %s has epoch %d, not above the old %d", kill.newOwner.name, kill.newEpoch, kill.epoch)
		}
	}
	t.Logf("whole test %v", time.Since(testStart).Round(time.Millisecond))
}

// run is the guest's "kill" request: it kills the current owner of
// gfVolume with SIGKILL and starts a watcher that waits (a minute at most)
// until another holder serves, then closes k.takeover. It runs on the
// guest control goroutine; nothing else touches the nodes meanwhile.
func (k *gfKill) run(ns, holders []*clusterNode) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.requested {
		return errors.New("the owner was already killed")
	}
	k.requested = true
	owner, epoch, err := gfOwner(ns, nil, gfVolume, 10*time.Second)
	if err != nil {
		k.err = err
		close(k.takeover)
		return err
	}
	owner.Kill()
	k.node, k.at, k.epoch = owner, time.Now(), epoch
	go func() {
		defer close(k.takeover)
		survivors := slices.DeleteFunc(slices.Clone(ns), func(n *clusterNode) bool { return n == owner })
		var (
			n   *clusterNode
			e   uint64
			err error
		)
		deadline := time.Now().Add(time.Minute)
		for {
			n, e, err = gfOwner(survivors, owner, gfVolume, time.Second)
			if err == nil && n != owner && slices.Contains(holders, n) {
				break
			}
			if time.Now().After(deadline) {
				k.mu.Lock()
				k.err = fmt.Errorf("killed %s; no other holder serves %s a minute later: %v", owner.name, gfVolume, err)
				k.mu.Unlock()
				return
			}
			time.Sleep(50 * time.Millisecond)
		}
		k.mu.Lock()
		k.newOwner, k.newEpoch, k.tookOver = n, e, time.Since(k.at)
		k.mu.Unlock()
	}()
	return nil
}

// gfReplication returns vol's replication state as n reports it.
func gfReplication(n *clusterNode, vol string) (*adminapi.Replication, error) {
	out, err := n.CLI("volume", "show", vol, "--output", "json")
	if err != nil {
		return nil, fmt.Errorf("%s: %v: %s", n.name, err, out)
	}
	var v adminapi.Volume
	if err := json.Unmarshal([]byte(out), &v); err != nil {
		return nil, fmt.Errorf("%s: volume show output: %v\n%s", n.name, err, out)
	}
	if v.Replication == nil {
		return nil, fmt.Errorf("%s: volume show %s has no replication state: %s", n.name, vol, out)
	}
	return v.Replication, nil
}

// gfNodeIDs returns node ID → name as n lists them.
func gfNodeIDs(n *clusterNode) (map[string]string, error) {
	nodes, err := n.nodes()
	if err != nil {
		return nil, err
	}
	ids := make(map[string]string)
	for _, nd := range nodes {
		ids[nd.ID] = nd.Name
	}
	return ids, nil
}

// gfHolders returns the nodes of ns that hold a copy of vol, as via reports.
func gfHolders(via *clusterNode, ns []*clusterNode, vol string) ([]*clusterNode, error) {
	r, err := gfReplication(via, vol)
	if err != nil {
		return nil, err
	}
	ids, err := gfNodeIDs(via)
	if err != nil {
		return nil, err
	}
	var hs []*clusterNode
	for _, ref := range r.Replicas {
		i := slices.IndexFunc(ns, func(n *clusterNode) bool { return nodeMatches(n, ref, ids) })
		if i < 0 {
			return nil, fmt.Errorf("replica %q of %s is not a node of the test (%v)", ref, vol, ids)
		}
		hs = append(hs, ns[i])
	}
	if len(hs) != 2 {
		return nil, fmt.Errorf("%s has replicas %v, want 2", vol, r.Replicas)
	}
	return hs, nil
}

// gfOwner polls the nodes of ns (skipping dead) until one reports an owner
// of vol that is a node of ns other than dead, and returns it with its
// epoch.
func gfOwner(ns []*clusterNode, dead *clusterNode, vol string, timeout time.Duration) (*clusterNode, uint64, error) {
	deadline := time.Now().Add(timeout)
	var last error
	for {
		for _, n := range ns {
			if n == dead {
				continue
			}
			r, err := gfReplication(n, vol)
			if err != nil {
				last = err
				continue
			}
			if r.Owner == "" {
				last = fmt.Errorf("%s reports no owner of %s (state %q)", n.name, vol, r.State)
				continue
			}
			ids, err := gfNodeIDs(n)
			if err != nil {
				last = err
				continue
			}
			for _, c := range ns {
				if c != dead && nodeMatches(c, r.Owner, ids) {
					return c, r.Epoch, nil
				}
			}
			last = fmt.Errorf("%s reports owner %q of %s, not a live node", n.name, r.Owner, vol)
		}
		if time.Now().After(deadline) {
			return nil, 0, fmt.Errorf("no owner of %s within %v: %v", vol, timeout, last)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// gfNames returns the nodes' names.
func gfNames(ns []*clusterNode) []string {
	var out []string
	for _, n := range ns {
		out = append(out, n.name)
	}
	return out
}

// gfSub returns a-b of two decimal strings, 0 when either does not parse.
func gfSub(a, b string) float64 {
	x, err1 := strconv.ParseFloat(a, 64)
	y, err2 := strconv.ParseFloat(b, 64)
	if err1 != nil || err2 != nil {
		return 0
	}
	return x - y
}

// gfSections returns the console text between each "STAVE-MPLL begin
// LABEL" and "STAVE-MPLL end LABEL" pair, headed by the begin line.
func gfSections(console string) []string {
	var out []string
	var cur *strings.Builder
	sc := bufio.NewScanner(strings.NewReader(console))
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		line := strings.TrimRight(sc.Text(), "\r")
		switch {
		case strings.Contains(line, "STAVE-MPLL begin "):
			cur = &strings.Builder{}
			cur.WriteString("multipath " + line[strings.Index(line, "STAVE-MPLL begin ")+len("STAVE-MPLL begin "):] + ":\n")
		case strings.Contains(line, "STAVE-MPLL end "):
			if cur != nil {
				out = append(out, cur.String())
				cur = nil
			}
		case cur != nil:
			cur.WriteString("  " + line + "\n")
		}
	}
	return out
}

// gfKernelLog returns up to max lines of the guest's kernel log (between
// the STAVE-DMESG markers) stamped at or after from seconds that tell
// the story of a failover: iSCSI connections, ALUA states, multipath.
func gfKernelLog(console string, from float64, max int) string {
	var b strings.Builder
	n := 0
	in := false
	sc := bufio.NewScanner(strings.NewReader(console))
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() && n < max {
		line := strings.TrimRight(sc.Text(), "\r")
		switch {
		case strings.Contains(line, "STAVE-DMESG begin"):
			in = true
			continue
		case strings.Contains(line, "STAVE-DMESG end"):
			in = false
		}
		if !in || !strings.HasPrefix(line, "[") {
			continue
		}
		stamp, text, ok := strings.Cut(line[1:], "]")
		at, err := strconv.ParseFloat(strings.TrimSpace(stamp), 64)
		if !ok || err != nil || at < from {
			continue
		}
		for _, k := range []string{"connection", "alua", "access state", "multipath", "session recovery", "offline", "beyond end"} {
			if strings.Contains(text, k) {
				fmt.Fprintf(&b, "  %s\n", line)
				n++
				break
			}
		}
	}
	return b.String()
}

// TestGuestFailoverConsoleParsing checks the console helpers of
// TestGuestMultipathFailover without a guest.
func TestGuestFailoverConsoleParsing(t *testing.T) {
	console := strings.Join([]string{
		"noise STAVE-MPLL begin before t=27.48",
		"mpatha (3653) dm-0 STAVE,VOLUME",
		"STAVE-MPLL end before",
		"[   45.0] sd 0:0:0:0: alua: early, before the kill",
		"STAVE-DMESG begin",
		"[   40.000000] sd 0:0:0:0: alua: port group 02 state S",
		"[   45.755755]  connection2:0: detected conn error (1020)",
		"[   46.000000] random unrelated line",
		"[   50.126570] sd 0:0:0:0: alua: port group 02 state A preferred",
		"STAVE-DMESG end",
		"[   51.0] device-mapper: multipath: after the log",
	}, "\r\n")
	secs := gfSections(console)
	if len(secs) != 1 || !strings.HasPrefix(secs[0], "multipath before t=27.48:\n") || !strings.Contains(secs[0], "  mpatha (3653)") {
		t.Errorf("gfSections = %q", secs)
	}
	got := gfKernelLog(console, 45, 10)
	want := "  [   45.755755]  connection2:0: detected conn error (1020)\n" +
		"  [   50.126570] sd 0:0:0:0: alua: port group 02 state A preferred\n"
	if got != want {
		t.Errorf("gfKernelLog =\n%s\nwant\n%s", got, want)
	}
	if got := gfKernelLog(console, 45, 1); strings.Count(got, "\n") != 1 {
		t.Errorf("gfKernelLog with max 1 = %q", got)
	}
}
