package filedev

import (
	"bytes"
	"context"
	"errors"
	"testing"
)

func TestGrow(t *testing.T) {
	ctx := context.Background()
	d := newDev(t, 1<<20)
	data := bytes.Repeat([]byte{7}, 4096)
	if err := d.WriteAt(ctx, data, 1<<20-4096, false); err != nil {
		t.Fatal(err)
	}
	if err := d.WriteAt(ctx, data, 1<<20, false); !errors.Is(err, ErrOutOfRange) {
		t.Fatalf("write past the end = %v", err)
	}
	if err := d.Grow(1 << 20); err == nil {
		t.Fatal("Grow to the same size succeeded")
	}
	if err := d.Grow(2 << 20); err != nil {
		t.Fatal(err)
	}
	if d.Size() != 2<<20 {
		t.Fatalf("Size = %d", d.Size())
	}
	if err := d.WriteAt(ctx, data, 2<<20-4096, false); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, 4096)
	if err := d.ReadAt(ctx, got, 1<<20-4096); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("old data after grow: %v", err)
	}
	if err := d.ReadAt(ctx, got, 1<<20); err != nil || !bytes.Equal(got, make([]byte, 4096)) {
		t.Fatalf("new range is not zeros: %v", err)
	}
	re, err := Open(d.Path())
	if err != nil {
		t.Fatal(err)
	}
	defer re.Close()
	if re.Size() != 2<<20 {
		t.Fatalf("reopened size %d", re.Size())
	}
}
