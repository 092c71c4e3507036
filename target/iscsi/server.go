package iscsi

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"stave.dev/stave/internal/logkey"
	"stave.dev/stave/target/iscsi/login"
	"stave.dev/stave/target/scsi"
)

// Portal is one listening address of the target (a network portal in a
// portal group).
type Portal struct {
	// Listen is the host:port to bind ("0.0.0.0:3260", "[::]:3260",
	// "127.0.0.1:0").
	Listen string
	// Advertise is the host:port announced by SendTargets. Empty means
	// Listen, or the local address of the discovery connection when Listen
	// is a wildcard address.
	Advertise string
	// TPGT is the target portal group tag (default 1).
	TPGT uint16
}

// Target is one iSCSI target exported by the server.
type Target struct {
	// Name is the iSCSI target name (IQN); Alias is optional.
	Name, Alias string
	// ACL lists the initiator names allowed to log in and to see the
	// target in SendTargets; empty means any initiator.
	ACL []string
	// Auth requires CHAP for normal sessions when non-nil.
	Auth *login.Auth
	// Device executes the SCSI commands of the target.
	Device scsi.Device
	// PortGroup is the ALUA target port group (SPC-4 §5.11.2) of this
	// server's ports for the target: in a cluster, one group per node.
	// Zero means 1.
	PortGroup uint16
	// RelativePortBase is added to a portal's 1-based index to form the
	// relative target port identifier of its nexuses, so that the ports
	// of a target served by several nodes are distinct. Zero for a
	// target served by one node.
	RelativePortBase uint16
	// Peers are TargetAddress values ("host:port,tpgt") of the other
	// nodes that serve the target; SendTargets announces them after this
	// server's own portals.
	Peers []string
	// Lead are TargetAddress values SendTargets announces before this
	// server's own portals (a floating portal address that follows the
	// target's owner).
	Lead []string
}

// allows reports whether initiator may use t. iSCSI names compare without
// regard to case (RFC 3722 maps them to lower case), as the login ACL check does.
func (t *Target) allows(initiator string) bool {
	return len(t.ACL) == 0 || slices.ContainsFunc(t.ACL, func(a string) bool { return strings.EqualFold(a, initiator) })
}

// TargetSource resolves targets; the server calls it at login and for
// SendTargets, so targets may come and go. Implementations must be safe for
// concurrent use.
type TargetSource interface {
	Target(name string) (*Target, bool)
	Targets() []*Target
}

// DataOutLengther may be implemented by a scsi.Device to tell the transport
// how many Data-Out bytes a CDB transfers, so that write residuals (RFC 7143
// §11.4.5) can be reported. ok is false when the CDB has no data-out
// length the device knows of. Without it, the transport assumes 512-byte
// blocks for WRITE and WRITE AND VERIFY (6/10/12/16) and reports no write
// residual for other commands.
type DataOutLengther interface {
	DataOutLength(lun uint64, cdb []byte) (n int, ok bool)
}

// Config configures a Server.
type Config struct {
	// Logger receives Info lines for logins, logouts and reinstatements,
	// Debug lines per PDU. Nil discards.
	Logger *slog.Logger
	// Portals are the addresses to listen on; at least one.
	Portals []Portal
	// Targets resolves target names; required.
	Targets TargetSource
	// DiscoveryAuth requires CHAP for discovery sessions when non-nil.
	DiscoveryAuth *login.Auth
	// NOPInterval is the idle time after which the target pings the
	// initiator with a NOP-In; zero disables pings. NOPTimeout (default
	// NOPInterval) is how long to wait for the NOP-Out answer before
	// dropping the connection.
	NOPInterval, NOPTimeout time.Duration
	// Limits are the target's negotiation limits.
	Limits login.Limits

	// QueueDepth is the CmdSN window of a session (default 128).
	QueueDepth int
	// LoginTimeout bounds the login phase of a connection (default 15s).
	LoginTimeout time.Duration
	// ShutdownTimeout is how long Serve waits for initiators to log out
	// after asking them to (default 3s).
	ShutdownTimeout time.Duration
	// WriteTimeout drops a connection whose initiator does not accept
	// data for this long (default 30s).
	WriteTimeout time.Duration
	// Rand supplies CHAP challenges; nil means crypto/rand.
	Rand io.Reader
}

