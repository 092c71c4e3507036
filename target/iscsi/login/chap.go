package login

import (
	"crypto/md5"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/sha3"
	"crypto/subtle"
	"fmt"
	"hash"
	"io"
	"strconv"
)

// CHAPAlgorithm is a CHAP_A value: a PPP authentication algorithm number
// from the IANA registry (RFC 1994, RFC 7143 §12.1.3).
type CHAPAlgorithm uint8

// CHAP algorithms the target supports.
const (
	CHAPMD5     CHAPAlgorithm = 5
	CHAPSHA1    CHAPAlgorithm = 6
	CHAPSHA256  CHAPAlgorithm = 7
	CHAPSHA3256 CHAPAlgorithm = 8
)

// String returns the hash name of the algorithm.
func (a CHAPAlgorithm) String() string {
	switch a {
	case CHAPMD5:
		return "MD5"
	case CHAPSHA1:
		return "SHA1"
	case CHAPSHA256:
		return "SHA-256"
	case CHAPSHA3256:
		return "SHA3-256"
	}
	return fmt.Sprintf("CHAPAlgorithm(%d)", uint8(a))
}

// hash returns a constructor for the algorithm's digest, or nil if the
// algorithm is not supported.
func (a CHAPAlgorithm) hash() func() hash.Hash {
	switch a {
	case CHAPMD5:
		return md5.New
	case CHAPSHA1:
		return sha1.New
	case CHAPSHA256:
		return sha256.New
	case CHAPSHA3256:
		return func() hash.Hash { return sha3.New256() }
	}
	return nil
}

// Size is the digest length of the algorithm in bytes, or 0 if it is not
// supported.
func (a CHAPAlgorithm) Size() int {
	if h := a.hash(); h != nil {
		return h().Size()
	}
	return 0
}

// CHAPResponse computes the CHAP response H(id || secret || challenge)
// (RFC 1994 §4.1) with algorithm a. It returns nil for an unsupported
// algorithm.
func CHAPResponse(a CHAPAlgorithm, id byte, secret, challenge []byte) []byte {
	newHash := a.hash()
	if newHash == nil {
		return nil
	}
	h := newHash()
	h.Write([]byte{id})
	h.Write(secret)
	h.Write(challenge)
	return h.Sum(nil)
}

// chapPhase is where a CHAP exchange stands (RFC 7143 §12.1.3).
type chapPhase uint8

const (
	// chapWaitA: AuthMethod=CHAP agreed, waiting for CHAP_A.
	chapWaitA chapPhase = iota
	// chapWaitResponse: CHAP_A/I/C sent, waiting for CHAP_N and CHAP_R.
	chapWaitResponse
	// chapDone: the initiator (and the target, if asked) authenticated.
	chapDone
)

// String returns the phase name.
func (p chapPhase) String() string {
	switch p {
	case chapWaitA:
		return "WaitA"
	case chapWaitResponse:
		return "WaitResponse"
	case chapDone:
		return "Done"
	}
	return fmt.Sprintf("chapPhase(%d)", uint8(p))
}

// chapState is the target side of one CHAP exchange.
type chapState struct {
	phase     chapPhase
	alg       CHAPAlgorithm
	id        byte
	challenge []byte
}

// chooseAlgorithm picks the first algorithm of the initiator's CHAP_A list
// that is in allowed. Items that are not numbers are ignored
// (RFC 7143 §6.2: unknown list values).
func chooseAlgorithm(list string, allowed []CHAPAlgorithm) (CHAPAlgorithm, bool) {
	items, ok := splitList(list)
	if !ok {
		return 0, false
	}
	for _, it := range items {
		v, err := ParseNumber(it)
		if err != nil || v > 255 {
			continue
		}
		for _, a := range allowed {
			if uint64(a) == v && a.hash() != nil {
				return a, true
			}
		}
	}
	return 0, false
}

