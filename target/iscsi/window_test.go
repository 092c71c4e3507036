package iscsi

import (
	"fmt"
	"strings"
	"testing"

	"github.com/cockroachdb/datadriven"
)

// TestCmdWindowDataDriven runs testdata/cmdwindow: a script of CmdSN window
// events. Commands:
//
//	init exp=<n> depth=<n>
//	cmd sn=<n> [name=<s>]   check; hold it or deliver it now; every
//	                        delivered command starts running (begin), as
//	                        SCSI tasks do in the session
//	consume sn=<n>          RFC 7143 §11.5.1 "considered received"
//	end                     a running command finishes
//
// Every command prints the verdict or delivered names and the window.
func TestCmdWindowDataDriven(t *testing.T) {
	var w cmdWindow
	names := map[*conn]string{}
	byName := map[string]*conn{}
	show := func(list []held) string {
		var b strings.Builder
		for _, h := range list {
			w.begin()
			fmt.Fprintf(&b, "delivered %s\n", names[h.c])
		}
		exp, maxSN := w.bounds()
		fmt.Fprintf(&b, "window exp=%d max=%d active=%d held=%d\n", exp, maxSN, w.active, len(w.pending))
		return b.String()
	}
	datadriven.RunTest(t, "testdata/cmdwindow", func(t *testing.T, d *datadriven.TestData) string {
		switch d.Cmd {
		case "init":
			var exp, depth uint64
			d.ScanArgs(t, "exp", &exp)
			d.ScanArgs(t, "depth", &depth)
			w = newCmdWindow(uint32(exp), uint32(depth))
			return show(nil)
		case "cmd":
			var sn uint64
			d.ScanArgs(t, "sn", &sn)
			name := fmt.Sprint(sn)
			if d.HasArg("name") {
				d.ScanArgs(t, "name", &name)
			}
			c := &conn{}
			names[c], byName[name] = name, c
			v := w.check(uint32(sn))
			out := v.String() + "\n"
			switch v {
			case snHold:
				w.hold(uint32(sn), held{c: c})
			case snNow:
				list := w.advance(nil)
				w.begin()
				out += "delivered " + name + "\n"
				return out + show(list)
			}
			return out + show(nil)
		case "consume":
			var sn uint64
			d.ScanArgs(t, "sn", &sn)
			return show(w.consume(uint32(sn), nil))
		case "end":
			w.end()
			return show(nil)
		}
		return "unknown command " + d.Cmd
	})
}
