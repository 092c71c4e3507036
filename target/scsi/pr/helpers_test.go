package pr

import (
	"context"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"sync"

	"stave.dev/stave/target/scsi/sense"
)

// testTarget is the target name used for test ports.
const testTarget = "iqn.2026-11.dev.stave:vol"

// testPort builds a Port from a short name: a letter naming the initiator
// (A → iqn.1994-05.com.example:a), an optional digit choosing the ISID,
// and an optional "@N" choosing the target port (default 1).
// Examples: "A", "A2" (second port of initiator A), "B@2".
func testPort(name string) Port {
	tp := uint16(1)
	if i := strings.IndexByte(name, '@'); i >= 0 {
		fmt.Sscanf(name[i+1:], "%d", &tp)
		name = name[:i]
	}
	isid := 1
	if len(name) > 1 {
		fmt.Sscanf(name[1:], "%d", &isid)
	}
	iname := "iqn.1994-05.com.example:" + strings.ToLower(name[:1])
	return Port{
		InitiatorName:      iname,
		InitiatorPort:      fmt.Sprintf("%s,i,0x%012x", iname, 0x23d000000000+isid),
		TargetPort:         fmt.Sprintf("%s,t,0x%04x", testTarget, tp),
		RelativeTargetPort: tp,
	}
}

// portName is the inverse of testPort for printing.
func portName(p Port) string {
	var s string
	if i := strings.LastIndexByte(p.InitiatorName, ':'); i >= 0 {
		s = strings.ToUpper(p.InitiatorName[i+1:])
	}
	if p.InitiatorPort == "" {
		s += "*"
	} else {
		var isid int
		if i := strings.Index(p.InitiatorPort, ",i,0x"); i >= 0 {
			fmt.Sscanf(p.InitiatorPort[i+5:], "%x", &isid)
			isid -= 0x23d000000000
		}
		if isid != 1 {
			s += fmt.Sprint(isid)
		}
	}
	switch {
	case p.TargetPort == "" && p.RelativeTargetPort == 0:
		s += "@*"
	case p.RelativeTargetPort != 1:
		s += fmt.Sprintf("@%d", p.RelativeTargetPort)
	}
	return s
}

// prType parses a type name.
func prType(s string) (Type, error) {
	switch s {
	case "we":
		return TypeWriteExclusive, nil
	case "ea":
		return TypeExclusiveAccess, nil
	case "we-ro":
		return TypeWriteExclusiveRegistrantsOnly, nil
	case "ea-ro":
		return TypeExclusiveAccessRegistrantsOnly, nil
	case "we-ar":
		return TypeWriteExclusiveAllRegistrants, nil
	case "ea-ar":
		return TypeExclusiveAccessAllRegistrants, nil
	}
	var n uint8
	if _, err := fmt.Sscanf(s, "%v", &n); err != nil {
		return 0, fmt.Errorf("bad type %q", s)
	}
	return Type(n), nil
}

// outSA parses a PERSISTENT RESERVE OUT service action name.
func outSA(s string) (OutServiceAction, error) {
	for a := OutRegister; a <= OutReplaceLostReservation; a++ {
		if strings.EqualFold(strings.ReplaceAll(a.String(), " ", "-"), s) {
			return a, nil
		}
	}
	switch s {
	case "register-and-ignore":
		return OutRegisterAndIgnore, nil
	case "preempt-and-abort":
		return OutPreemptAndAbort, nil
	}
	var n uint8
	if _, err := fmt.Sscanf(s, "%v", &n); err != nil {
		return 0, fmt.Errorf("bad service action %q", s)
	}
	return OutServiceAction(n), nil
}

// proutCDB builds a PERSISTENT RESERVE OUT CDB.
func proutCDB(sa OutServiceAction, scope uint8, typ Type, plen uint32) []byte {
	cdb := make([]byte, 10)
	cdb[0] = byte(opPersistentReserveOut)
	cdb[1] = byte(sa) & 0x1f
	cdb[2] = scope<<4 | byte(typ)&0x0f
	binary.BigEndian.PutUint32(cdb[5:9], plen)
	return cdb
}

