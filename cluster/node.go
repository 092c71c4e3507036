package cluster

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// NodeIDFile is the file under the data dir that holds the node's ID.
const NodeIDFile = "node-id"

// LoadNodeID returns the node ID stored in DIR/node-id, creating a random
// one (16 hex digits) on first use. The ID never changes afterwards: it
// names the node in etcd.
func LoadNodeID(dir string) (string, error) {
	p := filepath.Join(dir, NodeIDFile)
	b, err := os.ReadFile(p)
	if err == nil {
		id := strings.TrimSpace(string(b))
		if !validNodeID(id) {
			return "", fmt.Errorf("cluster: %s holds %q, not a node ID (16 hex digits): restore it from a backup, or remove it to make a new node", p, id)
		}
		return id, nil
	}
	if !errors.Is(err, fs.ErrNotExist) {
		return "", fmt.Errorf("cluster: node ID: %w", err)
	}
	var r [8]byte
	if _, err := rand.Read(r[:]); err != nil {
		return "", fmt.Errorf("cluster: node ID: %w", err)
	}
	id := hex.EncodeToString(r[:])
	tmp := p + ".tmp"
	if err := os.WriteFile(tmp, []byte(id+"\n"), 0o600); err != nil {
		return "", fmt.Errorf("cluster: node ID: %w", err)
	}
	if err := syncFile(tmp); err != nil {
		return "", err
	}
	if err := os.Rename(tmp, p); err != nil {
		return "", fmt.Errorf("cluster: node ID: %w", err)
	}
	return id, syncFile(dir)
}

func syncFile(p string) error {
	f, err := os.Open(p)
	if err != nil {
		return fmt.Errorf("cluster: %w", err)
	}
	err = f.Sync()
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("cluster: sync %s: %w", p, err)
	}
	return nil
}

func validNodeID(id string) bool {
	if len(id) != 16 {
		return false
	}
	_, err := hex.DecodeString(id)
	return err == nil
}

// PoolInfo is what /stave/v1/pools/<node> holds.
type PoolInfo struct {
	Node    string    `json:"node"`
	Exists  bool      `json:"exists"`
	Devices []string  `json:"devices,omitempty"`
	Updated time.Time `json:"updated"`
}

// PutPool records the node's pool.
func (c *Cluster) PutPool(ctx context.Context, p PoolInfo) error {
	b, err := json.Marshal(p)
	if err != nil {
		return fmt.Errorf("cluster: %w", err)
	}
	if _, err := c.cli.Put(ctx, PoolKey(p.Node), string(b)); err != nil {
		return fmt.Errorf("cluster: pool record: %w", err)
	}
	return nil
}