// SessionInfo describes one session for `stave session list`.
type SessionInfo struct {
	InitiatorName, InitiatorAlias, TargetName, ISID string
	TSIH                                            uint16
	// Portal is the local address and Remote the initiator's address of
	// the session's first connection.
	Portal, Remote string
	// Type is "Normal" or "Discovery".
	Type        string
	Params      login.Params
	Connections int
}

// Server errors.
var (
	// ErrNoPortals means Config.Portals is empty.
	ErrNoPortals = errors.New("iscsi: no portals configured")
	// ErrNoTargets means Config.Targets is nil.
	ErrNoTargets = errors.New("iscsi: no target source configured")
	// ErrServerClosed is returned by Serve when called twice.
	ErrServerClosed = errors.New("iscsi: server already served")
)

// sessionKey identifies a session for reinstatement (RFC 7143 §4.4.3):
// initiator name, ISID, target and portal group.
type sessionKey struct {
	initiator string
	isid      [6]byte
	target    string
	tpgt      uint16
}

// portalState is a configured portal with its listener.
type portalState struct {
	cfg   Portal
	index int // relative target port = index+1
	ln    net.Listener
}

// Server is an iSCSI target server. Create it with NewServer, bind with
// Listen, run with Serve. Sessions and CloseTarget are safe for concurrent
// use.
type Server struct {
	cfg     Config
	log     *slog.Logger
	portals []*portalState
	pools   bufPools
	// stats counts, for tests and benchmarks: write batches and their
	// PDUs, commands run inline by the reader, and rescues.
	stats struct{ batches, pdus, inline, rescues atomic.Int64 }

	baseCtx    context.Context // connections' context; cancelled after drain
	baseCancel context.CancelFunc
	connWG     sync.WaitGroup

	mu struct {
		sync.Mutex
		served   bool
		closing  bool
		nextTSIH uint16
		sessions map[uint16]*session
		byKey    map[sessionKey]*session
		conns    map[*conn]struct{}
		changed  chan struct{} // closed and replaced when sessions change
	}
}

// NewServer validates cfg and returns a Server. It does not bind.
func NewServer(cfg Config) (*Server, error) {
	if len(cfg.Portals) == 0 {
		return nil, ErrNoPortals
	}
	if cfg.Targets == nil {
		return nil, ErrNoTargets
	}
	if err := cfg.Limits.Validate(); err != nil {
		return nil, fmt.Errorf("iscsi: %w", err)
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.QueueDepth <= 0 {
		cfg.QueueDepth = 128
	}
	if cfg.LoginTimeout <= 0 {
		cfg.LoginTimeout = 15 * time.Second
	}
	if cfg.ShutdownTimeout <= 0 {
		cfg.ShutdownTimeout = 3 * time.Second
	}
	if cfg.WriteTimeout <= 0 {
		cfg.WriteTimeout = 30 * time.Second
	}
	if cfg.NOPTimeout <= 0 {
		cfg.NOPTimeout = cfg.NOPInterval
	}
	if cfg.Rand == nil {
		cfg.Rand = rand.Reader
	}
	s := &Server{cfg: cfg, log: cfg.Logger}
	for i, p := range cfg.Portals {
		if p.TPGT == 0 {
			p.TPGT = 1
		}
		if _, _, err := net.SplitHostPort(p.Listen); err != nil {
			return nil, fmt.Errorf("iscsi: portal %q: %w", p.Listen, err)
		}
		s.portals = append(s.portals, &portalState{cfg: p, index: i})
	}
	s.baseCtx, s.baseCancel = context.WithCancel(context.Background())
	s.mu.sessions = make(map[uint16]*session)
	s.mu.byKey = make(map[sessionKey]*session)
	s.mu.conns = make(map[*conn]struct{})
	s.mu.changed = make(chan struct{})
	return s, nil
}

// Listen binds every portal. It returns the first bind error (for example
// the port is in use) after closing the listeners it opened. Calling it
// again is a no-op.
func (s *Server) Listen() error {
	for i, p := range s.portals {
		if p.ln != nil {
			continue
		}
		ln, err := net.Listen("tcp", p.cfg.Listen)
		if err != nil {
			for _, q := range s.portals[:i] {
				q.ln.Close()
				q.ln = nil
			}
			return fmt.Errorf("iscsi: listen %s: %w", p.cfg.Listen, err)
		}
		p.ln = ln
	}
	return nil
}

// Addrs returns the bound address of each portal (after Listen), in
// Config.Portals order; useful with port 0.
func (s *Server) Addrs() []net.Addr {
	var a []net.Addr
	for _, p := range s.portals {
		if p.ln != nil {
			a = append(a, p.ln.Addr())
		}
	}
	return a
}

// Serve accepts connections on every portal until ctx is done. Then it
// stops accepting, sends every full-feature connection an Async Message
// requesting logout, waits up to ShutdownTimeout for the sessions to end,
// closes what is left and returns once every connection goroutine has
// exited. It returns nil after a shutdown through ctx, or the error that
// stopped a listener.
func (s *Server) Serve(ctx context.Context) error {
	if err := s.Listen(); err != nil {
		return err
	}
	s.mu.Lock()
	if s.mu.served {
		s.mu.Unlock()
		return ErrServerClosed
	}
	s.mu.served = true
	s.mu.Unlock()

	errc := make(chan error, len(s.portals))
	var acceptWG sync.WaitGroup
	for _, p := range s.portals {
		acceptWG.Add(1)
		go func() {
			defer acceptWG.Done()
			errc <- s.accept(p)
		}()
	}
	var err error
	select {
	case <-ctx.Done():
	case err = <-errc:
	}
	s.mu.Lock()
	s.mu.closing = true
	s.mu.Unlock()
	for _, p := range s.portals {
		p.ln.Close()
	}
	acceptWG.Wait()
	s.drain()
	s.baseCancel()
	s.mu.Lock()
	for c := range s.mu.conns {
		c.abort()
	}
	s.mu.Unlock()
	s.connWG.Wait()
	return err
}

// accept runs the accept loop of one portal.
func (s *Server) accept(p *portalState) error {
	for {
		nc, err := p.ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			return fmt.Errorf("iscsi: accept on %s: %w", p.cfg.Listen, err)
		}
		s.serveConn(nc, p)
	}
}

