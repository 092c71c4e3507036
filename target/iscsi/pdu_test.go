package iscsi

import (
	"bytes"
	"encoding/hex"
	"errors"
	"io"
	"strings"
	"testing"

	"stave.dev/stave/target/scsi/sense"
)

// unhex decodes a hex string with spaces and | separators.
func unhex(t testing.TB, s string) []byte {
	t.Helper()
	s = strings.NewReplacer(" ", "", "|", "", "\n", "", "\t", "").Replace(s)
	b, err := hex.DecodeString(s)
	if err != nil {
		t.Fatalf("bad hex %q: %v", s, err)
	}
	return b
}

// TestGoldenTargetPDUs checks every target PDU builder against headers
// assembled by hand from the RFC 7143 §11 layouts.
func TestGoldenTargetPDUs(t *testing.T) {
	isid := [6]byte{0x80, 0, 0, 0x12, 0x34, 0x56}
	tests := []struct {
		name string
		enc  interface{ AppendTo([]byte) []byte }
		want string
	}{
		{"SCSIResponse/underflow", &SCSIResponse{Underflow: true, ITT: 0x11223344, StatSN: 5, ExpCmdSN: 6,
			MaxCmdSN: 7, ExpDataSN: 2, ResidualCount: 0x200},
			"21 82 00 00 | 00 000000 | 0000000000000000 | 11223344 | 00000000 | 00000005 | 00000006 | 00000007 | 00000002 | 00000000 | 00000200"},
		{"SCSIResponse/check-condition", &SCSIResponse{Status: sense.StatusCheckCondition, ITT: 1, StatSN: 2,
			ExpCmdSN: 3, MaxCmdSN: 4, DataLen: 20},
			"21 80 00 02 | 00 000014 | 0000000000000000 | 00000001 | 00000000 | 00000002 | 00000003 | 00000004 | 00000000 | 00000000 | 00000000"},
		{"SCSIResponse/overflow+bidi", &SCSIResponse{Overflow: true, BidiOverflow: true, BidiUnderflow: false,
			Response: 1, ITT: 9, BidiResidualCount: 7, ResidualCount: 8},
			"21 94 01 00 | 00 000000 | 0000000000000000 | 00000009 | 00000000 | 00000000 | 00000000 | 00000000 | 00000000 | 00000007 | 00000008"},
		{"DataIn/status", &DataIn{Final: true, HasStatus: true, Underflow: true, LUN: 1 << 48, ITT: 0xa,
			TTT: 0xffffffff, StatSN: 9, ExpCmdSN: 10, MaxCmdSN: 20, DataSN: 3, BufferOffset: 0x2000,
			ResidualCount: 0x100, DataLen: 0x1000},
			"25 83 00 00 | 00 001000 | 0001000000000000 | 0000000a | ffffffff | 00000009 | 0000000a | 00000014 | 00000003 | 00002000 | 00000100"},
		{"DataIn/plain", &DataIn{ITT: 1, TTT: 0xffffffff, DataSN: 0, DataLen: 512, Underflow: true},
			"25 00 00 00 | 00 000200 | 0000000000000000 | 00000001 | ffffffff | 00000000 | 00000000 | 00000000 | 00000000 | 00000000 | 00000000"},
		{"R2T", &R2T{ITT: 7, TTT: 0x55, StatSN: 3, ExpCmdSN: 4, MaxCmdSN: 5, R2TSN: 1, BufferOffset: 0x10000,
			DesiredDataTransferLength: 0x40000},
			"31 80 00 00 | 00 000000 | 0000000000000000 | 00000007 | 00000055 | 00000003 | 00000004 | 00000005 | 00000001 | 00010000 | 00040000"},
		{"LoginResponse", &LoginResponse{Transit: true, CSG: 1, NSG: 3, ISID: isid, TSIH: 0x0102, ITT: 1,
			StatSN: 0x10, ExpCmdSN: 0x20, MaxCmdSN: 0x30, DataLen: 5},
			"23 87 00 00 | 00 000005 | 800000123456 0102 | 00000001 | 00000000 | 00000010 | 00000020 | 00000030 | 0000 0000 | 00000000 | 00000000"},
		{"LoginResponse/fail", &LoginResponse{Continue: true, CSG: 0, ISID: isid, ITT: 2, StatusClass: 2, StatusDetail: 1},
			"23 40 00 00 | 00 000000 | 800000123456 0000 | 00000002 | 00000000 | 00000000 | 00000000 | 00000000 | 0201 0000 | 00000000 | 00000000"},
		{"TextResponse/final", &TextResponse{Final: true, ITT: 2, TTT: 0xffffffff, StatSN: 1, ExpCmdSN: 2, MaxCmdSN: 3, DataLen: 0x20},
			"24 80 00 00 | 00 000020 | 0000000000000000 | 00000002 | ffffffff | 00000001 | 00000002 | 00000003 | 00000000 | 00000000 | 00000000"},
		{"TextResponse/continue", &TextResponse{Continue: true, ITT: 2, TTT: 9},
			"24 40 00 00 | 00 000000 | 0000000000000000 | 00000002 | 00000009 | 00000000 | 00000000 | 00000000 | 00000000 | 00000000 | 00000000"},
		{"LogoutResponse", &LogoutResponse{Response: LogoutRecoveryUnsupported, ITT: 3, StatSN: 4, ExpCmdSN: 5,
			MaxCmdSN: 6, Time2Wait: 2, Time2Retain: 20},
			"26 80 02 00 | 00 000000 | 0000000000000000 | 00000003 | 00000000 | 00000004 | 00000005 | 00000006 | 00000000 | 0002 0014 | 00000000"},
		{"TaskMgmtResponse", &TaskMgmtResponse{Response: 1, ITT: 4, StatSN: 1, ExpCmdSN: 2, MaxCmdSN: 3},
			"22 80 01 00 | 00 000000 | 0000000000000000 | 00000004 | 00000000 | 00000001 | 00000002 | 00000003 | 00000000 | 00000000 | 00000000"},
		{"NOPIn/ping", &NOPIn{ITT: 0xffffffff, TTT: 0x77, StatSN: 1, ExpCmdSN: 2, MaxCmdSN: 3},
			"20 80 00 00 | 00 000000 | 0000000000000000 | ffffffff | 00000077 | 00000001 | 00000002 | 00000003 | 00000000 | 00000000 | 00000000"},
		{"NOPIn/reply", &NOPIn{LUN: 2 << 48, ITT: 5, TTT: 0xffffffff, DataLen: 3},
			"20 80 00 00 | 00 000003 | 0002000000000000 | 00000005 | ffffffff | 00000000 | 00000000 | 00000000 | 00000000 | 00000000 | 00000000"},
		{"AsyncMessage", &AsyncMessage{Event: AsyncLogoutRequest, Parameter3: 3, StatSN: 1, ExpCmdSN: 2, MaxCmdSN: 3},
			"32 80 00 00 | 00 000000 | 0000000000000000 | ffffffff | 00000000 | 00000001 | 00000002 | 00000003 | 01 00 0000 | 0000 0003 | 00000000"},
		{"Reject", &Reject{Reason: RejectInvalidPDUField, StatSN: 1, ExpCmdSN: 2, MaxCmdSN: 3, DataLen: 48},
			"3f 80 09 00 | 00 000030 | 0000000000000000 | ffffffff | 00000000 | 00000001 | 00000002 | 00000003 | 00000000 | 00000000 | 00000000"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			want := unhex(t, tc.want)
			if len(want) != BHSLen {
				t.Fatalf("golden header is %d bytes", len(want))
			}
			prefix := []byte("xyz")
			got := tc.enc.AppendTo(append([]byte(nil), prefix...))
			if !bytes.Equal(got[:3], prefix) {
				t.Fatal("AppendTo clobbered the prefix")
			}
			if !bytes.Equal(got[3:], want) {
				t.Fatalf("AppendTo:\n got %x\nwant %x", got[3:], want)
			}
			// Builders have no side effects: encoding twice is identical.
			if again := tc.enc.AppendTo(nil); !bytes.Equal(again, want) {
				t.Fatal("second AppendTo differs")
			}
		})
	}
}

