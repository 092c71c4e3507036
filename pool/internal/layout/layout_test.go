package layout

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"flag"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

var update = flag.Bool("update", false, "rewrite testdata golden files")

func sampleSuperblock() Superblock {
	return Superblock{Version: FormatVersion, Seq: 7,
		PoolID:      [16]byte{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16},
		DeviceID:    [16]byte{0xa0, 0xa1, 0xa2, 0xa3, 0xa4, 0xa5, 0xa6, 0xa7, 0xa8, 0xa9, 0xaa, 0xab, 0xac, 0xad, 0xae, 0xaf},
		DeviceIndex: 2, DeviceCount: 3, SegmentSize: 64 << 20, SegmentCount: 100, DataStart: DataStart, Epoch: 1}
}

func sampleHeader() ChunkHeader {
	h := ChunkHeader{Version: FormatVersion, PayloadCRC: 0xdeadbeef, Seq: 42, Segment: 5, Index: 1, K: 2, M: 1,
		HeaderLen: HeaderLenFor(3), PayloadLen: 2 * BlockSize, NumBlocks: 2}
	h.Members[0], h.Members[1], h.Members[2] = 2, 0, 1
	h.Records = []Record{
		{Volume: 1, LBA: 100, Version: 1<<40 | 5, Kind: KindData, SHA: [32]byte{1, 2, 3}},
		{Volume: 1, LBA: 200, Version: 1<<40 | 6, Kind: KindTombstone, Count: 16},
		{Volume: 0, LBA: 1, Version: 1<<40 | 7, Kind: KindMeta, SHA: [32]byte{31: 9}},
	}
	return h
}

// sampleTaggedHeader is sampleHeader as a tagged batch (e.g. the local
// copy of a replicated volume): every record carries a tag.
func sampleTaggedHeader() ChunkHeader {
	h := sampleHeader()
	h.Flags = FlagTagged
	h.Records[0].Tag = 3<<40 | 17
	h.Records[1].Tag = 3<<40 | 18
	h.Records[2].Tag = 0 // meta records are written untagged
	return h
}

// golden compares b (trimmed of trailing zeros) with testdata/name as hex.
func golden(t *testing.T, name string, b []byte) {
	t.Helper()
	got := hex.Dump(bytes.TrimRight(b, "\x00"))
	path := filepath.Join("testdata", name)
	if *update {
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run with -update)", err)
	}
	if got != string(want) {
		t.Errorf("%s: encoding changed:\n%s\nwant:\n%s", name, got, want)
	}
}

func TestSuperblockGolden(t *testing.T) {
	sb := sampleSuperblock()
	b := sb.AppendTo(nil)
	if len(b) != SuperblockSize {
		t.Fatalf("len %d", len(b))
	}
	golden(t, "superblock.hex", b)
	got, err := DecodeSuperblock(b)
	if err != nil || got != sb {
		t.Fatalf("round trip: %+v %v", got, err)
	}
	for _, tc := range []struct {
		name string
		mut  func([]byte)
		want error
	}{
		{"zeros", func(b []byte) { clear(b) }, ErrBadMagic},
		{"bitflip", func(b []byte) { b[70] ^= 1 }, ErrChecksum},
		{"crc", func(b []byte) { b[superCRCOff] ^= 1 }, ErrChecksum},
	} {
		c := append([]byte(nil), b...)
		tc.mut(c)
		if _, err := DecodeSuperblock(c); !errors.Is(err, tc.want) {
			t.Errorf("%s: %v, want %v", tc.name, err, tc.want)
		}
	}
	if _, err := DecodeSuperblock(b[:50]); !errors.Is(err, ErrShort) {
		t.Errorf("short: %v", err)
	}
}

