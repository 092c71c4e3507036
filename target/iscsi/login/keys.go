package login

import (
	"slices"
	"strconv"
)

// Key names (RFC 7143 §12 and §13, RFC 7144, RFC 7145).
const (
	keyInitiatorName      = "InitiatorName"
	keyInitiatorAlias     = "InitiatorAlias"
	keyTargetName         = "TargetName"
	keyTargetAlias        = "TargetAlias"
	keySessionType        = "SessionType"
	keyTargetAddress      = "TargetAddress"
	keyTargetPortalGroup  = "TargetPortalGroupTag"
	keySendTargets        = "SendTargets"
	keyAuthMethod         = "AuthMethod"
	keyCHAPA              = "CHAP_A"
	keyCHAPI              = "CHAP_I"
	keyCHAPC              = "CHAP_C"
	keyCHAPN              = "CHAP_N"
	keyCHAPR              = "CHAP_R"
	keyHeaderDigest       = "HeaderDigest"
	keyDataDigest         = "DataDigest"
	keyMaxConnections     = "MaxConnections"
	keyInitialR2T         = "InitialR2T"
	keyImmediateData      = "ImmediateData"
	keyMaxRecvDSL         = "MaxRecvDataSegmentLength"
	keyMaxBurstLength     = "MaxBurstLength"
	keyFirstBurstLength   = "FirstBurstLength"
	keyDefaultTime2Wait   = "DefaultTime2Wait"
	keyDefaultTime2Retain = "DefaultTime2Retain"
	keyMaxOutstandingR2T  = "MaxOutstandingR2T"
	keyDataPDUInOrder     = "DataPDUInOrder"
	keyDataSequenceIO     = "DataSequenceInOrder"
	keyErrorRecoveryLevel = "ErrorRecoveryLevel"
	keyOFMarker           = "OFMarker"
	keyIFMarker           = "IFMarker"
	keyOFMarkInt          = "OFMarkInt"
	keyIFMarkInt          = "IFMarkInt"
	keyTaskReporter       = "TaskReporter"
	keyProtocolLevel      = "iSCSIProtocolLevel"
	keyRDMAExtensions     = "RDMAExtensions"
	keyTargetRecvDSL      = "TargetRecvDataSegmentLength"
	keyInitiatorRecvDSL   = "InitiatorRecvDataSegmentLength"
	keyMaxOutUnexpected   = "MaxOutstandingUnexpectedPDUs"
)

// Special values (RFC 7143 §6.2).
const (
	valYes           = "Yes"
	valNo            = "No"
	valNone          = "None"
	valCHAP          = "CHAP"
	valCRC32C        = "CRC32C"
	valReject        = "Reject"
	valIrrelevant    = "Irrelevant"
	valNotUnderstood = "NotUnderstood"
	valRFC3720       = "RFC3720"
	valNormal        = "Normal"
	valDiscovery     = "Discovery"
)

// protocolLevel is the iSCSIProtocolLevel this target implements:
// 1 = RFC 7143 (RFC 7144 §8.1).
const protocolLevel = 1

// isLeadingKey reports the keys declared by the initiator at the start of
// a login (RFC 7143 §13.4-13.8, §13.21) that carry no answer.
func isLeadingKey(k string) bool {
	switch k {
	case keyInitiatorName, keyInitiatorAlias, keyTargetName, keySessionType:
		return true
	}
	return false
}

// isSecurityKey reports keys of the SecurityNegotiation stage
// (RFC 7143 §12).
func isSecurityKey(k string) bool {
	switch k {
	case keyAuthMethod, keyCHAPA, keyCHAPI, keyCHAPC, keyCHAPN, keyCHAPR:
		return true
	}
	return false
}

// isTargetOnlyKey reports keys only a target may send (RFC 7143 §13.8,
// §13.9, §13.10).
func isTargetOnlyKey(k string) bool {
	switch k {
	case keyTargetAlias, keyTargetAddress, keyTargetPortalGroup:
		return true
	}
	return false
}

