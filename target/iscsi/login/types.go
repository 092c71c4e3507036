package login

import (
	"fmt"
	"io"
	"log/slog"
)

// Stage is a login stage as carried in the CSG and NSG fields of Login
// Request and Login Response PDUs (RFC 7143 §11.12.3).
type Stage uint8

// Login stages (RFC 7143 §11.12.3). Stage 2 is reserved.
const (
	SecurityNegotiation         Stage = 0
	LoginOperationalNegotiation Stage = 1
	FullFeaturePhase            Stage = 3
)

// String returns the RFC 7143 name of the stage.
func (s Stage) String() string {
	switch s {
	case SecurityNegotiation:
		return "SecurityNegotiation"
	case LoginOperationalNegotiation:
		return "LoginOperationalNegotiation"
	case FullFeaturePhase:
		return "FullFeaturePhase"
	}
	return fmt.Sprintf("Stage(%d)", uint8(s))
}

// Status is the Status-Class<<8 | Status-Detail pair of a Login Response
// (RFC 7143 §11.13.5).
type Status uint16

// Login status codes (RFC 7143 §11.13.5).
const (
	StatusSuccess                 Status = 0x0000
	StatusTargetMovedTemporarily  Status = 0x0101
	StatusTargetMovedPermanently  Status = 0x0102
	StatusInitiatorError          Status = 0x0200
	StatusAuthenticationFailure   Status = 0x0201
	StatusAuthorizationFailure    Status = 0x0202
	StatusNotFound                Status = 0x0203
	StatusTargetRemoved           Status = 0x0204
	StatusUnsupportedVersion      Status = 0x0205
	StatusTooManyConnections      Status = 0x0206
	StatusMissingParameter        Status = 0x0207
	StatusCantIncludeInSession    Status = 0x0208
	StatusSessionTypeNotSupported Status = 0x0209
	StatusSessionDoesNotExist     Status = 0x020a
	StatusInvalidDuringLogin      Status = 0x020b
	StatusTargetError             Status = 0x0300
	StatusServiceUnavailable      Status = 0x0301
	StatusOutOfResources          Status = 0x0302
)

// Class is the Status-Class byte: 0 success, 1 redirection, 2 initiator
// error, 3 target error.
func (s Status) Class() uint8 { return uint8(s >> 8) }

// Detail is the Status-Detail byte.
func (s Status) Detail() uint8 { return uint8(s) }

// String returns the RFC 7143 description of the status and its code.
func (s Status) String() string {
	var n string
	switch s {
	case StatusSuccess:
		n = "Success"
	case StatusTargetMovedTemporarily:
		n = "TargetMovedTemporarily"
	case StatusTargetMovedPermanently:
		n = "TargetMovedPermanently"
	case StatusInitiatorError:
		n = "InitiatorError"
	case StatusAuthenticationFailure:
		n = "AuthenticationFailure"
	case StatusAuthorizationFailure:
		n = "AuthorizationFailure"
	case StatusNotFound:
		n = "NotFound"
	case StatusTargetRemoved:
		n = "TargetRemoved"
	case StatusUnsupportedVersion:
		n = "UnsupportedVersion"
	case StatusTooManyConnections:
		n = "TooManyConnections"
	case StatusMissingParameter:
		n = "MissingParameter"
	case StatusCantIncludeInSession:
		n = "CantIncludeInSession"
	case StatusSessionTypeNotSupported:
		n = "SessionTypeNotSupported"
	case StatusSessionDoesNotExist:
		n = "SessionDoesNotExist"
	case StatusInvalidDuringLogin:
		n = "InvalidDuringLogin"
	case StatusTargetError:
		n = "TargetError"
	case StatusServiceUnavailable:
		n = "ServiceUnavailable"
	case StatusOutOfResources:
		n = "OutOfResources"
	default:
		n = "Status"
	}
	return fmt.Sprintf("%s(0x%04x)", n, uint16(s))
}

// SessionType is the value of the SessionType key (RFC 7143 §13.21).
type SessionType uint8

// Session types. The zero value is Normal, the RFC default.
const (
	SessionNormal SessionType = iota
	SessionDiscovery
)

// String returns the key value for the session type ("Normal",
// "Discovery").
func (t SessionType) String() string {
	switch t {
	case SessionNormal:
		return "Normal"
	case SessionDiscovery:
		return "Discovery"
	}
	return fmt.Sprintf("SessionType(%d)", uint8(t))
}

