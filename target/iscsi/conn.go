package iscsi

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sync/errgroup"
	"golang.org/x/sys/unix"

	"stave.dev/stave/internal/logkey"
	"stave.dev/stave/target/iscsi/login"
)

// statMode says how the writer fills the StatSN field of an outgoing PDU.
type statMode uint8

const (
	statNone    statMode = iota // field reserved (Data-In without status)
	statCurrent                 // next StatSN, not consumed (R2T, NOP-In ping)
	statAdvance                 // a status: assign StatSN and increment
)

// outPDU is one queued target PDU. hdr is a complete BHS; the writer fills
// StatSN (per stat), ExpCmdSN and MaxCmdSN at write time, in queue order.
type outPDU struct {
	hdr  [BHSLen]byte
	data []byte // data segment, referenced until written
	stat statMode
	// release, when set, is the task whose buffers data aliases; the
	// writer releases it after the write.
	release *task
	// closeAfter makes the writer stop (and the connection close) after
	// writing this PDU (logout response, fatal reject, cold reset).
	closeAfter bool
}

// Connection errors.
var (
	errFlushClose = errors.New("iscsi: closing connection after queued PDUs")
	errNOPTimeout = errors.New("iscsi: NOP-In ping timed out")
	errConnClosed = errors.New("iscsi: connection closed")
)

// aLongTimeAgo unblocks pending reads when set as a deadline.
var aLongTimeAgo = time.Unix(1, 0)

// conn is one iSCSI connection. The reader goroutine (one at a time, see
// rescue) owns r, the login machine and the text state; the goroutine
// that writes (qmu.state: a completing task in push, or the writer
// goroutine) owns the w* fields and the socket's write side; q is shared
// under qmu.
type conn struct {
	srv    *Server
	nc     net.Conn
	portal *portalState
	log    *slog.Logger
	remote string
	local  string

	r *Reader

	// Set during login, read-only afterwards.
	cid          uint16
	sess         *session
	params       login.Params
	headerDigest bool
	dataDigest   bool
	maxSendData  int // InitiatorMaxRecvDataSegmentLength

	qmu struct {
		sync.Mutex
		q      []outPDU
		closed bool
		state  uint8 // wIdle, wDirect or wWriter: who writes
	}
	notify     chan struct{} // cap 1: queue non-empty
	writerDone chan struct{}

	// rc writes to the socket without blocking (push); nil when the
	// net.Conn has no file descriptor (tests over net.Pipe).
	rc       syscall.RawConn
	writevFn func(fd uintptr) // c.writev, bound once
	debug    bool             // debug logging enabled, read at login

	// Owned by the goroutine that writes (qmu.state wDirect or wWriter).
	statSN   uint32
	wbatch   []outPDU // the batch being written
	wspare   []outPDU // the other queue array, swapped with qmu.q
	warena   []byte
	wbufs    [][]byte
	wnb      net.Buffers // what is left to write of wbatch
	wiov     []unix.Iovec
	wpending bool // wbatch is framed and not fully written
	wclose   bool // wbatch ends with a closeAfter PDU
	wok      bool // tryWrite's result

	// inlineBusy is set while the reader runs a command itself (see
	// session.command); the NOP-In pinger then waits.
	inlineBusy atomic.Bool
	// inline is the reader's inline state (inlineNone, inlineRunning,
	// inlineRescued); rescueTimer fires rescue, reader is the reader
	// goroutine's function and group the connection's errgroup.
	inline      atomic.Uint64
	rescueTimer *time.Timer
	reader      func() error
	group       *errgroup.Group
	// inlineSkip (reader-owned) counts commands still to hand to
	// workers after an inline command was slow.
	inlineSkip int

	ctx       context.Context    // the connection's context (from the server's)
	cancel    context.CancelFunc // cancels the connection's goroutines
	recvCount atomic.Uint64      // PDUs received, for NOP idleness
	pingTTT   atomic.Uint32      // outstanding target NOP-In TTT, 0 = none

	// Reader-owned text request state (RFC 7143 §11.10).
	text textState

	replaced        atomic.Bool // a connection with the same CID took over
	logoutRequested atomic.Bool // an Async Message asked the initiator to log out (shutdown)
	logoutConnOnly  atomic.Bool // logged out alone; the session may go on
	ownsNewSession  bool        // login allocated c.sess and has not attached
	pendingIn       *session    // the session where the login holds a pending slot (under its mu)
}

