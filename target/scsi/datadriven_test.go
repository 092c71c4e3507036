package scsi

import (
	"context"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cockroachdb/datadriven"

	"stave.dev/stave/target/scsi/sense"
)

// testPorts is a settable PortState.
type testPorts struct {
	mu     sync.Mutex
	groups []PortGroup
}

func (p *testPorts) PortGroups() []PortGroup {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]PortGroup(nil), p.groups...)
}

func (p *testPorts) AccessState(g uint16) ALUAState {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, pg := range p.groups {
		if pg.ID == g {
			return pg.State
		}
	}
	return ALUAUnavailable
}

// env is the state of one datadriven script.
type env struct {
	t     *testing.T
	dev   *memDev
	lu    *LU
	tgt   *Target
	ports *testPorts
	tag   uint64
	// async tasks started with "start", by name.
	async map[string]chan Result
}

func testNexus(name string, rel uint16) Nexus {
	if rel == 0 {
		rel = 1
	}
	init := "iqn.2026-11.test:" + name
	return Nexus{
		InitiatorName:      init,
		InitiatorPort:      init + ",i,0x400000000001",
		TargetPort:         fmt.Sprintf("iqn.2026-11.dev.stave:v,t,0x%04x", rel),
		RelativeTargetPort: rel,
		TargetPortGroup:    rel,
	}
}

func argInt(d *datadriven.TestData, key string, def uint64) uint64 {
	for _, a := range d.CmdArgs {
		if a.Key == key {
			v, err := strconv.ParseUint(a.Vals[0], 0, 64)
			if err != nil {
				d.Fatalf(nil, "bad %s: %v", key, err)
			}
			return v
		}
	}
	return def
}

func argStr(d *datadriven.TestData, key, def string) string {
	for _, a := range d.CmdArgs {
		if a.Key == key {
			return strings.Join(a.Vals, ",")
		}
	}
	return def
}

// parseBytes reads hex, with "XX*N" meaning N copies of byte XX and
// spaces/commas ignored: "00*511 ff" is 512 bytes.
func parseBytes(t *testing.T, s string) []byte {
	var out []byte
	for _, f := range strings.FieldsFunc(s, func(r rune) bool { return r == ' ' || r == ',' || r == '\n' }) {
		if i := strings.IndexByte(f, '*'); i >= 0 {
			b, err := hex.DecodeString(f[:i])
			if err != nil {
				t.Fatalf("bad bytes %q: %v", f, err)
			}
			n, err := strconv.Atoi(f[i+1:])
			if err != nil {
				t.Fatalf("bad count %q: %v", f, err)
			}
			for j := 0; j < n; j++ {
				out = append(out, b...)
			}
			continue
		}
		b, err := hex.DecodeString(f)
		if err != nil {
			t.Fatalf("bad bytes %q: %v", f, err)
		}
		out = append(out, b...)
	}
	return out
}

// formatResult renders a result for golden output.
func formatResult(r Result, full bool) string {
	var b strings.Builder
	if r.Aborted {
		b.WriteString("aborted\n")
		return b.String()
	}
	fmt.Fprintf(&b, "status %s\n", r.Status)
	if len(r.Sense) > 0 {
		b.WriteString(describeSense(r.Sense))
	}
	if len(r.Data) > 0 {
		fmt.Fprintf(&b, "data %d bytes\n", len(r.Data))
		b.WriteString(hexDump(r.Data, full))
	}
	if r.Release != nil {
		r.Release()
	}
	return b.String()
}

// describeSense decodes fixed or descriptor sense data.
func describeSense(s []byte) string {
	var b strings.Builder
	switch s[0] & 0x7f {
	case 0x70, 0x71:
		key := sense.Key(s[2] & 0x0f)
		asc := sense.ASC(uint16(s[12])<<8 | uint16(s[13]))
		fmt.Fprintf(&b, "sense fixed key=%s asc=%02x/%02x", key, asc.Code(), asc.Qualifier())
		if s[0]&0x80 != 0 {
			fmt.Fprintf(&b, " info=%d", binary.BigEndian.Uint32(s[3:]))
		}
		if s[15]&0x80 != 0 {
			b.WriteString(describeSKS(s[15:18]))
		}
	case 0x72, 0x73:
		key := sense.Key(s[1] & 0x0f)
		fmt.Fprintf(&b, "sense desc key=%s asc=%02x/%02x", key, s[2], s[3])
		for p := 8; p+1 < len(s); p += 2 + int(s[p+1]) {
			switch s[p] {
			case 0x00:
				fmt.Fprintf(&b, " info=%d", binary.BigEndian.Uint64(s[p+4:]))
			case 0x02:
				b.WriteString(describeSKS(s[p+4 : p+7]))
			}
		}
	default:
		fmt.Fprintf(&b, "sense ?? % x", s)
	}
	b.WriteString("\n")
	return b.String()
}

