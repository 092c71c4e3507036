// Package login is the pure login-phase state machine of the Stave iSCSI
// target (RFC 7143 §6, §11.12-13, §12, §13): the text key codec,
// operational parameter negotiation and CHAP authentication.
//
// A Machine does no I/O, starts no goroutines and never reads the clock;
// CHAP randomness comes from Config.Rand. The connection's goroutine
// (package target/iscsi) owns one Machine per connection and drives it:
//
//  1. Read a Login Request; while its C bit is set, answer with an empty
//     Login Response and append the next request's data (up to
//     MaxTextLength), then call Step once with the whole text.
//  2. Send the returned Response. If its Data is longer than the
//     initiator's MaxRecvDataSegmentLength (8192 during login), split it
//     with SplitText, set C on all parts but the last and wait for the
//     initiator's empty Login Request after each part (RFC 7143 §11.13.1).
//  3. If Failed reports true, close the connection after sending. If Done
//     reports true, the connection is in the full feature phase with
//     Params; otherwise go to 1.
//
// The machine does not know sessions: the caller assigns the TSIH, checks
// a non-zero TSIH against its session table (StatusSessionDoesNotExist)
// and enforces the login timeout. A login with a non-zero TSIH adds a
// connection to an existing session: the machine answers the session-wide
// "leading only" keys (MaxConnections, InitialR2T, ImmediateData,
// MaxBurstLength, FirstBurstLength, DefaultTime2Wait/Retain,
// MaxOutstandingR2T, DataPDUInOrder, DataSequenceInOrder,
// ErrorRecoveryLevel, TaskReporter, iSCSIProtocolLevel) with Irrelevant,
// leaves them at their defaults in Params, and the caller takes them from
// the session; connection keys (digests, MaxRecvDataSegmentLength) are
// negotiated as usual.
//
// # Stages
//
// The initiator chooses the first stage (CSG 0 or 1) and every transition
// (T bit with NSG); the target answers T=1 only when the request had T=1
// and the stage is complete:
//
//	  first request
//	  CSG=0 |            | CSG=1 (refused with 0x0201 when CHAP is required)
//	        v            v
//	+---------------+  T=1,NSG=1  +-----------------------------+
//	| Security-     |------------>| LoginOperational-           |
//	| Negotiation   |             | Negotiation (CSG=1)         |
//	| (CSG=0)       |             |                             |
//	+---------------+             +-----------------------------+
//	   |  ^  T=0 or CHAP              |  ^  T=0, or target offers
//	   |  |  unfinished               |  |  awaiting answers
//	   +--+                           +--+
//	   | T=1,NSG=3                    | T=1,NSG=3
//	   v                              v
//	+-------------------------------------------------------------+
//	| FullFeaturePhase (3): Done, Params final                    |
//	+-------------------------------------------------------------+
//
// Any violation ends the login with a status (RFC 7143 §11.13.5):
//
//	0x0200 InitiatorError        malformed text, T and C both set, bad
//	                             CSG/NSG, ISID/TSIH/CID/version changed,
//	                             a key renegotiated or sent in the wrong
//	                             stage, a declared value changed or out
//	                             of range, a key only targets send
//	0x0201 AuthenticationFailure CHAP failed or was skipped; no common
//	                             AuthMethod or CHAP_A
//	0x0202 AuthorizationFailure  InitiatorName not in the target's ACL
//	0x0203 NotFound              no such TargetName
//	0x0205 UnsupportedVersion    VersionMin > 0
//	0x0207 MissingParameter      no InitiatorName, or no TargetName in a
//	                             normal session
//	0x0209 SessionTypeNotSupported  SessionType other than Normal/Discovery
//	0x020b InvalidDuringLogin    SendTargets, or a request after Done
//	0x0300 TargetError           Config.Rand failed
//
// # Security stage and CHAP (RFC 7143 §12.1.3, RFC 1994)
//
// Normal sessions use TargetInfo.Auth, discovery sessions
// Config.DiscoveryAuth; nil means no authentication. The exchange is:
//
//	I: AuthMethod=CHAP,None        T: AuthMethod=CHAP (None if no Auth)
//	I: CHAP_A=7,6,5                T: CHAP_A=7 CHAP_I=<id> CHAP_C=<challenge>
//	I: CHAP_N, CHAP_R [CHAP_I, CHAP_C for mutual]
//	                               T: [CHAP_N, CHAP_R for mutual]
//
// CHAP_A picks the first of the initiator's algorithms that the target
// allows: 5 MD5, 6 SHA1, 7 SHA-256, 8 SHA3-256 (Limits.CHAPAlgorithms).
// The challenge has the digest length (at least 16 bytes) and is sent in
// hex; CHAP_R and the initiator's CHAP_C may be hex (0x) or base64 (0b).
// CHAP_N and CHAP_R are compared in constant time. Mutual CHAP is refused
// when Auth has no MutualUser/MutualSecret, when MutualSecret equals
// Secret, and when the initiator reflects the target's challenge.
//
// # Key handling
//
// Text is key=value\0 pairs (ParseText, AppendText): at most MaxKeys pairs
// and MaxTextLength bytes, keys up to 63 bytes, values up to 255 bytes
// (8192 for CHAP_C and CHAP_R); a key twice in one text is an error.
// Numbers are decimal or 0x hex. The target answers each key the
// initiator offers, in order:
//
//	key                        function     target value / answer
//	InitiatorName, TargetName  declarative  first request; repeats must match
//	InitiatorAlias             declarative  recorded in Params
//	SessionType                declarative  Normal (default) or Discovery
//	TargetAlias                declarative  sent by the target in its first
//	                                        response when configured
//	TargetPortalGroupTag       declarative  sent by the target in its first
//	                                        response of a normal session
//	TargetAddress              -            initiator must not send it (0x0200)
//	SendTargets                -            full feature phase only (0x020b)
//	HeaderDigest, DataDigest   list         first of CRC32C/None allowed by
//	                                        Limits.HeaderDigest/DataDigest
//	MaxConnections             min          Limits.MaxConnections (1)
//	InitialR2T                 OR           Limits.InitialR2T (No)
//	ImmediateData              AND          !Limits.DisableImmediateData (Yes)
//	MaxRecvDataSegmentLength   declarative  the initiator's value is recorded;
//	                                        the target declares its own in
//	                                        its first operational response
//	MaxBurstLength             min          Limits.MaxBurstLength (1 MiB)
//	FirstBurstLength           min          Limits.FirstBurstLength (256 KiB),
//	                                        at most MaxBurstLength; Irrelevant
//	                                        when InitialR2T=Yes, ImmediateData=No
//	DefaultTime2Wait           max          Limits.DefaultTime2Wait (2)
//	DefaultTime2Retain         min          Limits.DefaultTime2Retain (20)
//	MaxOutstandingR2T          min          Limits.MaxOutstandingR2T (8)
//	DataPDUInOrder             OR           Yes
//	DataSequenceInOrder        OR           Yes
//	ErrorRecoveryLevel         min          Limits.ErrorRecoveryLevel (0)
//	IFMarker, OFMarker,
//	IFMarkInt, OFMarkInt       obsolete     Reject (RFC 7143 §13.25)
//	TaskReporter               list         RFC3720 only
//	iSCSIProtocolLevel         min          1 (RFC 7144)
//	RDMAExtensions             AND          No (no iSER)
//	Target/InitiatorRecvDataSegmentLength,
//	MaxOutstandingUnexpectedPDUs            Irrelevant (iSER only)
//	X-..., X#..., unknown keys              NotUnderstood
//
// Malformed or out-of-range offers are answered Reject and keep their
// default. In a discovery session the keys RFC 7143 marks irrelevant
// there (MaxConnections, InitialR2T, ImmediateData, MaxBurstLength,
// FirstBurstLength, MaxOutstandingR2T, DataPDUInOrder,
// DataSequenceInOrder, TaskReporter) are answered Irrelevant. In the
// security stage only declarative keys are accepted (operational
// negotiation starts after it, RFC 7143 §6.3); any other operational key
// there fails the login with 0x0200, as Linux LIO does. Renegotiating a
// key in a later request fails the login (RFC 7143 §6.2).
//
// With Limits.ProposeKeys the target also offers, in its first
// operational response, the keys whose preferred value differs from the
// RFC default and that the initiator did not offer; that response has T=0
// and the login completes only after the initiator has answered them.
package login
