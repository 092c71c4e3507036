package e2e

import (
	"bufio"
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"
	"time"
)

// guestControl is a line-based TCP service on the host's loopback through
// which the guest script asks the test to act on the target mid-run (the
// guest reaches it as 10.0.2.2:port with bash's /dev/tcp). A request is one
// line holding a command name; the reply is one line, "ok" or "err <why>".
// Handlers run one at a time, on the service's goroutine, so they must not
// call t.Fatal.
type guestControl struct {
	l        net.Listener
	handlers map[string]func() error
	wg       sync.WaitGroup
	mu       sync.Mutex
	log      []string // commands served, with their results
}

// startGuestControl listens on a free loopback port and serves handlers
// until the test ends.
func startGuestControl(t *testing.T, handlers map[string]func() error) *guestControl {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	c := &guestControl{l: l, handlers: handlers}
	c.wg.Add(1)
	go c.serve()
	t.Cleanup(func() {
		l.Close()
		c.wg.Wait()
		t.Logf("guest control requests: %q", c.Log())
	})
	return c
}

// Port returns the service's TCP port.
func (c *guestControl) Port() int { return c.l.Addr().(*net.TCPAddr).Port }

// Log returns the requests served so far and their outcomes.
func (c *guestControl) Log() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]string(nil), c.log...)
}

func (c *guestControl) serve() {
	defer c.wg.Done()
	for {
		conn, err := c.l.Accept()
		if err != nil {
			return
		}
		c.handle(conn)
	}
}

// handle serves one request on conn; a request has a minute to arrive.
func (c *guestControl) handle(conn net.Conn) {
	defer conn.Close()
	conn.SetReadDeadline(time.Now().Add(time.Minute))
	line, err := bufio.NewReader(conn).ReadString('\n')
	if err != nil {
		return
	}
	cmd := strings.TrimSpace(line)
	reply := "ok"
	start := time.Now()
	if h, ok := c.handlers[cmd]; !ok {
		reply = "err unknown command " + cmd
	} else if err := h(); err != nil {
		reply = "err " + strings.ReplaceAll(err.Error(), "\n", " ")
	}
	c.mu.Lock()
	c.log = append(c.log, fmt.Sprintf("%s: %s (%v)", cmd, reply, time.Since(start).Round(time.Millisecond)))
	c.mu.Unlock()
	conn.SetWriteDeadline(time.Now().Add(10 * time.Second))
	fmt.Fprintln(conn, reply)
}