func TestChunkHeaderGolden(t *testing.T) {
	h := sampleHeader()
	b := h.AppendTo(nil)
	if len(b) != BlockSize {
		t.Fatalf("len %d", len(b))
	}
	golden(t, "chunkheader.hex", b)
	got, err := DecodeChunkHeader(b, nil)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, h) {
		t.Fatalf("round trip:\n%+v\n%+v", got, h)
	}
	if hl, err := PeekHeaderLen(b); err != nil || hl != BlockSize {
		t.Fatalf("PeekHeaderLen = %d, %v", hl, err)
	}
	for _, tc := range []struct {
		name string
		mut  func([]byte)
		want error
	}{
		{"zeros", func(b []byte) { clear(b) }, ErrBadMagic},
		{"record bitflip", func(b []byte) { b[FixedHeaderLen+9] ^= 0x80 }, ErrChecksum},
		{"seq bitflip", func(b []byte) { b[16] ^= 1 }, ErrChecksum},
		{"header len", func(b []byte) { b[32] = 1 }, ErrField},
		{"too many records", func(b []byte) { b[41] = 0xff }, ErrField},
	} {
		c := append([]byte(nil), b...)
		tc.mut(c)
		if _, err := DecodeChunkHeader(c, nil); !errors.Is(err, tc.want) {
			t.Errorf("%s: %v, want %v", tc.name, err, tc.want)
		}
	}
	// A large batch spills the header over several blocks.
	h.Records = make([]Record, 200)
	for i := range h.Records {
		h.Records[i] = Record{Volume: 3, LBA: uint64(i), Version: uint64(i + 1), Kind: KindTombstone, Count: 1}
	}
	h.NumBlocks = 0
	h.HeaderLen = HeaderLenFor(200)
	b = h.AppendTo(nil)
	if len(b) != 4*BlockSize {
		t.Fatalf("len %d", len(b))
	}
	if got, err := DecodeChunkHeader(b, nil); err != nil || len(got.Records) != 200 {
		t.Fatalf("large header: %v", err)
	}
}

// TestTaggedChunkHeaderGolden: a tagged batch's records are 72 bytes with
// the tag last; its CRC also covers version and flags; an untagged
// header's encoding is unchanged (TestChunkHeaderGolden).
func TestTaggedChunkHeaderGolden(t *testing.T) {
	h := sampleTaggedHeader()
	h.HeaderLen = HeaderLen(len(h.Records), h.Flags)
	b := h.AppendTo(nil)
	if len(b) != BlockSize {
		t.Fatalf("len %d", len(b))
	}
	golden(t, "chunkheader-tagged.hex", b)
	got, err := DecodeChunkHeader(b, nil)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, h) {
		t.Fatalf("round trip:\n%+v\n%+v", got, h)
	}
	// The tag of record 1 is at 64+72+64.
	if tag := binary.LittleEndian.Uint64(b[FixedHeaderLen+TaggedRecordLen+RecordLen:]); tag != 3<<40|18 {
		t.Fatalf("tag of record 1 at the wrong place: %#x", tag)
	}
	for _, tc := range []struct {
		name string
		mut  func([]byte)
		want error
	}{
		{"tag bitflip", func(b []byte) { b[FixedHeaderLen+TaggedRecordLen+RecordLen] ^= 1 }, ErrChecksum},
		{"last tag bitflip", func(b []byte) { b[FixedHeaderLen+3*TaggedRecordLen-1] ^= 0x80 }, ErrChecksum},
		{"tagged flag cleared", func(b []byte) { b[6] &^= byte(FlagTagged) }, ErrChecksum},
		{"other flag set", func(b []byte) { b[6] |= 1 }, ErrChecksum},
		{"version changed", func(b []byte) { b[4] ^= 2 }, ErrChecksum},
	} {
		c := append([]byte(nil), b...)
		tc.mut(c)
		if _, err := DecodeChunkHeader(c, nil); !errors.Is(err, tc.want) {
			t.Errorf("%s: %v, want %v", tc.name, err, tc.want)
		}
	}
	// The tagged flag set on an untagged header: its records are read at
	// the wrong stride and the CRC fails.
	u := sampleHeader()
	ub := u.AppendTo(nil)
	ub[6] |= byte(FlagTagged)
	if _, err := DecodeChunkHeader(ub, nil); !errors.Is(err, ErrChecksum) {
		t.Errorf("tagged flag set on an untagged header: %v", err)
	}
	// Tags are dropped from an untagged batch.
	u.Records[0].Tag = 99
	if got, err := DecodeChunkHeader(u.AppendTo(nil), nil); err != nil || got.Records[0].Tag != 0 {
		t.Errorf("untagged batch kept a tag: %+v %v", got.Records[0], err)
	}
	// Header lengths: 57 tagged records need a second block, 63 untagged
	// ones do not.
	for _, tc := range []struct {
		n     int
		flags uint16
		want  uint32
	}{{57, FlagTagged, 2 * BlockSize}, {56, FlagTagged, BlockSize}, {63, 0, BlockSize}, {64, 0, 2 * BlockSize}} {
		if got := HeaderLen(tc.n, tc.flags); got != tc.want {
			t.Errorf("HeaderLen(%d, %#x) = %d, want %d", tc.n, tc.flags, got, tc.want)
		}
	}
	// A large tagged batch spills over several blocks and round-trips.
	h.Records = make([]Record, 200)
	for i := range h.Records {
		h.Records[i] = Record{Volume: 3, LBA: uint64(i), Version: uint64(i + 1), Kind: KindTombstone, Count: 1, Tag: uint64(1000 + i)}
	}
	h.NumBlocks = 0
	h.HeaderLen = 0 // raised to the minimum by AppendTo
	b = h.AppendTo(nil)
	if len(b) != 4*BlockSize {
		t.Fatalf("len %d", len(b))
	}
	if hl, err := PeekHeaderLen(b); err != nil || hl != 4*BlockSize {
		t.Fatalf("PeekHeaderLen = %d, %v", hl, err)
	}
	got, err = DecodeChunkHeader(b, nil)
	if err != nil || len(got.Records) != 200 || got.Records[199].Tag != 1199 {
		t.Fatalf("large tagged header: %v", err)
	}
	// A header length too short for 72-byte records is refused.
	binary.LittleEndian.PutUint32(b[32:], 3*BlockSize)
	if _, err := PeekHeaderLen(b); !errors.Is(err, ErrField) {
		t.Fatalf("short tagged header length: %v", err)
	}
}

