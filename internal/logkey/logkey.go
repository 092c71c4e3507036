// Package logkey defines, once, the lower_snake attribute keys that every
// Stave component uses with log/slog (STYLE.md §17), so that one key means
// one thing in every log line and log queries can rely on it.
//
// Use them with slog's key-value form:
//
//	log := cfg.Logger.With(logkey.Volume, name, logkey.Initiator, iqn)
package logkey

// Attribute keys for structured logs.
const (
	// Volume is the volume name.
	Volume = "volume"
	// Target is the iSCSI target name (IQN).
	Target = "target"
	// Initiator is the iSCSI initiator name.
	Initiator = "initiator"
	// ISID is the initiator session ID in hex.
	ISID = "isid"
	// TSIH is the target session identifying handle.
	TSIH = "tsih"
	// Conn is the connection ID (CID) or a connection's remote address.
	Conn = "conn"
	// Portal is a listening portal address host:port.
	Portal = "portal"
	// Remote is a peer's network address.
	Remote = "remote"
	// LUN is a logical unit number.
	LUN = "lun"
	// Epoch is an ownership epoch.
	Epoch = "epoch"
	// Path is a filesystem path.
	Path = "path"
	// Size is a size in bytes.
	Size = "size"
	// Err is an error value.
	Err = "err"
	// Op is the name of an operation (HTTP route, SCSI opcode, verb).
	Op = "op"
	// Version is a software version string.
	Version = "version"
	// Method is an HTTP method.
	Method = "method"
	// Status is an HTTP or SCSI status.
	Status = "status"
	// Duration is an elapsed time.
	Duration = "duration"
	// Component names the subsystem that logs (iscsi, volume, adminapi, …).
	Component = "component"
	// API is the admin API address.
	API = "api"
	// Count is a number of things not covered by a more specific key.
	Count = "count"
	// Volumes is a number of volumes.
	Volumes = "volumes"
	// Sessions is a number of sessions.
	Sessions = "sessions"
	// Node is a cluster node ID.
	Node = "node"
	// Owner is the node that owns a volume.
	Owner = "owner"
	// Replicas is a set or number of replica nodes.
	Replicas = "replicas"
	// RegionsCopied is a number of regions copied by a resync.
	RegionsCopied = "regions_copied"
	// BytesSent is a number of bytes sent to a peer.
	BytesSent = "bytes_sent"
)
