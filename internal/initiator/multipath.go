package initiator

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"stave.dev/stave/internal/logkey"
	"stave.dev/stave/target/scsi/sense"
)

// MultipathConfig configures a Multipath.
type MultipathConfig struct {
	// Logger receives Info lines when a path goes up or down or its ALUA
	// state changes, Debug lines per retried command. Nil discards.
	Logger *slog.Logger
	// Portals are the paths, host:port each, all to the same target.
	Portals []string
	// Target is the target name; LUN the logical unit; InitiatorName the
	// initiator's iSCSI name. Path i logs in with an ISID ending in i+1.
	Target        string
	LUN           uint64
	InitiatorName string
	// IOTimeout bounds one command across every retry and path (the time
	// dm-multipath would queue it with no usable path); default 30 s.
	IOTimeout time.Duration
	// AttemptTimeout bounds one try of a command on one path, after which
	// the path is considered failed (the SCSI command timeout); default 5 s.
	AttemptTimeout time.Duration
	// LoginTimeout bounds a login and the path's identification; default
	// 2 s.
	LoginTimeout time.Duration
	// Backoff is the wait after a round in which no path took a command,
	// and the first reconnection delay of a failed path (doubling up to
	// 1 s); default 75 ms.
	Backoff time.Duration
	// CheckInterval is the path checker period: idle paths are asked
	// REPORT TARGET PORT GROUPS (which also answers the target's NOP-Ins)
	// and failed paths are logged in again. Default 1 s; negative turns
	// the checker off (paths are then only checked by I/O).
	CheckInterval time.Duration
}

// Multipath sends SCSI commands for one logical unit over several paths
// (portals), the way dm-multipath does with the ALUA prioritizer and
// queue_if_no_path bounded by a timeout:
//
//  1. Each path logs in, reads the Device Identification VPD page to learn
//     its target port group, and REPORT TARGET PORT GROUPS to learn that
//     group's state.
//  2. A command goes to the usable path with the best state
//     (active/optimized, active/non-optimized, unknown, standby,
//     transitioning, unavailable), preferring the path that served the
//     last command.
//  3. A unit attention is retried on the same path (after re-reading the
//     port states when it is ASYMMETRIC ACCESS STATE CHANGED): a command
//     that got a unit attention did not run.
//  4. A path error moves the command to the next path: a broken
//     connection or a per-attempt timeout (the session is dropped and
//     logged in again later), NOT READY (standby 04/0B, transition 04/0A,
//     unavailable 04/0C, becoming ready 04/01, ...), BUSY, TASK SET FULL,
//     or LOGICAL UNIT NOT SUPPORTED (the port does not serve the LU yet).
//  5. When every path failed in a round, it waits Backoff and tries a new
//     round, until IOTimeout.
//  6. Any other status (ILLEGAL REQUEST, MEDIUM ERROR, RESERVATION
//     CONFLICT, ...) is the target's answer and is returned at once.
//
// A write that fails on one path and succeeds on another was possibly
// written twice, with the same data: writes are idempotent. A write that
// returns an error may or may not have been written.
//
// Methods are safe for concurrent use; commands run one at a time (queue
// depth 1).
type Multipath struct {
	cfg   MultipathConfig
	log   *slog.Logger
	paths []*path

	io struct {
		sync.Mutex
		capacity Capacity
		last     *path // the path that completed the last command
	}
	stats struct{ commands, retries, failovers, logins atomic.Int64 }

	cancel context.CancelFunc
	done   chan struct{} // closed when the checker has exited
}

// path is one portal of a Multipath.
type path struct {
	idx  int
	addr string
	cfg  Config
	mu   struct {
		sync.Mutex
		sess     *Session // nil while down
		known    bool     // group and state were read since the last login
		group    uint16
		state    AccessState
		failures int       // consecutive failed logins
		retryAt  time.Time // no login before this
		lastUsed time.Time
	}
}

// PathInfo describes one path for tests and logs.
type PathInfo struct {
	Portal string
	// Up is true while the path is logged in.
	Up bool
	// Known is false until the path's group and state were read.
	Known bool
	// PortGroup and State are the path's target port group and its last
	// known ALUA state.
	PortGroup uint16
	State     AccessState
}

