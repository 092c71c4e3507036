package login

import (
	"crypto/rand"
	"fmt"
	"io"
	"log/slog"
	"strconv"
	"strings"

	"stave.dev/stave/internal/logkey"
)

// Error explains why a login failed. Machine.Err returns it; its Reason
// is for logs, never for the initiator (which only sees Status).
type Error struct {
	Status Status
	Reason string
}

// Error implements error.
func (e *Error) Error() string {
	return "login: " + e.Status.String() + ": " + e.Reason
}

func errorf(st Status, format string, args ...any) *Error {
	return &Error{Status: st, Reason: fmt.Sprintf(format, args...)}
}

// maxSteps bounds the Login Requests of one login; a CHAP login with
// mutual authentication needs five.
const maxSteps = 32

// maxNameLength is the longest iSCSI name (RFC 7143 §4.2.7.1).
const maxNameLength = 223

// authMethod is the agreed AuthMethod.
type authMethod uint8

const (
	authUndecided authMethod = iota
	authNone
	authCHAP
)

// String returns the AuthMethod value.
func (a authMethod) String() string {
	switch a {
	case authNone:
		return valNone
	case authCHAP:
		return valCHAP
	}
	return "Undecided"
}

// Machine is the target side of the login phase of one connection
// (RFC 7143 §6). It is not safe for concurrent use: the connection's
// goroutine owns it. See the package documentation for the stages and
// key handling.
type Machine struct {
	cfg  Config
	lim  Limits
	log  *slog.Logger
	rand io.Reader

	steps   int
	started bool  // a first request has been seen
	stage   Stage // CSG expected in the next request
	done    bool
	failed  *Error
	lastCSG Stage

	isid                   [6]byte
	tsih, cid              uint16
	versionMax, versionMin uint8

	params     Params
	aliasSeen  bool // InitiatorAlias was declared
	target     TargetInfo
	haveTarget bool
	targetSent string // TargetName as the initiator sent it
	auth       *Auth  // credentials required for this session; nil = none

	method authMethod
	chap   chapState

	negotiated   map[string]bool   // operational keys already settled
	pending      map[string]string // target offers awaiting an answer
	proposed     bool
	declaredMRDS bool // our MaxRecvDataSegmentLength was sent

	// fbAt is the index in the current response of the FirstBurstLength
	// answer still to compute, or -1; fbOffer is the initiator's value.
	fbAt    int
	fbOffer string
}

// New returns a machine waiting for the first Login Request of a
// connection.
func New(cfg Config) *Machine {
	m := &Machine{
		cfg:        cfg,
		lim:        cfg.Limits.withDefaults(),
		log:        cfg.Logger,
		rand:       cfg.Rand,
		params:     DefaultParams(),
		negotiated: make(map[string]bool),
		pending:    make(map[string]string),
		fbAt:       -1,
	}
	if m.log == nil {
		m.log = slog.New(slog.DiscardHandler)
	}
	if m.rand == nil {
		m.rand = rand.Reader
	}
	m.params.TargetPortalGroupTag = cfg.TargetPortalGroupTag
	return m
}

// Done reports whether the last Step moved the connection to the full
// feature phase; Params are then final.
func (m *Machine) Done() bool { return m.done }

// Failed reports whether the last response carried a non-success status.
// The caller sends that response and closes the connection.
func (m *Machine) Failed() bool { return m.failed != nil }

// Err returns why the login failed as an *Error, or nil.
func (m *Machine) Err() error {
	if m.failed == nil {
		return nil
	}
	return m.failed
}

// Params returns the negotiated parameters, with RFC 7143 defaults for
// keys not negotiated. They are final once Done reports true.
func (m *Machine) Params() Params { return m.params }

// Target returns the target a normal session logs in to, once its
// TargetName has been accepted.
func (m *Machine) Target() (TargetInfo, bool) { return m.target, m.haveTarget }

// Stage returns the stage the next Login Request must carry in CSG.
func (m *Machine) Stage() Stage { return m.stage }

