package pool

import (
	"os"
	"syscall"
)

// syncData makes the written data of f durable with fdatasync: the data
// and the metadata needed to read it back (allocation, size), without the
// timestamps, which spares a journal commit per batch on a preallocated
// file or a block device.
func syncData(f *os.File) error {
	rc, err := f.SyscallConn()
	if err != nil {
		return f.Sync()
	}
	var serr error
	if err := rc.Control(func(fd uintptr) {
		for {
			serr = syscall.Fdatasync(int(fd))
			if serr != syscall.EINTR {
				return
			}
		}
	}); err != nil {
		return err
	}
	if serr != nil {
		return &os.PathError{Op: "fdatasync", Path: f.Name(), Err: serr}
	}
	return nil
}
