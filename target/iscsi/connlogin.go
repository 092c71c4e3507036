package iscsi

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"

	"stave.dev/stave/internal/logkey"
	"stave.dev/stave/target/iscsi/login"
)

// loginMaxText bounds the reassembled text of one login request.
const loginMaxText = 64 << 10

// loginSegment is the most data a Login Response carries: during login the
// initiator's MaxRecvDataSegmentLength is the default 8192 (RFC 7143 §13.12).
const loginSegment = 8192

var (
	errLoginFailed = errors.New("iscsi: login failed")
	errNotLogin    = errors.New("iscsi: first PDU is not a Login Request")
)

// loginState is the per-connection state of the login phase.
type loginState struct {
	first       bool
	isid        [6]byte
	tsih        uint16
	cid         uint16
	itt         uint32
	cmdSN       uint32
	statSN      uint32
	join        *session // TSIH != 0: the session the connection joins
	text        []byte   // reassembled request text
	pending     [][]byte // remaining parts of a split response
	pendingResp login.Response
}

// loginPhase runs the login of the connection (RFC 7143 §6). On success
// the connection is attached to its session and c.sess is set.
func (c *conn) loginPhase(ctx context.Context) error {
	cfg := c.srv.cfg
	m := login.New(login.Config{
		Logger:               c.log,
		TargetPortalGroupTag: c.portal.cfg.TPGT,
		Targets:              targetLookup{cfg.Targets},
		DiscoveryAuth:        cfg.DiscoveryAuth,
		Limits:               cfg.Limits,
		Rand:                 cfg.Rand,
	})
	st := loginState{first: true}
	for {
		p, err := c.r.ReadPDU()
		if err != nil {
			if p != nil && errors.Is(err, ErrDataTooLong) {
				c.loginFail(&st, p.BHS, login.StatusInitiatorError)
			}
			return err
		}
		h := p.BHS
		if h.Opcode() != OpLoginReq {
			if st.first {
				return errNotLogin
			}
			c.loginFail(&st, h, login.StatusInvalidDuringLogin)
			return fmt.Errorf("%w: %s during login", errLoginFailed, h.Opcode())
		}
		var isid [6]byte
		copy(isid[:], h[offLUN:offLUN+6])
		tsih := binary.BigEndian.Uint16(h[offLUN+6:])
		if st.first {
			st.first = false
			st.isid, st.tsih, st.cid = isid, tsih, h.CID()
			st.cmdSN = h.CmdSN()
			st.statSN = h.ExpStatSN()
			if tsih != 0 {
				st.join = c.srv.lookupSession(tsih)
				if st.join == nil || st.join.isid != isid {
					c.loginFail(&st, h, login.StatusSessionDoesNotExist)
					return fmt.Errorf("%w: TSIH %d does not exist", errLoginFailed, tsih)
				}
				st.cmdSN, _ = st.join.window()
			}
		} else if isid != st.isid || tsih != st.tsih || h.CID() != st.cid {
			c.loginFail(&st, h, login.StatusInitiatorError)
			return fmt.Errorf("%w: ISID/TSIH/CID changed during login", errLoginFailed)
		}
		st.itt = h.ITT()

		// Continue sending a split response (RFC 7143 §11.13.1).
		if len(st.pending) > 0 {
			if len(p.Data) != 0 || h.Continue() {
				c.loginFail(&st, h, login.StatusInitiatorError)
				return fmt.Errorf("%w: data while receiving a split response", errLoginFailed)
			}
			if err := c.sendLoginPart(&st); err != nil {
				return err
			}
			if len(st.pending) == 0 && m.Done() {
				return c.loginDone(ctx, &st, m)
			}
			continue
		}

		if len(st.text)+len(p.Data) > loginMaxText {
			c.loginFail(&st, h, login.StatusInitiatorError)
			return fmt.Errorf("%w: login text too long", errLoginFailed)
		}
		st.text = append(st.text, p.Data...)
		flags := h.Flags()
		if h.Continue() {
			// RFC 7143 §11.12.2: acknowledge with an empty response.
			resp := LoginResponse{CSG: (flags >> 2) & 3, ITT: st.itt, TSIH: st.tsih, ISID: st.isid}
			if err := c.writeLoginResponse(&st, &resp, nil); err != nil {
				return err
			}
			continue
		}
		req := login.Request{
			Transit:    h.Final(),
			CSG:        login.Stage((flags >> 2) & 3),
			NSG:        login.Stage(flags & 3),
			VersionMax: h[offByte2],
			VersionMin: h[offByte3],
			ISID:       isid,
			TSIH:       tsih,
			CID:        h.CID(),
			Data:       st.text,
		}
		resp := m.Step(req)
		st.text = st.text[:0]
		if resp.Status != login.StatusSuccess || m.Failed() {
			c.log.Info("iscsi: login refused", "status", resp.Status, logkey.ISID, fmt.Sprintf("%x", isid[:]))
			c.loginFail(&st, h, resp.Status)
			return fmt.Errorf("%w: %s", errLoginFailed, resp.Status)
		}
		if m.Done() && st.join == nil {
			// Allocate the session now: the final response carries the TSIH.
			if err := c.newSession(ctx, &st, m); err != nil {
				c.loginFail(&st, h, login.StatusServiceUnavailable)
				return err
			}
		} else if m.Done() {
			if status := c.checkJoin(&st, m); status != login.StatusSuccess {
				c.loginFail(&st, h, status)
				return fmt.Errorf("%w: %s", errLoginFailed, status)
			}
		}
		st.pendingResp = resp
		st.pending = splitData(resp.Data, loginSegment)
		if len(st.pending) == 0 {
			st.pending = [][]byte{nil}
		}
		if err := c.sendLoginPart(&st); err != nil {
			return err
		}
		if len(st.pending) == 0 && m.Done() {
			return c.loginDone(ctx, &st, m)
		}
	}
}

