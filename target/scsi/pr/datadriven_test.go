package pr

import (
	"context"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/cockroachdb/datadriven"
)

// ddEnv is the state of one datadriven script.
type ddEnv struct {
	m     *Manager
	mem   *memStore
	file  FileStore
	store string // "mem", "file", "none" or "shared"
	// m2 is a second logical unit (another node's) over shared, when
	// store is "shared"; commands choose it with lu=2.
	m2     *Manager
	shared *sharedBacking
}

func (e *ddEnv) open(t *testing.T) string {
	var s Store
	switch e.store {
	case "mem":
		s = e.mem
	case "file":
		s = e.file
	case "shared":
		// The first node powers on; the second joins the running cluster.
		m, err := NewManager(context.Background(), e.shared.handle())
		if err != nil {
			return fmtErr(err)
		}
		m2, err := Resume(context.Background(), e.shared.handle())
		if err != nil {
			return fmtErr(err)
		}
		e.m, e.m2 = m, m2
		return "ok"
	}
	m, err := NewManager(context.Background(), s)
	if err != nil {
		return fmtErr(err)
	}
	e.m, e.m2 = m, nil
	return "ok"
}

// mgr returns the Manager the command addresses: lu=1 (default) or lu=2.
func (e *ddEnv) mgr(t *testing.T, d *datadriven.TestData) *Manager {
	switch argU64(t, d, "lu", 1) {
	case 1:
		return e.m
	case 2:
		if e.m2 == nil {
			d.Fatalf(t, "lu=2 needs new store=shared")
		}
		return e.m2
	}
	d.Fatalf(t, "lu must be 1 or 2")
	return nil
}

func TestDataDriven(t *testing.T) {
	datadriven.Walk(t, "testdata", func(t *testing.T, path string) {
		e := &ddEnv{mem: &memStore{}, file: FileStore{Path: filepath.Join(t.TempDir(), "pr.json")}, store: "mem"}
		e.open(t)
		datadriven.RunTest(t, path, func(t *testing.T, d *datadriven.TestData) string {
			return e.run(t, d)
		})
	})
}

func argU64(t *testing.T, d *datadriven.TestData, key string, def uint64) uint64 {
	a, ok := d.Arg(key)
	if !ok {
		return def
	}
	v, err := strconv.ParseUint(a.SingleVal(t), 0, 64)
	if err != nil {
		d.Fatalf(t, "%s: %v", key, err)
	}
	return v
}

func argStr(t *testing.T, d *datadriven.TestData, key, def string) string {
	a, ok := d.Arg(key)
	if !ok {
		return def
	}
	return a.SingleVal(t)
}

func (e *ddEnv) run(t *testing.T, d *datadriven.TestData) string {
	ctx := context.Background()
	port := testPort(argStr(t, d, "port", "A"))
	m := e.mgr(t, d)
	switch d.Cmd {
	case "new":
		e.store = argStr(t, d, "store", "mem")
		e.mem = &memStore{}
		e.shared = &sharedBacking{}
		return e.open(t)
	case "restart":
		return e.open(t)
	case "store-fail":
		e.mem.fail = d.HasArg("on")
		return "ok"
	case "saves":
		return fmt.Sprint(e.mem.saves)
	case "state":
		return fmtState(m.State())
	case "refresh":
		eff, err := m.Refresh(ctx)
		if err != nil {
			return fmtErr(err)
		}
		return "ok" + fmtEffects(eff)
	case "shared":
		b := e.shared
		b.mu.Lock()
		defer b.mu.Unlock()
		return fmt.Sprintf("rev=%d saves=%d conflicts=%d\n%s", b.rev, b.saves, b.conflicts, fmtState(b.st))
	case "store-race":
		// The next n saves find that another writer changed the state.
		e.shared.mu.Lock()
		e.shared.race = int(argU64(t, d, "n", 1))
		e.shared.mu.Unlock()
		return "ok"
	case "file":
		b, err := e.file.Load(ctx)
		if err != nil {
			return fmtErr(err)
		}
		return fmtState(b)
	case "check":
		var out []string
		for _, a := range d.CmdArgs {
			if a.Key != "op" {
				continue
			}
			for _, op := range a.Vals {
				cdb, err := opCDB(op)
				if err != nil {
					d.Fatalf(t, "op %s: %v", op, err)
				}
				out = append(out, fmt.Sprintf("%s: %s", op, fmtErr(m.CheckAccess(port, cdb))))
			}
		}
		return strings.Join(out, "\n")
	case "reserve", "release":
		cdb, err := opCDB(argStr(t, d, "cdb", map[string]string{"reserve": "reserve6", "release": "release6"}[d.Cmd]))
		if err != nil {
			d.Fatalf(t, "%v", err)
		}
		if d.Cmd == "reserve" {
			return fmtErr(m.Reserve(port, cdb))
		}
		return fmtErr(m.Release(port, cdb))
	case "nexus-lost":
		m.NexusLost(port)
		return "ok"
	case "reset":
		m.Reset()
		return "ok"
	case "prin":
		var sa InServiceAction
		switch s := argStr(t, d, "sa", "read-keys"); s {
		case "read-keys":
			sa = InReadKeys
		case "read-reservation":
			sa = InReadReservation
		case "report-caps":
			sa = InReportCapabilities
		case "read-full-status":
			sa = InReadFullStatus
		default:
			n, err := strconv.ParseUint(s, 0, 5)
			if err != nil {
				d.Fatalf(t, "sa: %v", err)
			}
			sa = InServiceAction(n)
		}
		b, err := m.In(ctx, port, prinCDB(sa, 0xffff))
		if err != nil {
			return fmtErr(err)
		}
		return decodeIn(sa, b) + "\n" + strings.TrimSpace(hex.Dump(b))
	case "prout":
		sa, err := outSA(argStr(t, d, "sa", "register"))
		if err != nil {
			d.Fatalf(t, "%v", err)
		}
		typ, err := prType(argStr(t, d, "type", "0"))
		if err != nil {
			d.Fatalf(t, "%v", err)
		}
		key, sakey := argU64(t, d, "key", 0), argU64(t, d, "sakey", 0)
		var flags byte
		if d.HasArg("aptpl") {
			flags |= flagAPTPL
		}
		if d.HasArg("all-tg-pt") {
			flags |= flagAllTgPt
		}
		var param []byte
		switch {
		case d.HasArg("param"):
			param, err = hex.DecodeString(argStr(t, d, "param", ""))
			if err != nil {
				d.Fatalf(t, "%v", err)
			}
		case sa == OutRegisterAndMove:
			param = moveParam(key, sakey, d.HasArg("unreg"), d.HasArg("aptpl"),
				uint16(argU64(t, d, "rtp", 1)), tidBytes(argStr(t, d, "tid", "B")))
		case d.HasArg("spec-i-pt"):
			a, _ := d.Arg("spec-i-pt")
			var tids [][]byte
			for _, v := range a.Vals {
				tids = append(tids, tidBytes(v))
			}
			param = specIPTParam(key, sakey, flags, tids...)
		default:
			param = basicParam(key, sakey, flags)
		}
		plen := uint32(argU64(t, d, "plen", uint64(len(param))))
		cdb := proutCDB(sa, uint8(argU64(t, d, "scope", 0)), typ, plen)
		before := m.State()
		eff, err := m.Out(ctx, port, cdb, param)
		if err != nil {
			if after := m.State(); fmtState(after) != fmtState(before) && e.store != "shared" {
				t.Errorf("failed PERSISTENT RESERVE OUT changed the state:\n%s\n->\n%s", fmtState(before), fmtState(after))
			}
			return fmtErr(err)
		}
		return "ok" + fmtEffects(eff)
	}
	d.Fatalf(t, "unknown command %s", d.Cmd)
	return ""
}

