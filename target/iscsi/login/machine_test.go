package login

import (
	"bytes"
	"crypto/md5"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/sha3"
	"crypto/subtle"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"strconv"
	"strings"
	"testing"

	"github.com/cockroachdb/datadriven"
)

// Test targets, shared by the datadriven scripts.
const (
	tgtOpen       = "iqn.2026-11.dev.stave:open"
	tgtACL        = "iqn.2026-11.dev.stave:acl"
	tgtCHAP       = "iqn.2026-11.dev.stave:chap"
	tgtMutual     = "iqn.2026-11.dev.stave:mutual"
	tgtSameSecret = "iqn.2026-11.dev.stave:samesecret"
)

type mapLookup map[string]TargetInfo

func (l mapLookup) LookupTarget(name string) (TargetInfo, bool) {
	ti, ok := l[name]
	return ti, ok
}

func testTargets() mapLookup {
	return mapLookup{
		tgtOpen: {Name: tgtOpen, Alias: "open-vol"},
		tgtACL:  {Name: tgtACL, ACL: []string{"iqn.1994-05.com.redhat:allowed"}},
		tgtCHAP: {Name: tgtCHAP, Auth: &Auth{User: "alice", Secret: "alicesecret12"}},
		tgtMutual: {Name: tgtMutual, Auth: &Auth{User: "alice", Secret: "alicesecret12",
			MutualUser: "stave", MutualSecret: "targetsecret34"}},
		tgtSameSecret: {Name: tgtSameSecret, Auth: &Auth{User: "alice", Secret: "alicesecret12",
			MutualUser: "stave", MutualSecret: "alicesecret12"}},
		// RFC 7143 Appendix B names.
		tgtRFC: {Name: tgtRFC},
	}
}

// tgtRFC is the target name of the RFC 7143 Appendix B examples.
const tgtRFC = "iqn.1999-07.com.example:diskarray.sn.88"

// errReader fails every read.
type errReader struct{}

func (errReader) Read([]byte) (int, error) { return 0, errors.New("entropy exhausted") }

// refHash is an independent CHAP reference: H(id || secret || challenge)
// with the standard library hashes, not the package's code.
func refHash(alg int, id byte, secret string, challenge []byte) []byte {
	buf := append([]byte{id}, secret...)
	buf = append(buf, challenge...)
	switch alg {
	case 5:
		s := md5.Sum(buf)
		return s[:]
	case 6:
		s := sha1.Sum(buf)
		return s[:]
	case 7:
		s := sha256.Sum256(buf)
		return s[:]
	case 8:
		s := sha3.Sum256(buf)
		return s[:]
	}
	return nil
}

type harness struct {
	m    *Machine
	last []KeyValue // keys of the last response
	req  Request    // template: ISID, TSIH, CID, versions
}

func (h *harness) lastValue(k string) (string, bool) {
	for _, kv := range h.last {
		if kv.Key == k {
			return kv.Value, true
		}
	}
	return "", false
}

func TestLoginDatadriven(t *testing.T) {
	datadriven.Walk(t, "testdata/login", func(t *testing.T, path string) {
		h := &harness{}
		datadriven.RunTest(t, path, func(t *testing.T, d *datadriven.TestData) string {
			return h.run(t, d)
		})
	})
}

func (h *harness) run(t *testing.T, d *datadriven.TestData) string {
	switch d.Cmd {
	case "new":
		return h.newMachine(t, d)
	case "login":
		req := h.request(t, d)
		req.Data = textFromInput(d.Input)
		return h.step(req)
	case "chap-answer":
		return h.chapAnswer(t, d)
	case "params":
		return formatParams(h.m.Params())
	case "target":
		ti, ok := h.m.Target()
		if !ok {
			return "none\n"
		}
		return fmt.Sprintf("name=%s alias=%q acl=%v auth=%v\n", ti.Name, ti.Alias, ti.ACL, ti.Auth != nil)
	}
	d.Fatalf(t, "unknown command %s", d.Cmd)
	return ""
}