// start draws the identifier and a challenge of the digest length (at
// least 16 bytes) from rand and returns the CHAP_A, CHAP_I and CHAP_C
// keys to send.
func (c *chapState) start(alg CHAPAlgorithm, rand io.Reader) ([]KeyValue, error) {
	n := max(alg.Size(), 16)
	buf := make([]byte, 1+n)
	if _, err := io.ReadFull(rand, buf); err != nil {
		return nil, fmt.Errorf("login: reading CHAP challenge: %w", err)
	}
	c.alg, c.id, c.challenge = alg, buf[0], buf[1:]
	c.phase = chapWaitResponse
	return []KeyValue{
		{keyCHAPA, strconv.Itoa(int(alg))},
		{keyCHAPI, strconv.Itoa(int(c.id))},
		{keyCHAPC, FormatHex(c.challenge)},
	}, nil
}

// chapAnswer is what the initiator sent in its CHAP response request.
type chapAnswer struct {
	n, r, i, c string
	hasN, hasR bool
	hasI, hasC bool
}

// verify checks the initiator's CHAP_N and CHAP_R against auth and, for
// mutual CHAP, returns the target's CHAP_N and CHAP_R. A non-nil error
// means authentication failed (StatusAuthenticationFailure); its text is
// for logs only.
func (c *chapState) verify(a chapAnswer, auth *Auth) ([]KeyValue, error) {
	if !a.hasN || !a.hasR {
		return nil, fmt.Errorf("CHAP_N and CHAP_R are required")
	}
	if auth.User == "" || auth.Secret == "" {
		// An empty secret would let anyone who sees the challenge
		// answer it; treat it as a configuration that admits no one.
		return nil, fmt.Errorf("CHAP user or secret not configured")
	}
	r, err := ParseBinary(a.r)
	if err != nil {
		return nil, fmt.Errorf("CHAP_R: %w", err)
	}
	want := CHAPResponse(c.alg, c.id, []byte(auth.Secret), c.challenge)
	// Compare both the name and the response in constant time, and both
	// always, so timing tells nothing about which one was wrong.
	nameOK := subtle.ConstantTimeCompare([]byte(a.n), []byte(auth.User))
	respOK := subtle.ConstantTimeCompare(r, want)
	if nameOK&respOK != 1 {
		return nil, fmt.Errorf("CHAP_N or CHAP_R does not match")
	}
	if !a.hasI && !a.hasC {
		c.phase = chapDone
		return nil, nil
	}
	// Mutual CHAP (RFC 7143 §12.1.3).
	if !a.hasI || !a.hasC {
		return nil, fmt.Errorf("mutual CHAP needs both CHAP_I and CHAP_C")
	}
	if auth.MutualUser == "" || auth.MutualSecret == "" {
		return nil, fmt.Errorf("mutual CHAP requested but not configured")
	}
	if subtle.ConstantTimeCompare([]byte(auth.MutualSecret), []byte(auth.Secret)) == 1 {
		return nil, fmt.Errorf("mutual CHAP secret equals the initiator secret (RFC 7143 §12.1.3)")
	}
	id, err := ParseNumber(a.i)
	if err != nil || id > 255 {
		return nil, fmt.Errorf("CHAP_I %q is not a number 0..255", a.i)
	}
	ch, err := ParseBinary(a.c)
	if err != nil {
		return nil, fmt.Errorf("CHAP_C: %w", err)
	}
	if len(ch) == 0 || len(ch) > maxBinaryLength {
		return nil, fmt.Errorf("CHAP_C is %d bytes, want 1..%d", len(ch), maxBinaryLength)
	}
	if subtle.ConstantTimeCompare(ch, c.challenge) == 1 {
		return nil, fmt.Errorf("initiator reflected the target's challenge")
	}
	c.phase = chapDone
	resp := CHAPResponse(c.alg, byte(id), []byte(auth.MutualSecret), ch)
	return []KeyValue{
		{keyCHAPN, auth.MutualUser},
		{keyCHAPR, FormatHex(resp)},
	}, nil
}
