package e2e

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"
)

// guestSCSISteps lists, in order, the STAVE-STEP names guest_scsi.sh
// prints. Every one must be reported ok.
var guestSCSISteps = []string{
	"discovery-two-ifaces",
	// Persistent reservations from two I_T nexuses, APTPL across a restart.
	"pr-login", "pr-two-sessions", "pr-two-nexuses", "pr-two-disks", "pr-no-keys",
	"pr-register-a", "pr-register-b", "pr-keys-ab", "pr-reserve-a", "pr-held-by-a",
	"pr-write-b-conflict", "pr-read-b", "pr-write-a",
	"pr-preempt-abort-b", "pr-held-by-b", "pr-a-gone", "pr-write-a-conflict", "pr-write-b",
	"pr-register-a-aptpl", "pr-aptpl", "pr-keys-before-restart", "pr-held-before-restart",
	"pr-restart", "pr-sessions-recovered", "pr-read-a-after-restart",
	"pr-keys-after-restart", "pr-held-after-restart", "pr-aptpl-after-restart",
	"pr-write-a-conflict-after-restart", "pr-write-b-after-restart",
	"pr-clear", "pr-no-keys-after-clear", "pr-logout",
	// Thin provisioning through ext4 and fstrim.
	"thin-login", "thin-mkfs", "thin-mount", "thin-alloc-mkfs", "thin-write-48m",
	"thin-alloc-written", "thin-rm", "thin-fstrim", "thin-alloc-trimmed",
	"thin-umount", "thin-fsck", "thin-logout",
	// WRITE SAME, UNMAP and the provisioning VPD pages.
	"ws-login", "ws-readcap-lbpme", "ws-vpd-lbpv", "ws-vpd-bl", "ws-kernel-unmap-mode",
	"ws-zeroout-prep", "ws-zeroout", "ws-zeroout-reads-zero", "ws-zeroout-neighbours",
	"ws-zeroout-used-write-same",
	"ws-discard-prep", "ws-alloc-discard-before", "ws-discard", "ws-discard-reads-zero",
	"ws-alloc-discard-after",
	"ws-write-same", "ws-write-same-readback", "ws-alloc-unmap-before",
	"ws-write-same-unmap", "ws-unmap-reads-zero", "ws-alloc-unmap-after",
	"ws-logout",
	"no-session-at-end",
}

// guestSecondIQN is the initiator name of the guest's second iface: the
// second I_T nexus of the reservation steps.
const guestSecondIQN = "iqn.2026-11.dev.stave.test:second"

// allocPoint is one measurement of a volume's allocated bytes the guest
// asks for ("alloc <label>"), with the bound it must meet against an
// earlier measurement, base.
//
// The bounds are sound for an ext4 or XFS host file system with blocks
// of at most 4 KiB: the guest's ranges are 4 KiB aligned and were written
// with non-zero data just before.
type allocPoint struct {
	label, volume string
	base          string // earlier label compared with; "" for none
	minGrowth     int64  // bytes the allocation must grow by since base
	minDrop       int64  // bytes the allocation must shrink by since base
	max           int64  // upper bound on the allocation itself; 0 for none
	why           string
}

var guestAllocPoints = []allocPoint{
	// mkfs -E nodiscard,lazy_itable_init=0,lazy_journal_init=0 on
	// 128 MiB writes (and zeroes) inode tables, bitmaps and the journal:
	// 24.2 MiB with bookworm's e2fsprogs 1.47.0.
	{label: "thin-mkfs", volume: "thin", max: 32 << 20,
		why: "a fresh volume holds only what mkfs wrote"},
	// 48 MiB of random file data lands in blocks mkfs did not touch;
	// 4 MiB of slack for blocks mkfs zapped (start and end of the device).
	{label: "thin-written", volume: "thin", base: "thin-mkfs", minGrowth: 44 << 20,
		why: "48 MiB of files allocate the blocks they are written to"},
	// rm + fstrim frees the 48 MiB again; 8 MiB of slack for ext4
	// metadata rewritten in between and for free extents fstrim skips.
	{label: "thin-trimmed", volume: "thin", base: "thin-written", minDrop: 40 << 20,
		why: "fstrim after rm deallocates most of the 48 MiB the files took"},
	{label: "ws-discard-before", volume: "ws"},
	{label: "ws-discard-after", volume: "ws", base: "ws-discard-before", minDrop: 4 << 20,
		why: "blkdiscard (UNMAP) of a written, aligned 4 MiB range punches it"},
	{label: "ws-unmap-before", volume: "ws"},
	{label: "ws-unmap-after", volume: "ws", base: "ws-unmap-before", minDrop: 1 << 20,
		why: "WRITE SAME(16) with UNMAP of a written, aligned 1 MiB range punches it"},
}

// allocMeter records the allocated bytes of volumes' data files at the
// guest's request. Safe for concurrent use.
type allocMeter struct {
	dataFile func(volume string) string
	mu       sync.Mutex
	got      map[string]int64 // label → allocated bytes
}

// allocated returns the bytes the file system allocated to path
// (st_blocks × 512).
func allocated(path string) (int64, error) {
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		return 0, err
	}
	return st.Blocks * 512, nil
}

// measure records p's volume allocation and checks p's bound against
// what was recorded for p.base. The error goes back to the guest, whose
// step then fails; the test checks the same bounds again afterwards.
func (m *allocMeter) measure(p allocPoint) error {
	n, err := allocated(m.dataFile(p.volume))
	if err != nil {
		return err
	}
	m.mu.Lock()
	m.got[p.label] = n
	m.mu.Unlock()
	return m.check(p)
}