// irrelevantForDiscovery reports the keys RFC 7143 §13 marks "Irrelevant
// when: SessionType=Discovery".
func irrelevantForDiscovery(k string) bool {
	switch k {
	case keyMaxConnections, keyInitialR2T, keyImmediateData, keyMaxBurstLength,
		keyFirstBurstLength, keyMaxOutstandingR2T, keyDataPDUInOrder,
		keyDataSequenceIO, keyTaskReporter:
		return true
	}
	return false
}

// leadingOnly reports the session-wide keys RFC 7143 §13 (and RFC 7144
// for iSCSIProtocolLevel) mark "Use: LO": they are negotiated only on the
// leading connection of a session.
func leadingOnly(k string) bool {
	switch k {
	case keyMaxConnections, keyInitialR2T, keyImmediateData, keyMaxBurstLength,
		keyFirstBurstLength, keyDefaultTime2Wait, keyDefaultTime2Retain,
		keyMaxOutstandingR2T, keyDataPDUInOrder, keyDataSequenceIO,
		keyErrorRecoveryLevel, keyTaskReporter, keyProtocolLevel:
		return true
	}
	return false
}

// parseBool parses a boolean value ("Yes" or "No").
func parseBool(s string) (v, ok bool) {
	switch s {
	case valYes:
		return true, true
	case valNo:
		return false, true
	}
	return false, false
}

func formatBool(b bool) string {
	if b {
		return valYes
	}
	return valNo
}

// parseRange parses a numerical value and checks it is in lo..hi.
func parseRange(s string, lo, hi uint64) (uint64, bool) {
	v, err := ParseNumber(s)
	if err != nil || v < lo || v > hi {
		return 0, false
	}
	return v, true
}

// Result functions of RFC 7143 §6.2.2 and §6.2.3. Each takes the
// initiator's offer and the target's value and returns the answer and
// the result, or ok=false when the answer is Reject (offer malformed or
// out of range; the key keeps its default).

// resultMin is the Minimum function for numerical keys in lo..hi.
func resultMin(offer string, ours, lo, hi uint64) (uint64, bool) {
	v, ok := parseRange(offer, lo, hi)
	if !ok {
		return 0, false
	}
	return min(v, ours), true
}

// resultMax is the Maximum function for numerical keys in lo..hi.
func resultMax(offer string, ours, lo, hi uint64) (uint64, bool) {
	v, ok := parseRange(offer, lo, hi)
	if !ok {
		return 0, false
	}
	return max(v, ours), true
}

// resultOr is the OR function for Boolean keys.
func resultOr(offer string, ours bool) (bool, bool) {
	v, ok := parseBool(offer)
	return v || ours, ok
}

// resultAnd is the AND function for Boolean keys.
func resultAnd(offer string, ours bool) (bool, bool) {
	v, ok := parseBool(offer)
	return v && ours, ok
}

// resultList picks the first value of the offered list that supported
// accepts (RFC 7143 §6.2.1: the responder selects the first value it
// supports, in the proposer's order).
func resultList(offer string, supported func(string) bool) (string, bool) {
	items, ok := splitList(offer)
	if !ok {
		return "", false
	}
	for _, it := range items {
		if supported(it) {
			return it, true
		}
	}
	return "", false
}

// digestSupported returns the digest values a policy accepts.
func digestSupported(p DigestPolicy) func(string) bool {
	return func(v string) bool {
		switch v {
		case valCRC32C:
			return p != DigestDisabled
		case valNone:
			return p != DigestRequired
		}
		return false
	}
}

// negotiation is the outcome of one key.
type negotiation struct {
	answer string // value to send back; "" for none (declarative keys)
	fail   *Error // non-nil: the login fails
}

func reply(v string) negotiation { return negotiation{answer: v} }

