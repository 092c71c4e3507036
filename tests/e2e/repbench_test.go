package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"testing"
	"time"
)

// repBenchEnv runs TestReplicatedWriteBench (a measurement, not part of
// make test): STAVE_E2E_REPBENCH=file|pool keeps the copies in files or
// in every node's pool.
const repBenchEnv = "STAVE_E2E_REPBENCH"

// TestReplicatedWriteBench measures writes to a 3-replica volume through
// its owner's portal with qemu-img bench (the client of make bench), 4
// KiB at QD32 (strided like make bench) and 1 MiB at QD8, three runs each,
// and logs the figures for docs/benchmarks.md. It fails only when a run
// fails.
//
//	STAVE_E2E=1 STAVE_E2E_REPBENCH=pool go test -run TestReplicatedWriteBench -v ./tests/e2e
func TestReplicatedWriteBench(t *testing.T) {
	requireE2E(t)
	mode := os.Getenv(repBenchEnv)
	if mode != "file" && mode != "pool" {
		t.Skipf("a measurement: set %s=file or pool", repBenchEnv)
	}
	if _, err := exec.LookPath("qemu-img"); err != nil {
		t.Skip("qemu-img not installed")
	}
	const vol = "repbench"
	withPool := 0
	if mode == "pool" {
		withPool = 3
	}
	ns, target := startReplicatedClusterPools(t, []string{"127.0.0.2", "127.0.0.3", "127.0.0.4"}, vol, withPool)
	owner := ownerNode(t, ns, vol, nil, prServeWait)
	url := fmt.Sprintf("iscsi://%s/%s/0", owner.portal, target)
	const volSize = 64 << 20
	for _, c := range []struct {
		name        string
		size, depth int
		count       int
		step        int
	}{
		{"4KiB-QD32", 4096, 32, 40000, 257 * 4096},
		{"1MiB-QD8", 1 << 20, 8, 1500, 1 << 20},
	} {
		for run := 1; run <= 3; run++ {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			start := time.Now()
			out, err := exec.CommandContext(ctx, "qemu-img", "bench", "-w", "-f", "raw", "-t", "none",
				"-c", strconv.Itoa(c.count), "-d", strconv.Itoa(c.depth), "-s", strconv.Itoa(c.size),
				"-S", strconv.Itoa(c.step%volSize), url).CombinedOutput()
			took := time.Since(start)
			cancel()
			if err != nil {
				t.Fatalf("%s run %d: qemu-img bench: %v: %s", c.name, run, err, out)
			}
			ops := float64(c.count) / took.Seconds()
			t.Logf("%s copies, %s run %d: %.0f IOPS, %.1f MiB/s (%v)", mode, c.name, run, ops, ops*float64(c.size)/(1<<20), took.Round(time.Millisecond))
		}
	}
}
