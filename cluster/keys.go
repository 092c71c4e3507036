package cluster

import "strings"

// SchemaVersion is the version of the key schema this package writes
// and reads. It is stored at SchemaKey.
const SchemaVersion = "1"

// Keys of the schema (see the package doc and docs/etcd-keys.md).
const (
	// SchemaKey holds the schema version of the keys under Prefix.
	SchemaKey = "/stave/schema"
	// Prefix is the root of every key of schema version 1.
	Prefix = "/stave/v1/"

	nodesPrefix        = Prefix + "nodes/"
	registrationPrefix = Prefix + "registrations/"
	poolsPrefix        = Prefix + "pools/"
	volumesPrefix      = Prefix + "volumes/"
	reservationsPrefix = Prefix + "reservations/"
	specSuffix         = "/spec"
	statusSuffix       = "/status"
)

// NodeKey is the key of a node's record.
func NodeKey(id string) string { return nodesPrefix + id }

// RegistrationKey is the key of a node's registration: its last
// record, kept without a lease so that a node that died is listed as
// down rather than forgotten.
func RegistrationKey(id string) string { return registrationPrefix + id }

// PoolKey is the key of a node's pool record.
func PoolKey(node string) string { return poolsPrefix + node }

// VolumesPrefix is the prefix of every volume key.
func VolumesPrefix() string { return volumesPrefix }

// VolumeSpecKey is the key of a volume's spec.
func VolumeSpecKey(name string) string { return volumesPrefix + name + specSuffix }

// VolumeStatusKey is the key of a volume's status.
func VolumeStatusKey(name string) string { return volumesPrefix + name + statusSuffix }

// ReservationKey is the key of a volume's persistent-reservation state.
func ReservationKey(name string) string { return reservationsPrefix + name }

// parseSpecKey returns the volume name of a spec key, and false for any
// other key.
func parseSpecKey(k string) (string, bool) {
	rest, ok := strings.CutPrefix(k, volumesPrefix)
	if !ok {
		return "", false
	}
	name, ok := strings.CutSuffix(rest, specSuffix)
	if !ok || name == "" || strings.Contains(name, "/") {
		return "", false
	}
	return name, true
}