func (h *harness) newMachine(t *testing.T, d *datadriven.TestData) string {
	cfg := Config{
		TargetPortalGroupTag: 1,
		Targets:              testTargets(),
		Rand:                 rand.NewChaCha8([32]byte{'s', 't', 'a', 'v', 'e'}),
	}
	for _, a := range d.CmdArgs {
		v := ""
		if len(a.Vals) > 0 {
			v = a.Vals[0]
		}
		switch a.Key {
		case "rfc-auth":
			tl := cfg.Targets.(mapLookup)
			ti := tl[tgtRFC]
			if v == "mutual" {
				ti.Auth = &Auth{User: "iqn.1999-07.com.os:hostid.77", Secret: "initiator-secret",
					MutualUser: tgtRFC, MutualSecret: "target-secret"}
			}
			tl[tgtRFC] = ti
		case "tpgt":
			n, _ := strconv.Atoi(v)
			cfg.TargetPortalGroupTag = uint16(n)
		case "discovery-auth":
			cfg.DiscoveryAuth = &Auth{User: "disc", Secret: "discsecret123"}
		case "no-targets":
			cfg.Targets = nil
		case "rand-fails":
			cfg.Rand = errReader{}
		case "chap-algs":
			cfg.Limits.CHAPAlgorithms = nil
			for _, s := range a.Vals {
				n, _ := strconv.Atoi(s)
				cfg.Limits.CHAPAlgorithms = append(cfg.Limits.CHAPAlgorithms, CHAPAlgorithm(n))
			}
		case "propose":
			cfg.Limits.ProposeKeys = true
		case "header-digest":
			cfg.Limits.HeaderDigest = parsePolicy(t, d, v)
		case "data-digest":
			cfg.Limits.DataDigest = parsePolicy(t, d, v)
		case "max-burst":
			n, _ := strconv.Atoi(v)
			cfg.Limits.MaxBurstLength = uint32(n)
		case "first-burst":
			n, _ := strconv.Atoi(v)
			cfg.Limits.FirstBurstLength = uint32(n)
		case "max-recv":
			n, _ := strconv.Atoi(v)
			cfg.Limits.MaxRecvDataSegmentLength = uint32(n)
		case "initial-r2t":
			cfg.Limits.InitialR2T = true
		case "no-immediate":
			cfg.Limits.DisableImmediateData = true
		case "max-r2t":
			n, _ := strconv.Atoi(v)
			cfg.Limits.MaxOutstandingR2T = uint16(n)
		case "erl":
			n, _ := strconv.Atoi(v)
			cfg.Limits.ErrorRecoveryLevel = uint8(n)
		default:
			d.Fatalf(t, "unknown argument %s", a.Key)
		}
	}
	h.m = New(cfg)
	h.last = nil
	h.req = Request{ISID: [6]byte{0x00, 0x02, 0x3d, 0x00, 0x00, 0x01}, CID: 0}
	return "ok\n"
}

func parsePolicy(t *testing.T, d *datadriven.TestData, v string) DigestPolicy {
	switch v {
	case "allowed":
		return DigestAllowed
	case "disabled":
		return DigestDisabled
	case "required":
		return DigestRequired
	}
	d.Fatalf(t, "bad digest policy %q", v)
	return 0
}

// request builds a Request from csg=, nsg=, t, c, vmin=, vmax=, isid=,
// tsih=, cid= arguments; ISID/TSIH/CID/versions persist for later
// requests.
func (h *harness) request(t *testing.T, d *datadriven.TestData) Request {
	req := h.req
	req.Transit, req.Continue = false, false
	for _, a := range d.CmdArgs {
		v := ""
		if len(a.Vals) > 0 {
			v = a.Vals[0]
		}
		n, _ := strconv.ParseUint(v, 0, 16)
		switch a.Key {
		case "csg":
			req.CSG = Stage(n)
		case "nsg":
			req.NSG = Stage(n)
		case "t":
			req.Transit = true
		case "c":
			req.Continue = true
		case "vmin":
			req.VersionMin = uint8(n)
		case "vmax":
			req.VersionMax = uint8(n)
		case "tsih":
			req.TSIH = uint16(n)
		case "cid":
			req.CID = uint16(n)
		case "isid":
			b, err := hex.DecodeString(v)
			if err != nil || len(b) != 6 {
				d.Fatalf(t, "bad isid %q", v)
			}
			copy(req.ISID[:], b)
		case "user", "secret", "alg-override", "encoding", "mutual-secret", "mutual-challenge",
			"mutual-id", "reflect", "bad", "name":
			// chap-answer arguments
		default:
			d.Fatalf(t, "unknown argument %s", a.Key)
		}
	}
	h.req.ISID, h.req.TSIH, h.req.CID = req.ISID, req.TSIH, req.CID
	h.req.VersionMin, h.req.VersionMax = req.VersionMin, req.VersionMax
	return req
}

