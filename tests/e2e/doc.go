// Package e2e holds Stave's end-to-end suites. They build the real
// stave binary, start `stave serve` on loopback and drive it with real
// initiators: the Linux kernel initiator (open-iscsi) inside a QEMU guest
// (guest_test.go, image built by tools/guest/build.sh) and libiscsi's
// command-line tools and test suite on the host.
//
// The suites run only when STAVE_E2E=1 is set; then a missing prerequisite
// (qemu, debootstrap, libiscsi-bin, ...) is a failure, not a skip. Without
// STAVE_E2E they skip, so `go test ./...` stays fast and hermetic.
//
// TestGuestLinuxInitiator boots one guest that runs testdata/guest-initiator.sh:
// SendTargets discovery, login, a 16 MiB O_DIRECT pattern (also checked in
// the volume's backing file on the host), ext4 and fsck, CRC32C digests,
// one-way and mutual CHAP with wrong secrets, an ACL that refuses the guest,
// discovery CHAP, dm-multipath over two portals, and a graceful and a
// SIGKILL restart of the daemon under a logged-in session. Each check is a
// named step; the host requires every step to report ok.
//
// Environment:
//
//	STAVE_E2E=1            run the suites
//	STAVE_E2E_TARGET=tgt   run the guest scenario against Debian's tgtd
//	                       (known tgt deviations are listed, not failed)
//	STAVE_E2E_LOGDIR=DIR   keep the guest console and daemon logs in DIR
//	STAVE_E2E_RACE=1       build stave with -race (logs are checked for races)
//	STAVE_E2E_KVM=1        boot the guest with KVM instead of TCG
//
// Shared helpers live in daemon_test.go: startDaemon builds bin/stave once
// per test binary and runs a daemon on a free loopback port whose
// SendTargets address is 10.0.2.2:<port>, the host as seen from a QEMU
// user-network guest.
package e2e