// operational negotiates one operational key offered by the initiator
// (RFC 7143 §13) and records the result in m.params. FirstBurstLength is
// answered by firstBurst once the whole request has been seen.
func (m *Machine) operational(kv KeyValue) negotiation {
	p, l := &m.params, &m.lim
	if m.params.SessionType == SessionDiscovery && irrelevantForDiscovery(kv.Key) {
		return reply(valIrrelevant)
	}
	if m.tsih != 0 && leadingOnly(kv.Key) {
		// A connection joining a session (TSIH != 0) inherits the
		// session-wide values; it cannot negotiate them.
		return reply(valIrrelevant)
	}
	switch kv.Key {
	case keyHeaderDigest, keyDataDigest: // §13.1, list
		pol, dst := l.HeaderDigest, &p.HeaderDigest
		if kv.Key == keyDataDigest {
			pol, dst = l.DataDigest, &p.DataDigest
		}
		v, ok := resultList(kv.Value, digestSupported(pol))
		if !ok {
			if pol == DigestRequired {
				return negotiation{fail: errorf(StatusInitiatorError, "%s=%s: CRC32C is required", kv.Key, kv.Value)}
			}
			return reply(valReject)
		}
		*dst = v == valCRC32C
		return reply(v)
	case keyMaxConnections: // §13.2, min 1..65535
		v, ok := resultMin(kv.Value, uint64(l.MaxConnections), 1, 65535)
		if !ok {
			return reply(valReject)
		}
		p.MaxConnections = uint16(v)
		return reply(strconv.FormatUint(v, 10))
	case keyInitialR2T: // §13.10, OR
		v, ok := resultOr(kv.Value, l.InitialR2T)
		if !ok {
			return reply(valReject)
		}
		p.InitialR2T = v
		return reply(formatBool(v))
	case keyImmediateData: // §13.11, AND
		v, ok := resultAnd(kv.Value, !l.DisableImmediateData)
		if !ok {
			return reply(valReject)
		}
		p.ImmediateData = v
		return reply(formatBool(v))
	case keyMaxRecvDSL: // §13.12, declarative 512..2^24-1
		v, ok := parseRange(kv.Value, minDataSegment, maxDataSegment)
		if !ok {
			return negotiation{fail: errorf(StatusInitiatorError, "%s=%s out of range", kv.Key, kv.Value)}
		}
		p.InitiatorMaxRecvDataSegmentLength = uint32(v)
		return reply("")
	case keyMaxBurstLength: // §13.13, min 512..2^24-1
		v, ok := resultMin(kv.Value, uint64(l.MaxBurstLength), minDataSegment, maxDataSegment)
		if !ok {
			return reply(valReject)
		}
		p.MaxBurstLength = uint32(v)
		return reply(strconv.FormatUint(v, 10))
	case keyDefaultTime2Wait: // §13.15, max 0..3600
		v, ok := resultMax(kv.Value, uint64(l.DefaultTime2Wait), 0, 3600)
		if !ok {
			return reply(valReject)
		}
		p.DefaultTime2Wait = uint16(v)
		return reply(strconv.FormatUint(v, 10))
	case keyDefaultTime2Retain: // §13.16, min 0..3600
		v, ok := resultMin(kv.Value, uint64(l.DefaultTime2Retain), 0, 3600)
		if !ok {
			return reply(valReject)
		}
		p.DefaultTime2Retain = uint16(v)
		return reply(strconv.FormatUint(v, 10))
	case keyMaxOutstandingR2T: // §13.17, min 1..65535
		v, ok := resultMin(kv.Value, uint64(l.MaxOutstandingR2T), 1, 65535)
		if !ok {
			return reply(valReject)
		}
		p.MaxOutstandingR2T = uint16(v)
		return reply(strconv.FormatUint(v, 10))
	case keyDataPDUInOrder, keyDataSequenceIO: // §13.18-19, OR; we need Yes
		v, ok := resultOr(kv.Value, true)
		if !ok {
			return reply(valReject)
		}
		if kv.Key == keyDataPDUInOrder {
			p.DataPDUInOrder = v
		} else {
			p.DataSequenceInOrder = v
		}
		return reply(formatBool(v))
	case keyErrorRecoveryLevel: // §13.20, min 0..2
		v, ok := resultMin(kv.Value, uint64(l.ErrorRecoveryLevel), 0, 2)
		if !ok {
			return reply(valReject)
		}
		p.ErrorRecoveryLevel = uint8(v)
		return reply(strconv.FormatUint(v, 10))
	case keyOFMarker, keyIFMarker, keyOFMarkInt, keyIFMarkInt:
		// §13.25: obsolete. IFMarker/OFMarker "SHOULD" be answered
		// Reject (No is allowed, NotUnderstood is not); IFMarkInt and
		// OFMarkInt "MUST" be. Linux LIO answers Reject to all four.
		return reply(valReject)
	case keyTaskReporter: // §13.23, list; only RFC3720 semantics
		v, ok := resultList(kv.Value, func(s string) bool { return s == valRFC3720 })
		if !ok {
			return reply(valReject)
		}
		return reply(v)
	case keyProtocolLevel: // RFC 7144 §8.1, min 0..31
		v, ok := resultMin(kv.Value, protocolLevel, 0, 31)
		if !ok {
			return reply(valReject)
		}
		return reply(strconv.FormatUint(v, 10))
	case keyRDMAExtensions: // RFC 7145 §6.3.1, AND; no iSER
		if _, ok := parseBool(kv.Value); !ok {
			return reply(valReject)
		}
		return reply(valNo)
	case keyTargetRecvDSL, keyInitiatorRecvDSL, keyMaxOutUnexpected:
		// RFC 7145 §6.3: only relevant with RDMAExtensions=Yes.
		return reply(valIrrelevant)
	}
	// Unknown keys, including X- and X# extensions (RFC 7143 §6.2,
	// §13.5.4-5).
	return reply(valNotUnderstood)
}

