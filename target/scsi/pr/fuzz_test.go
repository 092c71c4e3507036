package pr

import (
	"context"
	"encoding/binary"
	"testing"
)

// fuzzPorts are the nexuses fuzzed operations come from.
var fuzzPorts = [...]string{"A", "B", "C", "A2", "B@2"}

// fuzzReader hands out fuzz bytes, then zeros.
type fuzzReader struct{ b []byte }

func (r *fuzzReader) byte() byte {
	if len(r.b) == 0 {
		return 0
	}
	c := r.b[0]
	r.b = r.b[1:]
	return c
}

func (r *fuzzReader) bytes(n int) []byte {
	out := make([]byte, n)
	for i := range out {
		out[i] = r.byte()
	}
	return out
}

// runFuzzOps interprets data as a sequence of operations on one Manager
// and checks the state invariants after each: validate() holds (keys
// non-zero, no duplicate nexus, holder registered), at most one holder
// for a non-all-registrants reservation, PRgeneration never decreases
// while the Manager lives, and failed commands change nothing.
func runFuzzOps(t *testing.T, data []byte) {
	ctx := context.Background()
	store := &memStore{}
	m, err := NewManager(ctx, store)
	if err != nil {
		t.Fatal(err)
	}
	r := &fuzzReader{b: data}
	keys := [...]uint64{0, 1, 2, 3, 0xffffffffffffffff}
	for steps := 0; len(r.b) > 0 && steps < 200; steps++ {
		op := r.byte()
		p := testPort(fuzzPorts[int(r.byte())%len(fuzzPorts)])
		before := m.State()
		var opErr error
		isOut := false
		switch op % 10 {
		case 0, 1, 2: // well-formed PERSISTENT RESERVE OUT
			isOut = true
			c := r.byte()
			sa := OutServiceAction(c % 8)
			typ := Type(r.byte() % 9)
			key, sakey := keys[int(r.byte())%len(keys)], keys[int(r.byte())%len(keys)]
			flags := r.byte() & (flagAPTPL | flagAllTgPt | flagSpecIPT)
			var param []byte
			switch {
			case sa == OutRegisterAndMove:
				param = moveParam(key, sakey, c&0x10 != 0, c&0x20 != 0, uint16(r.byte()%3),
					tidBytes(fuzzPorts[int(r.byte())%len(fuzzPorts)]))
			case flags&flagSpecIPT != 0:
				param = specIPTParam(key, sakey, flags, tidBytes(fuzzPorts[int(r.byte())%len(fuzzPorts)]),
					tidBytes(fuzzPorts[int(r.byte())%len(fuzzPorts)]+"*"))
			default:
				param = basicParam(key, sakey, flags)
			}
			_, opErr = m.Out(ctx, p, proutCDB(sa, r.byte()%2, typ, uint32(len(param))), param)
		case 3: // raw PERSISTENT RESERVE OUT
			isOut = true
			cdb := r.bytes(10)
			cdb[0] = byte(opPersistentReserveOut)
			param := r.bytes(int(r.byte()) % 80)
			_, opErr = m.Out(ctx, p, cdb, param)
		case 4:
			cdb := r.bytes(10)
			cdb[0] = byte(opPersistentReserveIn)
			b, err := m.In(ctx, p, cdb)
			if err == nil && cdb[1]&0x1f != byte(InReportCapabilities) {
				if len(b) < 8 || int(binary.BigEndian.Uint32(b[4:])) != len(b)-8 {
					t.Fatalf("PERSISTENT RESERVE IN %x: bad ADDITIONAL LENGTH in %x", cdb, b)
				}
			}
		case 5:
			cdb := r.bytes(int(r.byte()) % 17)
			fast := m.CheckAccess(p, cdb)
			m.mu.Lock()
			slow := m.checkAccessLocked(p, cdb)
			m.mu.Unlock()
			if (fast == nil) != (slow == nil) {
				t.Fatalf("CheckAccess %x: lock-free path %v, locked path %v", cdb, fast, slow)
			}
		case 6:
			cdb := r.bytes(10)
			cdb[0] = [...]byte{0x16, 0x56}[cdb[9]%2]
			_ = m.Reserve(p, cdb)
		case 7:
			cdb := r.bytes(10)
			cdb[0] = [...]byte{0x17, 0x57}[cdb[9]%2]
			_ = m.Release(p, cdb)
		case 8:
			if op&0x10 != 0 {
				m.Reset()
			} else {
				m.NexusLost(p)
			}
		case 9:
			store.fail = op&0x10 != 0
		}
		after := m.State()
		if err := checkInvariants(after); err != nil {
			t.Fatalf("step %d (op %d from %s): %v\n%s", steps, op%10, portName(p), err, fmtState(after))
		}
		if after.Generation < before.Generation {
			t.Fatalf("generation went back from %d to %d", before.Generation, after.Generation)
		}
		if isOut && opErr != nil && fmtState(after) != fmtState(before) {
			t.Fatalf("failed PERSISTENT RESERVE OUT (%v) changed the state", opErr)
		}
		if isOut && opErr == nil && !store.fail && fmtState(store.st) != fmtState(after) {
			t.Fatalf("store does not hold the acknowledged state:\n%s\nvs\n%s", fmtState(store.st), fmtState(after))
		}
	}
}