// serveConn starts the goroutine of one accepted connection.
func (s *Server) serveConn(nc net.Conn, p *portalState) {
	c := newConn(s, nc, p)
	s.mu.Lock()
	if s.mu.closing {
		s.mu.Unlock()
		nc.Close()
		return
	}
	s.mu.conns[c] = struct{}{}
	s.connWG.Add(1)
	s.mu.Unlock()
	go func() {
		defer s.connWG.Done()
		c.serve()
		s.mu.Lock()
		delete(s.mu.conns, c)
		s.mu.Unlock()
	}()
}

// drain asks every session to log out and waits up to ShutdownTimeout.
func (s *Server) drain() {
	s.mu.Lock()
	var conns []*conn
	for _, ss := range s.mu.sessions {
		conns = append(conns, ss.connList()...)
	}
	n := len(s.mu.sessions)
	s.mu.Unlock()
	if n == 0 {
		return
	}
	// A connection whose login is accepted but not yet attached asks
	// for itself when it attaches (session.addConn sees s.mu.closing).
	for _, c := range conns {
		c.requestLogout()
	}
	t := time.NewTimer(s.cfg.ShutdownTimeout)
	defer t.Stop()
	for {
		s.mu.Lock()
		n := len(s.mu.sessions)
		ch := s.mu.changed
		s.mu.Unlock()
		if n == 0 {
			return
		}
		select {
		case <-ch:
		case <-t.C:
			s.log.Info("iscsi: shutdown timeout, closing sessions", "sessions", n)
			return
		}
	}
}

// closing reports whether Serve is shutting down.
func (s *Server) closing() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.mu.closing
}

// requestLogout queues one Async Message asking the initiator to log out
// within the shutdown timeout (RFC 7143 §11.9.1, AsyncEvent 1), once per
// connection.
func (c *conn) requestLogout() {
	if !c.logoutRequested.CompareAndSwap(false, true) {
		return
	}
	secs := uint16(max(1, c.srv.cfg.ShutdownTimeout/time.Second))
	o := outPDU{stat: statAdvance}
	(&AsyncMessage{Event: AsyncLogoutRequest, Parameter3: secs}).AppendTo(o.hdr[:0])
	c.queue(&o)
}

