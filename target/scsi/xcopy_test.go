package scsi

import (
	"context"
	"encoding/binary"
	"errors"
	"reflect"
	"sync"
	"testing"
	"time"

	"stave.dev/stave/target/scsi/sense"
)

// testNAA is the NAA designator of the LUs the datadriven env builds.
var testNAA = []byte{0x60, 0x01, 0x40, 0x5c, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12}

// appendCopyParams encodes an EXTENDED COPY (LID1) parameter list; it is
// the inverse of parseCopyParams for lists that parse.
func appendCopyParams(b []byte, p *copyParams) []byte {
	var h [16]byte
	h[0] = p.listID
	h[1] = p.usage<<3 | p.prio&0x07
	if p.str {
		h[1] |= 0x20
	}
	binary.BigEndian.PutUint16(h[2:], uint16(len(p.cscds)*xcCSCDLen))
	binary.BigEndian.PutUint32(h[8:], uint32(len(p.segs)*xcB2BLen))
	binary.BigEndian.PutUint32(h[12:], p.inline)
	b = append(b, h[:]...)
	for _, c := range p.cscds {
		var d [xcCSCDLen]byte
		d[0] = cscdIdent
		d[1] = c.luIDType<<6 | c.pdt
		binary.BigEndian.PutUint16(d[2:], c.relPort)
		d[4] = c.codeSet
		d[5] = c.assoc<<4 | c.desType
		d[7] = byte(len(c.des))
		copy(d[8:28], c.des)
		if c.pad {
			d[28] = 0x04
		}
		d[29], d[30], d[31] = byte(c.blockLen>>16), byte(c.blockLen>>8), byte(c.blockLen)
		b = append(b, d[:]...)
	}
	for _, s := range p.segs {
		var d [xcB2BLen]byte
		d[0] = segBlockToBlock
		if s.dc {
			d[1] |= 0x02
		}
		if s.cat {
			d[1] |= 0x01
		}
		binary.BigEndian.PutUint16(d[2:], xcB2BLen-4)
		binary.BigEndian.PutUint16(d[4:], s.src)
		binary.BigEndian.PutUint16(d[6:], s.dst)
		binary.BigEndian.PutUint16(d[10:], s.blocks)
		binary.BigEndian.PutUint64(d[12:], s.srcLBA)
		binary.BigEndian.PutUint64(d[20:], s.dstLBA)
		b = append(b, d[:]...)
	}
	return b
}

func localCSCD() cscdDesc {
	return cscdDesc{codeSet: 1, desType: 3, des: testNAA, blockLen: 512}
}

func seg(src, dst uint16, n uint16, from, to uint64) segDesc {
	return segDesc{src: src, dst: dst, blocks: n, srcLBA: from, dstLBA: to}
}

// senseOf returns key and ASC of a *sense.Error, or fails.
func senseOf(t *testing.T, err error) (sense.Key, sense.ASC, *sense.FieldPointer) {
	t.Helper()
	var se *sense.Error
	if !errors.As(err, &se) {
		t.Fatalf("error %v is not a *sense.Error", err)
	}
	return se.Key, se.ASC, se.Field
}