// Step processes one Login Request (with C-bit continuations already
// reassembled) and returns the Login Response to send.
//
// The machine never transits on its own: it sets T in the response only
// when the request had T set, the current stage is complete (CHAP
// finished when required) and no key it offered awaits an answer
// (RFC 7143 §6.3, §11.13.1). After a failure every further Step returns
// the same failure; after Done, Step fails with StatusInvalidDuringLogin.
func (m *Machine) Step(req Request) Response {
	if m.failed != nil {
		return m.failResponse()
	}
	if m.done {
		return m.fail(errorf(StatusInvalidDuringLogin, "Login Request after the login completed"))
	}
	m.steps++
	if m.steps > maxSteps {
		return m.fail(errorf(StatusInitiatorError, "more than %d Login Requests", maxSteps))
	}
	first := !m.started
	m.lastCSG = req.CSG & 3
	if e := m.checkHeader(req, first); e != nil {
		return m.fail(e)
	}
	kvs, err := ParseText(req.Data)
	if err != nil {
		return m.fail(errorf(StatusInitiatorError, "%v", err))
	}
	if e := m.leading(kvs, first); e != nil {
		return m.fail(e)
	}
	if first {
		m.started = true
		m.stage = req.CSG
		if req.CSG == LoginOperationalNegotiation && m.auth != nil {
			// RFC 7143 §6.3: a target that requires authentication
			// refuses a login that skips the security stage.
			return m.fail(errorf(StatusAuthenticationFailure, "security stage skipped but CHAP is required"))
		}
		if req.CSG == LoginOperationalNegotiation {
			m.method = authNone
		}
	}

	var out []KeyValue
	if first && m.params.SessionType == SessionNormal {
		// RFC 7143 §13.9: TargetPortalGroupTag in the first response
		// of a normal session; §13.6: TargetAlias is declarative.
		out = append(out, KeyValue{keyTargetPortalGroup, strconv.Itoa(int(m.cfg.TargetPortalGroupTag))})
		if m.target.Alias != "" {
			out = append(out, KeyValue{keyTargetAlias, m.target.Alias})
			m.params.TargetAlias = m.target.Alias
		}
	}
	var e *Error
	if req.CSG == SecurityNegotiation {
		out, e = m.security(kvs, out)
	} else {
		out, e = m.operationalStage(kvs, out)
	}
	if e != nil {
		return m.fail(e)
	}

	transit := req.Transit
	if req.CSG == SecurityNegotiation && m.auth != nil {
		switch {
		case transit && m.method == authUndecided:
			return m.fail(errorf(StatusAuthenticationFailure, "transit out of the security stage without AuthMethod"))
		case m.chap.phase != chapDone:
			transit = false
		}
	}
	if req.CSG == LoginOperationalNegotiation && !m.proposed {
		m.proposed = true
		for _, kv := range m.proposals() {
			out = append(out, kv)
			m.pending[kv.Key] = kv.Value
		}
	}
	if len(m.pending) > 0 {
		transit = false
	}
	// Declare our MaxRecvDataSegmentLength (RFC 7143 §13.12) in the
	// first operational response, or when going straight to the full
	// feature phase from the security stage.
	if !m.declaredMRDS && (req.CSG == LoginOperationalNegotiation || transit && req.NSG == FullFeaturePhase) {
		m.declaredMRDS = true
		out = append(out, KeyValue{keyMaxRecvDSL, strconv.FormatUint(uint64(m.lim.MaxRecvDataSegmentLength), 10)})
		m.params.TargetMaxRecvDataSegmentLength = m.lim.MaxRecvDataSegmentLength
	}
	if transit && req.NSG == FullFeaturePhase {
		if e := m.finish(); e != nil {
			return m.fail(e)
		}
	}

	resp := Response{
		Transit: transit,
		CSG:     req.CSG,
		Status:  StatusSuccess,
		Data:    AppendText(nil, out...),
	}
	if transit {
		resp.NSG = req.NSG
		m.stage = req.NSG
		if req.NSG == FullFeaturePhase {
			m.done = true
		}
	}
	return resp
}