// TestCRC32C checks the digest against RFC 3720 §B.4 vectors, bytes as
// sent on the wire.
func TestCRC32C(t *testing.T) {
	ones := bytes.Repeat([]byte{0xff}, 32)
	inc := make([]byte, 32)
	for i := range inc {
		inc[i] = byte(i)
	}
	for _, tc := range []struct {
		in   []byte
		wire string
	}{
		{make([]byte, 32), "aa36918a"},
		{ones, "43aba862"},
		{inc, "4e79dd46"},
	} {
		if got := appendDigest(nil, crc32c(tc.in)); hex.EncodeToString(got) != tc.wire {
			t.Errorf("crc32c(%x) on the wire = %x, want %s", tc.in[:4], got, tc.wire)
		}
	}
}

// scsiCommandBytes builds a SCSI Command with a 20-byte CDB (Extended-CDB
// AHS) and 5 bytes of immediate data.
func scsiCommandBytes(t *testing.T, hd, dd bool) (hdr BHS, ahs, data, wire []byte) {
	hdr = BHS(unhex(t, "01 c1 00 00 | 00 000000 | 0001000000000000 | 00000042 | 00001000 | 00000010 | 00000020 |"+
		"a0 0102030405060708090a0b0c0d0e0f"))
	ahs = AppendExtendedCDBAHS(nil, []byte{0xaa, 0xbb, 0xcc, 0xdd})
	data = []byte("hello")
	return hdr, ahs, data, AppendPDU(nil, hdr, ahs, data, hd, dd)
}

