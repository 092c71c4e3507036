package pool

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// loopDevice attaches a loop device over a new sparse file of size bytes
// and detaches it when the test ends. It skips the test when loop devices
// cannot be set up (not root, no losetup, no /dev/loop*).
func loopDevice(t *testing.T, size int64) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("loop devices need root")
	}
	if _, err := exec.LookPath("losetup"); err != nil {
		t.Skip("no losetup")
	}
	img := filepath.Join(t.TempDir(), "img")
	f, err := os.Create(img)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	f.Close()
	out, err := exec.Command("losetup", "--find", "--show", img).Output()
	if err != nil {
		t.Skipf("no loop device: %v", err)
	}
	dev := strings.TrimSpace(string(out))
	t.Cleanup(func() {
		if out, err := exec.Command("losetup", "--detach", dev).CombinedOutput(); err != nil {
			t.Errorf("losetup --detach %s: %v: %s", dev, err, out)
		}
	})
	return dev
}

// TestBlockDeviceExclusive: a pool holds its block devices exclusively, so
// that a second pool (or a second Open of the same pool) cannot write to
// them, and says why.
func TestBlockDeviceExclusive(t *testing.T) {
	dev := loopDevice(t, 64<<20)
	ctx := context.Background()
	meta := filepath.Join(t.TempDir(), "meta")
	if err := Create(ctx, CreateOptions{Devices: []string{dev}, MetaDir: meta, SegmentSize: minSegmentSize}); err != nil {
		t.Fatalf("Create on %s: %v", dev, err)
	}
	p, err := Open(ctx, Options{MetaDir: meta})
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	busy := func(what string, err error) {
		t.Helper()
		t.Logf("%s: %v", what, err)
		if !errors.Is(err, syscall.EBUSY) || !strings.Contains(err.Error(), "in use") {
			t.Errorf("%s while the pool is open: got %v, want an 'in use' error wrapping EBUSY", what, err)
		}
	}
	_, err = openOSDevice(dev)
	busy("opening the device", err)
	err = Create(ctx, CreateOptions{Devices: []string{dev}, MetaDir: filepath.Join(t.TempDir(), "other"), SegmentSize: minSegmentSize})
	busy("Create of another pool on the device", err)
	if p2, err := Open(ctx, Options{MetaDir: meta}); err == nil {
		p2.Close()
		t.Error("a second Open of the pool succeeded while the first holds its device")
	} else {
		busy("a second Open of the pool", err)
	}
	if err := p.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	// Closed: the device is free again.
	d, err := openOSDevice(dev)
	if err != nil {
		t.Fatalf("open after Close: %v", err)
	}
	d.Close()
	p, err = Open(ctx, Options{MetaDir: meta})
	if err != nil {
		t.Fatalf("reopen: %v", err)
	}
	if err := p.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
}

// TestMountedDeviceRefused: Create refuses a block device that holds a
// mounted filesystem.
func TestMountedDeviceRefused(t *testing.T) {
	dev := loopDevice(t, 32<<20)
	if out, err := exec.Command("mkfs.ext4", "-q", dev).CombinedOutput(); err != nil {
		t.Skipf("mkfs.ext4: %v: %s", err, out)
	}
	mnt := t.TempDir()
	if out, err := exec.Command("mount", dev, mnt).CombinedOutput(); err != nil {
		t.Skipf("mount: %v: %s", err, out)
	}
	defer func() {
		if out, err := exec.Command("umount", mnt).CombinedOutput(); err != nil {
			t.Errorf("umount: %v: %s", err, out)
		}
	}()
	err := Create(context.Background(), CreateOptions{Devices: []string{dev}, MetaDir: filepath.Join(t.TempDir(), "meta"), SegmentSize: minSegmentSize})
	t.Logf("Create on a mounted device: %v", err)
	if !errors.Is(err, syscall.EBUSY) || !strings.Contains(err.Error(), "in use") {
		t.Errorf("Create on a mounted device: got %v, want an 'in use' error wrapping EBUSY", err)
	}
}
