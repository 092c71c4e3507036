package scsi

import (
	"context"
	"testing"
	"time"

	"stave.dev/stave/target/scsi/sense"
)

// checkSense verifies that a CHECK CONDITION result carries well-formed
// fixed or descriptor sense data.
func checkSense(t *testing.T, cdb []byte, r Result) {
	t.Helper()
	if r.Aborted {
		t.Fatalf("cdb % x: aborted without a TMF", cdb)
	}
	if r.Status != sense.StatusCheckCondition {
		if len(r.Sense) != 0 {
			t.Fatalf("cdb % x: sense with status %s", cdb, r.Status)
		}
		return
	}
	s := r.Sense
	if len(s) < 8 {
		t.Fatalf("cdb % x: sense too short: % x", cdb, s)
	}
	switch s[0] & 0x7f {
	case 0x70:
		if len(s) != fixedSenseLen || int(s[7]) != len(s)-8 {
			t.Fatalf("cdb % x: bad fixed sense % x", cdb, s)
		}
		if s[2]&0x0f == 0 && s[12] == 0 {
			t.Fatalf("cdb % x: CHECK CONDITION with NO SENSE: % x", cdb, s)
		}
	case 0x72:
		if int(s[7]) != len(s)-8 {
			t.Fatalf("cdb % x: bad descriptor sense length % x", cdb, s)
		}
		for p := 8; p < len(s); p += 2 + int(s[p+1]) {
			if p+1 >= len(s) || p+2+int(s[p+1]) > len(s) {
				t.Fatalf("cdb % x: descriptor overruns sense % x", cdb, s)
			}
		}
	default:
		t.Fatalf("cdb % x: bad response code % x", cdb, s)
	}
}

// FuzzExecute runs arbitrary CDBs and Data-Out through a Target: nothing
// may panic, and every CHECK CONDITION must carry well-formed sense.
func FuzzExecute(f *testing.F) {
	seeds := [][2][]byte{
		{{0x12, 0, 0, 0, 0xff, 0}, nil},
		{{0x12, 1, 0x83, 0, 0xff, 0}, nil},
		{{0x28, 0, 0, 0, 0, 1, 0, 0, 1, 0}, nil},
		{{0x2a, 0, 0, 0, 0, 1, 0, 0, 1, 0}, make([]byte, 512)},
		{{0x89, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0}, make([]byte, 1024)},
		{{0x41, 8, 0, 0, 0, 0, 0, 0, 0, 0}, make([]byte, 512)},
		{{0x93, 9, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 16, 0, 0}, nil},
		{{0x42, 0, 0, 0, 0, 0, 0, 0, 24, 0}, []byte{0, 22, 0, 16, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 0}},
		{{0x15, 0x10, 0, 0, 16, 0}, []byte{0, 0, 0, 0, 0x0a, 0x0a, 2, 0x10, 0, 0, 0, 0, 0xff, 0xff, 0, 0}},
		{{0x55, 0x10, 0, 0, 0, 0, 0, 0, 24, 0}, []byte{0, 0, 0, 0, 0, 0, 0, 8, 0, 0, 8, 0, 0, 0, 2, 0, 8, 0x12, 4}},
		{{0x1a, 0, 0x3f, 0xff, 0xff, 0}, nil},
		{{0x5a, 0x10, 0x3f, 0, 0, 0, 0, 0x10, 0, 0}, nil},
		{{0xa3, 0x0c, 0x80, 0, 0, 0, 0, 0, 0x10, 0, 0, 0}, nil},
		{{0xa3, 0x0c, 0x83, 0x9e, 0, 0x10, 0, 0, 0x10, 0, 0, 0}, nil},
		{{0xa3, 0x0a, 0x20, 0, 0, 0, 0, 0, 1, 0, 0, 0}, nil},
		{{0x9e, 0x12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 64, 0, 0}, nil},
		{{0x9e, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 32, 0, 0}, nil},
		{{0x2f, 6, 0, 0, 0, 0, 0, 0, 2, 0}, make([]byte, 512)},
		{{0x5f, 0, 0, 0, 0, 0, 0, 0, 24, 0}, make([]byte, 24)},
		{{0x5e, 3, 0, 0, 0, 0, 0, 0x10, 0, 0}, nil},
		{{0x03, 1, 0, 0, 0xff, 0}, nil},
		{{0xa0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0}, nil},
		{{0x16, 0, 0, 0, 0, 0}, nil},
	}
	for _, s := range seeds {
		f.Add(s[0], s[1])
	}
	f.Fuzz(func(t *testing.T, cdb, dataOut []byte) {
		if len(dataOut) > 1<<20 {
			return
		}
		dev := newMemDev(64*512, 512)
		lu, err := NewLU(LUConfig{Device: dev, Name: "f", Serial: "F"})
		if err != nil {
			t.Fatal(err)
		}
		tgt := NewTarget(TargetConfig{LUNs: map[uint64]*LU{0: lu}})
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		for _, lun := range []uint64{0, 3} {
			if n, ok := tgt.DataOutLength(lun, cdb); n < 0 || !ok && n != 0 {
				t.Fatalf("DataOutLength(% x) = %d, %v", cdb, n, ok)
			}
			r := tgt.Execute(ctx, &Task{Nexus: testNexus("f", 1), LUN: lun, CDB: cdb, DataOut: dataOut})
			checkSense(t, cdb, r)
			if r.Release != nil {
				r.Release()
			}
		}
	})
}

