package pr

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
)

// FileStore is a Store that keeps the State as JSON in the file Path.
// Save replaces the file atomically (temporary file in the same directory,
// fsync, rename, fsync of the directory), so a crash leaves either the old
// or the new state. A missing file loads as the empty State.
//
// A FileStore holds no state besides Path; concurrent Saves to one path
// must be serialised by the caller (the Manager does).
type FileStore struct {
	// Path is the state file, e.g. DATA/volumes/<name>/pr.json.
	Path string
}

// Load reads the state file. A missing file is the zero State.
func (f FileStore) Load(ctx context.Context) (State, error) {
	if err := ctx.Err(); err != nil {
		return State{}, err
	}
	b, err := os.ReadFile(f.Path)
	if errors.Is(err, fs.ErrNotExist) {
		return State{}, nil
	}
	if err != nil {
		return State{}, fmt.Errorf("pr: read state: %w", err)
	}
	var s State
	if err := json.Unmarshal(b, &s); err != nil {
		return State{}, fmt.Errorf("%w: %s: %v", ErrCorruptState, f.Path, err)
	}
	return s, nil
}

// Save writes s durably and atomically to Path.
func (f FileStore) Save(ctx context.Context, s State) (err error) {
	if err := ctx.Err(); err != nil {
		return err
	}
	b, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return fmt.Errorf("pr: encode state: %w", err)
	}
	b = append(b, '\n')
	dir := filepath.Dir(f.Path)
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(f.Path)+".tmp-*")
	if err != nil {
		return fmt.Errorf("pr: save state: %w", err)
	}
	defer func() {
		if err != nil {
			_ = os.Remove(tmp.Name())
		}
	}()
	if _, err = tmp.Write(b); err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("pr: save state: %w", err)
	}
	if err = os.Rename(tmp.Name(), f.Path); err != nil {
		return fmt.Errorf("pr: save state: %w", err)
	}
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("pr: save state: %w", err)
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("pr: save state: sync dir: %w", err)
	}
	return nil
}
