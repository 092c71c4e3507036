package replication

// Log attribute keys this package needs that internal/logkey does not
// define yet (STYLE.md §17 wants them there).
// TODO(lead): move Node, Owner, Replicas, RegionsCopied and BytesSent to
// internal/logkey and use them from there.
const (
	keyNode          = "node"
	keyOwner         = "owner"
	keyReplicas      = "replicas"
	keyRegionsCopied = "regions_copied"
	keyBytesSent     = "bytes_sent"
)
