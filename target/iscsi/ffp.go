package iscsi

import (
	"slices"

	"stave.dev/stave/target/iscsi/login"
	"stave.dev/stave/target/scsi"
)

// textState is the reader-owned state of a text exchange (RFC 7143 §11.10).
type textState struct {
	itt  uint32
	ttt  uint32
	req  []byte
	resp []byte
	off  int
}

// maxTextRequest bounds a reassembled text request.
const maxTextRequest = 64 << 10

// textRequest handles a Text Request: SendTargets in full feature phase,
// with long responses continued under a TTT.
func (c *conn) textRequest(p *PDU) error {
	h := p.BHS
	st := &c.text
	if ttt := h.TTT(); ttt != reservedTag {
		if ttt != st.ttt || h.ITT() != st.itt {
			c.reject(h, RejectInvalidPDUField, false)
			return nil
		}
		if st.off < len(st.resp) {
			c.sendTextChunk(h)
			return nil
		}
	} else if h.ITT() != st.itt || st.off < len(st.resp) {
		// A new exchange resets any earlier one (RFC 7143 §11.10.4).
		*st = textState{itt: h.ITT(), req: st.req[:0]}
	}
	st.itt = h.ITT()
	if len(st.req)+len(p.Data) > maxTextRequest {
		*st = textState{}
		return c.protocolError(h, RejectProtocolError, "text request too long")
	}
	st.req = append(st.req, p.Data...)
	if h.Continue() {
		st.ttt = c.sess.nextTTT()
		o := outPDU{stat: statAdvance}
		(&TextResponse{ITT: st.itt, TTT: st.ttt}).AppendTo(o.hdr[:0])
		c.queue(&o)
		return nil
	}
	kvs, err := login.ParseText(st.req)
	st.req = st.req[:0]
	if err != nil {
		c.reject(h, RejectProtocolError, false)
		return nil
	}
	var resp []byte
	for _, kv := range kvs {
		if kv.Key == "SendTargets" {
			resp = c.sendTargets(resp, kv.Value)
			continue
		}
		resp = login.AppendText(resp, login.KeyValue{Key: kv.Key, Value: "NotUnderstood"})
	}
	st.resp, st.off = resp, 0
	st.ttt = reservedTag
	c.sendTextChunk(h)
	return nil
}

// sendTextChunk sends the next part of the pending text response.
func (c *conn) sendTextChunk(h BHS) {
	st := &c.text
	n := min(c.maxSendData, len(st.resp)-st.off)
	part := st.resp[st.off : st.off+n]
	st.off += n
	last := st.off >= len(st.resp)
	r := TextResponse{Final: last, Continue: !last, LUN: h.LUN(), ITT: st.itt, TTT: reservedTag, DataLen: n}
	if !last {
		st.ttt = c.sess.nextTTT()
		r.TTT = st.ttt
	}
	o := outPDU{stat: statAdvance, data: part}
	r.AppendTo(o.hdr[:0])
	c.queue(&o)
	if last {
		st.resp, st.off, st.ttt = nil, 0, reservedTag
	}
}

// sendTargets appends the SendTargets answer (RFC 7143 Appendix C): every
// target the initiator may use (All), the named one, or for an empty value
// the session's target, each with its leading addresses (Target.Lead),
// every portal of this server and the portals of the other nodes that
// serve it (Target.Peers) as TargetAddress, each once.
func (c *conn) sendTargets(b []byte, val string) []byte {
	s := c.sess
	src := c.srv.cfg.Targets
	initiator := s.params.InitiatorName
	var list []*Target
	switch val {
	case "All":
		for _, t := range src.Targets() {
			if t != nil && t.allows(initiator) {
				list = append(list, t)
			}
		}
	case "":
		if s.target != nil {
			list = append(list, s.target)
		}
	default:
		if t, ok := src.Target(val); ok && t != nil && t.allows(initiator) {
			list = append(list, t)
		}
	}
	addrs := c.advertise()
	for _, t := range list {
		b = login.AppendText(b, login.KeyValue{Key: "TargetName", Value: t.Name})
		var sent []string
		for _, list := range [][]string{t.Lead, addrs, t.Peers} {
			for _, a := range list {
				if !slices.Contains(sent, a) {
					sent = append(sent, a)
					b = login.AppendText(b, login.KeyValue{Key: "TargetAddress", Value: a})
				}
			}
		}
	}
	return b
}