// MultipathStats counts what a Multipath did.
type MultipathStats struct {
	// Commands completed (with any status); Retries of a command on a
	// path or after a backoff; Failovers, commands completed on another
	// path than the previous one; Logins, successful path logins.
	Commands, Retries, Failovers, Logins int64
}

// ErrNoPath is wrapped by the error of a command that no path completed
// within IOTimeout.
var ErrNoPath = errors.New("initiator: no path completed the command")

// OpenMultipath logs in to every path it can (a path that cannot log in is
// retried later) and starts the path checker. Close stops it.
func OpenMultipath(ctx context.Context, cfg MultipathConfig) (*Multipath, error) {
	if len(cfg.Portals) == 0 || len(cfg.Portals) > 255 {
		return nil, fmt.Errorf("initiator: multipath needs 1 to 255 portals, got %d", len(cfg.Portals))
	}
	if cfg.Target == "" || cfg.InitiatorName == "" {
		return nil, errors.New("initiator: MultipathConfig needs Target and InitiatorName")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	def := func(d *time.Duration, v time.Duration) {
		if *d == 0 {
			*d = v
		}
	}
	def(&cfg.IOTimeout, 30*time.Second)
	def(&cfg.AttemptTimeout, 5*time.Second)
	def(&cfg.LoginTimeout, 2*time.Second)
	def(&cfg.Backoff, 75*time.Millisecond)
	def(&cfg.CheckInterval, time.Second)
	m := &Multipath{cfg: cfg, log: cfg.Logger.With(logkey.Target, cfg.Target), done: make(chan struct{})}
	for i, a := range cfg.Portals {
		p := &path{idx: i, addr: a, cfg: Config{Addr: a, Target: cfg.Target, LUN: cfg.LUN, InitiatorName: cfg.InitiatorName,
			ISID: [6]byte{0x80, 0x00, 0x53, 0x74, 0x61, byte(i + 1)}}}
		m.paths = append(m.paths, p)
	}
	for _, p := range m.paths {
		p.mu.Lock()
		_ = m.ensureLocked(ctx, p, time.Now()) // a failed path is retried later
		p.mu.Unlock()
	}
	if err := ctx.Err(); err != nil {
		for _, p := range m.paths {
			if p.mu.sess != nil {
				p.mu.sess.Abort()
			}
		}
		return nil, err
	}
	cctx, cancel := context.WithCancel(context.Background())
	m.cancel = cancel
	go m.checker(cctx)
	return m, nil
}

// Close stops the path checker and logs out of every path. It waits for a
// command in progress on a path (at most AttemptTimeout).
func (m *Multipath) Close() error {
	m.cancel()
	<-m.done
	var errs []error
	for _, p := range m.paths {
		p.mu.Lock()
		if p.mu.sess != nil {
			errs = append(errs, p.mu.sess.Close())
			p.mu.sess = nil
		}
		p.mu.Unlock()
	}
	return errors.Join(errs...)
}

// Paths returns the state of every path, in Portals order.
func (m *Multipath) Paths() []PathInfo {
	out := make([]PathInfo, len(m.paths))
	for i, p := range m.paths {
		p.mu.Lock()
		out[i] = PathInfo{Portal: p.addr, Up: p.mu.sess != nil, Known: p.mu.known, PortGroup: p.mu.group, State: p.mu.state}
		p.mu.Unlock()
	}
	return out
}

// Stats returns the counters.
func (m *Multipath) Stats() MultipathStats {
	return MultipathStats{Commands: m.stats.commands.Load(), Retries: m.stats.retries.Load(),
		Failovers: m.stats.failovers.Load(), Logins: m.stats.logins.Load()}
}

// LastPath returns the portal that completed the last command ("" before
// the first).
func (m *Multipath) LastPath() string {
	m.io.Lock()
	defer m.io.Unlock()
	if m.io.last == nil {
		return ""
	}
	return m.io.last.addr
}

// Command runs one SCSI command on the best path, failing over as the
// type's comment says. The arguments are those of Session.Command. The
// error is nil, the target's *SCSIError, or one wrapping ErrNoPath (and
// the last path's error) when IOTimeout or ctx ended first.
//
// NB: IOTimeout starts when Command is called, including the wait for
// the command before it.
func (m *Multipath) Command(ctx context.Context, cdb []byte, out, in []byte) error {
	m.io.Lock()
	defer m.io.Unlock()
	return m.commandLocked(ctx, cdb, out, in)
}

// commandLocked is Command. REQUIRES: m.io held.
func (m *Multipath) commandLocked(ctx context.Context, cdb []byte, out, in []byte) error {
	ctx, cancel := context.WithTimeout(ctx, m.cfg.IOTimeout)
	defer cancel()
	start := time.Now()
	var last error
	for round := 0; ; round++ {
		for _, p := range m.order() {
			final, err := m.try(ctx, p, cdb, out, in)
			if final {
				m.stats.commands.Add(1)
				if m.io.last != nil && m.io.last != p {
					m.stats.failovers.Add(1)
					m.log.Info("multipath: command completed on another path", logkey.Portal, p.addr, "previous", m.io.last.addr)
				}
				m.io.last = p
				return err
			}
			last = err
			if ctx.Err() != nil {
				break
			}
			m.stats.retries.Add(1)
		}
		t := time.NewTimer(m.cfg.Backoff)
		select {
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("%w in %v (%d rounds over %d paths; IOTimeout %v): %w", ErrNoPath,
				time.Since(start).Round(time.Millisecond), round+1, len(m.paths), m.cfg.IOTimeout, last)
		case <-t.C:
		}
	}
}

// order returns the paths best first (see Multipath, step 2).
func (m *Multipath) order() []*path {
	type cand struct {
		p    *path
		rank int
	}
	now := time.Now()
	cs := make([]cand, len(m.paths))
	for i, p := range m.paths {
		p.mu.Lock()
		r := rank(p.mu.state, p.mu.known)
		if p.mu.sess == nil && now.Before(p.mu.retryAt) {
			r = 10 // down, not to be retried yet
		}
		if p == m.io.last {
			r = r*2 - 1 // before its peers of the same rank
		} else {
			r *= 2
		}
		p.mu.Unlock()
		cs[i] = cand{p, r}
	}
	slices.SortStableFunc(cs, func(a, b cand) int { return cmp.Compare(a.rank, b.rank) })
	out := make([]*path, len(cs))
	for i, c := range cs {
		out[i] = c.p
	}
	return out
}

// rank orders access states as dm-multipath's alua prioritizer does
// (lower is better).
func rank(s AccessState, known bool) int {
	if !known {
		return 3
	}
	switch s {
	case ActiveOptimized:
		return 1
	case ActiveNonOptimized:
		return 2
	case Standby:
		return 4
	case Transitioning:
		return 5
	}
	return 6
}

// try runs the command on p. final is true when the command completed:
// err is then nil or the target's answer.
func (m *Multipath) try(ctx context.Context, p *path, cdb []byte, out, in []byte) (final bool, err error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if err := m.ensureLocked(ctx, p, time.Now()); err != nil {
		return false, err
	}
	for ua := 0; ; ua++ {
		actx, cancel := context.WithTimeout(ctx, m.cfg.AttemptTimeout)
		err = p.mu.sess.Command(actx, cdb, out, in)
		cancel()
		p.mu.lastUsed = time.Now()
		if err == nil {
			if !p.mu.state.Active() || !p.mu.known {
				m.setStateLocked(p, p.mu.group, ActiveOptimized, p.mu.known)
			}
			return true, nil
		}
		st, isSCSI := StatusOf(err)
		if !isSCSI {
			m.dropLocked(p, err)
			return false, err
		}
		key, asc, _ := SenseOf(err)
		switch {
		case key == sense.KeyUnitAttention && ua < 8:
			if asc == sense.ASCAsymmetricAccessStateChanged {
				m.refreshLocked(ctx, p)
			}
			continue
		case key == sense.KeyNotReady:
			switch asc {
			case sense.ASCLogicalUnitNotAccessibleStandby:
				m.setStateLocked(p, p.mu.group, Standby, true)
			case sense.ASCLogicalUnitNotAccessibleTransition:
				m.setStateLocked(p, p.mu.group, Transitioning, true)
			case sense.ASCLogicalUnitNotAccessibleUnavailable:
				m.setStateLocked(p, p.mu.group, Unavailable, true)
			}
			return false, err
		case key == sense.KeyIllegalRequest && asc == sense.ASCLogicalUnitNotSupported:
			return false, err
		case st == sense.StatusBusy || st == sense.StatusTaskSetFull:
			return false, err
		}
		if m.log.Enabled(ctx, slog.LevelDebug) {
			m.log.Debug("multipath: command failed", logkey.Portal, p.addr, logkey.Err, err)
		}
		return true, err
	}
}

// ensureLocked logs p in when it is down and its retry time has come, and
// identifies it. REQUIRES: p.mu held.
func (m *Multipath) ensureLocked(ctx context.Context, p *path, now time.Time) error {
	if s := p.mu.sess; s != nil {
		if s.Err() == nil && !s.LogoutRequested() {
			return nil
		}
		reason := s.Err()
		if reason == nil {
			reason = errors.New("initiator: the target asked for a logout")
		}
		m.dropLocked(p, reason)
	}
	if now.Before(p.mu.retryAt) {
		return fmt.Errorf("initiator: path %s is down, next login in %v", p.addr, p.mu.retryAt.Sub(now).Round(time.Millisecond))
	}
	lctx, cancel := context.WithTimeout(ctx, m.cfg.LoginTimeout)
	defer cancel()
	s, err := Dial(lctx, p.cfg)
	if err == nil {
		p.mu.sess = s
		err = m.identifyLocked(lctx, p)
	}
	if err != nil {
		if p.mu.sess != nil {
			p.mu.sess.Abort()
			p.mu.sess = nil
		}
		p.mu.failures++
		p.mu.retryAt = time.Now().Add(min(m.cfg.Backoff<<min(p.mu.failures-1, 5), time.Second))
		if p.mu.failures == 1 {
			m.log.Info("multipath: path login failed", logkey.Portal, p.addr, logkey.Err, err)
		}
		return err
	}
	p.mu.failures = 0
	m.stats.logins.Add(1)
	m.log.Info("multipath: path up", logkey.Portal, p.addr, "port_group", p.mu.group, logkey.Status, p.mu.state.String())
	return nil
}

// identifyLocked reads p's target port group (VPD 0x83) and state (RTPG),
// retrying unit attentions (a new nexus gets POWER ON OCCURRED). A target
// without ALUA counts as active/optimized. REQUIRES: p.mu held, p up.
func (m *Multipath) identifyLocked(ctx context.Context, p *path) error {
	var id DeviceID
	var err error
	for range 8 {
		if id, err = p.mu.sess.DeviceID(ctx); !isUA(err) {
			break
		}
	}
	if err != nil {
		return fmt.Errorf("initiator: path %s: device identification: %w", p.addr, err)
	}
	if !id.HasPortGroup {
		m.setStateLocked(p, 0, ActiveOptimized, true)
		return nil
	}
	p.mu.group = id.PortGroup
	return m.readStateLocked(ctx, p)
}

// readStateLocked asks p for the port groups and records its group's
// state. REQUIRES: p.mu held, p up.
func (m *Multipath) readStateLocked(ctx context.Context, p *path) error {
	var gs []PortGroup
	var err error
	for range 8 {
		if gs, err = p.mu.sess.ReportTargetPortGroups(ctx); !isUA(err) {
			break
		}
	}
	if err != nil {
		return fmt.Errorf("initiator: path %s: REPORT TARGET PORT GROUPS: %w", p.addr, err)
	}
	for _, g := range gs {
		if g.ID == p.mu.group {
			m.setStateLocked(p, g.ID, g.State, true)
			return nil
		}
	}
	return fmt.Errorf("initiator: path %s: port group %d not in REPORT TARGET PORT GROUPS %+v", p.addr, p.mu.group, gs)
}

// refreshLocked re-reads p's state, dropping p when that fails.
// REQUIRES: p.mu held, p up.
func (m *Multipath) refreshLocked(ctx context.Context, p *path) {
	cctx, cancel := context.WithTimeout(ctx, m.cfg.AttemptTimeout)
	defer cancel()
	if err := m.readStateLocked(cctx, p); err != nil && !isSCSI(err) {
		m.dropLocked(p, err)
	}
}

// setStateLocked records p's group and state, logging a change.
// REQUIRES: p.mu held.
func (m *Multipath) setStateLocked(p *path, group uint16, st AccessState, known bool) {
	if p.mu.known && known && p.mu.state != st {
		m.log.Info("multipath: path state changed", logkey.Portal, p.addr, "port_group", group,
			logkey.Status, st.String(), "previous", p.mu.state.String())
	}
	p.mu.group, p.mu.state, p.mu.known = group, st, known
}

// dropLocked closes p's broken session; the next use logs in again at
// once. REQUIRES: p.mu held.
func (m *Multipath) dropLocked(p *path, reason error) {
	if p.mu.sess == nil {
		return
	}
	p.mu.sess.Abort()
	p.mu.sess = nil
	p.mu.known = false
	p.mu.retryAt = time.Time{}
	m.log.Info("multipath: path down", logkey.Portal, p.addr, logkey.Err, reason)
}

// isUA reports whether err is a UNIT ATTENTION.
func isUA(err error) bool {
	k, _, ok := SenseOf(err)
	return ok && k == sense.KeyUnitAttention
}

// checker is the path checker goroutine (see MultipathConfig.CheckInterval).
// It skips paths in use by a command.
func (m *Multipath) checker(ctx context.Context) {
	defer close(m.done)
	if m.cfg.CheckInterval < 0 {
		<-ctx.Done()
		return
	}
	t := time.NewTicker(m.cfg.CheckInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		for _, p := range m.paths {
			if !p.mu.TryLock() {
				continue
			}
			now := time.Now()
			switch {
			case p.mu.sess == nil || p.mu.sess.Err() != nil || p.mu.sess.LogoutRequested():
				_ = m.ensureLocked(ctx, p, now)
			case now.Sub(p.mu.lastUsed) >= m.cfg.CheckInterval:
				m.refreshLocked(ctx, p)
				p.mu.lastUsed = now
			}
			p.mu.Unlock()
		}
	}
}

// ReadCapacity runs READ CAPACITY (16) through Command and remembers the
// block size for Read and Write.
func (m *Multipath) ReadCapacity(ctx context.Context) (Capacity, error) {
	m.io.Lock()
	defer m.io.Unlock()
	c, err := readCapacity(ctx, m.commandLocked)
	if err == nil {
		m.io.capacity = c
	}
	return c, err
}

// Read reads len(b) bytes at lba through Command; ReadCapacity must have
// run.
func (m *Multipath) Read(ctx context.Context, lba uint64, b []byte) error {
	return m.rw(ctx, false, lba, b)
}

// Write writes b at lba through Command; ReadCapacity must have run.
func (m *Multipath) Write(ctx context.Context, lba uint64, b []byte) error {
	return m.rw(ctx, true, lba, b)
}

func (m *Multipath) rw(ctx context.Context, write bool, lba uint64, b []byte) error {
	m.io.Lock()
	defer m.io.Unlock()
	bs := m.io.capacity.BlockSize
	if bs == 0 {
		return ErrNoCapacity
	}
	if len(b)%bs != 0 || len(b) == 0 {
		return fmt.Errorf("initiator: %d-byte transfer is not a multiple of the %d-byte block", len(b), bs)
	}
	var cdb [16]byte
	rwCDB(&cdb, write, lba, len(b)/bs)
	if write {
		return m.commandLocked(ctx, cdb[:], b, nil)
	}
	return m.commandLocked(ctx, cdb[:], nil, b)
}
