package iscsi

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"

	"stave.dev/stave/target/iscsi/login"
	"stave.dev/stave/target/scsi"
)

// maxImmediate bounds the immediate (I-bit) commands and TMFs a session
// runs at once; more are rejected (RFC 7143 §11.17.1 reason 0x06).
const maxImmediate = 32

// held is a non-immediate command received ahead of ExpCmdSN
// (RFC 7143 §4.2.2.1), delivered when the gap fills. consumed marks a
// CmdSN that a TMF declared received (RFC 7143 §11.5.1).
type held struct {
	t        *task
	c        *conn
	pdu      []byte // copy of BHS+AHS+data for non-SCSI PDUs
	consumed bool
}

// session is one iSCSI session. Fields under mu are shared between the
// connections' goroutines and the task goroutines.
type session struct {
	srv    *Server
	key    sessionKey
	tsih   uint16 // set by Server.addSession before the session is shared
	isid   [6]byte
	params login.Params
	target *Target
	dev    scsi.Device
	nexus  scsi.Nexus
	remote string
	local  string
	log    *slog.Logger

	ctx    context.Context // cancelled when the session closes
	cancel context.CancelFunc
	done   chan struct{}  // closed after teardown
	wg     sync.WaitGroup // task workers and TMF goroutines
	work   chan *task     // handoff to idle task workers
	ttt    atomic.Uint32
	// nexusLost is set once Device.NexusLost has been called for nexus.
	nexusLost atomic.Bool

	mu struct {
		sync.Mutex
		cond      *sync.Cond
		win       cmdWindow
		immediate int
		tasks     map[uint32]*task
		conns     map[uint16]*conn
		closed    bool
		seq       uint64
		// pending counts connections whose login has been accepted (the
		// final Login Response is on its way or sent) but that are not
		// attached yet. They count against MaxConnections and in info, so
		// a concurrent login cannot slip past the limit in that window.
		pending int
		// running counts tasks handed to the device and not completed.
		running int
		// inline is set by the reader around a delivery it may run
		// itself; inlineTask is the task it then runs (see
		// inlineTaskLocked).
		inline     bool
		inlineTask *task
	}
}

func newSession(srv *Server, c *conn, p login.Params, isid [6]byte, cmdSN uint32) *session {
	s := &session{
		srv:    srv,
		isid:   isid,
		params: p,
		remote: c.remote,
		local:  c.local,
		done:   make(chan struct{}),
		work:   make(chan *task),
		log:    srv.log,
	}
	s.key = sessionKey{initiator: p.InitiatorName, isid: isid, target: p.TargetName, tpgt: c.portal.cfg.TPGT}
	s.ctx, s.cancel = context.WithCancel(context.WithoutCancel(srv.baseCtx))
	s.mu.cond = sync.NewCond(&s.mu.Mutex)
	s.mu.win = newCmdWindow(cmdSN, uint32(srv.cfg.QueueDepth))
	s.mu.pending = 1 // the leading connection
	s.mu.tasks = make(map[uint32]*task)
	s.mu.conns = make(map[uint16]*conn)
	return s
}

// setTarget binds a normal session to its target and builds the nexus.
func (s *session) setTarget(t *Target, p *portalState) {
	s.target = t
	s.dev = t.Device
	s.nexus = scsi.Nexus{
		InitiatorName:      s.params.InitiatorName,
		InitiatorPort:      fmt.Sprintf("%s,i,0x%012x", s.params.InitiatorName, s.isid[:]),
		TargetPort:         fmt.Sprintf("%s,t,0x%04x", t.Name, p.cfg.TPGT),
		RelativeTargetPort: t.RelativePortBase + uint16(p.index+1),
		TargetPortGroup:    max(t.PortGroup, 1),
	}
}

func (s *session) discovery() bool { return s.params.SessionType == login.SessionDiscovery }

// window returns ExpCmdSN and MaxCmdSN (RFC 7143 §4.2.2.1). The window
// holds QueueDepth commands minus the ones still running, so MaxCmdSN
// never decreases.
func (s *session) window() (expCmdSN, maxCmdSN uint32) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.windowLocked()
}