func TestParseCopyParams(t *testing.T) {
	ok := &copyParams{listID: 7, cscds: []cscdDesc{localCSCD()}, segs: []segDesc{seg(0, 0, 4, 0, 100)}}
	good := appendCopyParams(nil, ok)
	mutate := func(f func(b []byte) []byte) []byte { return f(append([]byte(nil), good...)) }
	many := func(nc, ns int) []byte {
		p := &copyParams{}
		for range nc {
			p.cscds = append(p.cscds, localCSCD())
		}
		for range ns {
			p.segs = append(p.segs, seg(0, 0, 1, 0, 1))
		}
		return appendCopyParams(nil, p)
	}
	tests := []struct {
		name  string
		p     []byte
		key   sense.Key
		asc   sense.ASC
		field int // -1: no field pointer expected
	}{
		{"ok", good, 0, 0, -1},
		{"short header", good[:15], sense.KeyIllegalRequest, sense.ASCParameterListLengthError, -1},
		{"truncated cscd", good[:16+31], sense.KeyIllegalRequest, sense.ASCParameterListLengthError, -1},
		{"truncated segment", good[:len(good)-1], sense.KeyIllegalRequest, sense.ASCParameterListLengthError, -1},
		{"list id usage 01b", mutate(func(b []byte) []byte { b[1] = 1 << 3; return b }),
			sense.KeyIllegalRequest, sense.ASCInvalidFieldInParameterList, 1},
		{"no list id but id set", mutate(func(b []byte) []byte { b[1] = 3 << 3; return b }),
			sense.KeyIllegalRequest, sense.ASCInvalidFieldInParameterList, 0},
		{"inline data", mutate(func(b []byte) []byte { b[15] = 4; return append(b, 0, 0, 0, 0) }),
			sense.KeyIllegalRequest, ascInlineDataLengthExceeded, 12},
		{"too many cscds", many(xcMaxCSCD+1, 1), sense.KeyIllegalRequest, ascTooManyTargetDescriptors, -1},
		{"too many segments", many(1, xcMaxSegments+1), sense.KeyIllegalRequest, ascTooManySegmentDescriptors, -1},
		{"max ok", many(xcMaxCSCD, xcMaxSegments), 0, 0, -1},
		{"list too long", many(xcMaxCSCD+1, xcMaxSegments), sense.KeyIllegalRequest, sense.ASCParameterListLengthError, -1},
		{"fc cscd", mutate(func(b []byte) []byte { b[16] = 0xe0; return b }),
			sense.KeyIllegalRequest, ascUnsupportedTargetDescriptorType, 16},
		{"stream segment", mutate(func(b []byte) []byte { b[48] = 0x03; return b }),
			sense.KeyIllegalRequest, ascUnsupportedSegmentDescriptorType, 48},
		{"segment length", mutate(func(b []byte) []byte {
			b[51] = 0x14 // 24-byte segment in a 28-byte list: the walk misses the end
			return b
		}), sense.KeyIllegalRequest, sense.ASCInvalidFieldInParameterList, 8},
		{"cscd list not whole", mutate(func(b []byte) []byte { b[3] = 0x1f; return b }),
			sense.KeyIllegalRequest, sense.ASCInvalidFieldInParameterList, 2},
		{"designator too long", mutate(func(b []byte) []byte { b[16+7] = 21; return b }),
			sense.KeyIllegalRequest, sense.ASCInvalidFieldInParameterList, 16 + 7},
		{"tape cscd", mutate(func(b []byte) []byte { b[17] = 0x01; return b }),
			sense.KeyIllegalRequest, sense.ASCInvalidFieldInParameterList, 17},
		{"longest segment at 512", appendCopyParams(nil, &copyParams{cscds: []cscdDesc{localCSCD()},
			segs: []segDesc{seg(0, 0, 0xffff, 0, 0)}}), 0, 0, -1},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p, err := parseCopyParams(tc.p, 512)
			if tc.asc == 0 {
				if err != nil {
					t.Fatalf("parse: %v", err)
				}
				if again := appendCopyParams(nil, p); !reflect.DeepEqual(again, tc.p) {
					t.Fatalf("re-encoded list differs:\n%x\n%x", again, tc.p)
				}
				return
			}
			key, asc, f := senseOf(t, err)
			if key != tc.key || asc != tc.asc {
				t.Fatalf("got %s %s, want %s %s", key, asc, tc.key, tc.asc)
			}
			if tc.field >= 0 && (f == nil || f.CDB || int(f.Byte) != tc.field) {
				t.Fatalf("field pointer %+v, want parameter byte %d", f, tc.field)
			}
		})
	}
	// MAXIMUM SEGMENT LENGTH counts bytes: 65535 blocks of 4096 are too many.
	big := appendCopyParams(nil, &copyParams{cscds: []cscdDesc{localCSCD()}, segs: []segDesc{seg(0, 0, 0xffff, 0, 0)}})
	if _, err := parseCopyParams(big, 4096); err == nil {
		t.Fatal("segment beyond MAXIMUM SEGMENT LENGTH accepted")
	} else if _, asc, f := senseOf(t, err); asc != sense.ASCInvalidFieldInParameterList || f.Byte != 16+32+10 {
		t.Fatalf("got %s field %+v", asc, f)
	}
}