func TestReadPDU(t *testing.T) {
	for _, dig := range []struct{ hd, dd bool }{{false, false}, {true, false}, {false, true}, {true, true}} {
		hdr, ahs, data, wire := scsiCommandBytes(t, dig.hd, dig.dd)
		// Layout: 48 BHS + 8 AHS (+4) + 5 data + 3 pad (+4).
		want := 48 + 8 + 8
		if dig.hd {
			want += 4
		}
		if dig.dd {
			want += 4
		}
		if len(wire) != want {
			t.Fatalf("digests %v: wire length %d, want %d", dig, len(wire), want)
		}
		if wire[4] != 2 || wire[7] != 5 {
			t.Fatalf("TotalAHSLength/DataSegmentLength not set: % x", wire[4:8])
		}
		r := NewReader(bytes.NewReader(wire))
		r.HeaderDigest, r.DataDigest = dig.hd, dig.dd
		p, err := r.ReadPDU()
		if err != nil {
			t.Fatalf("digests %v: %v", dig, err)
		}
		h := p.BHS
		if h.Opcode() != OpSCSICommand || !h.Final() || !h.Read() || h.Write() || h.Attr() != 1 ||
			h.LUN() != 1<<48 || h.ITT() != 0x42 || h.ExpectedDataTransferLength() != 0x1000 ||
			h.CmdSN() != 0x10 || h.ExpStatSN() != 0x20 || h.CDB()[0] != 0xa0 {
			t.Fatalf("decoded fields wrong: %x", []byte(h))
		}
		ext, err := p.ExtendedCDB()
		if err != nil || !bytes.Equal(ext, []byte{0xaa, 0xbb, 0xcc, 0xdd}) {
			t.Fatalf("extended CDB %x, %v", ext, err)
		}
		if !bytes.Equal(p.AHS, ahs) || !bytes.Equal(p.Data, data) || !bytes.Equal(p.BHS[:4], hdr[:4]) {
			t.Fatalf("AHS %x data %q", p.AHS, p.Data)
		}
		if _, err := r.ReadPDU(); err != io.EOF {
			t.Fatalf("after last PDU: %v, want EOF", err)
		}
	}
}