// KeyValue is one key=value pair of iSCSI text (RFC 7143 §6.1). Value is
// the raw (still encoded) value string.
type KeyValue struct {
	Key, Value string
}

// Request is the negotiation-relevant part of a Login Request PDU
// (RFC 7143 §11.12).
type Request struct {
	// Transit is the T bit: the initiator is ready to move to NSG.
	Transit bool
	// Continue is the C bit. The caller reassembles C-bit sequences
	// (RFC 7143 §11.12.2) and passes the last PDU's flags, so Continue is
	// always false here; a request with Continue set is refused with
	// StatusInitiatorError.
	Continue bool
	// CSG and NSG are the current and next stage fields.
	CSG, NSG Stage
	// VersionMax and VersionMin are the initiator's supported versions.
	VersionMax, VersionMin uint8
	// ISID, TSIH and CID identify the session and connection; they must
	// not change between the requests of one login.
	ISID [6]byte
	TSIH uint16
	CID  uint16
	// Data is the whole login text of the request.
	Data []byte
}

// Response is what the caller puts in the Login Response PDU
// (RFC 7143 §11.13). The caller fills in everything else (ITT, TSIH,
// StatSN, ExpCmdSN, MaxCmdSN).
type Response struct {
	// Transit is the T bit; NSG is valid only when Transit is set and is
	// zero otherwise.
	Transit bool
	CSG     Stage
	NSG     Stage
	// VersionMax is the highest version the target supports (0x00) and
	// VersionActive the version in use (0x00).
	VersionMax, VersionActive uint8
	// Status is the Status-Class and Status-Detail. A non-success
	// response carries no data and the caller closes the connection
	// after sending it.
	Status Status
	// Data is the login text of the response, freshly allocated and owned
	// by the caller. NB: it may be longer than the initiator's
	// MaxRecvDataSegmentLength (8192 bytes during login); the caller
	// splits it over several Login Responses with the C bit set
	// (RFC 7143 §11.13.1), for example with SplitText, and does not call
	// Step for the empty Login Requests that acknowledge each part.
	Data []byte
}

// Auth holds CHAP credentials. A non-nil *Auth means CHAP is required.
type Auth struct {
	// User and Secret authenticate the initiator to the target: the
	// initiator must answer with CHAP_N=User and a CHAP_R computed with
	// Secret. If either is empty no initiator can authenticate.
	// RFC 7143 §12.1.3 recommends secrets of at least 12 bytes.
	User, Secret string
	// MutualUser and MutualSecret authenticate the target to the
	// initiator when the initiator asks for mutual CHAP. Empty means
	// mutual CHAP is refused. RFC 7143 §12.1.3 forbids using the same
	// secret in both directions; such a configuration fails mutual
	// authentication.
	MutualUser, MutualSecret string
}

// TargetInfo describes one target to the login machine.
type TargetInfo struct {
	// Name is the iSCSI target name; Alias is sent as TargetAlias when set.
	Name, Alias string
	// ACL lists the initiator names allowed to log in; empty means any.
	ACL []string
	// Auth requires CHAP for normal sessions when non-nil.
	Auth *Auth
}

// TargetLookup finds targets by name. Implementations are called from
// Step and must not block for long.
type TargetLookup interface {
	LookupTarget(name string) (TargetInfo, bool)
}

// Config configures a login machine.
type Config struct {
	// Logger receives Debug lines about refused logins. Nil discards.
	Logger *slog.Logger
	// TargetPortalGroupTag of the portal the connection arrived on; sent
	// as TargetPortalGroupTag in the first response of a normal session.
	TargetPortalGroupTag uint16
	// Targets resolves TargetName for normal sessions. Nil means no
	// target exists (only discovery sessions can log in).
	Targets TargetLookup
	// DiscoveryAuth requires CHAP for discovery sessions when non-nil.
	DiscoveryAuth *Auth
	// Limits are the target-side maxima and preferences; zero fields take
	// the defaults listed on Limits.
	Limits Limits
	// Rand supplies CHAP identifiers and challenges. Nil means
	// crypto/rand.Reader.
	Rand io.Reader
}

