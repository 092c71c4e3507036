package login

import (
	"bytes"
	"math/rand/v2"
	"testing"
)

// FuzzParseText checks that ParseText never panics and that parse,
// encode, parse gives the same pairs.
func FuzzParseText(f *testing.F) {
	for _, s := range []string{
		"",
		"InitiatorName=iqn.1994-05.com.redhat:x\x00TargetName=iqn.2026-11.dev.stave:v\x00",
		"HeaderDigest=CRC32C,None\x00DataDigest=None\x00\x00\x00",
		"CHAP_N=alice\x00CHAP_R=0x0123456789abcdef\x00",
		"A=1\x00A=1\x00",
		"A=1",
		"=\x00",
		"X#x=y\x00iSCSIProtocolLevel=1\x00",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		kvs, err := ParseText(data)
		if err != nil {
			return
		}
		enc := AppendText(nil, kvs...)
		if len(kvs) > 0 && !bytes.Equal(bytes.TrimRight(data, "\x00"), bytes.TrimRight(enc, "\x00")) {
			t.Fatalf("re-encoding changed the text: %q -> %q", data, enc)
		}
		again, err := ParseText(enc)
		if err != nil {
			t.Fatalf("re-encoded text does not parse: %v", err)
		}
		if len(again) != len(kvs) {
			t.Fatalf("%d pairs, then %d", len(kvs), len(again))
		}
		for i := range kvs {
			if kvs[i] != again[i] {
				t.Fatalf("pair %d: %q then %q", i, kvs[i], again[i])
			}
		}
		for _, kv := range kvs {
			// Values parse or fail cleanly.
			_, _ = ParseNumber(kv.Value)
			_, _ = ParseBinary(kv.Value)
		}
	})
}

// fuzzRequests cuts data into Login Requests: each request is one flag
// byte (T, C, CSG, NSG, change ISID, VersionMin>0) then text up to the
// next 0xff byte.
func fuzzRequests(data []byte) []Request {
	var reqs []Request
	for _, chunk := range bytes.Split(data, []byte{0xff}) {
		if len(chunk) == 0 {
			continue
		}
		fl := chunk[0]
		r := Request{
			Transit:  fl&1 != 0,
			Continue: fl&2 != 0,
			CSG:      Stage(fl >> 2 & 3),
			NSG:      Stage(fl >> 4 & 3),
			Data:     chunk[1:],
		}
		if fl&0x40 != 0 {
			r.ISID[5] = 1
		}
		if fl&0x80 != 0 {
			r.VersionMin = 1
		}
		reqs = append(reqs, r)
	}
	return reqs
}

func fuzzEncode(reqs ...Request) []byte {
	var b []byte
	for i, r := range reqs {
		if i > 0 {
			b = append(b, 0xff)
		}
		fl := byte(r.CSG)<<2 | byte(r.NSG)<<4
		if r.Transit {
			fl |= 1
		}
		b = append(b, fl)
		b = append(b, r.Data...)
	}
	return b
}