func newConn(s *Server, nc net.Conn, p *portalState) *conn {
	c := &conn{
		srv:        s,
		nc:         nc,
		portal:     p,
		remote:     nc.RemoteAddr().String(),
		local:      nc.LocalAddr().String(),
		r:          NewReader(nc),
		notify:     make(chan struct{}, 1),
		writerDone: make(chan struct{}),
	}
	c.log = s.log.With(logkey.Remote, c.remote, logkey.Portal, c.local)
	c.ctx, c.cancel = context.WithCancel(s.baseCtx)
	if sc, ok := nc.(syscall.Conn); ok {
		if rc, err := sc.SyscallConn(); err == nil {
			c.rc = rc
			c.writevFn = c.writev
		}
	}
	c.debug = c.log.Enabled(c.ctx, slog.LevelDebug)
	return c
}

// abort ends the connection's goroutines; safe from any goroutine.
func (c *conn) abort() {
	c.cancel()
	c.nc.SetDeadline(aLongTimeAgo)
}

// serve runs the connection: login phase, then the full feature phase.
func (c *conn) serve() {
	ctx := c.ctx
	defer c.cancel()
	defer c.nc.Close()
	stop := context.AfterFunc(ctx, func() { c.nc.SetDeadline(aLongTimeAgo) })
	defer stop()

	c.nc.SetDeadline(time.Now().Add(c.srv.cfg.LoginTimeout))
	if err := c.loginPhase(ctx); err != nil {
		c.log.Debug("iscsi: login ended", logkey.Err, err)
		if c.pendingIn != nil {
			c.pendingIn.releasePending(c)
		}
		if c.ownsNewSession && c.sess != nil {
			c.sess.close()
		}
		return
	}
	c.nc.SetDeadline(time.Time{})
	err := c.fullFeature(ctx)
	c.log.Debug("iscsi: connection closed", logkey.Err, err)
	c.sess.connGone(c)
}

// fullFeature runs the reader and writer goroutines until the connection
// ends.
func (c *conn) fullFeature(ctx context.Context) error {
	g, gctx := errgroup.WithContext(ctx)
	stop := context.AfterFunc(gctx, func() { c.nc.SetReadDeadline(aLongTimeAgo) })
	defer stop()
	g.Go(func() error {
		defer close(c.writerDone)
		return c.writeLoop(gctx)
	})
	c.reader = func() error {
		err := c.readLoop(gctx)
		if errors.Is(err, errFlushClose) {
			// Let the writer send what is queued, bounded in time.
			c.nc.SetWriteDeadline(time.Now().Add(5 * time.Second))
			c.kick()
			<-c.writerDone
			return err
		}
		return err
	}
	c.group = g
	c.rescueTimer = time.AfterFunc(time.Hour, c.rescue)
	c.rescueTimer.Stop()
	g.Go(c.reader)
	err := g.Wait()
	c.rescueTimer.Stop()
	c.qmu.Lock()
	c.qmu.closed = true
	q := c.qmu.q
	c.qmu.q = nil
	writerOwned := c.qmu.state == wWriter
	c.qmu.Unlock()
	for i := range q {
		if q[i].release != nil {
			q[i].release.unref()
		}
	}
	if writerOwned {
		// The writer stopped in the middle of a batch (error or
		// closeAfter); a goroutine in state wDirect releases its own.
		c.finishBatch()
	}
	return err
}

// Writer states (conn.qmu.state): who may write to the socket. Exactly
// one goroutine writes at a time, and it drains the queue before it gives
// the socket up, so a PDU queued while someone writes is sent by them.
const (
	wIdle   uint8 = iota // nobody writes; the next push or kick takes over
	wDirect              // a completing goroutine writes without blocking (push)
	wWriter              // the writer goroutine writes (blocking), or must
)

// queue appends o to the send queue and wakes the writer goroutine. It
// never blocks and may be called with any lock held. After the
// connection closed, o is dropped (and its task released).
func (c *conn) queue(o *outPDU) {
	if c.enqueue(o) {
		c.kick()
	}
}

// enqueue appends o to the send queue without waking anyone; the caller
// must call push (or kick) afterwards, once it holds no lock the writer
// takes. It reports false when the connection has closed and o was
// dropped.
func (c *conn) enqueue(o *outPDU) bool {
	c.qmu.Lock()
	if c.qmu.closed {
		c.qmu.Unlock()
		if o.release != nil {
			o.release.unref()
		}
		return false
	}
	c.qmu.q = append(c.qmu.q, *o)
	c.qmu.Unlock()
	return true
}

