package e2e

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"stave.dev/stave/internal/initiator"
	"stave.dev/stave/target/scsi/sense"
)

// TestClusterGrowReplicated grows a 3-replica volume online (issue 5's
// online resize, for a replicated volume of issue 6) and checks what an
// initiator sees and that nothing is lost:
//
//  1. Three daemons on 127.0.0.2-4; n1 keeps its copy in its pool, n2 and
//     n3 in files. Blocks are written through the owner below the old end.
//  2. `stave volume resize` to twice the size, asked of a node that does
//     not serve the volume: it returns once the owner serves the new size.
//  3. The owner's session gets CAPACITY DATA HAS CHANGED; READ CAPACITY
//     gives the new size through every holder's portal (standby ports
//     answer it).
//  4. Blocks beyond the old end are written; the ISR still has 3 members.
//  5. kill -9 the owner: the new owner serves the grown size and every
//     acknowledged block, below and beyond the old end, reads back whole.
func TestClusterGrowReplicated(t *testing.T) {
	requireE2E(t)
	const vol = "grow"
	const oldSize, newSize = 64 << 20, 128 << 20
	ns, target := startReplicatedClusterPools(t, []string{"127.0.0.2", "127.0.0.3", "127.0.0.4"}, vol, 1)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	paths := map[*clusterNode]*scsiPath{}
	for _, n := range ns {
		p := &scsiPath{cfg: initiator.Config{Addr: n.portal, Target: target, InitiatorName: "iqn.2026-11.dev.stave:e2e-grow"}}
		paths[n] = p
		defer p.close()
	}
	owner := ownerNode(t, ns, vol, nil, prServeWait)
	acked := map[uint64]uint64{} // lba (4 KiB blocks) -> seq
	write := func(p *scsiPath, lba, seq uint64) {
		t.Helper()
		if err := p.eventually(ctx, func(ctx context.Context, s *initiator.Session) error { return writeBlock(ctx, s, lba, seq) }); err != nil {
			t.Fatalf("writing block %d through %s: %v", lba, p.cfg.Addr, err)
		}
		acked[lba] = seq
	}
	oldBlocks := uint64(oldSize / failoverBlock)
	for _, lba := range []uint64{0, 1, oldBlocks / 2, oldBlocks - 1} {
		write(paths[owner], lba, 1)
	}

	var other *clusterNode
	for _, n := range ns {
		if n != owner {
			other = n
			break
		}
	}
	started := time.Now()
	if out, err := other.CLI("volume", "resize", vol, "--size", fmt.Sprint(newSize)); err != nil {
		t.Fatalf("volume resize through %s: %v: %s", other.name, err, out)
	}
	t.Logf("volume resize through non-owner %s returned after %v", other.name, time.Since(started).Round(time.Millisecond))

	// The owner's existing session is told, once.
	s, err := paths[owner].session(ctx)
	if err != nil {
		t.Fatal(err)
	}
	err = s.TestUnitReady(ctx)
	if k, asc, ok := initiator.SenseOf(err); !ok || k != sense.KeyUnitAttention || asc != sense.ASCCapacityDataHasChanged {
		t.Fatalf("first command on the owner's session after the grow: %v, want UNIT ATTENTION, CAPACITY DATA HAS CHANGED", err)
	}
	for _, n := range ns {
		var c initiator.Capacity
		err := paths[n].do(ctx, func(ctx context.Context, s *initiator.Session) error {
			var err error
			c, err = s.ReadCapacity(ctx)
			return err
		})
		if err != nil || int64(c.Blocks)*int64(c.BlockSize) != newSize {
			t.Fatalf("%s: READ CAPACITY %+v %v, want %d bytes", n.name, c, err, newSize)
		}
	}

	newBlocks := uint64(newSize / failoverBlock)
	for _, lba := range []uint64{0, oldBlocks, oldBlocks + 1, newBlocks - 1} {
		write(paths[owner], lba, 2)
	}
	if _, err := waitInSync(owner, vol, 3, clusterWaitTimeout); err != nil {
		t.Fatalf("after the grow: %v", err)
	}

	owner.Kill()
	next := ownerNode(t, ns, vol, owner, prServeWait)
	t.Logf("killed owner %s; %s serves", owner.name, next.name)
	got := make([]byte, failoverBlock)
	want := make([]byte, failoverBlock)
	for lba, seq := range acked {
		err := paths[next].eventually(ctx, func(ctx context.Context, s *initiator.Session) error { return readBlocks(ctx, s, lba, got) })
		if err != nil {
			t.Fatalf("reading block %d through %s: %v", lba, next.name, err)
		}
		failoverPattern(want, lba, seq)
		if !bytes.Equal(got, want) {
			t.Errorf("block %d through the new owner %s: %s", lba, next.name, checkBlock(lba, got, blockHistory{acked: seq}))
		}
	}
	var c initiator.Capacity
	if err := paths[next].do(ctx, func(ctx context.Context, s *initiator.Session) error {
		var err error
		c, err = s.ReadCapacity(ctx)
		return err
	}); err != nil || int64(c.Blocks)*int64(c.BlockSize) != newSize {
		t.Fatalf("new owner %s: READ CAPACITY %+v %v, want %d bytes", next.name, c, err, newSize)
	}
	if err := ctx.Err(); errors.Is(err, context.DeadlineExceeded) {
		t.Fatal(err)
	}
}