// splitData cuts data into parts of at most n bytes.
func splitData(data []byte, n int) [][]byte {
	var parts [][]byte
	for len(data) > 0 {
		k := min(n, len(data))
		parts = append(parts, data[:k])
		data = data[k:]
	}
	return parts
}

// sendLoginPart sends the next part of the pending login response; all
// but the last carry C=1 and T=0.
func (c *conn) sendLoginPart(st *loginState) error {
	part := st.pending[0]
	st.pending = st.pending[1:]
	r := st.pendingResp
	resp := LoginResponse{
		CSG: uint8(r.CSG), VersionMax: r.VersionMax, VersionActive: r.VersionActive,
		ISID: st.isid, TSIH: st.tsih, ITT: st.itt,
	}
	if len(st.pending) > 0 {
		resp.Continue = true
	} else {
		resp.Transit = r.Transit
		if r.Transit {
			resp.NSG = uint8(r.NSG)
		}
		if r.Transit && r.NSG == login.FullFeaturePhase && c.sess != nil {
			resp.TSIH = c.sess.tsih
		}
	}
	return c.writeLoginResponse(st, &resp, part)
}

// writeLoginResponse writes one Login Response synchronously.
func (c *conn) writeLoginResponse(st *loginState, resp *LoginResponse, data []byte) error {
	resp.StatSN = st.statSN
	st.statSN++
	resp.ExpCmdSN = st.cmdSN
	resp.MaxCmdSN = st.cmdSN + uint32(c.srv.cfg.QueueDepth) - 1
	if st.join != nil {
		resp.ExpCmdSN, resp.MaxCmdSN = st.join.window()
	} else if c.sess != nil {
		resp.ExpCmdSN, resp.MaxCmdSN = c.sess.window()
	}
	resp.DataLen = len(data)
	var hdr [BHSLen]byte
	resp.AppendTo(hdr[:0])
	b := AppendPDU(make([]byte, 0, BHSLen+len(data)+4), hdr[:], nil, data, false, false)
	_, err := c.nc.Write(b)
	return err
}

// loginFail sends a Login Response with a failure status.
func (c *conn) loginFail(st *loginState, h BHS, status login.Status) {
	resp := LoginResponse{
		ITT: h.ITT(), ISID: st.isid, StatusClass: status.Class(), StatusDetail: status.Detail(),
	}
	if h.Opcode() == OpLoginReq {
		resp.CSG = (h.Flags() >> 2) & 3
	}
	_ = c.writeLoginResponse(st, &resp, nil)
}

// checkJoin validates a connection joining an existing session.
func (c *conn) checkJoin(st *loginState, m *login.Machine) login.Status {
	p := m.Params()
	s := st.join
	if p.InitiatorName != s.params.InitiatorName || p.SessionType != s.params.SessionType ||
		p.TargetName != s.params.TargetName {
		return login.StatusInitiatorError
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.mu.closed {
		return login.StatusSessionDoesNotExist
	}
	if _, reinstate := s.mu.conns[st.cid]; !reinstate {
		if len(s.mu.conns)+s.mu.pending >= int(max(1, s.params.MaxConnections)) {
			return login.StatusTooManyConnections
		}
	}
	// Hold a slot from the final response until addConn.
	s.mu.pending++
	c.pendingIn = s
	return login.StatusSuccess
}

// newSession creates (or reinstates) the session of a leading login.
func (c *conn) newSession(ctx context.Context, st *loginState, m *login.Machine) error {
	p := m.Params()
	s := newSession(c.srv, c, p, st.isid, st.cmdSN)
	if p.SessionType == login.SessionNormal {
		t, ok := c.srv.cfg.Targets.Target(p.TargetName)
		if !ok || t == nil {
			return fmt.Errorf("%w: target %q vanished", errLoginFailed, p.TargetName)
		}
		s.setTarget(t, c.portal)
	}
	if err := c.srv.addSession(ctx, s); err != nil {
		return err
	}
	s.log = c.srv.log.With(sessionLogAttrs(p, st.isid, s.tsih)...)
	c.sess = s
	c.ownsNewSession = true
	c.pendingIn = s // newSession counted the leading connection
	return nil
}

// loginDone moves the connection to the full feature phase.
func (c *conn) loginDone(ctx context.Context, st *loginState, m *login.Machine) error {
	p := m.Params()
	c.params = p
	c.cid = st.cid
	c.statSN = st.statSN
	c.headerDigest, c.dataDigest = p.HeaderDigest, p.DataDigest
	c.r.HeaderDigest, c.r.DataDigest = p.HeaderDigest, p.DataDigest
	c.r.MaxDataSegmentLength = int(p.TargetMaxRecvDataSegmentLength)
	c.maxSendData = int(p.InitiatorMaxRecvDataSegmentLength)
	if c.maxSendData <= 0 {
		c.maxSendData = loginSegment
	}
	if st.join != nil {
		if err := st.join.addConn(ctx, c); err != nil {
			return err
		}
		c.sess = st.join
	} else if err := c.sess.addConn(ctx, c); err != nil {
		return err
	}
	c.ownsNewSession = false
	c.log = c.log.With(logkey.Initiator, p.InitiatorName, logkey.TSIH, c.sess.tsih, logkey.Conn, c.cid)
	c.sess.log.Info("iscsi: login", "type", p.SessionType, logkey.Conn, c.cid, logkey.Remote, c.remote,
		logkey.Portal, c.local, "header_digest", p.HeaderDigest, "data_digest", p.DataDigest)
	return nil
}
