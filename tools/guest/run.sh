#!/bin/bash
# run.sh boots the Stave test guest (built by build.sh) under QEMU TCG with
# user networking, hands it SCRIPT through fw_cfg, and copies the serial
# console to stdout. The guest reaches the host's loopback as 10.0.2.2. The
# guest powers itself off after the script; QEMU is killed after
# $STAVE_GUEST_TIMEOUT seconds (default 600) regardless.
#
# Usage: tools/guest/run.sh SCRIPT [extra qemu args...]
# Exit status: QEMU's (124 on timeout). The script's own status is in the
# console line "STAVE-GUEST script rc=N".
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
[[ $# -ge 1 && -r $1 ]] || { echo "usage: $0 SCRIPT [qemu args...]" >&2; exit 2; }
script=$1
shift
img=$("$here/build.sh")
exec timeout -k 10 "${STAVE_GUEST_TIMEOUT:-600}" qemu-system-x86_64 \
	-accel tcg -cpu max -smp 2 -m 1024 -nographic -no-reboot \
	-kernel "$img/vmlinuz" -initrd "$img/initrd.gz" -append "$(cat "$img/cmdline")" \
	-netdev user,id=n0 -device virtio-net-pci,netdev=n0,romfile= \
	-device virtio-rng-pci \
	-fw_cfg name=opt/stave/script,file="$script" \
	"$@"
