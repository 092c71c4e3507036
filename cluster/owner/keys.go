package owner

import "stave.dev/stave/cluster"

// Key suffixes under a volume's directory (cluster.VolumesPrefix()+name).
const (
	ownershipSuffix = "/ownership"
	ownerSuffix     = "/owner"
)

// OwnershipKey is the key of a volume's ownership record without its
// owner: {"epoch","isr"}, written without a lease.
func OwnershipKey(volume string) string {
	return cluster.VolumesPrefix() + volume + ownershipSuffix
}

// OwnerKey is the key naming a volume's owner: {"node","epoch"}, attached
// to the owner's lease so that etcd deletes it when the lease lapses.
func OwnerKey(volume string) string {
	return cluster.VolumesPrefix() + volume + ownerSuffix
}

// rangeEnd is the end of the key range [OwnerKey, rangeEnd) that holds
// exactly the two keys of a volume's record: "…/owner" sorts before
// "…/ownership", and no other key of the schema lies between them.
func rangeEnd(volume string) string { return OwnershipKey(volume) + "\x00" }