// fmtState renders a State.
func fmtState(s State) string {
	var b strings.Builder
	fmt.Fprintf(&b, "generation=%d aptpl=%v", s.Generation, s.APTPL)
	for i, r := range s.Registrations {
		fmt.Fprintf(&b, "\nreg %s key=%#x", portName(r.port()), r.Key)
		if r.Key != 0 && s.isHolder(i) {
			b.WriteString(" holder")
		}
	}
	if rv := s.Reservation; rv != nil {
		fmt.Fprintf(&b, "\nreservation %s", rv.Type)
		if !rv.Type.allRegistrants() {
			fmt.Fprintf(&b, " by %s", portName(rv.Holder.port()))
		}
	}
	return b.String()
}

// fmtEffects renders Effects, one per line.
func fmtEffects(e Effects) string {
	var b strings.Builder
	for _, u := range e.UnitAttentions {
		fmt.Fprintf(&b, "\nua %s %s", portName(u.Port), u.ASC)
	}
	for _, p := range e.AbortInitiatorPorts {
		fmt.Fprintf(&b, "\nabort %s", portName(p))
	}
	return b.String()
}

// decodeIn gives a one-line summary of PERSISTENT RESERVE IN data,
// decoded independently of the encoder.
func decodeIn(sa InServiceAction, b []byte) string {
	if sa == InReportCapabilities {
		if len(b) < 8 {
			return "short"
		}
		return fmt.Sprintf("length=%d crh=%d sip_c=%d atp_c=%d ptpl_c=%d tmv=%d allow=%d ptpl_a=%d mask=%#04x",
			binary.BigEndian.Uint16(b), b[2]>>4&1, b[2]>>3&1, b[2]>>2&1, b[2]&1, b[3]>>7, b[3]>>4&7, b[3]&1,
			binary.BigEndian.Uint16(b[4:]))
	}
	if len(b) < 8 {
		return "short"
	}
	gen, n := binary.BigEndian.Uint32(b), binary.BigEndian.Uint32(b[4:])
	s := fmt.Sprintf("generation=%d length=%d", gen, n)
	if int(n) != len(b)-8 {
		s += fmt.Sprintf(" (MISMATCH: %d bytes follow)", len(b)-8)
	}
	switch sa {
	case InReadKeys:
		for i := 8; i+8 <= len(b); i += 8 {
			s += fmt.Sprintf(" key=%#x", binary.BigEndian.Uint64(b[i:]))
		}
	case InReadReservation:
		if n >= 16 {
			s += fmt.Sprintf(" key=%#x scope=%d type=%s", binary.BigEndian.Uint64(b[8:]), b[21]>>4, Type(b[21]&0xf))
		}
	case InReadFullStatus:
		for i := 8; i+24 <= len(b); {
			dl := int(binary.BigEndian.Uint32(b[i+20:]))
			s += fmt.Sprintf("\n  key=%#x all_tg_pt=%d r_holder=%d", binary.BigEndian.Uint64(b[i:]), b[i+12]>>1&1, b[i+12]&1)
			if b[i+12]&1 != 0 {
				s += fmt.Sprintf(" type=%s", Type(b[i+13]&0xf))
			}
			s += fmt.Sprintf(" rtpi=%d", binary.BigEndian.Uint16(b[i+18:]))
			if i+24+dl <= len(b) && dl >= 4 {
				tid := b[i+24 : i+24+dl]
				name := tid[4:]
				if z := strings.IndexByte(string(name), 0); z >= 0 {
					name = name[:z]
				}
				s += fmt.Sprintf(" tid=format%d,proto%d,%q", tid[0]>>6, tid[0]&0xf, name)
			}
			i += 24 + dl
		}
	}
	return s
}