// push sends what is queued from the calling goroutine, without blocking
// and without waking the writer goroutine, when nobody else is writing:
// the common case at queue depth 1, where it saves a goroutine handoff
// per command. If the socket would block (or fails, or a PDU closes the
// connection), the writer goroutine takes over what is left. The caller
// must not hold s.mu (framing reads the CmdSN window).
func (c *conn) push() {
	c.qmu.Lock()
	if c.qmu.state != wIdle || len(c.qmu.q) == 0 {
		c.qmu.Unlock()
		return
	}
	if c.rc == nil {
		c.qmu.Unlock()
		c.kick()
		return
	}
	c.qmu.state = wDirect
	c.qmu.Unlock()
	c.drainDirect()
}

// kick wakes the writer goroutine.
func (c *conn) kick() {
	select {
	case c.notify <- struct{}{}:
	default:
	}
}

// writeLoop sends queued PDUs, batching everything queued into one writev,
// and pings the initiator with NOP-In when it is idle.
func (c *conn) writeLoop(ctx context.Context) error {
	var timer *time.Timer
	var timerC <-chan time.Time
	interval, timeout := c.srv.cfg.NOPInterval, c.srv.cfg.NOPTimeout
	if interval > 0 {
		timer = time.NewTimer(interval)
		defer timer.Stop()
		timerC = timer.C
	}
	lastCount := c.recvCount.Load()
	var nextTTT uint32
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-c.notify:
		case <-timerC:
			if c.inlineBusy.Load() {
				// The reader is running a command: it reads the
				// initiator's PDUs (a ping answer too) once that ends.
				timer.Reset(interval)
				continue
			}
			if ttt := c.pingTTT.Load(); ttt != 0 {
				return errNOPTimeout
			}
			if n := c.recvCount.Load(); n != lastCount {
				lastCount = n
				timer.Reset(interval)
				continue
			}
			nextTTT++
			if nextTTT == 0 || nextTTT == reservedTag {
				nextTTT = 1
			}
			c.pingTTT.Store(nextTTT)
			o := outPDU{stat: statCurrent}
			(&NOPIn{LUN: 0, ITT: reservedTag, TTT: nextTTT}).AppendTo(o.hdr[:0])
			c.queue(&o)
			timer.Reset(timeout)
			c.log.Debug("iscsi: NOP-In ping", "ttt", nextTTT)
		}
		// Let completions that are about to be queued join this batch.
		runtime.Gosched()
		if err := c.flush(); err != nil {
			return err
		}
	}
}

// flush writes everything queued, unless a completing goroutine is
// writing (it drains the queue, or hands it back with a kick). It returns
// errFlushClose after writing a closeAfter PDU; the socket then stays the
// writer's, so nothing is written after that PDU.
func (c *conn) flush() error {
	c.qmu.Lock()
	switch c.qmu.state {
	case wDirect:
		c.qmu.Unlock()
		return nil
	case wIdle:
		if len(c.qmu.q) == 0 {
			c.qmu.Unlock()
			return nil
		}
		c.qmu.state = wWriter
	}
	c.qmu.Unlock()
	for {
		if !c.wpending && !c.takeBatch() {
			return nil
		}
		c.srv.stats.batches.Add(1)
		c.nc.SetWriteDeadline(time.Now().Add(c.srv.cfg.WriteTimeout))
		_, err := c.wnb.WriteTo(c.nc)
		closeAfter := c.wclose
		c.finishBatch()
		if err != nil {
			return err
		}
		if closeAfter {
			return errFlushClose
		}
	}
}

// drainDirect is push's writing part. REQUIRES: c.qmu.state == wDirect,
// set by the caller.
func (c *conn) drainDirect() {
	for {
		if !c.wpending && !c.takeBatch() {
			return
		}
		if !c.wclose && c.ctx.Err() == nil && c.tryWrite() {
			c.srv.stats.batches.Add(1)
			c.finishBatch()
			continue
		}
		// Hand the rest to the writer goroutine, which may block.
		c.qmu.Lock()
		if c.qmu.closed {
			// The writer is gone (the connection ended meanwhile).
			c.qmu.state = wIdle
			c.qmu.Unlock()
			c.finishBatch()
			return
		}
		c.qmu.state = wWriter
		c.qmu.Unlock()
		c.kick()
		return
	}
}