// REQUIRES: s.mu held.
func (s *session) windowLocked() (uint32, uint32) { return s.mu.win.bounds() }

// advanceLocked moves the window past the command just delivered, delivers
// the held SCSI tasks that follow and returns the held non-SCSI PDUs.
// REQUIRES: s.mu held.
func (s *session) advanceLocked(out []held) []held {
	return s.deliverHeldLocked(s.mu.win.advance(nil), out)
}

// deliverHeldLocked delivers the SCSI tasks of list and appends the other
// held PDUs to out.
// REQUIRES: s.mu held.
func (s *session) deliverHeldLocked(list, out []held) []held {
	for _, h := range list {
		if h.t != nil {
			s.deliverTaskLocked(h.t)
			continue
		}
		out = append(out, h)
	}
	return out
}

// deliverTaskLocked marks a SCSI task as in CmdSN order and starts it if
// its data is complete.
// REQUIRES: s.mu held.
func (s *session) deliverTaskLocked(t *task) {
	if t.aborted {
		return
	}
	t.delivered = true
	if !t.immediate {
		s.mu.win.begin()
		t.counted = true
	}
	s.maybeStartLocked(t)
}

// runHeld processes held non-SCSI PDUs that became deliverable. A held
// PDU that fails ends its own connection.
func (s *session) runHeld(list []held) {
	for _, h := range list {
		var p PDU
		p.BHS = BHS(h.pdu[:BHSLen])
		ahs := p.BHS.TotalAHSLength()
		p.AHS = h.pdu[BHSLen : BHSLen+ahs]
		p.Data = h.pdu[BHSLen+ahs:]
		// errFlushClose needs nothing here: the writer closes the
		// connection after the PDU that ends it.
		if err := h.c.execOrdered(&p); err != nil && !errors.Is(err, errFlushClose) {
			h.c.abort()
		}
	}
}

// ordered admits a non-SCSI command (TMF, Text, Logout, NOP-Out with a
// task tag) through the CmdSN window and executes it in order.
func (s *session) ordered(c *conn, p *PDU) error {
	h := p.BHS
	if h.Immediate() {
		return c.execOrdered(p)
	}
	s.mu.Lock()
	if s.mu.closed {
		s.mu.Unlock()
		return errConnClosed
	}
	switch s.mu.win.check(h.CmdSN()) {
	case snDrop:
		s.mu.Unlock()
		c.log.Debug("iscsi: command outside CmdSN window dropped", "op", h.Opcode(), "cmdsn", h.CmdSN())
		return nil
	case snHold:
		cp := make([]byte, 0, BHSLen+len(p.AHS)+len(p.Data))
		cp = append(append(append(cp, h...), p.AHS...), p.Data...)
		s.mu.win.hold(h.CmdSN(), held{c: c, pdu: cp})
		s.mu.Unlock()
		return nil
	}
	list := s.advanceLocked(nil)
	s.mu.Unlock()
	if err := c.execOrdered(p); err != nil {
		return err
	}
	s.runHeld(list)
	return nil
}

// execOrdered runs a non-SCSI command that is in CmdSN order.
func (c *conn) execOrdered(p *PDU) error {
	switch p.BHS.Opcode() {
	case OpNOPOut:
		c.nopReply(p.BHS, p.Data)
		return nil
	case OpTextReq:
		return c.textRequest(p)
	case OpLogoutReq:
		return c.logout(p)
	case OpTaskMgmtReq:
		return c.taskMgmt(p)
	}
	c.reject(p.BHS, RejectCommandNotSupported, false)
	return nil
}

