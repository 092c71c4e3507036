// Package cluster is Stave's control plane: the etcd that holds all
// shared state (embedded in the daemon or external), the key schema under
// which that state lives, the node's identity, and the stores that other
// packages use through their own interfaces: the volume catalogue
// (internal/volume.Store) and persistent reservations (pr.Store).
//
// Key schema, version 1 (docs/etcd-keys.md is the reference for
// operators):
//
//	/stave/schema                     "1": the schema version of everything below
//	/stave/v1/nodes/<node-id>         NodeInfo JSON, under a lease (gone when the node is)
//	/stave/v1/registrations/<node-id> the same, without a lease (a dead node is listed down)
//	/stave/v1/pools/<node-id>         PoolInfo JSON: the node's pool (exists, devices)
//	/stave/v1/volumes/<name>/spec     volume.Spec JSON: size, backend, policy, ACL, CHAP, NAA, node
//	/stave/v1/volumes/<name>/status   VolumeStatus JSON written by the node serving it
//	/stave/v1/reservations/<name>     pr.State JSON: persistent reservations of the volume's LU
//
// Writes are transactions: a create compares the key's create revision
// with 0, an update or delete compares its mod revision with the one the
// writer read, so that two writers never overwrite each other silently.
// A volume's delete removes its spec, status and reservations in one
// transaction.
//
// At start-up Open checks /stave/schema: an empty etcd gets "1"; another
// value stops the daemon with an error that names both versions (a newer
// Stave wrote the data; upgrade this node, or point it at another etcd).
//
// Embedded mode (the default) runs a single etcd member with its data in
// DATA/etcd, listening on 127.0.0.1 on ports chosen at start unless the
// configuration names them, and talks to it in-process. Several nodes
// form a cluster of embedded members from a static initial cluster
// (Config.InitialCluster) or by joining a running member
// (Config.Join: MemberAdd, then start as an existing member); a member
// with data restarts from it (join.go). RunNode keeps the node's
// records alive and Nodes lists them (nodes.go). External mode
// (Config.Endpoints) connects to an existing etcd cluster, with TLS when a
// CA or client certificate is given. etcd's own logs go to the daemon's
// slog logger at warn level and above.
package cluster