func describeSKS(k []byte) string {
	where := "param"
	if k[0]&0x40 != 0 {
		where = "cdb"
	}
	s := fmt.Sprintf(" field=%s:%d", where, binary.BigEndian.Uint16(k[1:]))
	if k[0]&0x08 != 0 {
		s += fmt.Sprintf(".%d", k[0]&0x07)
	}
	return s
}

func hexDump(d []byte, full bool) string {
	var b strings.Builder
	n := len(d)
	if !full && n > 64 {
		n = 64
	}
	for i := 0; i < n; i += 32 {
		e := min(i+32, n)
		fmt.Fprintf(&b, "%04x: %s\n", i, hex.EncodeToString(d[i:e]))
	}
	if n < len(d) {
		b.WriteString("...\n")
	}
	return b.String()
}

func (e *env) newLU(d *datadriven.TestData) {
	bs := argInt(d, "bs", 512)
	blocks := argInt(d, "blocks", 2048)
	pbs := argInt(d, "pbs", 0)
	e.dev = newMemDev(int64(bs*blocks), int64(bs))
	var dev BlockDevice = e.dev
	if d.HasArg("noprov") {
		dev = noProvDev{e.dev}
	}
	var ps PortState
	e.ports = nil
	if d.HasArg("alua") {
		e.ports = &testPorts{groups: []PortGroup{
			{ID: 1, State: ALUAActiveOptimized, Ports: []uint16{1}},
			{ID: 2, State: ALUAStandby, Ports: []uint16{2}},
		}}
		ps = e.ports
	}
	naa := [16]byte{0x60, 0x01, 0x40, 0x5c, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12}
	lu, err := NewLU(LUConfig{Device: dev, BlockSize: int(bs), PhysicalBlockSize: int(pbs), Name: "v",
		Serial: "SER0001", NAA: naa, ReadOnly: d.HasArg("readonly"), Ports: ps})
	if err != nil {
		d.Fatalf(e.t, "NewLU: %v", err)
	}
	e.lu = lu
	e.tgt = NewTarget(TargetConfig{LUNs: map[uint64]*LU{0: lu}})
	e.async = map[string]chan Result{}
}

func (e *env) task(d *datadriven.TestData) *Task {
	e.tag++
	t := &Task{
		Nexus: testNexus(argStr(d, "nexus", "a"), uint16(argInt(d, "port", 1))),
		LUN:   argInt(d, "lun", 0),
		Tag:   argInt(d, "tag", e.tag),
		CDB:   parseBytes(e.t, argStr(d, "cdb", "")),
	}
	switch argStr(d, "attr", "simple") {
	case "ordered":
		t.Attr = TaskOrdered
	case "hoq":
		t.Attr = TaskHeadOfQueue
	case "aca":
		t.Attr = TaskACA
	}
	if d.Input != "" {
		t.DataOut = parseBytes(e.t, d.Input)
	}
	return t
}

