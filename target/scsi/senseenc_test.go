package scsi

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"testing"

	"stave.dev/stave/target/scsi/sense"
)

// decodeSense parses fixed or descriptor sense data back into an error.
func decodeSense(b []byte) (*sense.Error, error) {
	if len(b) < 8 {
		return nil, fmt.Errorf("short sense: %d bytes", len(b))
	}
	e := &sense.Error{Status: sense.StatusCheckCondition}
	sks := func(k []byte) {
		if k[0]&0x80 == 0 {
			return
		}
		f := &sense.FieldPointer{CDB: k[0]&0x40 != 0, Byte: binary.BigEndian.Uint16(k[1:]), Bit: -1}
		if k[0]&0x08 != 0 {
			f.Bit = int8(k[0] & 0x07)
		}
		e.Field = f
	}
	switch b[0] & 0x7f {
	case 0x70:
		if len(b) < fixedSenseLen || int(b[7])+8 != len(b) {
			return nil, fmt.Errorf("bad fixed sense length")
		}
		e.Key = sense.Key(b[2] & 0x0f)
		e.ASC = sense.ASC(binary.BigEndian.Uint16(b[12:]))
		if b[0]&0x80 != 0 {
			e.HasInfo, e.Information = true, uint64(binary.BigEndian.Uint32(b[3:]))
		}
		sks(b[15:18])
	case 0x72:
		if int(b[7])+8 != len(b) {
			return nil, fmt.Errorf("bad descriptor sense length")
		}
		e.Key = sense.Key(b[1] & 0x0f)
		e.ASC = sense.ASC(binary.BigEndian.Uint16(b[2:]))
		for p := 8; p < len(b); {
			if p+2 > len(b) || p+2+int(b[p+1]) > len(b) {
				return nil, fmt.Errorf("descriptor overrun")
			}
			switch d := b[p : p+2+int(b[p+1])]; d[0] {
			case 0x00:
				if len(d) != 12 || d[2]&0x80 == 0 {
					return nil, fmt.Errorf("bad information descriptor")
				}
				e.HasInfo, e.Information = true, binary.BigEndian.Uint64(d[4:])
			case 0x02:
				if len(d) != 8 {
					return nil, fmt.Errorf("bad sense key specific descriptor")
				}
				sks(d[4:7])
			}
			p += 2 + int(b[p+1])
		}
	default:
		return nil, fmt.Errorf("bad response code %#x", b[0])
	}
	return e, nil
}

// FuzzSenseRoundTrip checks encode → decode → equal for both formats.
func FuzzSenseRoundTrip(f *testing.F) {
	f.Add(uint8(5), uint16(0x2400), uint64(0), false, true, true, uint16(2), int8(7))
	f.Add(uint8(0xe), uint16(0x1d00), uint64(600), true, false, false, uint16(0), int8(-1))
	f.Add(uint8(3), uint16(0x1100), uint64(1)<<40, true, false, false, uint16(0), int8(-1))
	f.Fuzz(func(t *testing.T, key uint8, asc uint16, info uint64, hasInfo, hasField, cdb bool, fb uint16, bit int8) {
		in := &sense.Error{Status: sense.StatusCheckCondition, Key: sense.Key(key & 0x0f), ASC: sense.ASC(asc),
			Information: info, HasInfo: hasInfo}
		if hasField {
			if bit < -1 || bit > 7 {
				bit = -1
			}
			in.Field = &sense.FieldPointer{CDB: cdb, Byte: fb, Bit: bit}
		}
		for _, desc := range []bool{false, true} {
			out, err := decodeSense(encodeSense(nil, in, desc))
			if err != nil {
				t.Fatalf("desc=%v: %v", desc, err)
			}
			wantInfo := in.HasInfo && (desc || in.Information <= 0xffffffff)
			if out.Key != in.Key || out.ASC != in.ASC || out.HasInfo != wantInfo ||
				(wantInfo && out.Information != in.Information) {
				t.Fatalf("desc=%v: got %+v want %+v", desc, out, in)
			}
			if (out.Field == nil) != (in.Field == nil) || in.Field != nil && *out.Field != *in.Field {
				t.Fatalf("desc=%v: field %+v want %+v", desc, out.Field, in.Field)
			}
		}
	})
}

// TestSenseResult pins the error mapping of senseResult.
func TestSenseResult(t *testing.T) {
	ctx := context.Background()
	wrapped := fmt.Errorf("layer: %w", sense.InvalidCDBField(4, 3))
	cases := []struct {
		err     error
		status  sense.Status
		aborted bool
		key     sense.Key
		asc     sense.ASC
	}{
		{wrapped, sense.StatusCheckCondition, false, sense.KeyIllegalRequest, sense.ASCInvalidFieldInCDB},
		{sense.ReservationConflict(), sense.StatusReservationConflict, false, 0, 0},
		{context.Canceled, 0, true, 0, 0},
		{errAborted, 0, true, 0, 0},
		{devErr(ioRead, 7, errors.New("eio")), sense.StatusCheckCondition, false, sense.KeyMediumError, sense.ASCUnrecoveredReadError},
		{devErr(ioWrite, 7, errors.New("eio")), sense.StatusCheckCondition, false, sense.KeyMediumError, sense.ASCWriteError},
		{devErr(ioFlush, 7, errors.New("eio")), sense.StatusCheckCondition, false, sense.KeyHardwareError, sense.ASCInternalTargetFailure},
		{errors.New("surprise"), sense.StatusCheckCondition, false, sense.KeyHardwareError, sense.ASCInternalTargetFailure},
	}
	for _, c := range cases {
		r := senseResult(ctx, nil, c.err, false)
		if r.Aborted != c.aborted || r.Status != c.status {
			t.Errorf("%v: got status %s aborted %v", c.err, r.Status, r.Aborted)
			continue
		}
		if c.status != sense.StatusCheckCondition {
			if len(r.Sense) != 0 {
				t.Errorf("%v: unexpected sense", c.err)
			}
			continue
		}
		e, err := decodeSense(r.Sense)
		if err != nil {
			t.Fatalf("%v: %v", c.err, err)
		}
		if e.Key != c.key || e.ASC != c.asc {
			t.Errorf("%v: got %s %s", c.err, e.Key, e.ASC)
		}
	}
}