// checkHeader validates the flags, stages, version and identifiers of a
// request (RFC 7143 §11.12).
func (m *Machine) checkHeader(req Request, first bool) *Error {
	if req.Continue {
		if req.Transit {
			return errorf(StatusInitiatorError, "both T and C bits set")
		}
		return errorf(StatusInitiatorError, "C bit set: text must be reassembled before Step")
	}
	if first {
		// RFC 7143 §11.12.4: only version 0x00 exists.
		if req.VersionMin > 0 {
			return errorf(StatusUnsupportedVersion, "VersionMin=%d VersionMax=%d, supported 0", req.VersionMin, req.VersionMax)
		}
		m.isid, m.tsih, m.cid = req.ISID, req.TSIH, req.CID
		m.versionMax, m.versionMin = req.VersionMax, req.VersionMin
		if req.CSG != SecurityNegotiation && req.CSG != LoginOperationalNegotiation {
			return errorf(StatusInitiatorError, "first request has CSG=%v", req.CSG)
		}
	} else {
		switch {
		case req.ISID != m.isid || req.TSIH != m.tsih || req.CID != m.cid:
			return errorf(StatusInitiatorError, "ISID, TSIH or CID changed during login")
		case req.VersionMax != m.versionMax || req.VersionMin != m.versionMin:
			return errorf(StatusInitiatorError, "VersionMax or VersionMin changed during login")
		case req.CSG != m.stage:
			return errorf(StatusInitiatorError, "CSG=%v, expected %v", req.CSG, m.stage)
		}
	}
	if req.Transit {
		// RFC 7143 §11.12.3: NSG is 1 or 3 and after CSG.
		if req.NSG <= req.CSG || (req.NSG != LoginOperationalNegotiation && req.NSG != FullFeaturePhase) {
			return errorf(StatusInitiatorError, "invalid transition CSG=%v NSG=%v", req.CSG, req.NSG)
		}
	}
	return nil
}

// leading handles InitiatorName, InitiatorAlias, SessionType and
// TargetName (RFC 7143 §13.4-13.8, §13.21). The first request must
// declare InitiatorName, and TargetName for normal sessions. Later
// requests may repeat them (libiscsi does) but not change them.
func (m *Machine) leading(kvs []KeyValue, first bool) *Error {
	var name, alias, stype, target string
	var hasName, hasAlias, hasType, hasTarget bool
	for _, kv := range kvs {
		switch kv.Key {
		case keyInitiatorName:
			name, hasName = kv.Value, true
		case keyInitiatorAlias:
			alias, hasAlias = kv.Value, true
		case keySessionType:
			stype, hasType = kv.Value, true
		case keyTargetName:
			target, hasTarget = kv.Value, true
		}
	}
	if !first {
		p := m.params
		switch {
		case hasName && name != p.InitiatorName:
			return errorf(StatusInitiatorError, "InitiatorName changed during login")
		case hasAlias && m.aliasSeen && alias != p.InitiatorAlias:
			return errorf(StatusInitiatorError, "InitiatorAlias changed during login")
		case hasType && stype != p.SessionType.String():
			return errorf(StatusInitiatorError, "SessionType changed during login")
		case hasTarget && p.SessionType == SessionNormal && target != m.targetSent:
			return errorf(StatusInitiatorError, "TargetName changed during login")
		}
		if hasAlias {
			// Declarative (RFC 7143 §13.7): may first come later.
			m.params.InitiatorAlias, m.aliasSeen = alias, true
		}
		return nil
	}
	if !hasName {
		return errorf(StatusMissingParameter, "first Login Request lacks InitiatorName")
	}
	if !validName(name) {
		return errorf(StatusInitiatorError, "InitiatorName %q is not an iqn., eui. or naa. name", name)
	}
	m.params.InitiatorName = name
	m.params.InitiatorAlias, m.aliasSeen = alias, hasAlias
	m.log = m.log.With(logkey.Initiator, name)
	switch {
	case !hasType || stype == valNormal:
		m.params.SessionType = SessionNormal
	case stype == valDiscovery:
		m.params.SessionType = SessionDiscovery
	default:
		return errorf(StatusSessionTypeNotSupported, "SessionType=%q", stype)
	}
	if m.params.SessionType == SessionDiscovery {
		// RFC 7143 §13.4: a discovery session has no TargetName; one
		// sent anyway is ignored.
		m.auth = m.cfg.DiscoveryAuth
		return nil
	}
	if !hasTarget {
		return errorf(StatusMissingParameter, "normal session without TargetName")
	}
	var ti TargetInfo
	ok := false
	if m.cfg.Targets != nil {
		ti, ok = m.cfg.Targets.LookupTarget(target)
	}
	if !ok {
		return errorf(StatusNotFound, "no target %q", target)
	}
	if len(ti.ACL) > 0 && !containsFold(ti.ACL, name) {
		return errorf(StatusAuthorizationFailure, "initiator not in the ACL of %q", target)
	}
	m.target, m.haveTarget = ti, true
	m.targetSent = target
	// The lookup may normalise the name (iSCSI names are case-insensitive,
	// RFC 3722); Params carry the target's own spelling.
	m.params.TargetName = ti.Name
	if ti.Name == "" {
		m.params.TargetName = target
		m.target.Name = target
	}
	m.auth = ti.Auth
	m.log = m.log.With(logkey.Target, target)
	return nil
}