func (e *env) run(t *testing.T, d *datadriven.TestData) string {
	e.t = t
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	switch d.Cmd {
	case "new":
		e.newLU(d)
		return ""
	case "exec":
		r := e.tgt.Execute(ctx, e.task(d))
		out := formatResult(r, d.HasArg("full"))
		if d.HasArg("raw") && len(r.Sense) > 0 {
			out += "raw " + hex.EncodeToString(r.Sense) + "\n"
		}
		return out
	case "read-blocks":
		// Shorthand: read <n> blocks at <lba> through the device directly.
		lba, n := argInt(d, "lba", 0), argInt(d, "n", 1)
		buf := make([]byte, n*uint64(e.lu.bs))
		if err := e.dev.ReadAt(ctx, buf, int64(lba*uint64(e.lu.bs))); err != nil {
			return err.Error()
		}
		return hexDump(buf, d.HasArg("full"))
	case "tmf":
		fns := map[string]TMF{"abort-task": TMFAbortTask, "abort-task-set": TMFAbortTaskSet,
			"clear-task-set": TMFClearTaskSet, "lu-reset": TMFLogicalUnitReset,
			"warm-reset": TMFTargetWarmReset, "cold-reset": TMFTargetColdReset,
			"clear-aca": TMFClearACA, "reassign": TMFTaskReassign, "query": TMFQueryTask}
		fn, ok := fns[argStr(d, "fn", "")]
		if !ok {
			d.Fatalf(e.t, "unknown tmf")
		}
		n := testNexus(argStr(d, "nexus", "a"), uint16(argInt(d, "port", 1)))
		return e.tgt.TaskManagement(ctx, n, fn, argInt(d, "lun", 0), argInt(d, "tag", 0)).String() + "\n"
	case "nexus-lost":
		e.tgt.NexusLost(testNexus(argStr(d, "nexus", "a"), uint16(argInt(d, "port", 1))))
		return ""
	case "resize":
		e.dev.mu.Lock()
		e.dev.size = int64(argInt(d, "blocks", 0) * uint64(e.lu.bs))
		e.dev.mu.Unlock()
		e.lu.Resize()
		return ""
	case "add-lun":
		// Add a second LU over its own device.
		bs := uint64(e.lu.bs)
		lu, err := NewLU(LUConfig{Device: newMemDev(int64(bs*argInt(d, "blocks", 64)), int64(bs)), BlockSize: int(bs)})
		if err != nil {
			d.Fatalf(t, "NewLU: %v", err)
		}
		e.tgt.AddLUN(argInt(d, "lun", 1), lu)
		return ""
	case "remove-lun":
		e.tgt.RemoveLUN(argInt(d, "lun", 1))
		return ""
	case "grow":
		// Change the device size without telling the LU.
		e.dev.mu.Lock()
		e.dev.size = int64(argInt(d, "blocks", 0) * uint64(e.lu.bs))
		e.dev.mu.Unlock()
		return ""
	case "alua":
		g, st := argInt(d, "group", 1), argInt(d, "state", 0)
		e.ports.mu.Lock()
		for i := range e.ports.groups {
			if uint64(e.ports.groups[i].ID) == g {
				e.ports.groups[i].State = ALUAState(st)
			}
		}
		e.ports.mu.Unlock()
		e.lu.PortStateChanged()
		return ""
	case "fail":
		e.dev.mu.Lock()
		e.dev.failRead, e.dev.failWrite = nil, nil
		if d.HasArg("read") {
			e.dev.failRead = fmt.Errorf("injected read failure")
		}
		if d.HasArg("write") {
			e.dev.failWrite = fmt.Errorf("injected write failure")
		}
		e.dev.mu.Unlock()
		return ""
	case "block":
		e.dev.mu.Lock()
		e.dev.gate, e.dev.entered = make(chan struct{}), make(chan struct{}, 64)
		e.dev.mu.Unlock()
		return ""
	case "unblock":
		e.dev.mu.Lock()
		close(e.dev.gate)
		e.dev.gate = nil
		e.dev.mu.Unlock()
		return ""
	case "wait-entered":
		// Wait until n held device calls have started.
		e.dev.mu.Lock()
		ch := e.dev.entered
		e.dev.mu.Unlock()
		for i := uint64(0); i < argInt(d, "n", 1); i++ {
			select {
			case <-ch:
			case <-ctx.Done():
				d.Fatalf(t, "timed out waiting for a device call")
			}
		}
		return ""
	case "start":
		// Run a task in the background; it is in the task set on return.
		name := argStr(d, "name", "")
		task := e.task(d)
		before := e.lu.taskCount()
		ch := make(chan Result, 1)
		e.async[name] = ch
		go func() {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			ch <- e.tgt.Execute(ctx, task)
		}()
		for e.lu.taskCount() <= before {
			select {
			case r := <-ch:
				return "finished at once: " + formatResult(r, false)
			case <-ctx.Done():
				d.Fatalf(t, "task never entered the task set")
			case <-time.After(time.Millisecond):
			}
		}
		return ""
	case "wait":
		ch := e.async[argStr(d, "name", "")]
		select {
		case r := <-ch:
			return formatResult(r, d.HasArg("full"))
		case <-ctx.Done():
			d.Fatalf(t, "task did not finish")
		}
		return ""
	case "running":
		// Report whether a background task is still running, without waiting long.
		ch := e.async[argStr(d, "name", "")]
		select {
		case r := <-ch:
			e.async[argStr(d, "name", "")] = make(chan Result, 1)
			return "finished: " + formatResult(r, false)
		case <-time.After(20 * time.Millisecond):
			return "running\n"
		}
	case "stats":
		e.dev.mu.Lock()
		defer e.dev.mu.Unlock()
		return fmt.Sprintf("flushes=%d fua-writes=%d mapped-blocks=%d\n", e.dev.flushes, e.dev.fuaWrites, len(e.dev.blk))
	}
	d.Fatalf(e.t, "unknown command %s", d.Cmd)
	return ""
}

func TestDataDriven(t *testing.T) {
	datadriven.Walk(t, "testdata", func(t *testing.T, path string) {
		if strings.Contains(path, "/fuzz/") { // go test -fuzz corpus
			t.Skip("fuzz corpus")
		}
		e := &env{t: t}
		datadriven.RunTest(t, path, e.run)
	})
}