// takeBatch moves the queue into the current batch and frames it. When
// the queue is empty it gives the socket up (state wIdle) and returns
// false. REQUIRES: the caller writes (state wDirect or wWriter).
func (c *conn) takeBatch() bool {
	c.qmu.Lock()
	batch := c.qmu.q
	if len(batch) == 0 {
		c.qmu.state = wIdle
		c.qmu.Unlock()
		return false
	}
	c.qmu.q = c.wspare[:0]
	c.wspare = nil
	c.qmu.Unlock()
	c.srv.stats.pdus.Add(int64(len(batch)))
	c.frame(batch)
	return true
}

// finishBatch releases the tasks of the current batch once it is written
// (or dropped). REQUIRES: the caller writes, or the connection has ended.
func (c *conn) finishBatch() {
	batch := c.wbatch
	for i := range batch {
		if batch[i].release != nil {
			batch[i].release.unref()
		}
		batch[i] = outPDU{}
	}
	clear(c.wbufs)
	c.wbatch, c.wspare = nil, batch[:0]
	c.wnb = nil
	c.wpending, c.wclose = false, false
}

// tryWrite writes c.wnb without blocking (the socket is non-blocking)
// and reports whether all of it went. A partial write leaves the rest in
// c.wnb; an error (or EAGAIN) is left for the writer goroutine to meet
// again in blocking mode. It bypasses the net.Conn deadlines: only the
// goroutine in state wDirect writes, so nothing else touches the socket's
// write side meanwhile.
func (c *conn) tryWrite() bool {
	c.wok = false
	if err := c.rc.Control(c.writevFn); err != nil {
		return false
	}
	return c.wok
}

// writev is tryWrite's raw-fd part; it sets c.wok when c.wnb is empty.
func (c *conn) writev(fd uintptr) {
	for len(c.wnb) > 0 {
		iov := c.wiov[:0]
		for _, b := range c.wnb {
			if len(iov) == maxIOV {
				break
			}
			if len(b) > 0 {
				v := unix.Iovec{Base: &b[0]}
				v.SetLen(len(b))
				iov = append(iov, v)
			}
		}
		c.wiov = iov
		if len(iov) == 0 {
			c.wnb = c.wnb[:0]
			break
		}
		n, _, errno := unix.Syscall(unix.SYS_WRITEV, fd, uintptr(unsafe.Pointer(&iov[0])), uintptr(len(iov)))
		clear(iov)
		if errno == unix.EINTR {
			continue
		}
		if errno != 0 || n == 0 {
			return // EAGAIN or an error: the writer goroutine goes on
		}
		c.consume(int(n))
	}
	c.wok = true
}

// maxIOV bounds the iovecs of one writev (Linux IOV_MAX is 1024).
const maxIOV = 1024

// consume drops the first n written bytes from c.wnb.
func (c *conn) consume(n int) {
	for len(c.wnb) > 0 && n >= len(c.wnb[0]) {
		n -= len(c.wnb[0])
		c.wnb = c.wnb[1:]
	}
	if n > 0 {
		c.wnb[0] = c.wnb[0][n:]
	}
}

// frame assigns StatSN, ExpCmdSN and MaxCmdSN to the batch's PDUs, in
// order, and builds the iovecs to write (up to the first closeAfter PDU;
// the ones after it are dropped with the batch).
func (c *conn) frame(batch []outPDU) {
	s := c.sess
	expCmdSN, maxCmdSN := s.window()
	// Size the arena so appends never reallocate (the iovecs alias it).
	need := 0
	for i := range batch {
		need += BHSLen + 4 + 8
		if len(batch[i].data) <= smallData {
			need += len(batch[i].data)
		}
	}
	if cap(c.warena) < need {
		c.warena = make([]byte, 0, need*2)
	}
	a := c.warena[:0]
	bufs := c.wbufs[:0]
	closeAfter := false
	for i := range batch {
		o := &batch[i]
		h := BHS(o.hdr[:])
		switch o.stat {
		case statCurrent:
			h.put32(offField24, c.statSN)
		case statAdvance:
			h.put32(offField24, c.statSN)
			c.statSN++
		}
		h.put32(offField28, expCmdSN)
		h.put32(offField32, maxCmdSN)
		start := len(a)
		a = append(a, o.hdr[:]...)
		if c.headerDigest {
			a = appendDigest(a, crc32c(o.hdr[:]))
		}
		if n := len(o.data); n > 0 {
			if n <= smallData {
				a = append(a, o.data...)
				a = appendPad(a, n)
				if c.dataDigest {
					a = appendDigest(a, dataDigest(o.data))
				}
				bufs = appendIOV(bufs, a[start:])
			} else {
				bufs = appendIOV(bufs, a[start:])
				bufs = append(bufs, o.data)
				tstart := len(a)
				a = appendPad(a, n)
				if c.dataDigest {
					a = appendDigest(a, dataDigest(o.data))
				}
				if len(a) > tstart {
					bufs = append(bufs, a[tstart:])
				}
			}
		} else {
			bufs = appendIOV(bufs, a[start:])
		}
		if c.debug {
			c.log.Debug("iscsi: send", "op", h.Opcode(), "itt", h.ITT(), "statsn", h.StatSN(), "len", len(o.data))
		}
		if o.closeAfter {
			closeAfter = true
			break
		}
	}
	c.warena = a
	c.wbufs = bufs
	c.wnb = bufs // writing consumes c.wnb; c.wbufs keeps the backing array
	c.wbatch = batch
	c.wpending, c.wclose = true, closeAfter
}