// validName checks the form of an iSCSI name (RFC 7143 §4.2.7).
func validName(s string) bool {
	if len(s) < 5 || len(s) > maxNameLength {
		return false
	}
	p := strings.ToLower(s[:4])
	return p == "iqn." || p == "eui." || p == "naa."
}

// security handles the keys of a SecurityNegotiation-stage request
// (RFC 7143 §6.3, §12). Of the operational keys only the declarative
// MaxRecvDataSegmentLength is accepted here; unknown keys are
// NotUnderstood.
func (m *Machine) security(kvs []KeyValue, out []KeyValue) ([]KeyValue, *Error) {
	var ans chapAnswer
	var sawAnswer bool
	for _, kv := range kvs {
		switch kv.Key {
		case keyAuthMethod:
			if m.method != authUndecided {
				return nil, errorf(StatusInitiatorError, "AuthMethod renegotiated")
			}
			items, ok := splitList(kv.Value)
			if !ok {
				return nil, errorf(StatusInitiatorError, "malformed AuthMethod=%q", kv.Value)
			}
			if m.auth != nil {
				if !containsExact(items, valCHAP) {
					return nil, errorf(StatusAuthenticationFailure, "CHAP required, initiator offers %q", kv.Value)
				}
				m.method = authCHAP
				m.chap.phase = chapWaitA
				out = append(out, KeyValue{keyAuthMethod, valCHAP})
			} else {
				if !containsExact(items, valNone) {
					return nil, errorf(StatusAuthenticationFailure, "no credentials configured, initiator offers %q", kv.Value)
				}
				m.method = authNone
				out = append(out, KeyValue{keyAuthMethod, valNone})
			}
		case keyCHAPA:
			if m.method != authCHAP || m.chap.phase != chapWaitA {
				return nil, errorf(StatusInitiatorError, "unexpected CHAP_A")
			}
			alg, ok := chooseAlgorithm(kv.Value, m.lim.CHAPAlgorithms)
			if !ok {
				return nil, errorf(StatusAuthenticationFailure, "no supported CHAP algorithm in CHAP_A=%q", kv.Value)
			}
			keys, err := m.chap.start(alg, m.rand)
			if err != nil {
				return nil, errorf(StatusTargetError, "%v", err)
			}
			out = append(out, keys...)
		case keyCHAPN, keyCHAPR, keyCHAPI, keyCHAPC:
			if m.method != authCHAP || m.chap.phase != chapWaitResponse {
				return nil, errorf(StatusInitiatorError, "unexpected %s", kv.Key)
			}
			sawAnswer = true
			switch kv.Key {
			case keyCHAPN:
				ans.n, ans.hasN = kv.Value, true
			case keyCHAPR:
				ans.r, ans.hasR = kv.Value, true
			case keyCHAPI:
				ans.i, ans.hasI = kv.Value, true
			case keyCHAPC:
				ans.c, ans.hasC = kv.Value, true
			}
		default:
			if isOperationalKey(kv.Key) && kv.Key != keyMaxRecvDSL {
				// RFC 7143 §6.3: operational negotiation starts after
				// the security stage; only declarative keys may come
				// earlier. Linux LIO refuses such logins the same way.
				return nil, errorf(StatusInitiatorError, "%s may not be negotiated in the security stage", kv.Key)
			}
			var e *Error
			if out, e = m.otherKey(kv, out); e != nil {
				return nil, e
			}
		}
	}
	if sawAnswer {
		keys, err := m.chap.verify(ans, m.auth)
		if err != nil {
			return nil, errorf(StatusAuthenticationFailure, "CHAP %v: %v", m.chap.alg, err)
		}
		out = append(out, keys...)
	}
	return out, nil
}

