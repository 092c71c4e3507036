// Package sdnotify tells systemd about the daemon's state, like
// sd_notify(3): one datagram of newline-separated VAR=VALUE assignments
// sent to the unix datagram socket that systemd names in $NOTIFY_SOCKET
// for a unit with Type=notify.
//
//	READY=1       start-up finished: portals and API socket accept connections
//	STOPPING=1    shutdown began
//	STATUS=text   one line shown by `systemctl status`
//
// The package reads no environment: cmd/stave passes the value of
// $NOTIFY_SOCKET in. Outside systemd it is empty and Notify does nothing.
package sdnotify

import (
	"errors"
	"fmt"
	"net"
	"strings"
)

// States understood by systemd (sd_notify(3)).
const (
	// Ready says start-up is finished.
	Ready = "READY=1"
	// Stopping says the service is shutting down.
	Stopping = "STOPPING=1"
)

// ErrBadSocket is returned for a $NOTIFY_SOCKET that is neither a path
// nor an abstract socket name.
var ErrBadSocket = errors.New("sdnotify: NOTIFY_SOCKET is not an absolute path or @abstract name")

// Status returns the STATUS= assignment for a one-line status text.
func Status(text string) string {
	return "STATUS=" + strings.ReplaceAll(text, "\n", " ")
}

// Notify sends the assignments (e.g. Ready, Status("serving")) in one
// datagram to socket, the value of $NOTIFY_SOCKET. A socket starting
// with '@' is in the abstract namespace. An empty socket means the
// process is not run by systemd with Type=notify: Notify returns
// (false, nil). It is safe for concurrent use.
func Notify(socket string, assignments ...string) (sent bool, err error) {
	if socket == "" {
		return false, nil
	}
	if socket[0] != '/' && socket[0] != '@' {
		return false, fmt.Errorf("%w: %q", ErrBadSocket, socket)
	}
	name := socket
	if name[0] == '@' {
		name = "\x00" + name[1:]
	}
	c, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: name, Net: "unixgram"})
	if err != nil {
		return false, fmt.Errorf("sdnotify: %w", err)
	}
	defer c.Close()
	if _, err := c.Write([]byte(strings.Join(assignments, "\n"))); err != nil {
		return false, fmt.Errorf("sdnotify: %w", err)
	}
	return true, nil
}