// textFromInput turns one key=value per line into login text.
func textFromInput(in string) []byte {
	var b []byte
	for _, line := range strings.Split(in, "\n") {
		if line == "" {
			continue
		}
		line = strings.ReplaceAll(line, `\0`, "\x00")
		b = append(b, line...)
		b = append(b, 0)
	}
	return b
}

func (h *harness) step(req Request) string {
	resp := h.m.Step(req)
	var sb strings.Builder
	fmt.Fprintf(&sb, "status=%v t=%d csg=%d nsg=%d version=%d/%d done=%v failed=%v\n",
		resp.Status, b2i(resp.Transit), resp.CSG, resp.NSG, resp.VersionMax, resp.VersionActive,
		h.m.Done(), h.m.Failed())
	kvs, err := ParseText(resp.Data)
	if err != nil {
		fmt.Fprintf(&sb, "RESPONSE TEXT INVALID: %v\n", err)
	}
	h.last = kvs
	for _, kv := range kvs {
		fmt.Fprintf(&sb, "%s=%s\n", kv.Key, kv.Value)
	}
	if resp.Status != StatusSuccess && len(resp.Data) != 0 {
		sb.WriteString("FAILURE RESPONSE CARRIES DATA\n")
	}
	if err := h.m.Err(); err != nil {
		fmt.Fprintf(&sb, "err: %v\n", err)
	}
	return sb.String()
}

func b2i(b bool) int {
	if b {
		return 1
	}
	return 0
}

// chapAnswer answers the challenge of the last response, computing
// CHAP_R independently. Arguments: user=, secret=, encoding=base64,
// bad (flip a bit), mutual-id= and mutual-challenge= (ask for mutual
// CHAP), reflect (send the target's own challenge back), mutual-secret=
// (verify the target's answer). Input lines are extra keys.
func (h *harness) chapAnswer(t *testing.T, d *datadriven.TestData) string {
	req := h.request(t, d)
	var user, secret, enc, mutualSecret, mutualID, mutualChallenge string
	var bad, reflect bool
	for _, a := range d.CmdArgs {
		v := ""
		if len(a.Vals) > 0 {
			v = a.Vals[0]
		}
		switch a.Key {
		case "user":
			user = v
		case "secret":
			secret = v
		case "encoding":
			enc = v
		case "bad":
			bad = true
		case "reflect":
			reflect = true
		case "mutual-secret":
			mutualSecret = v
		case "mutual-id":
			mutualID = v
		case "mutual-challenge":
			mutualChallenge = v
		}
	}
	algS, ok1 := h.lastValue(keyCHAPA)
	idS, ok2 := h.lastValue(keyCHAPI)
	chS, ok3 := h.lastValue(keyCHAPC)
	if !ok1 || !ok2 || !ok3 {
		d.Fatalf(t, "last response has no CHAP_A/CHAP_I/CHAP_C")
	}
	alg, _ := strconv.Atoi(algS)
	id, _ := strconv.Atoi(idS)
	if !strings.HasPrefix(chS, "0x") {
		d.Fatalf(t, "challenge %q not hex", chS)
	}
	ch, err := hex.DecodeString(chS[2:])
	if err != nil {
		d.Fatalf(t, "challenge: %v", err)
	}
	r := refHash(alg, byte(id), secret, ch)
	if bad {
		r[0] ^= 1
	}
	rs := "0x" + hex.EncodeToString(r)
	if enc == "base64" {
		rs = FormatBase64(r)
	}
	text := []byte(fmt.Sprintf("CHAP_N=%s\x00CHAP_R=%s\x00", user, rs))
	if reflect {
		mutualID, mutualChallenge = "1", chS
	}
	if mutualID != "" {
		text = fmt.Appendf(text, "CHAP_I=%s\x00", mutualID)
	}
	if mutualChallenge != "" {
		text = fmt.Appendf(text, "CHAP_C=%s\x00", mutualChallenge)
	}
	req.Data = append(text, textFromInput(d.Input)...)
	out := h.step(req)
	if mutualSecret != "" {
		tr, ok := h.lastValue(keyCHAPR)
		if !ok {
			return out + "mutual: target sent no CHAP_R\n"
		}
		mid, _ := strconv.ParseUint(mutualID, 0, 8)
		mch, err := ParseBinary(mutualChallenge)
		if err != nil {
			d.Fatalf(t, "mutual challenge: %v", err)
		}
		want := "0x" + hex.EncodeToString(refHash(alg, byte(mid), mutualSecret, mch))
		if subtle.ConstantTimeCompare([]byte(tr), []byte(want)) == 1 {
			out += "mutual: target CHAP_R verified\n"
		} else {
			out += fmt.Sprintf("mutual: target CHAP_R MISMATCH, want %s\n", want)
		}
	}
	return out
}

