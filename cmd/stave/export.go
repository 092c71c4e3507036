package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"sync"

	"stave.dev/stave/internal/adminapi"
	"stave.dev/stave/internal/filedev"
	"stave.dev/stave/internal/logkey"
	"stave.dev/stave/internal/volume"
	"stave.dev/stave/target/iscsi"
	"stave.dev/stave/target/iscsi/login"
	"stave.dev/stave/target/scsi"
	"stave.dev/stave/target/scsi/pr"
)

// errExported means a volume is exported already.
var errExported = errors.New("stave: volume already exported")

// exported is one volume being served.
type exported struct {
	spec   *volume.Spec
	dev    scsi.BlockDevice
	close  func() error // releases dev; nil for pool volumes, which the pool owns
	target *iscsi.Target
}

// release closes the backing file of a file volume.
func (x *exported) release() error {
	if x.close == nil {
		return nil
	}
	return x.close()
}

// exporter turns catalogue volumes into iSCSI targets. It is the server's
// iscsi.TargetSource and the admin API's adminapi.Targets, and is safe for
// concurrent use.
type exporter struct {
	log  *slog.Logger
	cat  *volume.Catalog
	pool *poolHost

	mu struct {
		sync.RWMutex
		srv  *iscsi.Server        // nil until setServer
		byIQ map[string]*exported // by target name
	}
}

var (
	_ scsi.BlockDevice        = (*filedev.Device)(nil)
	_ scsi.ProvisioningStatus = (*filedev.Device)(nil)
	_ iscsi.TargetSource      = (*exporter)(nil)
	_ adminapi.Targets        = (*exporter)(nil)
)

func newExporter(log *slog.Logger, cat *volume.Catalog, ph *poolHost) *exporter {
	e := &exporter{log: log, cat: cat, pool: ph}
	e.mu.byIQ = make(map[string]*exported)
	return e
}

func (e *exporter) setServer(s *iscsi.Server) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.mu.srv = s
}

// Export opens the volume's storage (its backing file, or its pool
// volume) and logical unit and makes its target visible to logins and
// SendTargets.
func (e *exporter) Export(ctx context.Context, s *volume.Spec) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	iqn := s.TargetName()
	e.mu.RLock()
	_, dup := e.mu.byIQ[iqn]
	e.mu.RUnlock()
	if dup {
		return fmt.Errorf("%w: %s", errExported, s.Name)
	}
	naa, err := s.NAAID()
	if err != nil {
		return err
	}
	x := &exported{spec: s}
	// A sparse file deallocates at any 512-byte boundary it can punch, so
	// it reports physical = logical; the pool's block is 4 KiB (smaller
	// writes are read-modify-write).
	physical := s.BlockSize
	if s.InPool() {
		v, err := e.pool.volume(s.Name)
		if err != nil {
			return err
		}
		x.dev, physical = v, max(4096, s.BlockSize)
	} else {
		fd, err := filedev.Open(e.cat.DataPath(s.Name))
		if err != nil {
			return err
		}
		x.dev, x.close = fd, fd.Close
	}
	if x.dev.Size() != s.Size {
		_ = x.release()
		return fmt.Errorf("stave: volume %s: backing store is %d bytes, spec says %d", s.Name, x.dev.Size(), s.Size)
	}
	log := e.log.With(logkey.Volume, s.Name)
	lu, err := scsi.NewLU(scsi.LUConfig{
		Logger:            log,
		Device:            x.dev,
		BlockSize:         s.BlockSize,
		PhysicalBlockSize: physical,
		Name:              s.Name,
		Serial:            s.Serial,
		NAA:               naa,
		Reservations:      pr.FileStore{Path: e.cat.PRPath(s.Name)},
	})
	if err != nil {
		_ = x.release()
		return err
	}
	tgt := scsi.NewTarget(scsi.TargetConfig{Logger: log, LUNs: map[uint64]*scsi.LU{0: lu}})
	it := &iscsi.Target{Name: iqn, Alias: s.Name, ACL: slices.Clone(s.ACL), Device: tgt}
	if s.CHAP != nil {
		it.Auth = &login.Auth{User: s.CHAP.User, Secret: s.CHAP.Secret,
			MutualUser: s.CHAP.MutualUser, MutualSecret: s.CHAP.MutualSecret}
	}
	x.target = it
	e.mu.Lock()
	defer e.mu.Unlock()
	if _, dup := e.mu.byIQ[iqn]; dup {
		_ = x.release()
		return fmt.Errorf("%w: %s", errExported, s.Name)
	}
	e.mu.byIQ[iqn] = x
	log.Info("volume exported", logkey.Target, iqn)
	return nil
}

