package ownership

import (
	"errors"
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cockroachdb/datadriven"
)

// TestMachine runs the scripts in testdata/machine. Commands:
//
//	new self=n1 ttl=1s margin=50ms drift=0.02 [persisted=E]
//	tick now=D
//	grant req=R lease=L ttl=D
//	keepalive req=R lease=L ttl=D [expired] [err]
//	observe|claim|isr ... record: epoch=E owner=N lease=L isr=a,b rev=V
//	claim req=R [ok] [err] <record>
//	isr node=N epoch=E [add] [ok] <record>
//	replica-failed node=N | resync-done node=N | reconcile-done epoch=E
//	mayack now=D
//
// Each command prints the actions it produced and the machine's state.
func TestMachine(t *testing.T) {
	datadriven.Walk(t, "testdata/machine", func(t *testing.T, path string) {
		var m *Machine
		datadriven.RunTest(t, path, func(t *testing.T, d *datadriven.TestData) string {
			dur := func(key string) time.Duration {
				var s string
				d.ScanArgs(t, key, &s)
				v, err := time.ParseDuration(s)
				if err != nil {
					t.Fatal(err)
				}
				return v
			}
			u64 := func(key string) uint64 {
				var v uint64
				d.ScanArgs(t, key, &v)
				return v
			}
			rec := func() Record {
				var r Record
				var owner, isr string
				d.MaybeScanArgs(t, "owner", &owner)
				d.MaybeScanArgs(t, "isr", &isr)
				var e, l, rev uint64
				d.MaybeScanArgs(t, "epoch", &e)
				d.MaybeScanArgs(t, "lease", &l)
				d.MaybeScanArgs(t, "rev", &rev)
				r.Epoch, r.Owner, r.Lease, r.Rev = Epoch(e), NodeID(owner), LeaseID(l), int64(rev)
				for _, n := range strings.Split(isr, ",") {
					if n != "" {
						r.ISR = append(r.ISR, NodeID(n))
					}
				}
				return r
			}
			var ev Event
			switch d.Cmd {
			case "new":
				var self string
				var drift float64
				var persisted uint64
				d.ScanArgs(t, "self", &self)
				d.ScanArgs(t, "drift", &drift)
				d.MaybeScanArgs(t, "persisted", &persisted)
				m = New(Config{Self: NodeID(self), TTL: dur("ttl"), Margin: dur("margin"), MaxDrift: drift}, Epoch(persisted))
				return state(m)
			case "tick":
				ev = Tick{Now: dur("now")}
			case "grant":
				ev = LeaseGranted{Req: u64("req"), Lease: LeaseID(u64("lease")), TTL: dur("ttl")}
			case "keepalive":
				ka := KeepaliveResult{Req: u64("req"), Lease: LeaseID(u64("lease")), Expired: d.HasArg("expired")}
				if d.HasArg("err") {
					ka.Err = errors.New("timeout")
				} else if !ka.Expired {
					ka.TTL = dur("ttl")
				}
				ev = ka
			case "observe":
				ev = Observed{Record: rec()}
			case "claim":
				c := ClaimResult{Req: u64("req"), OK: d.HasArg("ok"), Record: rec()}
				if d.HasArg("err") {
					c.Err = errors.New("timeout")
				}
				ev = c
			case "isr":
				var node string
				d.ScanArgs(t, "node", &node)
				ev = ISRResult{Node: NodeID(node), Epoch: Epoch(u64("epoch")), Add: d.HasArg("add"), OK: d.HasArg("ok"), Record: rec()}
			case "replica-failed", "resync-done":
				var node string
				d.ScanArgs(t, "node", &node)
				if d.Cmd == "replica-failed" {
					ev = ReplicaFailed{Node: NodeID(node)}
				} else {
					ev = ResyncDone{Node: NodeID(node)}
				}
			case "reconcile-done":
				ev = ReconcileDone{Epoch: Epoch(u64("epoch"))}
			case "mayack":
				return fmt.Sprint(m.MayAck(dur("now")))
			default:
				t.Fatalf("unknown command %q", d.Cmd)
			}
			var sb strings.Builder
			if err := m.Step(ev); err != nil {
				fmt.Fprintf(&sb, "error: %v\n", err)
			}
			for _, a := range m.Ready() {
				fmt.Fprintf(&sb, "%T %+v\n", a, a)
			}
			sb.WriteString(state(m))
			return sb.String()
		})
	})
}

func state(m *Machine) string {
	fence, ok := m.FenceAt()
	f := "none"
	if ok {
		f = fence.String()
	}
	return fmt.Sprintf("state=%v epoch=%d persisted=%d fence=%s required=%v", m.State(), m.Epoch(), m.Persisted(), f, m.Required())
}

func TestStepUnknownAndBackwards(t *testing.T) {
	m := New(Config{Self: "n1", TTL: time.Second}, 0)
	if err := m.Step(nil); !errors.Is(err, ErrUnknownEvent) {
		t.Fatalf("nil event: %v", err)
	}
	if err := m.Step(Tick{Now: time.Second}); err != nil {
		t.Fatal(err)
	}
	if err := m.Step(Tick{Now: time.Millisecond}); !errors.Is(err, ErrTimeBackwards) {
		t.Fatalf("backwards: %v", err)
	}
}

// TestPure checks that the package reads no clock and does no I/O: its
// non-test files import neither os, net nor syscall, and call no
// time.Now/Since/Until (STYLE.md §11).
func TestPure(t *testing.T) {
	files, _ := filepath.Glob("*.go")
	fset := token.NewFileSet()
	for _, name := range files {
		if strings.HasSuffix(name, "_test.go") {
			continue
		}
		src, err := os.ReadFile(name)
		if err != nil {
			t.Fatal(err)
		}
		f, err := parser.ParseFile(fset, name, src, 0)
		if err != nil {
			t.Fatal(err)
		}
		for _, im := range f.Imports {
			switch strings.Trim(im.Path.Value, `"`) {
			case "os", "net", "syscall", "io":
				t.Errorf("%s imports %s", name, im.Path.Value)
			}
		}
		ast.Inspect(f, func(n ast.Node) bool {
			if se, ok := n.(*ast.SelectorExpr); ok {
				if id, ok := se.X.(*ast.Ident); ok && id.Name == "time" && (se.Sel.Name == "Now" || se.Sel.Name == "Since" || se.Sel.Name == "Until") {
					t.Errorf("%s: time.%s in a pure package", fset.Position(se.Pos()), se.Sel.Name)
				}
			}
			return true
		})
	}
}
