package login

import (
	"bytes"
	"crypto/md5"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/sha3"
	"encoding/hex"
	"testing"
)

// TestCHAPResponseVectors checks CHAPResponse against digests computed
// here over the concatenation id || secret || challenge (RFC 1994 §4.1).
func TestCHAPResponseVectors(t *testing.T) {
	id := byte(0x2a)
	secret := []byte("alicesecret12")
	challenge, _ := hex.DecodeString("00112233445566778899aabbccddeeff")
	msg := append(append([]byte{id}, secret...), challenge...)
	m5 := md5.Sum(msg)
	s1 := sha1.Sum(msg)
	s256 := sha256.Sum256(msg)
	s3 := sha3.Sum256(msg)
	for _, c := range []struct {
		alg  CHAPAlgorithm
		want []byte
		size int
	}{
		{CHAPMD5, m5[:], 16},
		{CHAPSHA1, s1[:], 20},
		{CHAPSHA256, s256[:], 32},
		{CHAPSHA3256, s3[:], 32},
	} {
		got := CHAPResponse(c.alg, id, secret, challenge)
		if !bytes.Equal(got, c.want) {
			t.Errorf("%v: %x, want %x", c.alg, got, c.want)
		}
		if c.alg.Size() != c.size {
			t.Errorf("%v: size %d", c.alg, c.alg.Size())
		}
	}
	// A fixed value: with an empty secret and challenge the response is
	// MD5 of the single identifier byte 0x00.
	if got := hex.EncodeToString(CHAPResponse(CHAPMD5, 0, nil, nil)); got != "93b885adfe0da089cdf634904fd59f71" {
		t.Errorf("MD5(0x00) = %s", got)
	}
	if CHAPResponse(CHAPAlgorithm(4), 0, nil, nil) != nil || CHAPAlgorithm(9).Size() != 0 {
		t.Error("unsupported algorithm accepted")
	}
}

func TestChooseAlgorithm(t *testing.T) {
	all := DefaultLimits().withDefaults().CHAPAlgorithms
	for _, c := range []struct {
		list    string
		allowed []CHAPAlgorithm
		want    CHAPAlgorithm
		ok      bool
	}{
		{"7,6,5", all, CHAPSHA256, true},
		{"8,7,6,5", all, CHAPSHA3256, true},
		{"5", all, CHAPMD5, true},
		{"0x5", all, CHAPMD5, true},
		{"1,2,6", all, CHAPSHA1, true},
		{"7,6,5", []CHAPAlgorithm{CHAPMD5}, CHAPMD5, true},
		{"7", []CHAPAlgorithm{CHAPMD5}, 0, false},
		{"256,5", all, CHAPMD5, true},
		{"x,y", all, 0, false},
		{"", all, 0, false},
		{"5,,7", all, 0, false},
	} {
		got, ok := chooseAlgorithm(c.list, c.allowed)
		if ok != c.ok || got != c.want {
			t.Errorf("%q %v: %v,%v", c.list, c.allowed, got, ok)
		}
	}
}

func TestCHAPVerify(t *testing.T) {
	auth := &Auth{User: "alice", Secret: "alicesecret12", MutualUser: "stave", MutualSecret: "targetsecret34"}
	newState := func() *chapState {
		c := &chapState{}
		if _, err := c.start(CHAPSHA256, bytes.NewReader(bytes.Repeat([]byte{7}, 64))); err != nil {
			t.Fatal(err)
		}
		return c
	}
	c := newState()
	if c.id != 7 || len(c.challenge) != 32 || c.phase != chapWaitResponse {
		t.Fatalf("start: id %d len %d phase %v", c.id, len(c.challenge), c.phase)
	}
	good := FormatHex(refHash(7, c.id, auth.Secret, c.challenge))
	if keys, err := c.verify(chapAnswer{n: "alice", r: good, hasN: true, hasR: true}, auth); err != nil || keys != nil {
		t.Fatalf("one-way: %v %v", keys, err)
	}
	if c.phase != chapDone {
		t.Fatalf("phase %v", c.phase)
	}
	// Mutual, with the expected target answer computed here.
	c = newState()
	ic := []byte("initiator-challenge-0123")
	keys, err := c.verify(chapAnswer{n: "alice", r: good, i: "9", c: FormatBase64(ic),
		hasN: true, hasR: true, hasI: true, hasC: true}, auth)
	if err != nil {
		t.Fatal(err)
	}
	wantR := FormatHex(refHash(7, 9, auth.MutualSecret, ic))
	if len(keys) != 2 || keys[0] != (KeyValue{keyCHAPN, "stave"}) || keys[1] != (KeyValue{keyCHAPR, wantR}) {
		t.Fatalf("mutual keys %v, want CHAP_R=%s", keys, wantR)
	}
	// Truncated response.
	c = newState()
	if _, err := c.verify(chapAnswer{n: "alice", r: good[:len(good)-2], hasN: true, hasR: true}, auth); err == nil {
		t.Fatal("truncated CHAP_R accepted")
	}
	// Empty secret or user configured: even a response computed with
	// the empty secret is refused.
	for _, a := range []*Auth{{User: "alice"}, {Secret: "alicesecret12"}} {
		c = newState()
		r := FormatHex(refHash(7, c.id, a.Secret, c.challenge))
		if _, err := c.verify(chapAnswer{n: a.User, r: r, hasN: true, hasR: true}, a); err == nil {
			t.Fatalf("empty credentials %+v accepted", a)
		}
	}
	// Short read from Rand.
	if _, err := (&chapState{}).start(CHAPMD5, bytes.NewReader([]byte{1, 2, 3})); err == nil {
		t.Fatal("short random read accepted")
	}
}