// TestReadAllocs pins the READ(10) hot path: with the pooled Data-In
// buffer released, a read allocates only the task context.
func TestReadAllocs(t *testing.T) {
	if raceEnabled {
		t.Skip("sync.Pool drops items under the race detector")
	}
	dev := newMemDev(1<<20, 4096)
	lu, err := NewLU(LUConfig{Device: dev})
	if err != nil {
		t.Fatal(err)
	}
	tgt := NewTarget(TargetConfig{LUNs: map[uint64]*LU{0: lu}})
	task := &Task{Nexus: testNexus("a", 1), CDB: []byte{0x28, 0, 0, 0, 0, 0, 0, 0, 8, 0}}
	ctx := context.Background()
	write := &Task{Nexus: task.Nexus, CDB: []byte{0x2a, 0, 0, 0, 0, 0, 0, 0, 8, 0}, DataOut: make([]byte, 4096)}
	for _, tk := range []*Task{task, write} {
		r := tgt.Execute(ctx, tk)
		if r.Status != sense.StatusGood {
			t.Fatalf("%s: % x", r.Status, r.Sense)
		}
		if r.Release != nil {
			r.Release()
		}
	}
	for _, tk := range []*Task{task, write} {
		allocs := testing.AllocsPerRun(200, func() {
			r := tgt.Execute(ctx, tk)
			if r.Release != nil {
				r.Release()
			}
		})
		// context.WithCancel (the cancelCtx and its CancelFunc) is all.
		if allocs > 2 {
			t.Errorf("opcode %#x: %.1f allocations per command, want <= 2", tk.CDB[0], allocs)
		}
	}
}

// benchIO measures one opcode through Target.Execute with parallel
// initiator goroutines over an in-memory device.
func benchIO(b *testing.B, cdb []byte, dataOut []byte) {
	dev := newMemDev(64<<20, 4096)
	lu, err := NewLU(LUConfig{Device: dev})
	if err != nil {
		b.Fatal(err)
	}
	tgt := NewTarget(TargetConfig{LUNs: map[uint64]*LU{0: lu}})
	b.SetBytes(4096)
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		task := &Task{Nexus: testNexus("bench", 1), CDB: cdb, DataOut: dataOut}
		ctx := context.Background()
		for pb.Next() {
			r := tgt.Execute(ctx, task)
			if r.Status != sense.StatusGood {
				b.Errorf("%s", r.Status)
				return
			}
			if r.Release != nil {
				r.Release()
			}
		}
	})
}

func BenchmarkRead4K(b *testing.B) {
	benchIO(b, []byte{0x28, 0, 0, 0, 0, 8, 0, 0, 8, 0}, nil)
}

func BenchmarkWrite4K(b *testing.B) {
	benchIO(b, []byte{0x2a, 0, 0, 0, 0, 8, 0, 0, 8, 0}, make([]byte, 4096))
}

func TestDataOutLength(t *testing.T) {
	mk := func(bs int) *Target {
		lu, err := NewLU(LUConfig{Device: newMemDev(int64(bs)*1024, int64(bs)), BlockSize: bs})
		if err != nil {
			t.Fatal(err)
		}
		return NewTarget(TargetConfig{LUNs: map[uint64]*LU{0: lu}})
	}
	t512, t4k := mk(512), mk(4096)
	cases := []struct {
		tgt *Target
		lun uint64
		cdb []byte
		n   int
		ok  bool
	}{
		{t512, 0, []byte{0x2a, 0, 0, 0, 0, 0, 0, 0, 2, 0}, 1024, true},
		{t4k, 0, []byte{0x2a, 0, 0, 0, 0, 0, 0, 0, 2, 0}, 8192, true},
		{t4k, 0, []byte{0x0a, 0, 0, 0, 0, 0}, 256 * 4096, true},
		{t512, 0, []byte{0x89, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 3, 0, 0}, 3072, true},
		{t512, 0, []byte{0x93, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 9, 0, 0}, 0, true},
		{t4k, 0, []byte{0x41, 8, 0, 0, 0, 0, 0, 0, 9, 0}, 4096, true},
		{t512, 0, []byte{0x2f, 2, 0, 0, 0, 0, 0, 0, 4, 0}, 2048, true},
		{t512, 0, []byte{0x2f, 6, 0, 0, 0, 0, 0, 0, 4, 0}, 512, true},
		{t512, 0, []byte{0x2f, 0, 0, 0, 0, 0, 0, 0, 4, 0}, 0, true},
		{t512, 0, []byte{0x42, 0, 0, 0, 0, 0, 0, 0, 24, 0}, 24, true},
		{t512, 0, []byte{0x15, 0x10, 0, 0, 28, 0}, 28, true},
		{t512, 0, []byte{0x5f, 0, 0, 0, 0, 0, 0, 0, 24, 0}, 24, true},
		{t512, 0, []byte{0x28, 0, 0, 0, 0, 0, 0, 0, 2, 0}, 0, false},
		{t512, 5, []byte{0x2a, 0, 0, 0, 0, 0, 0, 0, 2, 0}, 0, false},
		{t512, 0, []byte{0x2a, 0}, 0, false},
		{t512, 0, []byte{0x8a, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0, 0}, 0, false},
	}
	for _, c := range cases {
		n, ok := c.tgt.DataOutLength(c.lun, c.cdb)
		if n != c.n || ok != c.ok {
			t.Errorf("DataOutLength(%d, % x) = %d, %v; want %d, %v", c.lun, c.cdb, n, ok, c.n, c.ok)
		}
	}
}