// Unexport hides the volume's target from new logins, closes its sessions
// and closes its backing file. Once started it runs to completion.
func (e *exporter) Unexport(ctx context.Context, name string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	iqn := volume.TargetName(name)
	e.mu.Lock()
	x, ok := e.mu.byIQ[iqn]
	delete(e.mu.byIQ, iqn)
	srv := e.mu.srv
	e.mu.Unlock()
	if !ok {
		return nil
	}
	if srv != nil {
		srv.CloseTarget(iqn)
	}
	if err := x.release(); err != nil {
		e.log.Warn("closing backing file", logkey.Volume, name, logkey.Err, err)
	}
	e.log.Info("volume unexported", logkey.Volume, name, logkey.Target, iqn)
	return nil
}

// Exported implements adminapi.Targets.
func (e *exporter) Exported(name string) bool {
	e.mu.RLock()
	defer e.mu.RUnlock()
	_, ok := e.mu.byIQ[volume.TargetName(name)]
	return ok
}

// Target implements iscsi.TargetSource.
func (e *exporter) Target(name string) (*iscsi.Target, bool) {
	e.mu.RLock()
	defer e.mu.RUnlock()
	x, ok := e.mu.byIQ[name]
	if !ok {
		return nil, false
	}
	return x.target, true
}

// Targets implements iscsi.TargetSource, sorted by name.
func (e *exporter) Targets() []*iscsi.Target {
	e.mu.RLock()
	out := make([]*iscsi.Target, 0, len(e.mu.byIQ))
	for _, x := range e.mu.byIQ {
		out = append(out, x.target)
	}
	e.mu.RUnlock()
	slices.SortFunc(out, func(a, b *iscsi.Target) int { return strings.Compare(a.Name, b.Name) })
	return out
}

// Sessions implements adminapi.Targets.
func (e *exporter) Sessions() []adminapi.Session {
	e.mu.RLock()
	srv := e.mu.srv
	e.mu.RUnlock()
	if srv == nil {
		return nil
	}
	infos := srv.Sessions()
	out := make([]adminapi.Session, 0, len(infos))
	for _, si := range infos {
		out = append(out, adminapi.Session{
			InitiatorName: si.InitiatorName, InitiatorAlias: si.InitiatorAlias, TargetName: si.TargetName,
			ISID: si.ISID, TSIH: si.TSIH, Type: si.Type, Portal: si.Portal, Remote: si.Remote,
			Connections: si.Connections, Params: paramMap(si.Params),
		})
	}
	return out
}

// closeAll closes every backing file; called once the server has stopped
// and before the pool closes.
func (e *exporter) closeAll() {
	e.mu.Lock()
	defer e.mu.Unlock()
	for iqn, x := range e.mu.byIQ {
		if err := x.release(); err != nil {
			e.log.Warn("closing backing file", logkey.Volume, x.spec.Name, logkey.Err, err)
		}
		delete(e.mu.byIQ, iqn)
	}
}

// paramMap renders negotiated parameters by their RFC 7143 key names.
func paramMap(p login.Params) map[string]string {
	yn := func(b bool) string {
		if b {
			return "Yes"
		}
		return "No"
	}
	dg := func(b bool) string {
		if b {
			return "CRC32C"
		}
		return "None"
	}
	u := func(v uint32) string { return strconv.FormatUint(uint64(v), 10) }
	return map[string]string{
		"HeaderDigest":                   dg(p.HeaderDigest),
		"DataDigest":                     dg(p.DataDigest),
		"MaxConnections":                 u(uint32(p.MaxConnections)),
		"InitialR2T":                     yn(p.InitialR2T),
		"ImmediateData":                  yn(p.ImmediateData),
		"MaxRecvDataSegmentLength":       u(p.InitiatorMaxRecvDataSegmentLength),
		"TargetMaxRecvDataSegmentLength": u(p.TargetMaxRecvDataSegmentLength),
		"MaxBurstLength":                 u(p.MaxBurstLength),
		"FirstBurstLength":               u(p.FirstBurstLength),
		"DefaultTime2Wait":               u(uint32(p.DefaultTime2Wait)),
		"DefaultTime2Retain":             u(uint32(p.DefaultTime2Retain)),
		"MaxOutstandingR2T":              u(uint32(p.MaxOutstandingR2T)),
		"DataPDUInOrder":                 yn(p.DataPDUInOrder),
		"DataSequenceInOrder":            yn(p.DataSequenceInOrder),
		"ErrorRecoveryLevel":             u(uint32(p.ErrorRecoveryLevel)),
	}
}
