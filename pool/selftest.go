package pool

import (
	"fmt"

	"github.com/klauspost/reedsolomon"

	"stave.dev/stave/pool/internal/layout"
)

// selfTestShard is the shard length of the erasure-coding self-test.
const selfTestShard = 256

// selfTestGolden maps k,m to the CRC32C of the parity computed once from
// selfTestData and checked in (like minio's erasureSelfTest).
var selfTestGolden = map[[2]int]uint32{
	{1, 1}: 0x793236d1,
	{2, 1}: 0x45284204,
	{3, 1}: 0xf625d6d8,
	{2, 2}: 0x8fe2f4bb,
	{4, 2}: 0xe7898369,
}

func selfTestData(k, m int) [][]byte {
	shards := make([][]byte, k+m)
	for i := range shards {
		shards[i] = make([]byte, selfTestShard)
		if i < k {
			for j := range shards[i] {
				shards[i][j] = byte(i*31 + j*7 + 1)
			}
		}
	}
	return shards
}

func selfTestParity(k, m int) (uint32, error) {
	enc, err := reedsolomon.New(k, m)
	if err != nil {
		return 0, err
	}
	shards := selfTestData(k, m)
	if err := enc.Encode(shards); err != nil {
		return 0, err
	}
	var all []byte
	for _, s := range shards[k:] {
		all = append(all, s...)
	}
	// Reconstruct after dropping m shards and compare.
	for i := 0; i < m; i++ {
		shards[i] = nil
	}
	if err := enc.Reconstruct(shards); err != nil {
		return 0, err
	}
	for i := 0; i < m; i++ {
		ref := selfTestData(k, m)[i]
		if string(shards[i]) != string(ref) {
			return 0, fmt.Errorf("reconstruction of shard %d differs", i)
		}
	}
	return layout.CRC(all), nil
}

// erasureSelfTest encodes fixed stripes for the supported policies and
// compares the parity with checked-in values, so a broken SIMD path or
// library change cannot silently write unrecoverable parity.
func erasureSelfTest() error {
	for km, golden := range selfTestGolden {
		got, err := selfTestParity(km[0], km[1])
		if err != nil {
			return fmt.Errorf("%w: erasure self-test %d+%d: %v", ErrCorruption, km[0], km[1], err)
		}
		if got != golden {
			return fmt.Errorf("%w: erasure self-test %d+%d: parity crc %08x, want %08x", ErrCorruption, km[0], km[1], got, golden)
		}
	}
	return nil
}