// FuzzOut drives PERSISTENT RESERVE OUT (well-formed and raw) mixed with
// the other entry points.
func FuzzOut(f *testing.F) {
	f.Add([]byte{0, 0, 0, 0, 0, 1, 0, 0, 1, 0, 0, 0, 2, 0, 1, 1, 1, 0, 0, 0})
	f.Add([]byte{0, 0, 6, 0, 0, 1, 1, 0, 1, 6, 0, 0, 2, 0, 0, 1, 8, 1, 1, 2, 0, 0, 1, 5, 4, 1, 1, 0})
	f.Add([]byte{0, 0, 0, 0, 0, 1, 8, 0, 1, 0, 1, 2, 0, 0, 1, 8, 1, 0, 3, 0, 7, 0, 0, 1, 3, 0, 0, 2, 1})
	f.Add([]byte{6, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 2})
	f.Fuzz(func(t *testing.T, data []byte) {
		runFuzzOps(t, data)
	})
}

// FuzzIn drives PERSISTENT RESERVE IN with arbitrary CDBs against a state
// built from the first bytes, and checks the data it returns.
func FuzzIn(f *testing.F) {
	f.Add([]byte{0, 0, 0, 0, 0, 1, 0, 0}, []byte{0x5e, 3, 0, 0, 0, 0, 0, 0xff, 0xff, 0})
	f.Add([]byte{}, []byte{0x5e, 2})
	f.Fuzz(func(t *testing.T, setup, cdb []byte) {
		runFuzzOps(t, setup)
		ctx := context.Background()
		m, _ := NewManager(ctx, nil)
		for _, name := range []string{"A", "B@2"} {
			mustOut(t, m, testPort(name), OutRegister, 0, 0, uint64(len(name)))
		}
		mustOut(t, m, testPort("A"), OutReserve, TypeWriteExclusive, 1, 0)
		b, err := m.In(ctx, testPort("C"), cdb)
		if err != nil {
			return
		}
		if len(cdb) < 10 {
			t.Fatalf("In accepted a %d-byte CDB", len(cdb))
		}
		switch InServiceAction(cdb[1] & 0x1f) {
		case InReadKeys:
			if len(b) != 8+16 || binary.BigEndian.Uint32(b) != 2 {
				t.Fatalf("READ KEYS: %x", b)
			}
		case InReadReservation:
			if len(b) != 8+16 || binary.BigEndian.Uint64(b[8:]) != 1 || b[21] != byte(TypeWriteExclusive) {
				t.Fatalf("READ RESERVATION: %x", b)
			}
		case InReportCapabilities:
			if len(b) != 8 || binary.BigEndian.Uint16(b) != 8 {
				t.Fatalf("REPORT CAPABILITIES: %x", b)
			}
		case InReadFullStatus:
			if int(binary.BigEndian.Uint32(b[4:])) != len(b)-8 {
				t.Fatalf("READ FULL STATUS: %x", b)
			}
		default:
			t.Fatalf("service action %d accepted", cdb[1]&0x1f)
		}
	})
}