// isOperationalKey reports the keys operational handles with a real
// negotiation; only these are tracked for renegotiation. Unknown keys
// (NotUnderstood) are not.
func isOperationalKey(k string) bool {
	switch k {
	case keyHeaderDigest, keyDataDigest, keyMaxConnections, keyInitialR2T,
		keyImmediateData, keyMaxRecvDSL, keyMaxBurstLength, keyFirstBurstLength,
		keyDefaultTime2Wait, keyDefaultTime2Retain, keyMaxOutstandingR2T,
		keyDataPDUInOrder, keyDataSequenceIO, keyErrorRecoveryLevel,
		keyOFMarker, keyIFMarker, keyOFMarkInt, keyIFMarkInt, keyTaskReporter,
		keyProtocolLevel, keyRDMAExtensions, keyTargetRecvDSL, keyInitiatorRecvDSL,
		keyMaxOutUnexpected:
		return true
	}
	return false
}

// firstBurst answers FirstBurstLength (RFC 7143 §13.14: min 512..2^24-1,
// at most MaxBurstLength, irrelevant when InitialR2T=Yes and
// ImmediateData=No). It runs after the rest of the request so that
// MaxBurstLength, InitialR2T and ImmediateData of the same request count.
func (m *Machine) firstBurst(offer string) string {
	p := &m.params
	if p.SessionType == SessionDiscovery || m.tsih != 0 {
		return valIrrelevant
	}
	if p.InitialR2T && !p.ImmediateData {
		return valIrrelevant
	}
	v, ok := resultMin(offer, uint64(min(m.lim.FirstBurstLength, p.MaxBurstLength)), minDataSegment, maxDataSegment)
	if !ok {
		return valReject
	}
	p.FirstBurstLength = uint32(v)
	return strconv.FormatUint(v, 10)
}

