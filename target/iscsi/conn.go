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
	"time"

	"golang.org/x/sync/errgroup"

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

// conn is one iSCSI connection. The reader goroutine owns r, the login
// machine and the text state; the writer goroutine owns w* fields and the
// socket's write side; q is shared under qmu.
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
	}
	notify     chan struct{} // cap 1: queue non-empty
	writerDone chan struct{}

	// Writer-owned.
	statSN uint32
	wbatch []outPDU
	warena []byte
	wbufs  [][]byte
	wnb    net.Buffers

	ctx       context.Context    // the connection's context (from the server's)
	cancel    context.CancelFunc // cancels the connection's goroutines
	recvCount atomic.Uint64      // PDUs received, for NOP idleness
	pingTTT   atomic.Uint32      // outstanding target NOP-In TTT, 0 = none

	// Reader-owned text request state (RFC 7143 §11.10).
	text textState

	replaced       atomic.Bool // a connection with the same CID took over
	logoutConnOnly atomic.Bool // logged out alone; the session may go on
	ownsNewSession bool        // login allocated c.sess and has not attached
	pendingIn      *session    // the session where the login holds a pending slot (under its mu)
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
	g.Go(func() error {
		err := c.readLoop(gctx)
		if errors.Is(err, errFlushClose) {
			// Let the writer send what is queued, bounded in time.
			c.nc.SetWriteDeadline(time.Now().Add(5 * time.Second))
			c.kick()
			<-c.writerDone
			return err
		}
		return err
	})
	err := g.Wait()
	c.qmu.Lock()
	c.qmu.closed = true
	q := c.qmu.q
	c.qmu.q = nil
	c.qmu.Unlock()
	for i := range q {
		if q[i].release != nil {
			q[i].release.unref()
		}
	}
	return err
}

// queue appends o to the send queue. It never blocks. After the
// connection closed, o is dropped (and its task released).
func (c *conn) queue(o *outPDU) {
	c.qmu.Lock()
	if c.qmu.closed {
		c.qmu.Unlock()
		if o.release != nil {
			o.release.unref()
		}
		return
	}
	c.qmu.q = append(c.qmu.q, *o)
	c.qmu.Unlock()
	c.kick()
}

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

// flush writes everything queued. It returns errFlushClose after writing a
// closeAfter PDU.
func (c *conn) flush() error {
	for {
		c.qmu.Lock()
		batch := c.qmu.q
		c.qmu.q = c.wbatch[:0]
		c.qmu.Unlock()
		if len(batch) == 0 {
			c.wbatch = batch
			return nil
		}
		c.srv.stats.batches.Add(1)
		c.srv.stats.pdus.Add(int64(len(batch)))
		closeAfter, err := c.writeBatch(batch)
		for i := range batch {
			if batch[i].release != nil {
				batch[i].release.unref()
			}
			batch[i] = outPDU{}
		}
		c.wbatch = batch[:0]
		if err != nil {
			return err
		}
		if closeAfter {
			return errFlushClose
		}
	}
}

// writeBatch frames and writes batch (up to the first closeAfter PDU).
func (c *conn) writeBatch(batch []outPDU) (closeAfter bool, err error) {
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
		if c.log.Enabled(context.Background(), slog.LevelDebug) {
			c.log.Debug("iscsi: send", "op", h.Opcode(), "itt", h.ITT(), "statsn", h.StatSN(), "len", len(o.data))
		}
		if o.closeAfter {
			closeAfter = true
			break
		}
	}
	c.warena = a
	c.wnb = bufs // WriteTo consumes c.wnb; bufs keeps the backing array
	c.nc.SetWriteDeadline(time.Now().Add(c.srv.cfg.WriteTimeout))
	_, err = c.wnb.WriteTo(c.nc)
	clear(bufs)
	c.wbufs = bufs[:0]
	return closeAfter, err
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
			return err
		}
	}
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
		return c.sess.dataOut(c, p)
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