func formatParams(p Params) string {
	var sb strings.Builder
	fmt.Fprintf(&sb, "SessionType=%v InitiatorName=%s InitiatorAlias=%q\n", p.SessionType, p.InitiatorName, p.InitiatorAlias)
	fmt.Fprintf(&sb, "TargetName=%s TargetAlias=%q TPGT=%d\n", p.TargetName, p.TargetAlias, p.TargetPortalGroupTag)
	fmt.Fprintf(&sb, "HeaderDigest=%v DataDigest=%v MaxConnections=%d InitialR2T=%v ImmediateData=%v\n",
		p.HeaderDigest, p.DataDigest, p.MaxConnections, p.InitialR2T, p.ImmediateData)
	fmt.Fprintf(&sb, "InitiatorMRDSL=%d TargetMRDSL=%d MaxBurst=%d FirstBurst=%d\n",
		p.InitiatorMaxRecvDataSegmentLength, p.TargetMaxRecvDataSegmentLength, p.MaxBurstLength, p.FirstBurstLength)
	fmt.Fprintf(&sb, "Time2Wait=%d Time2Retain=%d MaxOutstandingR2T=%d DataPDUInOrder=%v DataSequenceInOrder=%v ERL=%d\n",
		p.DefaultTime2Wait, p.DefaultTime2Retain, p.MaxOutstandingR2T, p.DataPDUInOrder, p.DataSequenceInOrder, p.ErrorRecoveryLevel)
	return sb.String()
}

// TestCHAPChallengeRandom checks that challenges come from Config.Rand
// and differ between logins.
func TestCHAPChallengeRandom(t *testing.T) {
	seen := map[string]bool{}
	for i := range 8 {
		m := New(Config{Targets: testTargets(), Rand: rand.NewChaCha8([32]byte{byte(i)})})
		resp := m.Step(Request{CSG: SecurityNegotiation, Data: AppendText(nil,
			KeyValue{keyInitiatorName, "iqn.1994-05.com.redhat:x"},
			KeyValue{keyTargetName, tgtCHAP},
			KeyValue{keyAuthMethod, "CHAP"})})
		if resp.Status != StatusSuccess {
			t.Fatalf("status %v", resp.Status)
		}
		resp = m.Step(Request{CSG: SecurityNegotiation, Data: AppendText(nil, KeyValue{keyCHAPA, "5"})})
		kvs, err := ParseText(resp.Data)
		if err != nil {
			t.Fatal(err)
		}
		var c string
		for _, kv := range kvs {
			if kv.Key == keyCHAPC {
				c = kv.Value
			}
		}
		b, err := ParseBinary(c)
		if err != nil || len(b) != 16 {
			t.Fatalf("CHAP_C=%q: %v (len %d)", c, err, len(b))
		}
		if seen[c] {
			t.Fatalf("challenge %s repeated", c)
		}
		seen[c] = true
	}
}

// TestResponseSplit checks that a response with many NotUnderstood keys
// can exceed 8192 bytes and that SplitText cuts it into parts that
// reassemble to the same text.
func TestResponseSplit(t *testing.T) {
	m := New(Config{Targets: testTargets()})
	kvs := []KeyValue{{keyInitiatorName, "iqn.1994-05.com.redhat:x"}, {keyTargetName, tgtOpen}}
	for i := range MaxKeys - 3 {
		kvs = append(kvs, KeyValue{fmt.Sprintf("X-com.example.VeryLongVendorSpecificKeyName%04d", i), "v"})
	}
	resp := m.Step(Request{CSG: LoginOperationalNegotiation, Data: AppendText(nil, kvs...)})
	if resp.Status != StatusSuccess {
		t.Fatalf("status %v: %v", resp.Status, m.Err())
	}
	if len(resp.Data) <= 8192 {
		t.Fatalf("response only %d bytes", len(resp.Data))
	}
	parts := SplitText(resp.Data, 8192)
	if len(parts) < 2 {
		t.Fatalf("%d parts", len(parts))
	}
	var joined []byte
	for i, p := range parts {
		if len(p) > 8192 || len(p) == 0 {
			t.Fatalf("part %d has %d bytes", i, len(p))
		}
		joined = append(joined, p...)
	}
	if !bytes.Equal(joined, resp.Data) {
		t.Fatal("parts do not reassemble")
	}
	got, err := ParseText(joined)
	if err != nil {
		t.Fatal(err)
	}
	// NotUnderstood per X- key, plus TargetPortalGroupTag, TargetAlias
	// and MaxRecvDataSegmentLength.
	if want := MaxKeys - 3 + 3; len(got) != want {
		t.Fatalf("got %d keys, want %d", len(got), want)
	}
}