// Params are the negotiated session and connection parameters with the
// RFC 7143 §13 defaults applied to keys that were not negotiated.
type Params struct {
	SessionType                   SessionType
	InitiatorName, InitiatorAlias string
	TargetName, TargetAlias       string
	// HeaderDigest and DataDigest: true means CRC32C.
	HeaderDigest, DataDigest  bool
	MaxConnections            uint16
	InitialR2T, ImmediateData bool
	// InitiatorMaxRecvDataSegmentLength is the most data the target may
	// put in one PDU it sends (declared by the initiator).
	InitiatorMaxRecvDataSegmentLength uint32
	// TargetMaxRecvDataSegmentLength is the most data the initiator may
	// put in one PDU it sends (declared by the target).
	TargetMaxRecvDataSegmentLength       uint32
	MaxBurstLength, FirstBurstLength     uint32
	DefaultTime2Wait, DefaultTime2Retain uint16
	MaxOutstandingR2T                    uint16
	DataPDUInOrder, DataSequenceInOrder  bool
	ErrorRecoveryLevel                   uint8
	TargetPortalGroupTag                 uint16
}

// DefaultParams returns the RFC 7143 §13 defaults of every operational
// key, which hold for keys that were not negotiated.
func DefaultParams() Params {
	return Params{
		MaxConnections:                    1,
		InitialR2T:                        true,
		ImmediateData:                     true,
		InitiatorMaxRecvDataSegmentLength: 8192,
		TargetMaxRecvDataSegmentLength:    8192,
		MaxBurstLength:                    262144,
		FirstBurstLength:                  65536,
		DefaultTime2Wait:                  2,
		DefaultTime2Retain:                20,
		MaxOutstandingR2T:                 1,
		DataPDUInOrder:                    true,
		DataSequenceInOrder:               true,
		ErrorRecoveryLevel:                0,
	}
}

// DigestPolicy says whether the target accepts CRC32C digests.
type DigestPolicy uint8

// Digest policies. The zero value accepts whatever the initiator prefers.
const (
	// DigestAllowed answers with the first of CRC32C and None in the
	// initiator's list.
	DigestAllowed DigestPolicy = iota
	// DigestDisabled answers None, or Reject if None is not offered.
	DigestDisabled
	// DigestRequired answers CRC32C; a login without CRC32C fails with
	// StatusInitiatorError.
	DigestRequired
)

// String returns the policy name.
func (d DigestPolicy) String() string {
	switch d {
	case DigestAllowed:
		return "Allowed"
	case DigestDisabled:
		return "Disabled"
	case DigestRequired:
		return "Required"
	}
	return fmt.Sprintf("DigestPolicy(%d)", uint8(d))
}

// Limits are the target-side maxima and preferences used as the target's
// values in negotiation. A zero field takes the default given in its
// comment; values outside the RFC 7143 range are clamped into it.
type Limits struct {
	// MaxRecvDataSegmentLength the target declares (512..16777215,
	// default 262144).
	MaxRecvDataSegmentLength uint32
	// MaxBurstLength (512..16777215, default 1048576).
	MaxBurstLength uint32
	// FirstBurstLength (512..MaxBurstLength, default 262144).
	FirstBurstLength uint32
	// MaxOutstandingR2T (1..65535, default 8).
	MaxOutstandingR2T uint16
	// MaxConnections (1..65535, default 1).
	MaxConnections uint16
	// ErrorRecoveryLevel (0..2, default 0).
	ErrorRecoveryLevel uint8
	// DefaultTime2Wait (0..3600 s, default 2; 0 cannot be configured).
	DefaultTime2Wait uint16
	// DefaultTime2Retain (0..3600 s, default 20; 0 cannot be configured).
	DefaultTime2Retain uint16
	// DisableImmediateData makes the target answer ImmediateData=No
	// (default: Yes).
	DisableImmediateData bool
	// InitialR2T makes the target answer InitialR2T=Yes (default: No).
	InitialR2T bool
	// HeaderDigest and DataDigest say whether CRC32C is accepted.
	HeaderDigest, DataDigest DigestPolicy
	// CHAPAlgorithms lists the CHAP_A values accepted; nil means all of
	// SHA3-256, SHA-256, SHA1 and MD5. The initiator's order decides.
	// Unsupported values are dropped (a list left empty means all).
	CHAPAlgorithms []CHAPAlgorithm
	// ProposeKeys makes the target offer, in its first operational
	// response, the keys whose preferred value differs from the RFC
	// default and which the initiator has not offered (InitialR2T,
	// MaxBurstLength, FirstBurstLength, MaxOutstandingR2T, required
	// digests). The response then has T=0 and the login needs another
	// round trip. NB: off by default, because some initiators (libiscsi)
	// take a target's offer as the result without answering it.
	ProposeKeys bool
}

