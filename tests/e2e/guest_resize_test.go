package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// guestResizeSteps lists the STAVE-STEP names guest_resize.sh prints.
var guestResizeSteps = []string{
	"resize-discovery", "resize-login", "resize-size-before", "resize-mkfs", "resize-mount",
	"resize-df-before", "resize-host", "resize-rescan", "resize-size-after", "resize-resize2fs",
	"resize-df-after", "resize-file-intact", "resize-write-new-space", "resize-umount", "resize-fsck",
	"resize-logout", "no-session-at-end",
}

// Sizes of the resize test's volume.
const (
	resizeBefore = 64 << 20
	resizeAfter  = 192 << 20
)

// TestGuestResize grows a volume online under a mounted ext4 file system
// in the Linux initiator: the guest writes a file, the host runs `stave
// volume resize`, the guest rescans the session, sees the new size,
// grows the file system with resize2fs while it is mounted, and finds its
// file intact and the new space usable. The daemon is then killed and
// restarted: the new size stays.
func TestGuestResize(t *testing.T) {
	requireE2E(t)
	qemu := requireTool(t, "qemu-system-x86_64")
	img := buildGuest(t)

	d := startDaemon(t)
	d.MustCLI("volume", "create", "grow", "--size", "64MiB")
	var resizeOut string
	ctl := startGuestControl(t, map[string]func() error{
		"resize": func() error {
			out, err := d.CLI("volume", "resize", "grow", "--size", "192MiB")
			resizeOut = out
			return err
		},
	})
	vars := map[string]string{
		"PORTAL":      fmt.Sprintf("%s:%d", guestHostAlias, d.Port()),
		"CTL_PORT":    fmt.Sprint(ctl.Port()),
		"IQN":         staveIQN("grow"),
		"SIZE_BEFORE": fmt.Sprint(resizeBefore),
		"SIZE_AFTER":  fmt.Sprint(resizeAfter),
	}
	run, elapsed := runGuestScript(t, qemu, img, "guest_resize.sh", vars)
	t.Logf("guest run: %v, %d steps reported\n%s", elapsed.Round(time.Second), len(run.steps), guestStepSummary(run, nil))
	t.Logf("stave volume resize printed: %s", strings.TrimSpace(resizeOut))
	if !run.ready || !run.done || run.scriptRC != 0 {
		t.Errorf("guest ready %v done %v script exit status %d", run.ready, run.done, run.scriptRC)
	}
	for _, s := range checkGuestSteps(run, guestResizeSteps, nil) {
		t.Errorf("%s", s)
	}
	if !strings.Contains(d.Log(), "capacity changed") {
		t.Errorf("the daemon did not log the LU's capacity change")
	}

	// The new size is durable: in etcd, in the backing file, after a crash.
	d.Kill()
	d.start()
	out := d.MustCLI("volume", "show", "grow", "-o", "json")
	if !strings.Contains(out, fmt.Sprintf(`"size": %d`, resizeAfter)) || !strings.Contains(out, `"exported": true`) {
		t.Errorf("after kill -9 and restart:\n%s", out)
	}
	st, err := os.Stat(filepath.Join(d.DataDir(), "volumes", "grow", "data"))
	if err != nil || st.Size() != resizeAfter {
		t.Errorf("backing file after resize: %v %v", st, err)
	}
}
