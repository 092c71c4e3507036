package replication

import (
	"bufio"
	"bytes"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

var update = flag.Bool("update", false, "rewrite testdata/frames.golden")

// messages is one of each message type, with fixed contents.
func messages() []struct {
	name string
	id   uint64
	m    Message
} {
	data := bytes.Repeat([]byte{0xab}, SectorSize)
	dig := bytes.Repeat([]byte{0x11}, 2*DigestSize)
	return []struct {
		name string
		id   uint64
		m    Message
	}{
		{"hello", 0, Hello{Epoch: 7, Size: 1 << 30, Volume: "vol-a", Node: "n1"}},
		{"write", 1, Write{Version: VersionOf(7, 42), LBA: 8, Data: data}},
		{"unmap", 2, Unmap{Version: VersionOf(7, 43), LBA: 16, Sectors: 8}},
		{"flush", 3, Flush{Epoch: 7}},
		{"ack-ok", 1, Ack{Status: StatusOK, Epoch: 7}},
		{"ack-stale", 2, Ack{Status: StatusStaleEpoch, Epoch: 9, Reason: "stale"}},
		{"digest-req", 4, DigestReq{Epoch: 7, RegionSize: 1 << 20, First: 3, Count: 2}},
		{"digests", 4, Digests{First: 3, Digests: dig}},
		{"region-data", 5, RegionData{Epoch: 7, RegionSize: 2 * BlockSize, Region: 1, Versions: []uint64{0, VersionOf(7, 1)}, Data: bytes.Repeat([]byte{0xcd}, BlockSize)}},
	}
}

func TestFrameRoundTrip(t *testing.T) {
	for _, tc := range messages() {
		t.Run(tc.name, func(t *testing.T) {
			b := AppendFrame([]byte("prefix"), tc.id, tc.m)
			f, n, err := ParseFrame(b[6:], MaxPayload)
			if err != nil {
				t.Fatal(err)
			}
			if n != len(b)-6 || f.Type != tc.m.Type() || f.ID != tc.id {
				t.Fatalf("frame %+v n=%d", f, n)
			}
			got, err := Decode(f)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tc.m) {
				t.Fatalf("decoded %#v, want %#v", got, tc.m)
			}
			// ReadFrame gives the same.
			f2, _, err := ReadFrame(bufio.NewReader(bytes.NewReader(b[6:])), nil, MaxPayload)
			if err != nil || !reflect.DeepEqual(f2, f) {
				t.Fatalf("ReadFrame = %+v, %v", f2, err)
			}
		})
	}
}

func TestFrameGolden(t *testing.T) {
	var sb strings.Builder
	for _, tc := range messages() {
		fmt.Fprintf(&sb, "%s %s\n", tc.name, hex.EncodeToString(AppendFrame(nil, tc.id, tc.m)))
	}
	path := filepath.Join("testdata", "frames.golden")
	if *update {
		if err := os.WriteFile(path, []byte(sb.String()), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if sb.String() != string(want) {
		t.Fatalf("frames differ from %s (rerun with -update only if the change is intended):\n%s", path, sb.String())
	}
	// Spot-check the header of the Hello frame by hand.
	h := AppendFrame(nil, 0, Hello{Epoch: 7, Size: 1 << 30, Volume: "vol-a", Node: "n1"})
	if got, want := hex.EncodeToString(h[:12]), "5352504c"+"01"+"01"+"0000"+"0000001b"; got != want { // payload 8+8+2+5+2+2 = 27
		t.Fatalf("hello header %s, want %s", got, want)
	}
}

func TestFrameErrors(t *testing.T) {
	good := AppendFrame(nil, 9, Flush{Epoch: 3})
	mut := func(f func(b []byte) []byte) []byte { return f(bytes.Clone(good)) }
	for _, tc := range []struct {
		name string
		b    []byte
		want error
	}{
		{"short header", good[:10], io.ErrUnexpectedEOF},
		{"short payload", good[:len(good)-1], io.ErrUnexpectedEOF},
		{"magic", mut(func(b []byte) []byte { b[0] = 'X'; return b }), ErrProtocol},
		{"version", mut(func(b []byte) []byte { b[4] = 2; return b }), ErrProtocol},
		{"flags", mut(func(b []byte) []byte { b[7] = 1; return b }), ErrProtocol},
		{"crc", mut(func(b []byte) []byte { b[len(b)-1] ^= 1; return b }), ErrProtocol},
		{"too long", mut(func(b []byte) []byte { b[8] = 0xff; return b }), ErrProtocol},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, _, err := ParseFrame(tc.b, MaxPayload); !errors.Is(err, tc.want) {
				t.Fatalf("err = %v, want %v", err, tc.want)
			}
		})
	}
	for _, tc := range []struct {
		name string
		f    Frame
	}{
		{"unknown type", Frame{Type: 99}},
		{"short hello", Frame{Type: TypeHello, Payload: []byte{1, 2}}},
		{"empty write", Frame{Type: TypeWrite, Payload: make([]byte, 16)}},
		{"odd write", Frame{Type: TypeWrite, Payload: make([]byte, 16+100)}},
		{"trailing flush", Frame{Type: TypeFlush, Payload: make([]byte, 9)}},
		{"digests count", Frame{Type: TypeDigests, Payload: append(make([]byte, 11), 5)}},
		{"region size", Frame{Type: TypeRegionData, Payload: (RegionData{RegionSize: 100, Versions: []uint64{0}}).AppendPayload(nil)}},
		{"region data length", Frame{Type: TypeRegionData, Payload: (RegionData{RegionSize: BlockSize, Versions: []uint64{1}}).AppendPayload(nil)}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := Decode(tc.f); !errors.Is(err, ErrProtocol) {
				t.Fatalf("err = %v, want ErrProtocol", err)
			}
		})
	}
}

func TestParseWriteAllocs(t *testing.T) {
	f, _, _ := ParseFrame(AppendFrame(nil, 1, Write{Version: 1, LBA: 2, Data: make([]byte, BlockSize)}), MaxPayload)
	if n := testing.AllocsPerRun(100, func() {
		if _, err := ParseWrite(f.Payload); err != nil {
			t.Fatal(err)
		}
	}); n != 0 {
		t.Fatalf("ParseWrite allocates %v times", n)
	}
}

// FuzzFrame checks that parsing never panics and that a frame that parses
// re-encodes to the same bytes and parses again to the same message.
func FuzzFrame(f *testing.F) {
	for _, tc := range messages() {
		f.Add(AppendFrame(nil, tc.id, tc.m))
	}
	f.Add([]byte("SRPL"))
	f.Fuzz(func(t *testing.T, b []byte) {
		fr, n, err := ParseFrame(b, MaxPayload)
		if err != nil {
			return
		}
		m, err := Decode(fr)
		if err != nil {
			return
		}
		out := AppendFrame(nil, fr.ID, m)
		if !bytes.Equal(out, b[:n]) {
			t.Fatalf("re-encoded %x, parsed from %x", out, b[:n])
		}
		fr2, _, err := ParseFrame(out, MaxPayload)
		if err != nil {
			t.Fatal(err)
		}
		m2, err := Decode(fr2)
		if err != nil || !reflect.DeepEqual(m, m2) {
			t.Fatalf("second parse %#v, %v; first %#v", m2, err, m)
		}
	})
}