// foldLookup finds targets case-insensitively and returns the canonical
// name, like a lookup that normalises iSCSI names.
type foldLookup struct{ mapLookup }

func (l foldLookup) LookupTarget(name string) (TargetInfo, bool) {
	return l.mapLookup.LookupTarget(strings.ToLower(name))
}

// TestTargetNameNormalised checks that Params carry the target's own
// name and that repeats compare with what the initiator sent.
func TestTargetNameNormalised(t *testing.T) {
	m := New(Config{Targets: foldLookup{testTargets()}})
	sent := strings.ToUpper(tgtOpen)
	resp := m.Step(Request{CSG: SecurityNegotiation, Data: AppendText(nil,
		KeyValue{keyInitiatorName, "iqn.1994-05.com.redhat:x"}, KeyValue{keyTargetName, sent})})
	if resp.Status != StatusSuccess {
		t.Fatalf("%v: %v", resp.Status, m.Err())
	}
	resp = m.Step(Request{Transit: true, CSG: SecurityNegotiation, NSG: FullFeaturePhase,
		Data: AppendText(nil, KeyValue{keyTargetName, sent})})
	if resp.Status != StatusSuccess || !m.Done() {
		t.Fatalf("%v: %v", resp.Status, m.Err())
	}
	if p := m.Params(); p.TargetName != tgtOpen {
		t.Fatalf("TargetName %q", p.TargetName)
	}
	if ti, ok := m.Target(); !ok || ti.Name != tgtOpen {
		t.Fatalf("Target() = %+v, %v", ti, ok)
	}
}

// TestMaxSteps checks that a login cannot go on forever.
func TestMaxSteps(t *testing.T) {
	m := New(Config{Targets: testTargets()})
	req := Request{CSG: SecurityNegotiation, Data: AppendText(nil,
		KeyValue{keyInitiatorName, "iqn.1994-05.com.redhat:x"}, KeyValue{keyTargetName, tgtOpen})}
	for i := range maxSteps + 1 {
		resp := m.Step(req)
		if resp.Status != StatusSuccess {
			if i != maxSteps {
				t.Fatalf("failed at step %d: %v", i, m.Err())
			}
			if resp.Status != StatusInitiatorError {
				t.Fatalf("status %v", resp.Status)
			}
			return
		}
		req.Data = nil
	}
	t.Fatal("no failure after maxSteps")
}

// TestLimitsValidate covers Limits.Validate and the clamping in New.
func TestLimitsValidate(t *testing.T) {
	for _, tc := range []struct {
		l  Limits
		ok bool
	}{
		{Limits{}, true},
		{DefaultLimits(), true},
		{Limits{MaxRecvDataSegmentLength: 511}, false},
		{Limits{MaxRecvDataSegmentLength: 1 << 24}, false},
		{Limits{MaxBurstLength: 16 << 20}, false},
		{Limits{MaxBurstLength: 1<<24 - 1}, true},
		{Limits{FirstBurstLength: 2 << 20}, false}, // > default MaxBurst
		{Limits{FirstBurstLength: 65536, MaxBurstLength: 65536}, true},
		{Limits{ErrorRecoveryLevel: 3}, false},
		{Limits{DefaultTime2Wait: 3601}, false},
		{Limits{CHAPAlgorithms: []CHAPAlgorithm{5, 9}}, false},
		{Limits{CHAPAlgorithms: []CHAPAlgorithm{CHAPSHA256}}, true},
	} {
		err := tc.l.Validate()
		if (err == nil) != tc.ok {
			t.Errorf("%+v: Validate() = %v", tc.l, err)
		}
		if err != nil && !errors.Is(err, ErrInvalidLimits) {
			t.Errorf("%v does not wrap ErrInvalidLimits", err)
		}
		// Whatever the input, the effective limits are valid.
		if err := tc.l.withDefaults().Validate(); err != nil {
			t.Errorf("%+v: withDefaults not valid: %v", tc.l, err)
		}
	}
}

var _ io.Reader = errReader{}
