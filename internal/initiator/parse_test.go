package initiator

import (
	"errors"
	"fmt"
	"slices"
	"testing"

	"stave.dev/stave/target/scsi/sense"
)

func TestParseSense(t *testing.T) {
	fixed := make([]byte, 18)
	fixed[0], fixed[2], fixed[7], fixed[12], fixed[13] = 0x70, 0x02, 10, 0x04, 0x0b
	desc := []byte{0x72, 0x06, 0x2a, 0x06, 0, 0, 0, 0}
	for _, c := range []struct {
		name string
		b    []byte
		key  sense.Key
		asc  sense.ASC
	}{
		{"fixed", fixed, sense.KeyNotReady, sense.ASCLogicalUnitNotAccessibleStandby},
		{"descriptor", desc, sense.KeyUnitAttention, sense.ASCAsymmetricAccessStateChanged},
		{"short fixed", fixed[:3], sense.KeyNotReady, 0},
		{"empty", nil, 0, 0},
		{"unknown format", []byte{0x7f, 1, 2, 3}, 0, 0},
	} {
		if k, a := parseSense(c.b); k != c.key || a != c.asc {
			t.Errorf("%s: parseSense = %v, %v; want %v, %v", c.name, k, a, c.key, c.asc)
		}
	}
	// A SCSI Response data segment: SenseLength, then the sense data.
	err := statusError(0x02, append([]byte{0, byte(len(fixed))}, fixed...))
	var se *SCSIError
	if !errors.As(err, &se) || se.Key != sense.KeyNotReady || se.ASC != sense.ASCLogicalUnitNotAccessibleStandby || len(se.Sense) != 18 {
		t.Fatalf("statusError = %#v", err)
	}
	if k, a, ok := SenseOf(fmt.Errorf("wrapped: %w", err)); !ok || k != sense.KeyNotReady || a != sense.ASCLogicalUnitNotAccessibleStandby {
		t.Errorf("SenseOf(wrapped) = %v, %v, %v", k, a, ok)
	}
	if st, ok := StatusOf(statusError(0x18, nil)); !ok || st != sense.StatusReservationConflict {
		t.Errorf("StatusOf(RESERVATION CONFLICT) = %v, %v", st, ok)
	}
	if _, _, ok := SenseOf(statusError(0x18, nil)); ok {
		t.Error("SenseOf found sense in a RESERVATION CONFLICT")
	}
	if statusError(0, nil) != nil {
		t.Error("GOOD is an error")
	}
}

func TestParseTargetPortGroups(t *testing.T) {
	b := []byte{0, 0, 0, 28,
		0x80, 0x8f, 0, 1, 0, 0, 0, 1, 0, 0, 0x01, 0x01, // group 1, PREF, active/optimized, port 0x101
		0x02, 0x8f, 0, 2, 0, 0, 0, 2, 0, 0, 0x02, 0x01, 0, 0, 0x02, 0x02} // group 2, standby, 2 ports
	gs, err := parseTargetPortGroups(b)
	want := []PortGroup{{ID: 1, State: ActiveOptimized, Preferred: true, Ports: []uint16{0x101}},
		{ID: 2, State: Standby, Ports: []uint16{0x201, 0x202}}}
	if err != nil || !slices.EqualFunc(gs, want, func(a, b PortGroup) bool {
		return a.ID == b.ID && a.State == b.State && a.Preferred == b.Preferred && slices.Equal(a.Ports, b.Ports)
	}) {
		t.Fatalf("parseTargetPortGroups = %+v, %v", gs, err)
	}
	b[4+7] = 9 // more ports than the data holds
	if _, err := parseTargetPortGroups(b); err == nil {
		t.Error("a port count past the end was accepted")
	}
}

func TestParseDeviceID(t *testing.T) {
	b := []byte{
		0x01, 0x03, 0, 4, 0x60, 1, 2, 3, // NAA
		0x51, 0x94, 0, 4, 0, 0, 0x02, 0x01, // relative target port 0x201
		0x51, 0x95, 0, 4, 0, 0, 0, 2, // target port group 2
		0x51, 0x95, 0, 9, 0, // truncated descriptor: ignored
	}
	id := parseDeviceID(b)
	if !slices.Equal(id.NAA, []byte{0x60, 1, 2, 3}) || id.RelativePort != 0x201 || id.PortGroup != 2 || !id.HasPortGroup {
		t.Fatalf("parseDeviceID = %+v", id)
	}
	if id := parseDeviceID(b[:8]); id.HasPortGroup {
		t.Errorf("a page without a port group designator: %+v", id)
	}
}

// FuzzParsers feeds arbitrary bytes to every parser of target answers:
// none may panic, and what parseTargetPortGroups accepts re-encodes to
// the same groups.
func FuzzParsers(f *testing.F) {
	f.Add([]byte{0x70, 0, 2, 0, 0, 0, 0, 10, 0, 0, 0, 0, 4, 0xb})
	f.Add([]byte{0, 0, 0, 12, 0x80, 0x8f, 0, 1, 0, 0, 0, 1, 0, 0, 1, 1})
	f.Add([]byte{0x51, 0x95, 0, 4, 0, 0, 0, 2})
	f.Fuzz(func(t *testing.T, b []byte) {
		parseSense(b)
		parseDeviceID(b)
		_ = statusError(2, b)
		gs, err := parseTargetPortGroups(b)
		if err != nil {
			return
		}
		enc := []byte{0, 0, 0, 0}
		for _, g := range gs {
			d := []byte{byte(g.State), 0, byte(g.ID >> 8), byte(g.ID), 0, 0, 0, byte(len(g.Ports))}
			if g.Preferred {
				d[0] |= 0x80
			}
			for _, p := range g.Ports {
				d = append(d, 0, 0, byte(p>>8), byte(p))
			}
			enc = append(enc, d...)
		}
		n := len(enc) - 4
		enc[0], enc[1], enc[2], enc[3] = byte(n>>24), byte(n>>16), byte(n>>8), byte(n)
		again, err := parseTargetPortGroups(enc)
		if err != nil || len(again) != len(gs) {
			t.Fatalf("re-encoded %+v parses as %+v, %v", gs, again, err)
		}
		for i := range gs {
			if again[i].ID != gs[i].ID || again[i].State != gs[i].State || again[i].Preferred != gs[i].Preferred ||
				!slices.Equal(again[i].Ports, gs[i].Ports) {
				t.Fatalf("round trip: %+v became %+v", gs[i], again[i])
			}
		}
	})
}
