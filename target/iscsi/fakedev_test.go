package iscsi

import (
	"context"
	"encoding/binary"
	"sync"
	"sync/atomic"

	"stave.dev/stave/target/scsi"
	"stave.dev/stave/target/scsi/sense"
)

// fakeDev is a small scsi.Device over a byte slice with 512-byte blocks:
// INQUIRY, READ CAPACITY(10/16), TEST UNIT READY, REPORT LUNS and
// READ/WRITE(10/16). A READ or WRITE of LBA blockLBA blocks until aborted
// by a TMF or until its context ends.
type fakeDev struct {
	mu      sync.Mutex
	data    []byte
	running map[uint64]chan struct{} // tag -> abort channel, blocked tasks
	lost    atomic.Int32
	tmfs    atomic.Int32
	started chan uint64 // tags of blocked tasks, when non-nil
}

const (
	fakeBS   = 512
	blockLBA = 999
)

func newFakeDev(blocks int) *fakeDev {
	return &fakeDev{data: make([]byte, blocks*fakeBS), running: map[uint64]chan struct{}{}}
}

func checkCond(k sense.Key, asc sense.ASC) scsi.Result {
	s := []byte{0x70, 0, byte(k), 0, 0, 0, 0, 10, 0, 0, 0, 0, asc.Code(), asc.Qualifier(), 0, 0, 0, 0}
	return scsi.Result{Status: sense.StatusCheckCondition, Sense: s}
}

func (d *fakeDev) Execute(ctx context.Context, t *scsi.Task) scsi.Result {
	if t.LUN != 0 {
		return checkCond(sense.KeyIllegalRequest, sense.ASCLogicalUnitNotSupported)
	}
	cdb := t.CDB
	switch cdb[0] {
	case 0x00: // TEST UNIT READY
		return scsi.Result{}
	case 0x12: // INQUIRY
		b := make([]byte, 36)
		b[2], b[3], b[4] = 5, 2, 31
		copy(b[8:], "STAVE   FAKE            0001")
		return scsi.Result{Data: b[:min(len(b), int(binary.BigEndian.Uint16(cdb[3:])))]}
	case 0x25: // READ CAPACITY(10)
		b := make([]byte, 8)
		binary.BigEndian.PutUint32(b, uint32(len(d.data)/fakeBS-1))
		binary.BigEndian.PutUint32(b[4:], fakeBS)
		return scsi.Result{Data: b}
	case 0x9e: // READ CAPACITY(16)
		b := make([]byte, 32)
		binary.BigEndian.PutUint64(b, uint64(len(d.data)/fakeBS-1))
		binary.BigEndian.PutUint32(b[8:], fakeBS)
		return scsi.Result{Data: b[:min(32, int(binary.BigEndian.Uint32(cdb[10:])))]}
	case 0xa0: // REPORT LUNS
		b := make([]byte, 16)
		b[3] = 8
		return scsi.Result{Data: b}
	case 0x28, 0x88, 0x2a, 0x8a:
		var lba uint64
		var n int
		if cdb[0] == 0x28 || cdb[0] == 0x2a {
			lba, n = uint64(binary.BigEndian.Uint32(cdb[2:])), int(binary.BigEndian.Uint16(cdb[7:]))
		} else {
			lba, n = binary.BigEndian.Uint64(cdb[2:]), int(binary.BigEndian.Uint32(cdb[10:]))
		}
		if lba == blockLBA {
			return d.block(ctx, t)
		}
		off, size := int(lba)*fakeBS, n*fakeBS
		if off+size > len(d.data) || lba > uint64(len(d.data)) {
			return checkCond(sense.KeyIllegalRequest, sense.ASCLBAOutOfRange)
		}
		d.mu.Lock()
		defer d.mu.Unlock()
		if cdb[0] == 0x28 || cdb[0] == 0x88 {
			return scsi.Result{Data: append([]byte(nil), d.data[off:off+size]...)}
		}
		// Like the SCSI layer: write whole blocks of what was sent, up to
		// the transfer length (libiscsi's residual tests expect this).
		size = min(size, len(t.DataOut)/fakeBS*fakeBS)
		copy(d.data[off:], t.DataOut[:size])
		return scsi.Result{}
	}
	return checkCond(sense.KeyIllegalRequest, sense.ASCInvalidCommandOperationCode)
}

func (d *fakeDev) block(ctx context.Context, t *scsi.Task) scsi.Result {
	ch := make(chan struct{})
	d.mu.Lock()
	d.running[t.Tag] = ch
	d.mu.Unlock()
	if d.started != nil {
		d.started <- t.Tag
	}
	select {
	case <-ch:
	case <-ctx.Done():
	}
	d.mu.Lock()
	delete(d.running, t.Tag)
	d.mu.Unlock()
	return scsi.Result{Aborted: true}
}

func (d *fakeDev) TaskManagement(ctx context.Context, n scsi.Nexus, fn scsi.TMF, lun uint64, tag uint64) scsi.TMFResponse {
	d.tmfs.Add(1)
	d.mu.Lock()
	defer d.mu.Unlock()
	switch fn {
	case scsi.TMFAbortTask:
		ch, ok := d.running[tag]
		if !ok {
			return scsi.TMFTaskDoesNotExist
		}
		close(ch)
		delete(d.running, tag)
	default:
		for tg, ch := range d.running {
			close(ch)
			delete(d.running, tg)
		}
	}
	return scsi.TMFComplete
}

func (d *fakeDev) NexusLost(n scsi.Nexus) { d.lost.Add(1) }

// staticTargets is a TargetSource over a fixed list.
type staticTargets []*Target

func (s staticTargets) Target(name string) (*Target, bool) {
	for _, t := range s {
		if t.Name == name {
			return t, true
		}
	}
	return nil, false
}

func (s staticTargets) Targets() []*Target { return s }