func containsExact(items []string, s string) bool {
	for _, it := range items {
		if it == s {
			return true
		}
	}
	return false
}

// operationalStage handles the keys of a LoginOperationalNegotiation
// request (RFC 7143 §6.3, §13).
func (m *Machine) operationalStage(kvs []KeyValue, out []KeyValue) ([]KeyValue, *Error) {
	for _, kv := range kvs {
		if isSecurityKey(kv.Key) {
			return nil, errorf(StatusInitiatorError, "%s outside the security stage", kv.Key)
		}
		var e *Error
		if out, e = m.otherKey(kv, out); e != nil {
			return nil, e
		}
	}
	return m.answerFirstBurst(out), nil
}

// otherKey handles a key that is neither leading nor security.
func (m *Machine) otherKey(kv KeyValue, out []KeyValue) ([]KeyValue, *Error) {
	switch {
	case isLeadingKey(kv.Key):
		return out, nil
	case kv.Key == keySendTargets:
		return nil, errorf(StatusInvalidDuringLogin, "SendTargets during login")
	case isTargetOnlyKey(kv.Key):
		return nil, errorf(StatusInitiatorError, "initiator sent target key %s", kv.Key)
	case isSecurityKey(kv.Key):
		return nil, errorf(StatusInitiatorError, "%s not expected now", kv.Key)
	}
	if offered, ok := m.pending[kv.Key]; ok {
		delete(m.pending, kv.Key)
		m.negotiated[kv.Key] = true
		return out, m.answerToProposal(kv, offered)
	}
	if isOperationalKey(kv.Key) {
		if m.negotiated[kv.Key] {
			// RFC 7143 §6.2: renegotiating a key is a protocol error.
			return nil, errorf(StatusInitiatorError, "%s negotiated twice", kv.Key)
		}
		m.negotiated[kv.Key] = true
	}
	if kv.Key == keyFirstBurstLength {
		// Answered by answerFirstBurst once MaxBurstLength, InitialR2T
		// and ImmediateData of the whole request are known; keep its
		// place in the answer.
		m.fbAt, m.fbOffer = len(out), kv.Value
		return append(out, KeyValue{Key: keyFirstBurstLength}), nil
	}
	n := m.operational(kv)
	if n.fail != nil {
		return nil, n.fail
	}
	if n.answer != "" {
		out = append(out, KeyValue{kv.Key, n.answer})
	}
	return out, nil
}

// answerFirstBurst fills in the FirstBurstLength answer whose place
// otherKey kept.
func (m *Machine) answerFirstBurst(out []KeyValue) []KeyValue {
	if m.fbAt >= 0 {
		out[m.fbAt].Value = m.firstBurst(m.fbOffer)
		m.fbAt = -1
	}
	return out
}

// finish checks and completes Params when the login reaches the full
// feature phase.
func (m *Machine) finish() *Error {
	p := &m.params
	if m.lim.HeaderDigest == DigestRequired && !p.HeaderDigest && p.SessionType == SessionNormal {
		return errorf(StatusInitiatorError, "HeaderDigest=CRC32C is required")
	}
	if m.lim.DataDigest == DigestRequired && !p.DataDigest && p.SessionType == SessionNormal {
		return errorf(StatusInitiatorError, "DataDigest=CRC32C is required")
	}
	// RFC 7143 §13.14: FirstBurstLength never exceeds MaxBurstLength.
	p.FirstBurstLength = min(p.FirstBurstLength, p.MaxBurstLength)
	return nil
}

// fail records e and returns the failure response.
func (m *Machine) fail(e *Error) Response {
	m.failed = e
	m.log.Debug("login refused", logkey.Status, e.Status.String(), "reason", e.Reason)
	return m.failResponse()
}

func (m *Machine) failResponse() Response {
	return Response{CSG: m.lastCSG, Status: m.failed.Status}
}
