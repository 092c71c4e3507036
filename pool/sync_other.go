//go:build !linux

package pool

import "os"

// syncData makes the written data of f durable (fsync).
func syncData(f *os.File) error { return f.Sync() }