// addConn attaches a logged-in connection. A connection with the CID of an
// existing one reinstates it (RFC 7143 §6.3.4): the old one is closed.
func (s *session) addConn(ctx context.Context, c *conn) error {
	s.mu.Lock()
	if c.pendingIn == s {
		c.pendingIn = nil
		s.mu.pending--
	}
	if s.mu.closed {
		s.mu.Unlock()
		return errConnClosed
	}
	old := s.mu.conns[c.cid]
	s.mu.conns[c.cid] = c
	s.mu.Unlock()
	if old != nil {
		s.log.Info("iscsi: connection reinstatement", "cid", c.cid)
		old.replaced.Store(true)
		old.abort()
	}
	if s.srv.closing() {
		// The server began draining while this login finished.
		c.requestLogout()
	}
	return nil
}

// releasePending gives back the slot of a connection whose accepted
// login ended before it was attached.
func (s *session) releasePending(c *conn) {
	s.mu.Lock()
	if c.pendingIn == s {
		c.pendingIn = nil
		s.mu.pending--
	}
	s.mu.Unlock()
}

// connGone detaches a connection whose goroutines have ended. At
// ErrorRecoveryLevel 0 a connection failure ends the session; a logout of
// one connection ends only that connection unless it was the last.
func (s *session) connGone(c *conn) {
	s.mu.Lock()
	if s.mu.conns[c.cid] == c {
		delete(s.mu.conns, c.cid)
	}
	left := len(s.mu.conns)
	s.mu.Unlock()
	if c.replaced.Load() {
		return
	}
	if c.logoutConnOnly.Load() && left > 0 {
		return
	}
	s.close()
}

// connList returns the session's connections.
func (s *session) connList() []*conn {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]*conn, 0, len(s.mu.conns))
	for _, c := range s.mu.conns {
		out = append(out, c)
	}
	return out
}

// close ends the session: connections are aborted, running tasks see their
// context cancelled, and a teardown goroutine waits for them, releases the
// rest, unregisters the session, tells the device the nexus is lost and
// closes s.done. It is idempotent and does not block.
func (s *session) close() {
	s.mu.Lock()
	if s.mu.closed {
		s.mu.Unlock()
		return
	}
	s.mu.closed = true
	s.mu.cond.Broadcast() // TMFs waiting for tasks re-check closed
	conns := make([]*conn, 0, len(s.mu.conns))
	for _, c := range s.mu.conns {
		conns = append(conns, c)
	}
	s.mu.Unlock()
	s.cancel()
	for _, c := range conns {
		c.abort()
	}
	s.srv.connWG.Add(1)
	go func() {
		defer s.srv.connWG.Done()
		s.teardown()
	}()
}

func (s *session) teardown() {
	s.wg.Wait()
	s.mu.Lock()
	for itt, t := range s.mu.tasks {
		delete(s.mu.tasks, itt)
		if !t.started {
			t.aborted = true
			t.unref()
		}
	}
	s.mu.win.reset()
	s.mu.cond.Broadcast()
	s.mu.Unlock()
	s.srv.removeSession(s)
	s.loseNexus()
	s.log.Info("iscsi: session closed")
	close(s.done)
}

// loseNexus tells the device, once, that the session's I_T nexus is gone.
func (s *session) loseNexus() {
	if s.dev != nil && s.nexusLost.CompareAndSwap(false, true) {
		s.dev.NexusLost(s.nexus)
	}
}

// info describes the session.
func (s *session) info() SessionInfo {
	s.mu.Lock()
	n := len(s.mu.conns) + s.mu.pending
	s.mu.Unlock()
	return SessionInfo{
		InitiatorName:  s.params.InitiatorName,
		InitiatorAlias: s.params.InitiatorAlias,
		TargetName:     s.params.TargetName,
		ISID:           fmt.Sprintf("%012x", s.isid[:]),
		TSIH:           s.tsih,
		Portal:         s.local,
		Remote:         s.remote,
		Type:           s.params.SessionType.String(),
		Params:         s.params,
		Connections:    n,
	}
}

// nextTTT returns a fresh target transfer tag (never 0xffffffff).
func (s *session) nextTTT() uint32 {
	for {
		v := s.ttt.Add(1)
		if v != reservedTag {
			return v
		}
	}
}