// smallData is the largest data segment copied into the write arena rather
// than referenced as its own iovec.
const smallData = 1024

// appendIOV appends p to bufs, merging it into the previous iovec when the
// two are adjacent in the arena.
func appendIOV(bufs [][]byte, p []byte) [][]byte {
	if n := len(bufs); n > 0 {
		last := bufs[n-1]
		if cap(last) > len(last) && len(p) > 0 && &last[:len(last)+1][len(last)] == &p[0] {
			bufs[n-1] = last[:len(last)+len(p)]
			return bufs
		}
	}
	return append(bufs, p)
}

// readLoop reads and dispatches full-feature PDUs.
func (c *conn) readLoop(ctx context.Context) error {
	debug := c.log.Enabled(ctx, slog.LevelDebug)
	for {
		p, err := c.r.ReadPDU()
		if err != nil {
			switch {
			case errors.Is(err, ErrDataDigest):
				// RFC 7143 §7.8: reject, discard, no state change.
				c.recvCount.Add(1)
				c.reject(p.BHS, RejectDataDigestError, false)
				continue
			case errors.Is(err, ErrDataTooLong), errors.Is(err, ErrBadAHS):
				c.reject(p.BHS, RejectProtocolError, true)
				return errFlushClose
			case errors.Is(err, io.EOF):
				return errConnClosed
			}
			return err
		}
		c.recvCount.Add(1)
		if debug {
			h := p.BHS
			c.log.Debug("iscsi: recv", "op", h.Opcode(), "imm", h.Immediate(), "itt", h.ITT(),
				"cmdsn", h.CmdSN(), "len", len(p.Data))
		}
		if err := c.dispatch(ctx, p); err != nil {
			if err == errNotReader {
				return nil
			}
			return err
		}
	}
}

// errNotReader tells a goroutine that ran a command inline that another
// goroutine has taken over reading (see rescue).
var errNotReader = errors.New("iscsi: another goroutine reads the connection")

// Inline states (the low two bits of conn.inline; the rest counts inline
// commands, so that a late rescue or a rescued goroutine's endInline
// cannot touch a later inline command of the new reader).
const (
	inlineNone    uint64 = iota // the reader reads
	inlineRunning               // the reader runs a command; rescue may take over
	inlineRescued               // a new reader goroutine took over
	inlineMask    = 3
)

// inlineRescue is how long the reader runs one command itself before
// another goroutine takes over reading, so that PDUs sent meanwhile (a
// task management request aborting that very command, Data-Out of other
// commands) are not held up behind a slow or stuck device.
const inlineRescue = 500 * time.Microsecond

// rescue runs when an inline command has run for inlineRescue: a new
// reader goroutine (in the connection's errgroup, which the inline
// goroutine still holds open) reads on; the inline goroutine sends its
// response and leaves.
func (c *conn) rescue() {
	v := c.inline.Load()
	if v&inlineMask != inlineRunning || !c.inline.CompareAndSwap(v, v&^inlineMask|inlineRescued) {
		return
	}
	c.inlineBusy.Store(false)
	// Nobody reads now: the inline goroutine touches no reader state
	// after it has lost the CAS above, the new one starts below.
	c.inlineSkip = inlineBackoff
	c.srv.stats.rescues.Add(1)
	c.group.Go(c.reader)
}

// beginInline arms the rescue before the reader runs a command itself
// and returns the token for endInline.
func (c *conn) beginInline() uint64 {
	v := (c.inline.Load()&^inlineMask + inlineMask + 1) | inlineRunning
	c.inline.Store(v)
	c.inlineBusy.Store(true)
	c.rescueTimer.Reset(inlineRescue)
	return v
}