// check returns an error if p was measured and breaks its bound.
func (m *allocMeter) check(p allocPoint) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	n, ok := m.got[p.label]
	if !ok {
		return fmt.Errorf("%s: not measured", p.label)
	}
	if p.max > 0 && n > p.max {
		return fmt.Errorf("%s: %s allocates %d bytes, want at most %d (%s)", p.label, p.volume, n, p.max, p.why)
	}
	if p.base == "" {
		return nil
	}
	b, ok := m.got[p.base]
	if !ok {
		return fmt.Errorf("%s: base %s not measured", p.label, p.base)
	}
	if p.minGrowth > 0 && n-b < p.minGrowth {
		return fmt.Errorf("%s: %s allocation %d → %d bytes (+%d), want growth of at least %d (%s)",
			p.label, p.volume, b, n, n-b, p.minGrowth, p.why)
	}
	if p.minDrop > 0 && b-n < p.minDrop {
		return fmt.Errorf("%s: %s allocation %d → %d bytes (-%d), want a drop of at least %d (%s)",
			p.label, p.volume, b, n, b-n, p.minDrop, p.why)
	}
	return nil
}

// summary formats the measurements in guestAllocPoints order.
func (m *allocMeter) summary() string {
	m.mu.Lock()
	defer m.mu.Unlock()
	var b bytes.Buffer
	for _, p := range guestAllocPoints {
		if n, ok := m.got[p.label]; ok {
			fmt.Fprintf(&b, "  %-20s %-5s %10d bytes (%.1f MiB)\n", p.label, p.volume, n, float64(n)/(1<<20))
		}
	}
	return b.String()
}

// TestGuestSCSI drives SCSI features of the target through the Linux
// kernel initiator and sg3-utils in one QEMU guest boot
// (testdata/guest_scsi.sh):
//
//  1. Persistent reservations from two I_T nexuses (two ifaces with
//     different initiator names): register, reserve Write Exclusive,
//     RESERVATION CONFLICT for the other nexus's writes, PREEMPT AND
//     ABORT, APTPL; then a daemon restart (through guestControl) keeps
//     the registrations and the reservation.
//  2. Thin provisioning through ext4: writing files allocates the data
//     file, rm + fstrim deallocates it (measured on the host).
//  3. blkdiscard -z (WRITE SAME), blkdiscard (UNMAP), sg_write_same with
//     a pattern and with UNMAP, and the provisioning VPD pages.
func TestGuestSCSI(t *testing.T) {
	requireE2E(t)
	qemu := requireTool(t, "qemu-system-x86_64")
	img := buildGuest(t)

	d := startDaemon(t)
	d.MustCLI("volume", "create", "pr", "--size", "16MiB")
	d.MustCLI("volume", "create", "thin", "--size", "128MiB")
	d.MustCLI("volume", "create", "ws", "--size", "64MiB")

	// Fresh volumes are sparse: the measurements start from nothing.
	for _, v := range []string{"pr", "thin", "ws"} {
		if n, err := allocated(filepath.Join(d.DataDir(), "volumes", v, "data")); err != nil || n != 0 {
			t.Fatalf("fresh volume %s: %d bytes allocated (%v), want 0", v, n, err)
		}
	}
	meter := &allocMeter{
		dataFile: func(v string) string { return filepath.Join(d.DataDir(), "volumes", v, "data") },
		got:      make(map[string]int64),
	}
	handlers := map[string]func() error{"restart": d.RestartErr}
	for _, p := range guestAllocPoints {
		handlers["alloc "+p.label] = func() error { return meter.measure(p) }
	}
	ctl := startGuestControl(t, handlers)

	vars := map[string]string{
		"PORTAL":     fmt.Sprintf("%s:%d", guestHostAlias, d.Port()),
		"CTL_PORT":   fmt.Sprint(ctl.Port()),
		"IQN_PR":     staveIQN("pr"),
		"IQN_THIN":   staveIQN("thin"),
		"IQN_WS":     staveIQN("ws"),
		"SECOND_IQN": guestSecondIQN,
	}
	run, elapsed := runGuestScript(t, qemu, img, "guest_scsi.sh", vars)
	t.Logf("guest run: %v, ready after %.1fs of guest uptime, %d steps reported\n%s",
		elapsed.Round(time.Second), run.readyAt, len(run.steps), guestStepSummary(run, nil))
	t.Logf("data file allocation:\n%s", meter.summary())

	if !run.ready {
		t.Errorf("guest never reported STAVE-GUEST ready (boot or image problem)")
	}
	if !run.done {
		t.Errorf("guest never reported STAVE-GUEST done (hung or crashed)")
	}
	if run.scriptRC != 0 {
		t.Errorf("guest script exit status %d", run.scriptRC)
	}
	for _, s := range checkGuestSteps(run, guestSCSISteps, nil) {
		t.Errorf("%s", s)
	}
	for _, p := range guestAllocPoints {
		if err := meter.check(p); err != nil {
			t.Errorf("allocation: %v", err)
		}
	}
	// For the record: the persisted state after the final CLEAR.
	if b, err := os.ReadFile(filepath.Join(d.DataDir(), "volumes", "pr", "pr.json")); err == nil {
		t.Logf("pr.json at the end: %s", bytes.TrimSpace(b))
	}
}