// logout handles a Logout Request (RFC 7143 §11.14).
func (c *conn) logout(p *PDU) error {
	h := p.BHS
	s := c.sess
	resp := LogoutResponse{ITT: h.ITT()}
	reason := LogoutReason(h.LogoutReason())
	o := outPDU{stat: statAdvance}
	switch reason {
	case LogoutCloseSession:
		s.log.Info("iscsi: logout", "reason", reason)
		o.closeAfter = true
	case LogoutCloseConnection:
		cid := h.CID()
		if cid == c.cid {
			s.log.Info("iscsi: logout", "reason", reason, "cid", cid)
			c.logoutConnOnly.Store(true)
			o.closeAfter = true
			break
		}
		var other *conn
		s.mu.Lock()
		other = s.mu.conns[cid]
		s.mu.Unlock()
		if other == nil {
			resp.Response = LogoutCIDNotFound
			break
		}
		other.logoutConnOnly.Store(true)
		other.abort()
	case LogoutRemoveForRecover:
		// ErrorRecoveryLevel 0/1: no connection recovery.
		resp.Response = LogoutRecoveryUnsupported
		resp.Time2Wait = s.params.DefaultTime2Wait
	default:
		c.reject(h, RejectInvalidPDUField, false)
		return nil
	}
	resp.AppendTo(o.hdr[:0])
	if !o.closeAfter {
		c.queue(&o)
		return nil
	}
	// Tasks still waiting for Data-Out end here; running ones finish and
	// send their status before the Logout Response, which closes the
	// connection (RFC 7143 §11.14).
	scope := c
	if reason == LogoutCloseSession {
		scope = nil
	}
	waits := s.abortForLogout(scope)
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		s.waitTasks(waits)
		if reason == LogoutCloseSession {
			// The I_T nexus ends with this session: release what SPC-2
			// ties to it (RESERVE(6/10)) before the initiator learns the
			// logout is done, so that another initiator's next command
			// sees it released.
			s.loseNexus()
		}
		c.queue(&o)
	}()
	return nil
}

// abortForLogout aborts the tasks of conn c (all when c is nil) that have
// not started and returns the running ones.
func (s *session) abortForLogout(c *conn) []taskRef {
	s.mu.Lock()
	defer s.mu.Unlock()
	var waits []taskRef
	for _, t := range s.mu.tasks {
		if c != nil && t.c != c {
			continue
		}
		if t.started {
			waits = append(waits, taskRef{s, t, t.itt, t.seq})
			continue
		}
		s.abortLocked(t)
	}
	return waits
}

// waitTasks waits until every task in waits has finished (or its session
// closed).
func (s *session) waitTasks(waits []taskRef) {
	for _, w := range waits {
		w.s.mu.Lock()
		for !w.s.mu.closed && w.s.mu.tasks[w.itt] == w.t && w.t.seq == w.seq {
			w.s.mu.cond.Wait()
		}
		w.s.mu.Unlock()
	}
}

// taskRef names one task incarnation that a TMF waits for.
type taskRef struct {
	s   *session
	t   *task
	itt uint32
	seq uint64
}

