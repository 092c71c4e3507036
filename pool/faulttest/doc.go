// Package faulttest holds the pool's fault tests (issue 4): process crash
// tests (kill -9 of a writer), crash tests on crashable in-memory devices,
// corruption, device loss and rebuild, index loss, snapshots and a full
// pool. It has no code of its own; everything is in _test.go files and
// exercises only the exported API of package pool (docs/architecture.md,
// "Contract: pool").
//
// Every randomised test logs its seed and replays with
//
//	go test ./pool/faulttest -run TestName -seed N
//
// A replay repeats the random choices (operations, LBAs, crash points and
// modes, kill delays), not the goroutine and timer schedule of the pool.
//
// Heavier variants (more iterations, more crash points) run with
// -faulttest.heavy or FAULTTEST_HEAVY=1.
//
// Block contents are self-describing: each 512-byte sector of a written
// 4 KiB block starts with a magic number, the LBA (in 4 KiB blocks), the
// write's sequence number and the sector index, followed by bytes derived
// from those three, so a read tells which write (if any) a block came from
// and whether it is torn or misdirected:
//
//	+--------+--------+--------+-----+------------------------------+
//	| magic  |  LBA   |  seq   | idx |  pseudo-random(LBA,seq,idx)  |
//	| 8 B    |  8 B   |  8 B   | 8 B |  480 B                       |
//	+--------+--------+--------+-----+------------------------------+
package faulttest