// DefaultLimits returns the limits used for zero fields.
func DefaultLimits() Limits {
	return Limits{
		MaxRecvDataSegmentLength: 262144,
		MaxBurstLength:           1048576,
		FirstBurstLength:         262144,
		MaxOutstandingR2T:        8,
		MaxConnections:           1,
		ErrorRecoveryLevel:       0,
		DefaultTime2Wait:         2,
		DefaultTime2Retain:       20,
	}
}

// withDefaults fills zero fields with DefaultLimits and clamps every value
// into its RFC 7143 range.
func (l Limits) withDefaults() Limits {
	d := DefaultLimits()
	if l.MaxRecvDataSegmentLength == 0 {
		l.MaxRecvDataSegmentLength = d.MaxRecvDataSegmentLength
	}
	if l.MaxBurstLength == 0 {
		l.MaxBurstLength = d.MaxBurstLength
	}
	if l.FirstBurstLength == 0 {
		l.FirstBurstLength = d.FirstBurstLength
	}
	if l.MaxOutstandingR2T == 0 {
		l.MaxOutstandingR2T = d.MaxOutstandingR2T
	}
	if l.MaxConnections == 0 {
		l.MaxConnections = d.MaxConnections
	}
	if l.DefaultTime2Wait == 0 {
		l.DefaultTime2Wait = d.DefaultTime2Wait
	}
	if l.DefaultTime2Retain == 0 {
		l.DefaultTime2Retain = d.DefaultTime2Retain
	}
	l.MaxRecvDataSegmentLength = clamp32(l.MaxRecvDataSegmentLength, minDataSegment, maxDataSegment)
	l.MaxBurstLength = clamp32(l.MaxBurstLength, minDataSegment, maxDataSegment)
	l.FirstBurstLength = clamp32(l.FirstBurstLength, minDataSegment, l.MaxBurstLength)
	l.ErrorRecoveryLevel = min(l.ErrorRecoveryLevel, 2)
	l.DefaultTime2Wait = min(l.DefaultTime2Wait, 3600)
	l.DefaultTime2Retain = min(l.DefaultTime2Retain, 3600)
	var algs []CHAPAlgorithm
	for _, a := range l.CHAPAlgorithms {
		if a.hash() != nil {
			algs = append(algs, a)
		}
	}
	if len(algs) == 0 {
		algs = []CHAPAlgorithm{CHAPSHA3256, CHAPSHA256, CHAPSHA1, CHAPMD5}
	}
	l.CHAPAlgorithms = algs
	return l
}

// Validate reports the first field of l that is outside its RFC 7143
// range (zero fields are valid: they mean the default). New clamps such
// values instead; Validate lets a caller refuse a bad configuration early.
func (l Limits) Validate() error {
	chk := func(name string, v, lo, hi uint64) error {
		if v != 0 && (v < lo || v > hi) {
			return fmt.Errorf("%w: %s=%d outside %d..%d", ErrInvalidLimits, name, v, lo, hi)
		}
		return nil
	}
	for _, e := range []error{
		chk("MaxRecvDataSegmentLength", uint64(l.MaxRecvDataSegmentLength), minDataSegment, maxDataSegment),
		chk("MaxBurstLength", uint64(l.MaxBurstLength), minDataSegment, maxDataSegment),
		chk("FirstBurstLength", uint64(l.FirstBurstLength), minDataSegment, maxDataSegment),
		chk("ErrorRecoveryLevel", uint64(l.ErrorRecoveryLevel), 0, 2),
		chk("DefaultTime2Wait", uint64(l.DefaultTime2Wait), 0, 3600),
		chk("DefaultTime2Retain", uint64(l.DefaultTime2Retain), 0, 3600),
	} {
		if e != nil {
			return e
		}
	}
	d := l.withDefaults()
	if l.FirstBurstLength != 0 && l.FirstBurstLength > d.MaxBurstLength {
		return fmt.Errorf("%w: FirstBurstLength=%d exceeds MaxBurstLength=%d",
			ErrInvalidLimits, l.FirstBurstLength, d.MaxBurstLength)
	}
	for _, a := range l.CHAPAlgorithms {
		if a.hash() == nil {
			return fmt.Errorf("%w: unsupported CHAP algorithm %d", ErrInvalidLimits, uint8(a))
		}
	}
	return nil
}

func clamp32(v, lo, hi uint32) uint32 {
	return max(lo, min(v, hi))
}

// Range of MaxRecvDataSegmentLength, MaxBurstLength and FirstBurstLength
// (RFC 7143 §13.12-14).
const (
	minDataSegment = 512
	maxDataSegment = 1<<24 - 1
)
