package pool

import (
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Sentinel errors. Errors returned by the pool wrap one of these (test with
// errors.Is); write errors that a SCSI initiator must see as a specific
// sense are additionally wrapped in a *sense.Error.
var (
	// ErrNotFound reports a missing volume, snapshot or device.
	ErrNotFound = errors.New("pool: not found")
	// ErrExists reports a name that is already taken, or a device that
	// already holds a Stave superblock.
	ErrExists = errors.New("pool: already exists")
	// ErrCorruption reports data or metadata that fails its checksum and
	// cannot be reconstructed, or a broken batch in the middle of the log.
	ErrCorruption = errors.New("pool: corruption")
	// ErrTornTail reports an incomplete last batch, discarded at replay.
	// It is expected after a crash and never returned by Open.
	ErrTornTail = errors.New("pool: torn tail")
	// ErrNoSpace reports a pool without free segments for new writes.
	ErrNoSpace = errors.New("pool: out of space")
	// ErrDegraded reports a volume whose policy cannot be met by the
	// healthy devices: it serves reads but refuses writes.
	ErrDegraded = errors.New("pool: degraded below policy")
	// ErrClosed reports use of a closed pool.
	ErrClosed = errors.New("pool: closed")
	// ErrInvalid reports an invalid argument (size, alignment, policy).
	ErrInvalid = errors.New("pool: invalid argument")
	// ErrNotImplemented reports a feature that is not built yet.
	ErrNotImplemented = errors.New("pool: not implemented")
)

// Policy is an erasure-coding policy: Data data chunks plus Parity parity
// chunks per stripe, on Data+Parity distinct devices. The zero value means
// "derive from the device count" (PolicyFor(devices, false)).
type Policy struct {
	Data, Parity int
}

// String returns "k+m".
func (p Policy) String() string { return fmt.Sprintf("%d+%d", p.Data, p.Parity) }

// PolicyFor returns the default policy for a pool of the given number of
// devices: 1: 1+0, 2: 1+1, 3: 2+1, 4-5: 3+1 (2+2 if preferTwoParity),
// 6 or more: 4+2. Zero or fewer devices yield the zero Policy.
func PolicyFor(devices int, preferTwoParity bool) Policy {
	switch {
	case devices <= 0:
		return Policy{}
	case devices == 1:
		return Policy{1, 0}
	case devices == 2:
		return Policy{1, 1}
	case devices == 3:
		return Policy{2, 1}
	case devices <= 5:
		if preferTwoParity {
			return Policy{2, 2}
		}
		return Policy{3, 1}
	default:
		return Policy{4, 2}
	}
}

// Device is one raw device or file of the pool. Implementations must be
// safe for concurrent use (ReadAt/WriteAt at distinct offsets, Sync). A nil
// error from Sync means every completed WriteAt is on stable storage. Tests
// inject faults through this interface.
type Device interface {
	ReadAt(p []byte, off int64) (int, error)
	WriteAt(p []byte, off int64) (int, error)
	Sync() error
	Size() int64
	Close() error
}

// CreateOptions configures Create.
type CreateOptions struct {
	// Devices are the paths of the devices (files or block devices).
	Devices []string
	// MetaDir holds the index (pebble) and pool.json.
	MetaDir string
	// SegmentSize is the size of one segment on each device, a multiple of
	// 1 MiB and at least 4 MiB. Zero means 64 MiB.
	SegmentSize int64
	// Logger receives log lines; nil discards them.
	Logger *slog.Logger
	// OpenDevice opens a device; nil opens os files or block devices.
	OpenDevice func(path string) (Device, error)
}

// Options configures Open and Recover.
type Options struct {
	// MetaDir holds the pebble index and pool.json (the device list).
	MetaDir string
	// Logger receives log lines; nil discards them.
	Logger *slog.Logger
	// Registerer, when non-nil, receives the pool's Prometheus metrics.
	Registerer prometheus.Registerer
	// OpenDevice opens a device; nil opens os files or block devices.
	OpenDevice func(path string) (Device, error)
	// ScrubRate is the background scrub rate in bytes/s; 0 disables it.
	ScrubRate int64
	// GCInterval is the period of the background cleaner; 0 means 10s.
	GCInterval time.Duration
}

// DeviceState is the health of one device.
type DeviceState uint8

// Device states.
const (
	// DeviceOK is a healthy device.
	DeviceOK DeviceState = iota
	// DeviceFailed is a device that passed the I/O error threshold.
	DeviceFailed
	// DeviceMissing is a device that could not be opened at Open.
	DeviceMissing
)

// String returns the state's name.
func (s DeviceState) String() string {
	switch s {
	case DeviceOK:
		return "ok"
	case DeviceFailed:
		return "failed"
	case DeviceMissing:
		return "missing"
	}
	return fmt.Sprintf("DeviceState(%d)", uint8(s))
}

// DeviceStatus describes one device in Status.
type DeviceStatus struct {
	Path           string
	Index          int
	State          DeviceState
	Size           int64 // bytes
	Used           int64 // bytes in in-use segments on this device
	ReadErrors     int64
	WriteErrors    int64
	ChecksumErrors int64
	Repairs        int64 // blocks or chunks rewritten after reconstruction
}

// SpaceStatus is the pool's space accounting, in bytes.
type SpaceStatus struct {
	Logical  int64 // live 4 KiB blocks of all volumes
	Physical int64 // bytes of in-use segments on all devices (data+parity+headers)
	Parity   int64 // bytes of parity chunks
	Garbage  int64 // dead data blocks in sealed segments
	Free     int64 // bytes of free segments (including the GC reserve)
	Capacity int64 // bytes of all segments
}

// Status is a snapshot of the pool's health and space.
type Status struct {
	PoolID   string
	Devices  []DeviceStatus
	Space    SpaceStatus
	Degraded bool
	// Reason explains Degraded (which devices failed, which policies can
	// no longer be met).
	Reason  string
	Volumes int
}

// VolumeInfo describes one volume.
type VolumeInfo struct {
	Name   string
	ID     uint64
	Size   int64
	Policy Policy
	// Parent and ParentSnapshot name the origin of a clone.
	Parent, ParentSnapshot string
	// Logical is the number of bytes of mapped blocks.
	Logical int64
	// ReadOnly is set when the policy cannot be met by healthy devices.
	ReadOnly bool
}

// SnapshotInfo describes one snapshot.
type SnapshotInfo struct {
	Name    string
	Volume  string
	Version uint64
	Created time.Time
}

// Progress reports a long operation (scrub, rebuild).
type Progress struct {
	Op         string // "scrub", "rebuild"
	Done       int64  // bytes processed
	Total      int64  // bytes to process (estimate)
	Repaired   int64  // chunks repaired
	Unreadable int64  // stripes that could not be reconstructed
}

// ScrubReport is the outcome of Scrub.
type ScrubReport struct {
	Stripes        int64 // batches (stripes) verified
	Bytes          int64 // bytes read
	ChecksumErrors int64 // chunks that failed verification
	Repaired       int64 // chunks rewritten
	Unrecoverable  int64 // stripes with fewer than k good chunks
	Duration       time.Duration
}