// FuzzLogin feeds random request sequences to machines for targets with
// and without CHAP. It checks that nothing panics, that responses are
// well formed, that the target transits only when asked, and that a
// machine that reports Done has valid Params and authenticated whenever
// the session required it.
func FuzzLogin(f *testing.F) {
	kv := func(kvs ...string) []byte {
		var out []KeyValue
		for i := 0; i+1 < len(kvs); i += 2 {
			out = append(out, KeyValue{kvs[i], kvs[i+1]})
		}
		return AppendText(nil, out...)
	}
	f.Add(fuzzEncode(
		Request{Transit: true, CSG: 0, NSG: 1, Data: kv(keyInitiatorName, "iqn.1994-05.com.redhat:x", keyTargetName, tgtOpen, keyAuthMethod, "None")},
		Request{Transit: true, CSG: 1, NSG: 3, Data: kv(keyHeaderDigest, "CRC32C,None", keyMaxBurstLength, "65536", keyFirstBurstLength, "131072")},
	))
	f.Add(fuzzEncode(
		Request{Transit: true, CSG: 1, NSG: 3, Data: kv(keyInitiatorName, "iqn.1994-05.com.redhat:x", keySessionType, valDiscovery, keyMaxRecvDSL, "512")},
	))
	f.Add(fuzzEncode(
		Request{Transit: true, CSG: 0, NSG: 1, Data: kv(keyInitiatorName, "iqn.1994-05.com.redhat:x", keyTargetName, tgtCHAP, keyAuthMethod, "CHAP,None")},
		Request{Transit: true, CSG: 0, NSG: 1, Data: kv(keyCHAPA, "5")},
		Request{Transit: true, CSG: 0, NSG: 1, Data: kv(keyCHAPN, "alice", keyCHAPR, "0x00112233445566778899aabbccddeeff")},
		Request{Transit: true, CSG: 1, NSG: 3},
	))
	f.Add(fuzzEncode(
		Request{Transit: true, CSG: 0, NSG: 3, Data: kv(keyInitiatorName, "iqn.1994-05.com.redhat:x", keyTargetName, tgtMutual, keyAuthMethod, "CHAP")},
	))
	f.Fuzz(func(t *testing.T, data []byte) {
		reqs := fuzzRequests(data)
		for _, propose := range []bool{false, true} {
			m := New(Config{
				Targets:       testTargets(),
				DiscoveryAuth: nil,
				Rand:          rand.NewChaCha8([32]byte{1}),
				Limits:        Limits{ProposeKeys: propose},
			})
			for _, req := range reqs {
				resp := m.Step(req)
				if (resp.Status == StatusSuccess) == m.Failed() {
					t.Fatalf("status %v but Failed()=%v", resp.Status, m.Failed())
				}
				if m.Failed() {
					if len(resp.Data) != 0 || resp.Transit {
						t.Fatal("failure response with data or T bit")
					}
					if m.Err() == nil {
						t.Fatal("failed without Err")
					}
					continue
				}
				if resp.Transit && !req.Transit {
					t.Fatal("target transited without the initiator's T bit")
				}
				if resp.Transit && resp.NSG != req.NSG {
					t.Fatalf("response NSG %v, request NSG %v", resp.NSG, req.NSG)
				}
				if _, err := ParseText(resp.Data); err != nil && len(resp.Data) <= MaxTextLength {
					t.Fatalf("response text does not parse: %v", err)
				}
				if m.Done() {
					checkDone(t, m)
				}
			}
		}
	})
}

func checkDone(t *testing.T, m *Machine) {
	t.Helper()
	p := m.Params()
	in := func(v, lo, hi uint64) bool { return v >= lo && v <= hi }
	switch {
	case p.InitiatorName == "":
		t.Fatal("done without InitiatorName")
	case !in(uint64(p.InitiatorMaxRecvDataSegmentLength), 512, 1<<24-1),
		!in(uint64(p.TargetMaxRecvDataSegmentLength), 512, 1<<24-1),
		!in(uint64(p.MaxBurstLength), 512, 1<<24-1),
		!in(uint64(p.FirstBurstLength), 512, uint64(p.MaxBurstLength)),
		!in(uint64(p.MaxConnections), 1, 65535),
		!in(uint64(p.MaxOutstandingR2T), 1, 65535),
		p.DefaultTime2Wait > 3600, p.DefaultTime2Retain > 3600,
		p.ErrorRecoveryLevel > 2:
		t.Fatalf("done with invalid params %+v", p)
	case !p.DataPDUInOrder || !p.DataSequenceInOrder:
		t.Fatalf("done with out-of-order data %+v", p)
	}
	ti, ok := m.Target()
	switch p.SessionType {
	case SessionNormal:
		if !ok || p.TargetName == "" || ti.Name != p.TargetName {
			t.Fatalf("normal session done without target: %+v %v", ti, ok)
		}
		if ti.Auth != nil && m.chap.phase != chapDone {
			t.Fatal("normal session done without CHAP")
		}
	case SessionDiscovery:
		if ok {
			t.Fatal("discovery session with a target")
		}
	default:
		t.Fatalf("session type %v", p.SessionType)
	}
}