func FuzzExtendedCopyParams(f *testing.F) {
	f.Add(appendCopyParams(nil, &copyParams{listID: 1, cscds: []cscdDesc{localCSCD()}, segs: []segDesc{seg(0, 0, 8, 0, 64)}}))
	f.Add(appendCopyParams(nil, &copyParams{usage: 3, cscds: []cscdDesc{localCSCD(), localCSCD()},
		segs: []segDesc{seg(0, 1, 1, 5, 6), seg(0xffff, 0xffff, 2, 1, 2)}}))
	f.Add(make([]byte, 16))
	f.Add([]byte{0, 0, 0, 0x40, 0, 0, 0, 0, 0, 0, 0, 0x1c, 0, 0, 0, 0, 0xea})
	f.Fuzz(func(t *testing.T, b []byte) {
		p, err := parseCopyParams(b, 512)
		if err != nil {
			var se *sense.Error
			if !errors.As(err, &se) {
				t.Fatalf("non-sense error %v", err)
			}
			return
		}
		enc := appendCopyParams(nil, p)
		q, err := parseCopyParams(enc, 512)
		if err != nil {
			t.Fatalf("re-parse of %x: %v", enc, err)
		}
		if !reflect.DeepEqual(p, q) {
			t.Fatalf("round trip differs:\n%+v\n%+v", p, q)
		}
	})
}

// TestCopyAgainstCompareAndWrite runs EXTENDED COPY and COMPARE AND WRITE
// on overlapping blocks concurrently: the copy must never see a half
// written COMPARE AND WRITE, and nothing deadlocks.
func TestCopyAgainstCompareAndWrite(t *testing.T) {
	dev := newMemDev(512*4096, 512)
	var naa [16]byte
	copy(naa[:], testNAA)
	lu, err := NewLU(LUConfig{Device: dev, NAA: naa})
	if err != nil {
		t.Fatal(err)
	}
	tgt := NewTarget(TargetConfig{LUNs: map[uint64]*LU{0: lu}})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	const n = 64 // blocks at LBA 0 flip between all-A and all-B by COMPARE AND WRITE
	fill := func(c byte) []byte {
		b := make([]byte, n*512)
		for i := range b {
			b[i] = c
		}
		return b
	}
	w := &Task{Nexus: testNexus("w", 1), CDB: []byte{0x8a, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, n, 0, 0}, DataOut: fill('A')}
	if r := tgt.Execute(ctx, w); r.Status != sense.StatusGood {
		t.Fatalf("write: %v", r.Status)
	}
	params := appendCopyParams(nil, &copyParams{usage: 3, cscds: []cscdDesc{localCSCD()},
		segs: []segDesc{seg(0, 0, n, 0, 1024), seg(0xffff, 0, n, 0, 2048)}})
	xcdb := make([]byte, 16)
	xcdb[0] = 0x83
	binary.BigEndian.PutUint32(xcdb[10:], uint32(len(params)))
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		cur, next := fill('A'), fill('B')
		for i := 0; i < 50; i++ {
			cdb := []byte{0x89, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, n, 0, 0}
			r := tgt.Execute(ctx, &Task{Nexus: testNexus("caw", 1), CDB: cdb, DataOut: append(append([]byte(nil), cur...), next...)})
			if r.Status != sense.StatusGood {
				t.Errorf("compare and write %d: %v % x", i, r.Status, r.Sense)
				return
			}
			cur, next = next, cur
		}
	}()
	go func() {
		defer wg.Done()
		buf := make([]byte, n*512)
		for i := 0; i < 50; i++ {
			r := tgt.Execute(ctx, &Task{Nexus: testNexus("xc", 1), CDB: xcdb, DataOut: params})
			if r.Status != sense.StatusGood {
				t.Errorf("extended copy %d: %v % x", i, r.Status, r.Sense)
				return
			}
			for _, at := range []int64{1024, 2048} {
				if err := dev.ReadAt(ctx, buf, at*512); err != nil {
					t.Error(err)
					return
				}
				for j := range buf {
					if buf[j] != buf[0] {
						t.Errorf("copy %d at %d: torn copy (byte %d is %q, byte 0 %q)", i, at, j, buf[j], buf[0])
						return
					}
				}
			}
		}
	}()
	wg.Wait()
}

// TestLockTwoNoDeadlock copies in both directions between two ranges at
// once; with per-chunk ordered locking neither copy can wait for the other
// forever.
func TestLockTwoNoDeadlock(t *testing.T) {
	dev := newMemDev(512*8192, 512)
	lu, err := NewLU(LUConfig{Device: dev})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var wg sync.WaitGroup
	for i := 0; i < 8; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			src, dst := uint64(0), uint64(4096)
			if i%2 == 1 {
				src, dst = dst, src
			}
			for j := 0; j < 20; j++ {
				if err := lu.copyBlocks(ctx, src, dst, 4096); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
}