// prinCDB builds a PERSISTENT RESERVE IN CDB.
func prinCDB(sa InServiceAction, alloc uint16) []byte {
	cdb := make([]byte, 10)
	cdb[0] = byte(opPersistentReserveIn)
	cdb[1] = byte(sa) & 0x1f
	binary.BigEndian.PutUint16(cdb[7:9], alloc)
	return cdb
}

// basicParam builds the 24-byte basic PERSISTENT RESERVE OUT parameter list.
func basicParam(key, sakey uint64, flags byte) []byte {
	p := make([]byte, basicParamLen)
	binary.BigEndian.PutUint64(p[0:], key)
	binary.BigEndian.PutUint64(p[8:], sakey)
	p[20] = flags
	return p
}

// tidBytes encodes a TransportID for a test port name: "A" gives format
// 01 (that initiator port), "A*" format 00 (the initiator device).
func tidBytes(name string) []byte {
	if strings.HasSuffix(name, "*") {
		p := testPort(strings.TrimSuffix(name, "*"))
		return appendTransportID(nil, &Registration{InitiatorName: p.InitiatorName})
	}
	p := testPort(name)
	return appendTransportID(nil, &Registration{InitiatorName: p.InitiatorName, InitiatorPort: p.InitiatorPort})
}

// specIPTParam builds a REGISTER parameter list with SPEC_I_PT TransportIDs.
func specIPTParam(key, sakey uint64, flags byte, tids ...[]byte) []byte {
	p := basicParam(key, sakey, flags|flagSpecIPT)
	var t []byte
	for _, b := range tids {
		t = append(t, b...)
	}
	p = binary.BigEndian.AppendUint32(p, uint32(len(t)))
	return append(p, t...)
}

// moveParam builds a REGISTER AND MOVE parameter list.
func moveParam(key, sakey uint64, unreg, aptpl bool, rtp uint16, tid []byte) []byte {
	p := make([]byte, moveHeaderLen)
	binary.BigEndian.PutUint64(p[0:], key)
	binary.BigEndian.PutUint64(p[8:], sakey)
	if unreg {
		p[17] |= flagUnreg
	}
	if aptpl {
		p[17] |= flagAPTPL
	}
	binary.BigEndian.PutUint16(p[18:], rtp)
	binary.BigEndian.PutUint32(p[20:], uint32(len(tid)))
	return append(p, tid...)
}

// opCDBs maps command names used by tests to CDBs.
var opCDBs = map[string]string{
	"tur":               "000000000000",
	"request-sense":     "030000000000",
	"inquiry":           "120000006000",
	"read6":             "080000000100",
	"write6":            "0a0000000100",
	"read10":            "28000000000000000100",
	"write10":           "2a000000000000000100",
	"read12":            "a8000000000000000001000000",
	"write12":           "aa000000000000000001000000",
	"read16":            "88000000000000000000000000010000",
	"write16":           "8a000000000000000000000000010000",
	"verify10":          "2f000000000000000100",
	"verify16":          "8f000000000000000000000000010000",
	"writeverify10":     "2e000000000000000100",
	"orwrite":           "8b000000000000000000000000010000",
	"compare-and-write": "89000000000000000000000000010000",
	"prefetch10":        "34000000000000000100",
	"writesame10":       "41000000000000000100",
	"writesame16":       "93000000000000000000000000010000",
	"unmap":             "42000000000000001800",
	"sync-cache10":      "35000000000000000000",
	"sync-cache16":      "91000000000000000000000000000000",
	"mode-sense6":       "1a003f00ff00",
	"mode-sense10":      "5a003f0000000000ff00",
	"mode-select6":      "150000001800",
	"mode-select10":     "55000000000000001800",
	"report-luns":       "a0000000000000000100000000",
	"readcap10":         "25000000000000000000",
	"readcap16":         "9e100000000000000000000000200000",
	"get-lba-status":    "9e120000000000000000000000200000",
	"prin":              "5e000000000000100000",
	"prout":             "5f000000000000001800",
	"reserve6":          "160000000000",
	"release6":          "170000000000",
	"reserve10":         "56000000000000000000",
	"release10":         "57000000000000000000",
	"start":             "1b0000000100",
	"stop":              "1b0000000000",
	"prevent":           "1e0000000100",
	"allow":             "1e0000000000",
	"rtpg":              "a30a00000000000010000000",
	"report-opcodes":    "a30c00000000000010000000",
	"log-sense":         "4d0000000000000000ff00",
	"log-select":        "4c0000000000000000ff00",
	"format-unit":       "040000000000",
	"read32":            "7f0000000000001800090000000000000000000000000000000000000000000001",
}