// proposals returns the keys the target offers itself (Limits.ProposeKeys)
// in its first operational response: those whose preferred value differs
// from the RFC default and that the initiator has not negotiated.
func (m *Machine) proposals() []KeyValue {
	if !m.lim.ProposeKeys || m.params.SessionType == SessionDiscovery {
		return nil
	}
	d, l := DefaultParams(), m.lim
	var out []KeyValue
	add := func(k, v string) {
		if m.negotiated[k] || m.tsih != 0 && leadingOnly(k) {
			return
		}
		out = append(out, KeyValue{k, v})
	}
	if l.HeaderDigest == DigestRequired {
		add(keyHeaderDigest, valCRC32C)
	}
	if l.DataDigest == DigestRequired {
		add(keyDataDigest, valCRC32C)
	}
	if l.InitialR2T != d.InitialR2T {
		add(keyInitialR2T, formatBool(l.InitialR2T))
	}
	if l.DisableImmediateData {
		add(keyImmediateData, valNo)
	}
	if l.MaxBurstLength != d.MaxBurstLength {
		add(keyMaxBurstLength, strconv.FormatUint(uint64(l.MaxBurstLength), 10))
	}
	if l.FirstBurstLength != d.FirstBurstLength {
		fb := l.FirstBurstLength
		if m.negotiated[keyMaxBurstLength] {
			// §13.14: never offer more than the agreed MaxBurstLength.
			fb = min(fb, m.params.MaxBurstLength)
		}
		add(keyFirstBurstLength, strconv.FormatUint(uint64(fb), 10))
	}
	if l.MaxOutstandingR2T != d.MaxOutstandingR2T {
		add(keyMaxOutstandingR2T, strconv.FormatUint(uint64(l.MaxOutstandingR2T), 10))
	}
	return out
}

// answerToProposal records the initiator's answer to a key the target
// offered (RFC 7143 §6.2). Reject, Irrelevant and NotUnderstood keep the
// default; an answer that the result function does not allow fails the
// login.
func (m *Machine) answerToProposal(kv KeyValue, offered string) *Error {
	p := &m.params
	switch kv.Value {
	case valReject, valIrrelevant, valNotUnderstood:
		return nil
	}
	bad := func() *Error {
		return errorf(StatusInitiatorError, "answer %s=%s to offer %s is not allowed", kv.Key, kv.Value, offered)
	}
	switch kv.Key {
	case keyHeaderDigest, keyDataDigest:
		if kv.Value != offered {
			return bad()
		}
		if kv.Key == keyHeaderDigest {
			p.HeaderDigest = kv.Value == valCRC32C
		} else {
			p.DataDigest = kv.Value == valCRC32C
		}
	case keyInitialR2T, keyImmediateData:
		v, ok := parseBool(kv.Value)
		o, _ := parseBool(offered)
		if !ok {
			return bad()
		}
		if kv.Key == keyInitialR2T {
			p.InitialR2T = v || o
		} else {
			p.ImmediateData = v && o
		}
	case keyMaxBurstLength, keyFirstBurstLength, keyMaxOutstandingR2T:
		lo, hi := uint64(minDataSegment), uint64(maxDataSegment)
		if kv.Key == keyMaxOutstandingR2T {
			lo, hi = 1, 65535
		}
		o, _ := ParseNumber(offered)
		v, ok := parseRange(kv.Value, lo, hi)
		if !ok || v > o {
			return bad()
		}
		switch kv.Key {
		case keyMaxBurstLength:
			p.MaxBurstLength = uint32(v)
		case keyFirstBurstLength:
			p.FirstBurstLength = uint32(v)
		default:
			p.MaxOutstandingR2T = uint16(v)
		}
	}
	return nil
}

// containsFold reports whether list holds s, ignoring ASCII case (iSCSI
// names are case-insensitive after normalisation, RFC 3722).
func containsFold(list []string, s string) bool {
	return slices.ContainsFunc(list, func(x string) bool { return equalFold(x, s) })
}

func equalFold(a, b string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range len(a) {
		x, y := a[i], b[i]
		if 'A' <= x && x <= 'Z' {
			x += 'a' - 'A'
		}
		if 'A' <= y && y <= 'Z' {
			y += 'a' - 'A'
		}
		if x != y {
			return false
		}
	}
	return true
}