// endInline reports whether the calling goroutine is still the reader
// after the inline command of token v; if not, it must stop reading
// (errNotReader) and touch nothing the reader owns.
func (c *conn) endInline(v uint64) bool {
	// Clearing the state bits sets inlineNone (0).
	if !c.inline.CompareAndSwap(v, v&^inlineMask) {
		return false
	}
	c.rescueTimer.Stop()
	c.inlineBusy.Store(false)
	return true
}

// reject queues a Reject PDU carrying the offending header.
func (c *conn) reject(h BHS, reason RejectReason, closeAfter bool) {
	o := outPDU{stat: statAdvance, closeAfter: closeAfter}
	hdr := make([]byte, BHSLen)
	copy(hdr, h)
	o.data = hdr
	(&Reject{Reason: reason, DataLen: BHSLen}).AppendTo(o.hdr[:0])
	c.log.Debug("iscsi: reject", "op", h.Opcode(), "reason", reason)
	c.queue(&o)
}

// protocolError rejects the PDU and closes the connection (RFC 7143 §7).
func (c *conn) protocolError(h BHS, reason RejectReason, why string) error {
	c.log.Info("iscsi: protocol error, closing connection", "op", h.Opcode(), "reason", reason, "why", why)
	c.reject(h, reason, true)
	return errFlushClose
}

// dispatch handles one full-feature PDU.
func (c *conn) dispatch(ctx context.Context, p *PDU) error {
	h := p.BHS
	op := h.Opcode()
	if c.sess.discovery() {
		switch op {
		case OpTextReq, OpLogoutReq, OpNOPOut:
		default:
			c.reject(h, RejectProtocolError, false)
			return nil
		}
	}
	switch op {
	case OpSCSIDataOut:
		return c.sess.dataOut(ctx, c, p)
	case OpSCSICommand:
		return c.sess.command(ctx, c, p)
	case OpNOPOut:
		return c.nopOut(p)
	case OpTaskMgmtReq, OpTextReq, OpLogoutReq:
		return c.sess.ordered(c, p)
	case OpLoginReq:
		// RFC 7143 §7.3.2: a login request in full feature phase is a
		// protocol error.
		return c.protocolError(h, RejectProtocolError, "login request in full feature phase")
	case OpSNACKReq:
		// ERL 0: SNACK is not supported.
		c.reject(h, RejectCommandNotSupported, false)
		return nil
	default:
		c.reject(h, RejectCommandNotSupported, false)
		return nil
	}
}

// nopOut handles a NOP-Out (RFC 7143 §11.18).
func (c *conn) nopOut(p *PDU) error {
	h := p.BHS
	if h.ITT() == reservedTag {
		// Answer to our ping (or a pure ExpStatSN update).
		if !h.Immediate() {
			return c.protocolError(h, RejectProtocolError, "NOP-Out with reserved ITT must be immediate")
		}
		if ttt := h.TTT(); ttt != reservedTag && ttt == c.pingTTT.Load() {
			c.pingTTT.Store(0)
		}
		return nil
	}
	if h.TTT() != reservedTag {
		c.reject(h, RejectInvalidPDUField, false)
		return nil
	}
	return c.sess.ordered(c, p)
}

// nopReply answers a NOP-Out ping, echoing its data.
func (c *conn) nopReply(h BHS, data []byte) {
	o := outPDU{stat: statAdvance}
	if len(data) > 0 {
		o.data = append([]byte(nil), data[:min(len(data), c.maxSendData)]...)
	}
	(&NOPIn{LUN: h.LUN(), ITT: h.ITT(), TTT: reservedTag, DataLen: len(o.data)}).AppendTo(o.hdr[:0])
	c.queue(&o)
}

// advertise returns the TargetAddress values (host:port,tpgt) of every portal.
func (c *conn) advertise() []string {
	var out []string
	for _, p := range c.srv.portals {
		addr := p.cfg.Advertise
		if addr == "" {
			addr = p.cfg.Listen
			if p.ln != nil {
				addr = p.ln.Addr().String()
			}
			host, port, err := net.SplitHostPort(addr)
			if err == nil {
				if ip := net.ParseIP(host); host == "" || (ip != nil && ip.IsUnspecified()) {
					lh, _, err := net.SplitHostPort(c.local)
					if err == nil {
						addr = net.JoinHostPort(lh, port)
					}
				}
			}
		}
		out = append(out, fmt.Sprintf("%s,%d", addr, p.cfg.TPGT))
	}
	return out
}