func TestRecordKindString(t *testing.T) {
	for k, s := range map[RecordKind]string{KindData: "data", KindTombstone: "tombstone", KindMeta: "meta", 9: "kind?"} {
		if k.String() != s {
			t.Errorf("%d: %q", k, k.String())
		}
	}
	if !strings.Contains(ErrChecksum.Error(), "layout:") {
		t.Error("prefix")
	}
}

func FuzzSuperblock(f *testing.F) {
	sb := sampleSuperblock()
	f.Add(sb.AppendTo(nil))
	f.Add(make([]byte, SuperblockSize))
	f.Fuzz(func(t *testing.T, b []byte) {
		s, err := DecodeSuperblock(b)
		if err != nil {
			return
		}
		e := s.AppendTo(nil)
		s2, err := DecodeSuperblock(e)
		if err != nil || s2 != s {
			t.Fatalf("re-decode: %+v %v", s2, err)
		}
	})
}

func FuzzChunkHeader(f *testing.F) {
	h := sampleHeader()
	f.Add(h.AppendTo(nil))
	th := sampleTaggedHeader()
	f.Add(th.AppendTo(nil))
	f.Add(make([]byte, BlockSize))
	f.Fuzz(func(t *testing.T, b []byte) {
		h, err := DecodeChunkHeader(b, nil)
		if err != nil {
			return
		}
		e := h.AppendTo(nil)
		h2, err := DecodeChunkHeader(e, nil)
		if err != nil {
			t.Fatalf("re-decode: %v", err)
		}
		if len(h2.Records) == 0 {
			h2.Records = h.Records
		}
		if !reflect.DeepEqual(h, h2) {
			t.Fatalf("round trip:\n%+v\n%+v", h, h2)
		}
	})
}
