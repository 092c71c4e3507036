package sdnotify

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// listen opens a datagram socket like systemd's notify socket.
func listen(t *testing.T, name string) *net.UnixConn {
	t.Helper()
	c, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: name, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func recv(t *testing.T, c *net.UnixConn) string {
	t.Helper()
	if err := c.SetReadDeadline(time.Now().Add(5 * time.Second)); err != nil {
		t.Fatal(err)
	}
	b := make([]byte, 4096)
	n, err := c.Read(b)
	if err != nil {
		t.Fatal(err)
	}
	return string(b[:n])
}

func TestNotifyPath(t *testing.T) {
	p := filepath.Join(t.TempDir(), "notify")
	c := listen(t, p)
	sent, err := Notify(p, Ready, Status("serving 3 volumes\non [::]:3260"))
	if err != nil || !sent {
		t.Fatalf("Notify: %v, %v", sent, err)
	}
	if got, want := recv(t, c), "READY=1\nSTATUS=serving 3 volumes on [::]:3260"; got != want {
		t.Errorf("got %q, want %q", got, want)
	}
}

func TestNotifyAbstract(t *testing.T) {
	name := fmt.Sprintf("@stave-sdnotify-test-%d", os.Getpid())
	c := listen(t, "\x00"+name[1:])
	if sent, err := Notify(name, Stopping); err != nil || !sent {
		t.Fatalf("Notify: %v, %v", sent, err)
	}
	if got := recv(t, c); got != Stopping {
		t.Errorf("got %q", got)
	}
}

func TestNotifyNoSocket(t *testing.T) {
	if sent, err := Notify("", Ready); sent || err != nil {
		t.Errorf("empty socket: %v, %v", sent, err)
	}
	if _, err := Notify("relative/path", Ready); !errors.Is(err, ErrBadSocket) {
		t.Errorf("relative path: %v", err)
	}
	if sent, err := Notify(filepath.Join(t.TempDir(), "none"), Ready); sent || err == nil {
		t.Errorf("missing socket: %v, %v", sent, err)
	}
}
