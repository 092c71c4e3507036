package scsi

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/bits"
	"sync"
	"sync/atomic"

	"stave.dev/stave/internal/logkey"
	"stave.dev/stave/target/scsi/pr"
	"stave.dev/stave/target/scsi/sense"
)

// Sentinel errors of NewLU.
var (
	// ErrNoDevice means LUConfig.Device is nil.
	ErrNoDevice = errors.New("scsi: no block device")
	// ErrBlockSize means the logical or physical block size is invalid.
	ErrBlockSize = errors.New("scsi: invalid block size")
)

// Limits advertised in the Block Limits VPD page and enforced by the
// handlers (in logical blocks unless noted).
const (
	maxTransferBytes     = 8 << 20 // MAXIMUM TRANSFER LENGTH in bytes
	optTransferBytes     = 256 << 10
	maxWriteSameBlocks   = 32768    // MAXIMUM WRITE SAME LENGTH (libiscsi writes 65536 blocks with one WRITE(16) if it is larger)
	maxUnmapBlocks       = 1 << 20  // MAXIMUM UNMAP LBA COUNT
	maxUnmapDescriptors  = 256      // MAXIMUM UNMAP BLOCK DESCRIPTOR COUNT
	maxCompareAndWrite   = 255      // MAXIMUM COMPARE AND WRITE LENGTH
	prefetchConditionMet = 16 << 20 // PRE-FETCH reports CONDITION MET up to this many bytes
)

// LUConfig configures one logical unit.
type LUConfig struct {
	// Logger receives state transitions and failures; nil discards.
	Logger *slog.Logger
	// Device is the storage (required). If it implements
	// ProvisioningStatus, GET LBA STATUS reports real mapping state.
	Device BlockDevice
	// BlockSize is the logical block size: 512 (default) or 4096.
	BlockSize int
	// PhysicalBlockSize is the physical block size reported through the
	// LOGICAL BLOCKS PER PHYSICAL BLOCK EXPONENT: a power-of-two multiple
	// of BlockSize; 0 means 4096 (docs/architecture.md). NB: libiscsi's
	// GetLBAStatus.UnmapSingle only passes when it equals BlockSize.
	PhysicalBlockSize int
	// Name is the volume name (T10 vendor identification designator).
	Name string
	// Serial is the unit serial number (VPD page 0x80).
	Serial string
	// NAA is the NAA-6 designator (VPD page 0x83); it must be stable for
	// the life of the volume.
	NAA [16]byte
	// Reservations persists persistent reservations; nil keeps them in
	// memory.
	Reservations pr.Store
	// ResumeReservations continues with the state saved in Reservations
	// as it is (pr.Resume) instead of applying power-on semantics
	// (pr.NewManager drops registrations made without APTPL): for a node
	// that exports a replicated volume that other nodes serve already.
	// It requires Reservations.
	ResumeReservations bool
	// Ports reports ALUA state; nil means one target port group (ID 1),
	// active/optimized, holding every relative target port seen.
	Ports PortState
	// ReadOnly makes the LU write protected.
	ReadOnly bool
}

// LU is an SBC-3 direct-access logical unit over a BlockDevice. It is safe
// for concurrent use; Target drives it.
type LU struct {
	log      *slog.Logger
	dev      BlockDevice
	prov     ProvisioningStatus // nil when the device cannot tell
	bs       uint32             // logical block size
	bsShift  uint
	lbppbe   uint8 // logical blocks per physical block exponent
	name     string
	serial   string
	naa      [16]byte
	readOnly bool
	ports    PortState
	res      *pr.Manager
	cmds     *commandTable
	tasks    taskSet
	locks    rangeLock
	bufs     bufPool

	numBlocks atomic.Uint64
	flags     atomic.Uint32 // modeFlag bits mirrored from the mode pages
	uaPending atomic.Int64  // unit attentions queued over all nexuses
	nexuses   sync.Map      // Nexus -> *nexusState

	// mode holds the current mode pages; flags mirrors the bits the hot
	// path reads, updated under mode's lock.
	mode struct {
		sync.Mutex
		pages modePages
	}
}