// opCDB returns the CDB for a command name or a hex CDB.
func opCDB(s string) ([]byte, error) {
	if h, ok := opCDBs[s]; ok {
		s = h
	}
	return hex.DecodeString(s)
}

// fmtErr renders an error from the package in the test scripts' form.
func fmtErr(err error) string {
	if err == nil {
		return "ok"
	}
	var se *sense.Error
	if !errors.As(err, &se) {
		return "error: " + err.Error()
	}
	if se.Status == sense.StatusReservationConflict {
		return "RESERVATION CONFLICT"
	}
	s := fmt.Sprintf("%s %s %s", se.Status, se.Key, se.ASC)
	if f := se.Field; f != nil {
		where := "param"
		if f.CDB {
			where = "cdb"
		}
		s += fmt.Sprintf(" field=%s[%d]", where, f.Byte)
		if f.Bit >= 0 {
			s += fmt.Sprintf(".%d", f.Bit)
		}
	}
	if se.Cause != nil {
		s += " (" + se.Cause.Error() + ")"
	}
	return s
}

// memStore is an in-memory Store that counts saves and can fail them.
type memStore struct {
	mu    sync.Mutex
	st    State
	saves int
	fail  bool
}

var errInjected = errors.New("pr test: injected save failure")

func (s *memStore) Load(ctx context.Context) (State, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.st.clone(), nil
}

func (s *memStore) Save(ctx context.Context, st State) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.fail {
		return errInjected
	}
	s.saves++
	s.st = st.clone()
	return nil
}

// sharedBacking is the saved state that several casStores (the nodes of
// a cluster) share, with a revision for compare-and-swap, like etcd.
type sharedBacking struct {
	mu        sync.Mutex
	st        State
	rev       int64
	saves     int
	conflicts int
	// race makes the next race saves find the state changed by another
	// writer (the revision moves, the state does not).
	race int
	// failLoad makes Load fail with errInjected.
	failLoad bool
}

// handle returns a new SharedStore over b.
func (b *sharedBacking) handle() *casStore { return &casStore{b: b} }

// casStore is one node's SharedStore over a sharedBacking: Save is a
// compare-and-swap on the revision its last Load or Save saw.
type casStore struct {
	b   *sharedBacking
	rev int64
}

var _ SharedStore = (*casStore)(nil)

func (s *casStore) Shared() bool { return true }

func (s *casStore) Load(ctx context.Context) (State, error) {
	s.b.mu.Lock()
	defer s.b.mu.Unlock()
	if s.b.failLoad {
		return State{}, errInjected
	}
	s.rev = s.b.rev
	return s.b.st.clone(), nil
}

func (s *casStore) Save(ctx context.Context, st State) error {
	s.b.mu.Lock()
	defer s.b.mu.Unlock()
	if s.b.race > 0 {
		s.b.race--
		s.b.rev++
	}
	if s.rev != s.b.rev {
		s.b.conflicts++
		return fmt.Errorf("%w: revision %d, last seen %d", ErrConflict, s.b.rev, s.rev)
	}
	s.b.rev++
	s.b.saves++
	s.b.st = st.clone()
	s.rev = s.b.rev
	return nil
}

// checkInvariants reports a broken invariant of a Manager's state.
func checkInvariants(st State) error {
	if err := st.validate(); err != nil {
		return err
	}
	if rv := st.Reservation; rv != nil && !rv.Type.allRegistrants() {
		n := 0
		for i := range st.Registrations {
			if st.isHolder(i) {
				n++
			}
		}
		if n != 1 {
			return fmt.Errorf("reservation has %d holders", n)
		}
	}
	return nil
}