// taskMgmt handles a Task Management Function Request (RFC 7143 §11.5).
// Tasks still collecting Data-Out are aborted here; running ones through
// Device.TaskManagement. The response is queued after every affected task
// has finished (and queued its own response, if any).
func (c *conn) taskMgmt(p *PDU) error {
	h := p.BHS
	s := c.sess
	fn := scsi.TMF(h.TMFFunction())
	lun := decodeLUN(h.LUN())
	rtt := h.ReferencedTaskTag()
	itt := h.ITT()

	s.mu.Lock()
	if s.mu.immediate >= maxImmediate {
		s.mu.Unlock()
		c.reject(h, RejectImmediateCmdReject, false)
		return nil
	}
	s.mu.immediate++
	s.mu.Unlock()

	var waits []taskRef
	var list []held
	callDev := false
	resp := scsi.TMFComplete
	switch fn {
	case scsi.TMFAbortTask:
		s.mu.Lock()
		t := s.mu.tasks[rtt]
		switch {
		case t == nil:
			ref := h.RefCmdSN()
			exp, maxSN := s.windowLocked()
			// RFC 7143 §11.5.1: a task never received but inside the
			// window and before this TMF counts as received.
			if !snLess(ref, exp) && !snLess(maxSN, ref) && snLess(ref, h.CmdSN()) {
				list = s.deliverHeldLocked(s.mu.win.consume(ref, nil), list)
			} else {
				resp = scsi.TMFTaskDoesNotExist
			}
		case !t.started:
			s.abortLocked(t)
		default:
			waits = append(waits, taskRef{s, t, t.itt, t.seq})
			callDev = true
		}
		s.mu.Unlock()
	case scsi.TMFAbortTaskSet, scsi.TMFClearACA:
		waits = s.abortMatching(waits, lun, false)
		callDev = true
	case scsi.TMFClearTaskSet, scsi.TMFLogicalUnitReset:
		for _, ss := range c.srv.sessionsOfTarget(s.params.TargetName) {
			waits = ss.abortMatching(waits, lun, false)
		}
		callDev = true
	case scsi.TMFTargetWarmReset, scsi.TMFTargetColdReset:
		for _, ss := range c.srv.sessionsOfTarget(s.params.TargetName) {
			waits = ss.abortMatching(waits, 0, true)
		}
		callDev = true
	case scsi.TMFTaskReassign:
		resp = scsi.TMFReassignUnsupported
	default:
		resp = scsi.TMFRejected
	}
	if len(list) > 0 {
		s.runHeld(list)
	}
	if !callDev {
		c.tmfRespond(itt, resp, false)
		return nil
	}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		r := s.dev.TaskManagement(s.ctx, s.nexus, fn, lun, uint64(rtt))
		s.waitTasks(waits)
		cold := fn == scsi.TMFTargetColdReset && r == scsi.TMFComplete
		c.tmfRespond(itt, r, cold)
		if cold {
			for _, ss := range c.srv.sessionsOfTarget(s.params.TargetName) {
				if ss != s {
					ss.close()
				}
			}
		}
	}()
	return nil
}

// tmfRespond queues a TMF response.
func (c *conn) tmfRespond(itt uint32, r scsi.TMFResponse, closeAfter bool) {
	s := c.sess
	s.mu.Lock()
	s.mu.immediate--
	s.mu.Unlock()
	o := outPDU{stat: statAdvance, closeAfter: closeAfter}
	(&TaskMgmtResponse{Response: uint8(r), ITT: itt}).AppendTo(o.hdr[:0])
	c.queue(&o)
}

// abortMatching aborts the session's tasks that have not started (on lun,
// or all when all) and returns the started ones for the caller to wait on.
func (s *session) abortMatching(waits []taskRef, lun uint64, all bool) []taskRef {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, t := range s.mu.tasks {
		if !all && t.sc.LUN != lun {
			continue
		}
		if t.started {
			waits = append(waits, taskRef{s, t, t.itt, t.seq})
			continue
		}
		s.abortLocked(t)
	}
	return waits
}

// abortLocked aborts a task that has not started: it is removed, its
// window slot freed and its CmdSN kept as consumed if still held.
// REQUIRES: s.mu held; !t.started.
func (s *session) abortLocked(t *task) {
	t.aborted = true
	delete(s.mu.tasks, t.itt)
	s.mu.win.forget(t.cmdSN, t)
	if t.counted {
		s.mu.win.end()
	}
	if t.immediate {
		s.mu.immediate--
	}
	s.mu.cond.Broadcast()
	t.unref()
}
