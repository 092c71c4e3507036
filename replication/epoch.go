package replication

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io/fs"
	"net/url"
	"os"
	"path/filepath"
	"sync"
)

// Epoch file layout (16 bytes): magic "SEPO" | epoch u64 | CRC32C u32 of
// bytes 0-11.
const (
	epochMagic    = "SEPO"
	epochFileSize = 16
)

// ErrCorruptEpoch reports an epoch file that fails its checksum.
var ErrCorruptEpoch = errors.New("replication: corrupt epoch file")

// EpochStore persists, per volume, the highest epoch a node has seen, in
// one small file per volume under a directory. Raise is crash-safe: it
// writes a temporary file, fsyncs it, renames it over the old one and
// fsyncs the directory. Safe for concurrent use.
type EpochStore struct {
	dir string
	mu  struct {
		sync.Mutex
		cache map[string]uint64
	}
}

// OpenEpochStore opens (creating) the directory dir.
func OpenEpochStore(dir string) (*EpochStore, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("replication: epoch dir: %w", err)
	}
	s := &EpochStore{dir: dir}
	s.mu.cache = map[string]uint64{}
	return s, nil
}

func (s *EpochStore) path(volume string) string {
	return filepath.Join(s.dir, url.PathEscape(volume)+".epoch")
}

// Get returns the highest persisted epoch of volume (0 when none). It
// returns an error wrapping ErrCorruptEpoch for a damaged file.
func (s *EpochStore) Get(volume string) (uint64, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.getLocked(volume)
}

// REQUIRES: s.mu held.
func (s *EpochStore) getLocked(volume string) (uint64, error) {
	if e, ok := s.mu.cache[volume]; ok {
		return e, nil
	}
	b, err := os.ReadFile(s.path(volume))
	if errors.Is(err, fs.ErrNotExist) {
		s.mu.cache[volume] = 0
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("replication: read epoch: %w", err)
	}
	if len(b) != epochFileSize || string(b[:4]) != epochMagic ||
		crc32.Checksum(b[:12], castagnoli) != binary.BigEndian.Uint32(b[12:]) {
		return 0, fmt.Errorf("%w: %s", ErrCorruptEpoch, s.path(volume))
	}
	e := binary.BigEndian.Uint64(b[4:])
	s.mu.cache[volume] = e
	return e, nil
}

// Raise persists epoch for volume if it is higher than the stored one and
// returns the highest epoch after the call. It returns only once the new
// value is durable.
func (s *EpochStore) Raise(volume string, epoch uint64) (uint64, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	cur, err := s.getLocked(volume)
	if err != nil {
		return 0, err
	}
	if epoch <= cur {
		return cur, nil
	}
	b := make([]byte, 0, epochFileSize)
	b = append(b, epochMagic...)
	b = binary.BigEndian.AppendUint64(b, epoch)
	b = binary.BigEndian.AppendUint32(b, crc32.Checksum(b, castagnoli))
	p := s.path(volume)
	tmp := p + ".tmp"
	if err := writeSync(tmp, b); err != nil {
		return cur, err
	}
	if err := os.Rename(tmp, p); err != nil {
		return cur, fmt.Errorf("replication: persist epoch: %w", err)
	}
	if err := syncDir(s.dir); err != nil {
		return cur, err
	}
	s.mu.cache[volume] = epoch
	return epoch, nil
}

func writeSync(path string, b []byte) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return fmt.Errorf("replication: persist epoch: %w", err)
	}
	if _, err := f.Write(b); err != nil {
		f.Close()
		return fmt.Errorf("replication: persist epoch: %w", err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("replication: persist epoch: %w", err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("replication: persist epoch: %w", err)
	}
	return nil
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("replication: sync epoch dir: %w", err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("replication: sync epoch dir: %w", err)
	}
	return nil
}

// Forget deletes the persisted epoch of volume: the clean-up after the
// volume was deleted for good. A missing file is nothing to do.
func (s *EpochStore) Forget(volume string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.mu.cache, volume)
	if err := os.Remove(s.path(volume)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("replication: forget epoch: %w", err)
	}
	return syncDir(s.dir)
}