func TestReadPDUErrors(t *testing.T) {
	_, _, _, wire := scsiCommandBytes(t, true, true)
	read := func(b []byte, maxData int) (*PDU, error) {
		r := NewReader(bytes.NewReader(b))
		r.HeaderDigest, r.DataDigest = true, true
		if maxData > 0 {
			r.MaxDataSegmentLength = maxData
		}
		return r.ReadPDU()
	}
	bad := append([]byte(nil), wire...)
	bad[57] ^= 1 // header digest
	if _, err := read(bad, 0); !errors.Is(err, ErrHeaderDigest) {
		t.Errorf("corrupt header digest: %v", err)
	}
	bad = append([]byte(nil), wire...)
	bad[len(bad)-1] ^= 1 // data digest
	p, err := read(bad, 0)
	if !errors.Is(err, ErrDataDigest) || p == nil || p.BHS.ITT() != 0x42 {
		t.Errorf("corrupt data digest: %v", err)
	}
	// DataSegmentLength over the limit fails before the data is read:
	// only the header is supplied.
	if _, err := read(wire[:48+8+4], 4); !errors.Is(err, ErrDataTooLong) {
		t.Errorf("data too long: %v", err)
	}
	// Truncated PDU.
	if _, err := read(wire[:50], 0); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Errorf("truncated: %v", err)
	}
	// Malformed AHS (zero length).
	h := make([]byte, 48)
	h[0], h[4] = 0x01, 1
	wire2 := append(h, 0, 0, 1, 0)
	r := NewReader(bytes.NewReader(wire2))
	if _, err := r.ReadPDU(); !errors.Is(err, ErrBadAHS) {
		t.Errorf("bad AHS: %v", err)
	}
}

func TestOpcodeStrings(t *testing.T) {
	for op, name := range map[Opcode]string{OpSCSICommand: "SCSI Command", OpReject: "Reject", 0x3b: "Opcode(0x3b)"} {
		if op.String() != name {
			t.Errorf("%d.String() = %q", op, op.String())
		}
	}
	if RejectDataDigestError.String() == "" || LogoutCIDNotFound.String() == "" || AsyncLogoutRequest.String() == "" ||
		AHSExtendedCDB.String() == "" || LogoutReason(9).String() != "LogoutReason(9)" {
		t.Error("empty String()")
	}
}

func TestReadPDUNoAllocs(t *testing.T) {
	_, _, _, wire := scsiCommandBytes(t, true, true)
	src := bytes.NewReader(nil)
	r := NewReader(src)
	r.HeaderDigest, r.DataDigest = true, true
	allocs := testing.AllocsPerRun(100, func() {
		src.Reset(wire)
		r.r.Reset(src)
		if _, err := r.ReadPDU(); err != nil {
			t.Fatal(err)
		}
	})
	if allocs > 0 {
		t.Fatalf("ReadPDU allocates %.1f times per PDU", allocs)
	}
}

func FuzzReadPDU(f *testing.F) {
	for _, dig := range [][2]bool{{false, false}, {true, true}} {
		h := BHS(make([]byte, 48))
		h[0] = 0x01
		f.Add(dig[0], dig[1], AppendPDU(nil, h, AppendExtendedCDBAHS(nil, []byte{1, 2, 3}), []byte("data"), dig[0], dig[1]))
		f.Add(dig[0], dig[1], AppendPDU(nil, h, AppendBidiAHS(nil, 512), nil, dig[0], dig[1]))
	}
	f.Add(false, false, make([]byte, 47))
	f.Fuzz(func(t *testing.T, hd, dd bool, in []byte) {
		r := NewReader(bytes.NewReader(in))
		r.HeaderDigest, r.DataDigest = hd, dd
		r.MaxDataSegmentLength = 1 << 16
		p, err := r.ReadPDU()
		if err != nil {
			return
		}
		_, _ = p.ExtendedCDB()
		_, _, _ = p.BidiReadLength()
		h := append(BHS(nil), p.BHS...)
		ahs := append([]byte(nil), p.AHS...)
		data := append([]byte(nil), p.Data...)
		wire := AppendPDU(nil, h, ahs, data, hd, dd)
		r2 := NewReader(bytes.NewReader(wire))
		r2.HeaderDigest, r2.DataDigest = hd, dd
		r2.MaxDataSegmentLength = 1 << 16
		p2, err := r2.ReadPDU()
		if err != nil {
			t.Fatalf("re-encoded PDU does not decode: %v", err)
		}
		if !bytes.Equal(p2.BHS, h) || !bytes.Equal(p2.AHS, ahs) || !bytes.Equal(p2.Data, data) {
			t.Fatalf("round trip differs")
		}
	})
}