// nexusState is per-I_T-nexus state of an LU.
type nexusState struct {
	mu struct {
		sync.Mutex
		uas []sense.ASC // pending unit attentions, oldest first
	}
}

// NewLU returns a logical unit over cfg.Device. It loads the persistent
// reservation state from cfg.Reservations.
func NewLU(cfg LUConfig) (*LU, error) {
	if cfg.Device == nil {
		return nil, ErrNoDevice
	}
	bs := cfg.BlockSize
	if bs == 0 {
		bs = 512
	}
	if bs < 512 || bs > 65536 || bs&(bs-1) != 0 {
		return nil, fmt.Errorf("%w: logical %d", ErrBlockSize, bs)
	}
	pbs := cfg.PhysicalBlockSize
	if pbs == 0 {
		pbs = 4096
		if bs > pbs {
			pbs = bs
		}
	}
	if pbs < bs || pbs&(pbs-1) != 0 || pbs/bs > 1<<15 {
		return nil, fmt.Errorf("%w: physical %d", ErrBlockSize, pbs)
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	// NB: NewLU has no context in its contract; loading the reservation
	// state is the only blocking step.
	newManager := pr.NewManager
	if cfg.ResumeReservations {
		newManager = pr.Resume
	}
	m, err := newManager(context.Background(), cfg.Reservations)
	if err != nil {
		return nil, fmt.Errorf("scsi: reservations: %w", err)
	}
	l := &LU{
		log:      log,
		dev:      cfg.Device,
		bs:       uint32(bs),
		bsShift:  uint(bits.TrailingZeros32(uint32(bs))),
		lbppbe:   uint8(bits.TrailingZeros32(uint32(pbs / bs))),
		name:     cfg.Name,
		serial:   cfg.Serial,
		naa:      cfg.NAA,
		readOnly: cfg.ReadOnly,
		ports:    cfg.Ports,
		res:      m,
		cmds:     newCommandTable(),
	}
	l.prov, _ = cfg.Device.(ProvisioningStatus)
	l.bufs.init()
	l.numBlocks.Store(uint64(cfg.Device.Size()) >> l.bsShift)
	l.mode.pages = defaultModePages()
	l.flags.Store(l.mode.pages.flags())
	return l, nil
}

// taskCount returns the number of tasks in the task set.
func (l *LU) taskCount() int { return l.tasks.count() }

// BlockSize returns the logical block size in bytes.
func (l *LU) BlockSize() int { return int(l.bs) }

// Resize re-reads the device size and, when it changed, establishes
// CAPACITY DATA HAS CHANGED for every I_T nexus (SBC-3 §4.6). The owner
// of the device calls it after growing or shrinking the volume; READ
// CAPACITY and TEST UNIT READY also notice a changed size by themselves.
func (l *LU) Resize() { l.resize() }

// resize implements Resize and reports whether the capacity changed.
func (l *LU) resize() bool {
	n := uint64(l.dev.Size()) >> l.bsShift
	old := l.numBlocks.Swap(n)
	if old == n {
		return false
	}
	l.log.Info("scsi: capacity changed", slog.Int64(logkey.Size, int64(n<<l.bsShift)),
		slog.Uint64("old_blocks", old), slog.Uint64("new_blocks", n))
	l.raiseUA(nil, sense.ASCCapacityDataHasChanged)
	return true
}

// PortStateChanged establishes ASYMMETRIC ACCESS STATE CHANGED for every
// I_T nexus (SPC-4 §5.11.2.7). The PortState owner calls it after a
// change.
func (l *LU) PortStateChanged() {
	l.raiseUA(nil, sense.ASCAsymmetricAccessStateChanged)
}

// RefreshReservations reloads the persistent-reservation state from
// LUConfig.Reservations (pr.Manager.Refresh): the daemon calls it when
// another node changed the volume's shared state, and before this node
// starts serving as the volume's new owner. It establishes the unit
// attentions of the change (REGISTRATIONS PREEMPTED, RESERVATIONS
// PREEMPTED, RESERVATIONS RELEASED; see pr.Manager.Refresh for what a
// state difference can and cannot tell) for the I_T nexuses this LU
// knows. It blocks in the store's Load with ctx; on error the state is
// unchanged. It is safe for concurrent use.
func (l *LU) RefreshReservations(ctx context.Context) error {
	eff, err := l.res.Refresh(ctx)
	if err != nil {
		return fmt.Errorf("scsi: refreshing reservations of %s: %w", l.name, err)
	}
	if len(eff.UnitAttentions) > 0 && l.log.Enabled(ctx, slog.LevelDebug) {
		l.log.Debug("scsi: reservations changed through another node", slog.Int(logkey.Count, len(eff.UnitAttentions)))
	}
	l.applyEffects(ctx, Nexus{}, eff)
	return nil
}

// nexus returns the state of n, creating it on first sight. A nexus that
// appears after power on gets no POWER ON unit attention: like LIO, and as
// libiscsi's multi-session tests require, only resets and changes after
// the nexus exists raise unit attentions for it.
func (l *LU) nexus(n Nexus) *nexusState {
	if v, ok := l.nexuses.Load(n); ok {
		return v.(*nexusState)
	}
	v, _ := l.nexuses.LoadOrStore(n, &nexusState{})
	return v.(*nexusState)
}

// raiseUA queues asc for every known nexus that match accepts (nil: all).
func (l *LU) raiseUA(match func(Nexus) bool, asc sense.ASC) {
	l.nexuses.Range(func(k, v any) bool {
		n := k.(Nexus)
		if match != nil && !match(n) {
			return true
		}
		ns := v.(*nexusState)
		ns.mu.Lock()
		dup := false
		for _, a := range ns.mu.uas {
			if a == asc {
				dup = true
				break
			}
		}
		if !dup {
			ns.mu.uas = append(ns.mu.uas, asc)
			l.uaPending.Add(1)
		}
		ns.mu.Unlock()
		return true
	})
}

// takeUA removes and returns the oldest unit attention of ns.
func (l *LU) takeUA(ns *nexusState) (sense.ASC, bool) {
	if l.uaPending.Load() == 0 {
		return 0, false
	}
	ns.mu.Lock()
	defer ns.mu.Unlock()
	if len(ns.mu.uas) == 0 {
		return 0, false
	}
	a := ns.mu.uas[0]
	copy(ns.mu.uas, ns.mu.uas[1:])
	ns.mu.uas = ns.mu.uas[:len(ns.mu.uas)-1]
	l.uaPending.Add(-1)
	return a, true
}

// clearUA removes asc from ns if pending.
func (l *LU) clearUA(ns *nexusState, asc sense.ASC) {
	if l.uaPending.Load() == 0 {
		return
	}
	ns.mu.Lock()
	defer ns.mu.Unlock()
	for i, a := range ns.mu.uas {
		if a == asc {
			ns.mu.uas = append(ns.mu.uas[:i], ns.mu.uas[i+1:]...)
			l.uaPending.Add(-1)
			return
		}
	}
}

// port converts a nexus to the reservation package's port.
func port(n Nexus) pr.Port {
	return pr.Port{InitiatorName: n.InitiatorName, InitiatorPort: n.InitiatorPort,
		TargetPort: n.TargetPort, RelativeTargetPort: n.RelativeTargetPort}
}

// portMatch reports whether nexus n is one of the I_T nexuses p names. A
// pr.Port in Effects may stand for several nexuses: an empty InitiatorPort
// means every port of that initiator (TransportID format 00), an empty
// TargetPort with RelativeTargetPort 0 means every target port (ALL_TG_PT).
func portMatch(n Nexus, p pr.Port) bool {
	return p.Covers(port(n))
}

// groupOf returns the target port group of n (1 when unset).
func groupOf(n Nexus) uint16 {
	if n.TargetPortGroup == 0 {
		return 1
	}
	return n.TargetPortGroup
}

// accessState returns the ALUA state of the nexus's target port group.
func (l *LU) accessState(n Nexus) ALUAState {
	if l.ports == nil {
		return ALUAActiveOptimized
	}
	return l.ports.AccessState(groupOf(n))
}

// cmd is the per-task context handed to a command handler.
type cmd struct {
	ctx context.Context
	lu  *LU
	tgt *Target // nil when the LU is driven without a Target
	t   *Task
	cdb []byte // exactly the opcode group's length
	ns  *nexusState
	res *Result
}

// execute runs one task through the LU (see the package comment).
func (l *LU) execute(ctx context.Context, tgt *Target, t *Task) Result {
	tk, tctx := l.tasks.add(ctx, t)
	res := l.run(tctx, tgt, t, tk)
	aborted, tas := l.tasks.remove(tk)
	if aborted {
		if res.Release != nil {
			res.Release()
		}
		if tas {
			return Result{Status: sense.StatusTaskAborted}
		}
		return Result{Aborted: true}
	}
	return res
}

func (l *LU) run(ctx context.Context, tgt *Target, t *Task, tk *task) Result {
	if err := l.tasks.wait(ctx, tk); err != nil {
		return senseResult(ctx, l.log, err, l.dsense())
	}
	if err := l.dispatch(ctx, tgt, t, tk); err != nil {
		if tk.res.Release != nil {
			tk.res.Release()
		}
		return senseResult(ctx, l.log, err, l.dsense())
	}
	return tk.res
}

// dispatch decodes the CDB and runs the command's handler; the handler
// fills tk.res.
func (l *LU) dispatch(ctx context.Context, tgt *Target, t *Task, tk *task) error {
	c, cdb, err := l.cmds.lookup(t.CDB)
	if err != nil {
		return err
	}
	if t.Attr == TaskACA { // no ACA condition can exist (NormACA=0), SAM-5 §8.6.5
		return sense.New(sense.KeyIllegalRequest, sense.ASCInvalidMessageError)
	}
	if cdb[len(cdb)-1]&0x04 != 0 { // NACA (SAM-5 §5.2); NormACA=0
		return sense.InvalidCDBField(len(cdb)-1, 2)
	}
	ns := l.nexus(t.Nexus)
	if c.flags&fNoUA == 0 {
		if asc, ok := l.takeUA(ns); ok {
			return sense.New(sense.KeyUnitAttention, asc)
		}
	}
	if st := l.accessState(t.Nexus); st != ALUAActiveOptimized && st != ALUAActiveNonOptimized {
		if err := aluaCheck(st, c.flags); err != nil {
			return err
		}
	}
	if c.flags&fNoConflict == 0 {
		if err := l.res.CheckAccess(port(t.Nexus), cdb); err != nil {
			return err
		}
	}
	tk.c = cmd{ctx: ctx, lu: l, tgt: tgt, t: t, cdb: cdb, ns: ns, res: &tk.res}
	return c.fn(&tk.c)
}

// aluaCheck refuses commands that the asymmetric access state does not
// allow (SPC-4 §5.11.2.4.4-6).
func aluaCheck(st ALUAState, f cmdFlags) error {
	switch st {
	case ALUAStandby:
		if f&(fStandby|fUnavailable) != 0 {
			return nil
		}
		return sense.New(sense.KeyNotReady, sense.ASCLogicalUnitNotAccessibleStandby)
	case ALUAUnavailable, ALUAOffline:
		if f&fUnavailable != 0 {
			return nil
		}
		return sense.New(sense.KeyNotReady, sense.ASCLogicalUnitNotAccessibleUnavailable)
	case ALUATransitioning:
		if f&fUnavailable != 0 {
			return nil
		}
		return sense.New(sense.KeyNotReady, sense.ASCLogicalUnitNotAccessibleTransition)
	}
	return nil
}

// dsense reports whether sense data uses descriptor format.
func (l *LU) dsense() bool { return l.flags.Load()&modeDSense != 0 }

// writeProtected reports whether writes are refused (ReadOnly or SWP).
func (l *LU) writeProtected() bool { return l.readOnly || l.flags.Load()&modeSWP != 0 }

// taskManagement performs a TMF on this LU's task set. issuer is the I_T
// nexus that requested it.
func (l *LU) taskManagement(ctx context.Context, issuer Nexus, fn TMF, tag uint64) TMFResponse {
	tas := func(n Nexus) bool { return n != issuer && l.flags.Load()&modeTAS != 0 }
	switch fn {
	case TMFAbortTask:
		waits, _ := l.tasks.abort(func(p *task) bool { return p.nexus == issuer && p.tag == tag },
			func(Nexus) bool { return false })
		if len(waits) == 0 {
			return TMFTaskDoesNotExist
		}
		if waitAll(ctx, waits) != nil {
			return TMFRejected
		}
		return TMFComplete
	case TMFAbortTaskSet:
		waits, _ := l.tasks.abort(func(p *task) bool { return p.nexus == issuer }, func(Nexus) bool { return false })
		if waitAll(ctx, waits) != nil {
			return TMFRejected
		}
		return TMFComplete
	case TMFClearTaskSet:
		waits, others := l.tasks.abort(func(*task) bool { return true }, tas)
		l.uaCleared(issuer, others)
		if waitAll(ctx, waits) != nil {
			return TMFRejected
		}
		return TMFComplete
	case TMFClearACA:
		return TMFComplete
	case TMFLogicalUnitReset, TMFTargetWarmReset, TMFTargetColdReset:
		waits, _ := l.tasks.abort(func(*task) bool { return true }, tas)
		if waitAll(ctx, waits) != nil {
			return TMFRejected
		}
		l.reset(fn)
		return TMFComplete
	case TMFTaskReassign:
		return TMFReassignUnsupported
	}
	return TMFNotSupported
}

// uaCleared establishes COMMANDS CLEARED BY ANOTHER INITIATOR for the
// nexuses (other than issuer) whose tasks were aborted, when TAS=0
// (SAM-5 §5.6).
func (l *LU) uaCleared(issuer Nexus, aborted []Nexus) {
	if l.flags.Load()&modeTAS != 0 {
		return
	}
	for _, n := range aborted {
		if n == issuer {
			continue
		}
		l.raiseUA(func(m Nexus) bool { return m == n }, sense.ASCCommandsClearedByAnotherInitiator)
	}
}

// reset performs the LU side of a LOGICAL UNIT RESET or target reset
// after the tasks are gone: SPC-2 reservation released, mode pages back to
// their defaults, and a unit attention for every I_T nexus (SAM-5 §6.3.3).
func (l *LU) reset(fn TMF) {
	l.res.Reset()
	l.mode.Lock()
	l.mode.pages = defaultModePages()
	l.flags.Store(l.mode.pages.flags())
	l.mode.Unlock()
	asc := sense.ASCBusDeviceResetFunctionOccurred
	switch fn {
	case TMFTargetWarmReset:
		asc = sense.ASCPowerOnResetOrBusDeviceReset
	case TMFTargetColdReset:
		asc = sense.ASCPowerOnOccurred
	}
	l.log.Info("scsi: logical unit reset", slog.String(logkey.Op, fn.String()))
	l.raiseUA(nil, asc)
}

// nexusLost forgets n: its unit attentions and SPC-2 reservation go, its
// tasks are aborted; persistent reservations stay.
func (l *LU) nexusLost(n Nexus) {
	waits, _ := l.tasks.abort(func(p *task) bool { return p.nexus == n }, func(Nexus) bool { return false })
	_ = waitAll(context.Background(), waits)
	if v, ok := l.nexuses.LoadAndDelete(n); ok {
		ns := v.(*nexusState)
		ns.mu.Lock()
		l.uaPending.Add(-int64(len(ns.mu.uas)))
		ns.mu.uas = nil
		ns.mu.Unlock()
	}
	l.res.NexusLost(port(n))
}

// applyEffects carries out what a PERSISTENT RESERVE OUT asked for.
func (l *LU) applyEffects(ctx context.Context, issuer Nexus, eff pr.Effects) {
	for _, ua := range eff.UnitAttentions {
		p := ua.Port
		l.raiseUA(func(n Nexus) bool { return portMatch(n, p) }, ua.ASC)
	}
	if len(eff.AbortInitiatorPorts) == 0 {
		return
	}
	match := func(p *task) bool {
		if p.nexus == issuer {
			return false
		}
		for _, ap := range eff.AbortInitiatorPorts {
			if portMatch(p.nexus, ap) {
				return true
			}
		}
		return false
	}
	tas := func(Nexus) bool { return l.flags.Load()&modeTAS != 0 }
	waits, aborted := l.tasks.abort(match, tas)
	l.uaCleared(issuer, aborted)
	_ = waitAll(ctx, waits)
}

// String returns the TMF name.
func (f TMF) String() string {
	switch f {
	case TMFAbortTask:
		return "ABORT TASK"
	case TMFAbortTaskSet:
		return "ABORT TASK SET"
	case TMFClearACA:
		return "CLEAR ACA"
	case TMFClearTaskSet:
		return "CLEAR TASK SET"
	case TMFLogicalUnitReset:
		return "LOGICAL UNIT RESET"
	case TMFTargetWarmReset:
		return "TARGET WARM RESET"
	case TMFTargetColdReset:
		return "TARGET COLD RESET"
	case TMFTaskReassign:
		return "TASK REASSIGN"
	case TMFQueryTask:
		return "QUERY TASK"
	}
	return fmt.Sprintf("TMF(%d)", uint8(f))
}

// String returns the TMF response name.
func (r TMFResponse) String() string {
	switch r {
	case TMFComplete:
		return "function complete"
	case TMFTaskDoesNotExist:
		return "task does not exist"
	case TMFLUNDoesNotExist:
		return "LUN does not exist"
	case TMFTaskStillAllegiant:
		return "task still allegiant"
	case TMFReassignUnsupported:
		return "task allegiance reassignment not supported"
	case TMFNotSupported:
		return "function not supported"
	case TMFAuthFailed:
		return "function authorization failed"
	case TMFRejected:
		return "function rejected"
	}
	return fmt.Sprintf("TMFResponse(%d)", uint8(r))
}

// String returns the task attribute name.
func (a TaskAttr) String() string {
	switch a {
	case TaskSimple:
		return "SIMPLE"
	case TaskOrdered:
		return "ORDERED"
	case TaskHeadOfQueue:
		return "HEAD OF QUEUE"
	case TaskACA:
		return "ACA"
	}
	return fmt.Sprintf("TaskAttr(%d)", uint8(a))
}

// bufPool hands out Data-In buffers in power-of-two size classes from
// 4 KiB to maxTransferBytes.
type bufPool struct {
	classes [12]sync.Pool
}

const minBufShift = 12

type dataBuf struct {
	b       []byte
	pool    *sync.Pool
	release func() // b.put bound once, so handing it out does not allocate
}

func (d *dataBuf) put() { d.pool.Put(d) }

func (p *bufPool) init() {
	for i := range p.classes {
		size := 1 << (minBufShift + i)
		pool := &p.classes[i]
		pool.New = func() any {
			d := &dataBuf{b: make([]byte, size), pool: pool}
			d.release = d.put
			return d
		}
	}
}

// get returns a buffer of n bytes and its release function (nil when n
// is beyond the pooled classes).
func (p *bufPool) get(n int) ([]byte, func()) {
	c := 0
	if n > 1<<minBufShift {
		c = bits.Len(uint(n-1)) - minBufShift
	}
	if c >= len(p.classes) {
		return make([]byte, n), nil
	}
	d := p.classes[c].Get().(*dataBuf)
	return d.b[:n], d.release
}