// Sessions returns a snapshot of the current sessions.
func (s *Server) Sessions() []SessionInfo {
	s.mu.Lock()
	list := make([]*session, 0, len(s.mu.sessions))
	for _, ss := range s.mu.sessions {
		list = append(list, ss)
	}
	s.mu.Unlock()
	out := make([]SessionInfo, 0, len(list))
	for _, ss := range list {
		out = append(out, ss.info())
	}
	slices.SortFunc(out, func(a, b SessionInfo) int { return int(a.TSIH) - int(b.TSIH) })
	return out
}

// CloseTarget drops every session logged in to the named target (for a
// deleted volume). It returns once the sessions are closed.
func (s *Server) CloseTarget(name string) {
	s.mu.Lock()
	var list []*session
	for _, ss := range s.mu.sessions {
		if ss.params.TargetName == name && ss.params.SessionType == login.SessionNormal {
			list = append(list, ss)
		}
	}
	s.mu.Unlock()
	for _, ss := range list {
		ss.log.Info("iscsi: closing session of removed target")
		ss.close()
		<-ss.done
	}
}

// sessionsOfTarget returns the normal sessions logged in to the named
// target (the scope of LU and target resets).
func (s *Server) sessionsOfTarget(name string) []*session {
	s.mu.Lock()
	defer s.mu.Unlock()
	var list []*session
	for _, ss := range s.mu.sessions {
		if ss.target != nil && ss.params.TargetName == name {
			list = append(list, ss)
		}
	}
	return list
}

// addSession registers a new session, reinstating (closing) an older one
// with the same key first. It returns the TSIH.
func (s *Server) addSession(ctx context.Context, ss *session) error {
	for {
		s.mu.Lock()
		if s.mu.closing {
			s.mu.Unlock()
			return errShuttingDown
		}
		old := s.mu.byKey[ss.key]
		if old == nil {
			for {
				s.mu.nextTSIH++
				if s.mu.nextTSIH == 0 {
					continue
				}
				if _, used := s.mu.sessions[s.mu.nextTSIH]; !used {
					break
				}
			}
			ss.tsih = s.mu.nextTSIH
			s.mu.sessions[ss.tsih] = ss
			s.mu.byKey[ss.key] = ss
			s.notifyLocked()
			s.mu.Unlock()
			return nil
		}
		s.mu.Unlock()
		old.log.Info("iscsi: session reinstatement", "new_conn", ss.remote)
		old.close()
		t := time.NewTimer(s.cfg.LoginTimeout)
		select {
		case <-old.done:
			t.Stop()
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		case <-t.C:
			return errReinstateTimeout
		}
	}
}

// removeSession unregisters ss.
func (s *Server) removeSession(ss *session) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.mu.sessions[ss.tsih] == ss {
		delete(s.mu.sessions, ss.tsih)
	}
	if s.mu.byKey[ss.key] == ss {
		delete(s.mu.byKey, ss.key)
	}
	s.notifyLocked()
}

// lookupSession finds a session by TSIH for a connection joining it.
func (s *Server) lookupSession(tsih uint16) *session {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.mu.sessions[tsih]
}

// REQUIRES: s.mu held.
func (s *Server) notifyLocked() {
	close(s.mu.changed)
	s.mu.changed = make(chan struct{})
}

var (
	errShuttingDown     = errors.New("iscsi: server shutting down")
	errReinstateTimeout = errors.New("iscsi: old session did not end in time for reinstatement")
)

// targetLookup adapts TargetSource to login.TargetLookup.
type targetLookup struct{ src TargetSource }

// LookupTarget implements login.TargetLookup.
func (l targetLookup) LookupTarget(name string) (login.TargetInfo, bool) {
	t, ok := l.src.Target(name)
	if !ok || t == nil {
		return login.TargetInfo{}, false
	}
	return login.TargetInfo{Name: t.Name, Alias: t.Alias, ACL: t.ACL, Auth: t.Auth}, true
}

// logAttrs are the common log attributes of a session.
func sessionLogAttrs(p login.Params, isid [6]byte, tsih uint16) []any {
	return []any{logkey.Initiator, p.InitiatorName, logkey.ISID, fmt.Sprintf("%x", isid[:]),
		logkey.TSIH, tsih, logkey.Target, p.TargetName}
}
