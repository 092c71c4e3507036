#!/usr/bin/env bash
# run.sh runs libiscsi's conformance suite (iscsi-test-cu --test=ALL --dataloss
# --allow-sanitize) against Stave and against Debian's tgt (the reference), each on a fresh
# sparse 1 GiB logical unit on loopback, and stores the raw console output
# in the out dir. tools/conformance/report turns it into docs/conformance.md.
#
# Usage:
#   tools/conformance/run.sh [--stave-bin PATH] [--out DIR] [options]
#
# Options:
#   --stave-bin PATH    stave binary (default: go build ./cmd/stave into OUT)
#   --stave-url URL     test an already running Stave LU instead of starting
#                       one (iscsi://127.0.0.1:PORT/IQN/0); the caller owns it
#   --stave-pid PID     with --stave-url: the daemon's process, watched so that
#                       the run stops at once if it dies (never signalled)
#   --out DIR           where results go (default: ./conformance-out)
#   --targets LIST      comma-separated subset of "stave,tgt" (default both)
#   --test REGEX        iscsi-test-cu test selection (default ALL)
#   --whole             one iscsi-test-cu run for the whole selection instead
#                       of one run per suite (faster, but a hang loses the rest)
#   --timeout SECS      hard limit per iscsi-test-cu run (default 120 per suite,
#                       900 with --whole)
#   --stave-port N      Stave portal port (default: 3261, else the first free
#                       one of 3263-3269)
#   --tgt-port N        tgtd portal port (default: the first free of 3262-3269)
#   --tgt-control N     tgtd control port, tgtadm -C (default: 5, else 6)
#   --no-detail         do not rerun the suites that fail on Stave with
#                       iscsi-test-cu -V
#   --parallel          run the tgt and the Stave suites at the same time
#                       (about 40% less wall time; the per-target times in
#                       times.txt then overlap)
#   --pool              serve Stave's LU from a pool: three sparse 2 GiB files
#                       in the work directory, a 1 GiB volume of policy 2+1
#                       (with --stave-bin or the default build; --report then
#                       writes docs/conformance-pool.md)
#   --report            run the report generator afterwards (writes
#                       docs/conformance.md; compares Stave with the baseline
#                       tools/conformance/stave-passing.txt)
#
# Files in OUT: stave.log, tgt.log (console output of iscsi-test-cu, verbose
# mode, one CUnit block per suite run, with "### " marker lines written by this
# script), stave-detail.log (suites with failures on Stave run again with -V:
# every SCSI command with expected and actual status), stave-serve.log,
# tgtd.log, list.txt (iscsi-test-cu --list), times.txt (wall time per target),
# env.txt (tool versions).
#
# Wall time (2 vCPUs, shared): full suite 20-65s on tgt, 25-45s on Stave;
# --parallel 30-65s for both; --whole saves a few seconds more.
#
# Why console output and not XML: iscsi-test-cu --xml writes CUnit's own
# "automated" XML (CUnitAutomated-Results.xml, not JUnit) in which a skipped
# test is recorded as a success and the failure messages (expected vs got
# sense) are missing; the verbose console output has both.
#
# Exit status: 0 when every run completed (failing tests do not count), 1 when
# the Stave daemon died (or its LU stopped answering) during the run, 2 on a
# set-up error.
#
# Everything started here is stopped on exit, also on failure or ^C.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)

stave_bin=""
stave_url=""
watch_pid_arg=""
out="conformance-out"
targets="stave,tgt"
test_sel="ALL"
whole=0
run_timeout=""
stave_port=""
tgt_port=""
tgt_ctl=""
do_report=0
detail=1
parallel=0
pool=0

die() { echo "run.sh: $*" >&2; exit 2; }

while [[ $# -gt 0 ]]; do
	case "$1" in
	--stave-bin) stave_bin=$2; shift 2 ;;
	--stave-url) stave_url=$2; shift 2 ;;
	--stave-pid) watch_pid_arg=$2; shift 2 ;;
	--out) out=$2; shift 2 ;;
	--targets) targets=$2; shift 2 ;;
	--test) test_sel=$2; shift 2 ;;
	--whole) whole=1; shift ;;
	--timeout) run_timeout=$2; shift 2 ;;
	--stave-port) stave_port=$2; shift 2 ;;
	--tgt-port) tgt_port=$2; shift 2 ;;
	--tgt-control) tgt_ctl=$2; shift 2 ;;
	--report) do_report=1; shift ;;
	--no-detail) detail=0; shift ;;
	--parallel) parallel=1; shift ;;
	--pool) pool=1; shift ;;
	-h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
	*) die "unknown argument $1 (see --help)" ;;
	esac
done
if [[ -z $run_timeout ]]; then
	if ((whole)); then run_timeout=900; else run_timeout=120; fi
fi

for tool in iscsi-test-cu iscsi-inq timeout; do
	command -v "$tool" >/dev/null || die "$tool not found (apt-get install libiscsi-bin coreutils)"
done
want() { [[ ",$targets," == *",$1,"* ]]; }
if want tgt; then
	export PATH=$PATH:/usr/sbin:/sbin
	command -v tgtd >/dev/null || die "tgtd not found (apt-get install tgt)"
fi

mkdir -p "$out"
out=$(cd "$out" && pwd)
work=$(mktemp -d /tmp/stave-conformance.XXXXXX)

# Initiator names for the one- and two-initiator tests.
init1=iqn.2026-11.dev.stave.conformance:init1
init2=iqn.2026-11.dev.stave.conformance:init2

stave_pid=""
tgtd_pid=""
run_pid=""
bg_pid=""
stave_died=0
stave_watch="" # the daemon whose death stops the Stave run
tgt_tid=1

cleanup() {
	local rc=$?
	set +e
	if [[ -n $run_pid ]]; then
		kill -TERM "$run_pid" 2>/dev/null
		wait "$run_pid" 2>/dev/null
	fi
	if [[ -n $bg_pid ]]; then
		# The background run_suite (--parallel) and its iscsi-test-cu.
		for p in $(ps -o pid= --ppid "$bg_pid"); do kill -TERM "$p" 2>/dev/null; done
		kill -TERM "$bg_pid" 2>/dev/null
		wait "$bg_pid" 2>/dev/null
	fi
	if [[ -n $tgtd_pid ]]; then
		# tgtd ignores SIGTERM while it has targets: delete them first.
		timeout 10 tgtadm -C "$tgt_ctl" --lld iscsi --op delete --mode target --tid "$tgt_tid" --force >/dev/null 2>&1
		timeout 10 tgtadm -C "$tgt_ctl" --op delete --mode system >/dev/null 2>&1
		for _ in $(seq 50); do kill -0 "$tgtd_pid" 2>/dev/null || break; sleep 0.1; done
		kill -0 "$tgtd_pid" 2>/dev/null && { kill -TERM "$tgtd_pid"; sleep 1; kill -KILL "$tgtd_pid" 2>/dev/null; }
		wait "$tgtd_pid" 2>/dev/null
	fi
	if [[ -n $stave_pid ]]; then
		kill -TERM "$stave_pid" 2>/dev/null
		for _ in $(seq 100); do kill -0 "$stave_pid" 2>/dev/null || break; sleep 0.1; done
		if kill -0 "$stave_pid" 2>/dev/null; then
			echo "run.sh: stave serve did not exit 10s after SIGTERM; killing it" >&2
			kill -KILL "$stave_pid" 2>/dev/null
		fi
		wait "$stave_pid" 2>/dev/null
	fi
	rm -rf "$work"
	exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# port_free PORT: nothing listens on 127.0.0.1:PORT.
port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# wait_lu URL SECS: wait until iscsi-inq can log in and INQUIRE the LU.
wait_lu() {
	local url=$1 secs=$2 i
	for ((i = 0; i < secs * 5; i++)); do
		timeout 5 iscsi-inq -i "$init1" "$url" >/dev/null 2>&1 && return 0
		sleep 0.2
	done
	return 1
}

{
	echo "date: $(date -u +%FT%TZ)"
	echo "iscsi-test-cu: $(dpkg-query -W -f '${Version}' libiscsi-bin 2>/dev/null || echo unknown)"
	echo "tgt: $(dpkg-query -W -f '${Version}' tgt 2>/dev/null || echo unknown)"
	echo "kernel: $(uname -r)"
	echo "stave: $(cd "$root" && git rev-parse --short HEAD 2>/dev/null || echo unknown)$(cd "$root" && git diff --quiet 2>/dev/null || echo '+dirty')"
} >"$out/env.txt"

iscsi-test-cu --list >"$out/list.txt" 2>&1 || true
# Suites of the selection: ALL.Read10 etc. (the first two name components).
mapfile -t suites < <(awk -F. -v sel="$test_sel" '
	NF == 3 && (index($0, sel ".") == 1 || $0 == sel || index(sel, $1 "." $2 ".") == 1) { print $1 "." $2 }
' "$out/list.txt" | uniq)
((${#suites[@]} > 0)) || die "no suite matches --test $test_sel"

# marker FILE LINE: append a "### " marker line to FILE on a line of its own
# (iscsi-test-cu may have stopped in the middle of a line).
marker() {
	if [[ -s $1 && -n $(tail -c 1 "$1") ]]; then echo >>"$1"; fi
	echo "$2" >>"$1"
}

# run_suite NAME URL: run the selection against URL, appending to OUT/NAME.log.
run_suite() {
	local name=$1 url=$2 log="$out/$1.log" t0 t1 s0 rc drc sel watch_pid
	: >"$log"
	if [[ $name == stave ]]; then : >"$out/$name-detail.log"; fi
	t0=$(date +%s.%N)
	local -a runs
	if ((whole)); then runs=("$test_sel"); else runs=("${suites[@]}"); fi
	for sel in "${runs[@]}"; do
		# A suite narrower than the selection (e.g. --test ALL.Read10.Simple).
		if [[ ${#test_sel} -gt ${#sel} && $test_sel == "$sel".* ]]; then sel=$test_sel; fi
		marker "$log" "### RUN $sel"
		s0=$(date +%s.%N)
		set +e
		# The URL is given twice so that the MultipathIO tests run (two
		# sessions to the same LU). In the background so that a signal to
		# this script is handled at once (bash defers traps until a
		# foreground child ends); cleanup kills it.
		(cd "$work" && exec timeout -k 10 "$run_timeout" iscsi-test-cu --test="$sel" --dataloss --allow-sanitize \
			--initiator-name="$init1" --initiator-name-2="$init2" "$url" "$url") >>"$log" 2>&1 &
		run_pid=$!
		watch_pid=""
		if [[ $name == stave && -n $stave_watch ]]; then
			# Stop the run at once if the daemon dies (libiscsi would try
			# to reconnect until the time limit).
			(while kill -0 "$stave_watch" 2>/dev/null; do sleep 0.5; done; kill -TERM "$run_pid" 2>/dev/null) &
			watch_pid=$!
		fi
		wait "$run_pid"
		rc=$?
		run_pid=""
		if [[ -n $watch_pid ]]; then
			kill "$watch_pid" 2>/dev/null
			wait "$watch_pid" 2>/dev/null
		fi
		set -e
		if [[ $rc == 1 && $detail == 1 && $whole == 0 && $name == stave ]]; then
			# Some tests failed: run the suite again with -V (every SCSI
			# command and its expected and actual status) for the report.
			marker "$out/$name-detail.log" "### RUN $sel"
			(cd "$work" && exec timeout -k 10 "$run_timeout" iscsi-test-cu --test="$sel" --dataloss --allow-sanitize -V \
				--initiator-name="$init1" --initiator-name-2="$init2" "$url" "$url") >>"$out/$name-detail.log" 2>&1 &
			run_pid=$!
			wait "$run_pid" && drc=0 || drc=$?
			marker "$out/$name-detail.log" "### END $sel rc=$drc"
			run_pid=""
		fi
		local died=0
		if [[ $name == stave && -n $stave_watch ]] && ! kill -0 "$stave_watch" 2>/dev/null; then died=1; fi
		# Without a process to watch: a run that timed out or crashed
		# against an LU that no longer answers.
		if [[ $name == stave && -z $stave_watch ]] && ((rc > 1)) && ! wait_lu "$url" 5; then died=1; fi
		if ((died)); then
			marker "$log" "### EXIT $sel the Stave daemon exited or its LU stopped answering; no further suites run"
		elif ((rc == 124 || rc == 137)); then
			marker "$log" "### TIMEOUT $sel after ${run_timeout}s"
		elif ((rc > 1)); then
			marker "$log" "### EXIT $sel rc=$rc"
		fi
		marker "$log" "### END $sel rc=$rc secs=$(awk -v a="$s0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')"
		if ((died)); then
			stave_died=1
			echo "run.sh: stave serve exited during $sel" >&2
			break
		fi
	done
	t1=$(date +%s.%N)
	local secs
	secs=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", b - a }')
	echo "$name $secs" >>"$out/times.txt"
	printf 'run.sh: %s: %ss, %s\n' "$name" "$secs" \
		"$(grep -E '^ +tests ' "$log" | awk '{r+=$3; p+=$4; f+=$5} END {print r " ran, " p " passed, " f " failed"}')" >&2
}

: >"$out/times.txt"

# pick_port PORT...: print the first of the ports nothing listens on.
pick_port() {
	local p
	for p in "$@"; do
		if port_free "$p"; then
			echo "$p"
			return 0
		fi
	done
	return 1
}

if want tgt; then
	if [[ -z $tgt_port ]]; then
		tgt_port=$(pick_port 3262 3263 3264 3265 3266 3267 3268 3269) || die "no free port in 3262-3269 for tgtd"
	fi
	if [[ -z $tgt_ctl ]]; then
		for c in 5 6; do
			if ! timeout 5 tgtadm -C "$c" --op show --mode system >/dev/null 2>&1; then
				tgt_ctl=$c
				break
			fi
		done
		[[ -n $tgt_ctl ]] || die "tgtd control ports 5 and 6 are both taken"
	fi
	port_free "$tgt_port" || die "127.0.0.1:$tgt_port is in use"
	truncate -s 1G "$work/tgt.img"
	tgtd -f --iscsi portal="127.0.0.1:$tgt_port" -C "$tgt_ctl" >"$out/tgtd.log" 2>&1 &
	tgtd_pid=$!
	iqn=iqn.2026-11.dev.stave:conformance-tgt
	for _ in $(seq 50); do
		tgtadm -C "$tgt_ctl" --lld iscsi --op new --mode target --tid "$tgt_tid" -T "$iqn" >/dev/null 2>&1 && break
		kill -0 "$tgtd_pid" 2>/dev/null || die "tgtd exited: $(cat "$out/tgtd.log")"
		sleep 0.1
	done
	tgtadm -C "$tgt_ctl" --lld iscsi --op new --mode logicalunit --tid "$tgt_tid" --lun 1 \
		-b "$work/tgt.img" --bstype rdwr
	tgtadm -C "$tgt_ctl" --lld iscsi --op bind --mode target --tid "$tgt_tid" -I ALL
	# tgt's LUN 0 is its controller; the disk is LUN 1.
	url="iscsi://127.0.0.1:$tgt_port/$iqn/1"
	wait_lu "$url" 10 || die "tgt LU $url not reachable"
	tgt_url=$url
fi

if want stave; then
	if [[ -n $stave_url ]]; then
		url=$stave_url
		stave_watch=$watch_pid_arg
	else
		if [[ -z $stave_bin ]]; then
			stave_bin="$out/stave"
			(cd "$root" && go build -o "$stave_bin" ./cmd/stave) || die "go build ./cmd/stave failed"
		fi
		if [[ -z $stave_port ]]; then
			stave_port=$(pick_port 3261 3263 3264 3265 3266 3267 3268 3269) || die "no free port in 3261-3269 for Stave"
		fi
		port_free "$stave_port" || die "127.0.0.1:$stave_port is in use"
		sock="$work/api.sock"
		"$stave_bin" serve --data-dir "$work/stave-data" --portal "127.0.0.1:$stave_port" \
			--api "unix:$sock" >"$out/stave-serve.log" 2>&1 &
		stave_pid=$!
		stave_watch=$stave_pid
		up=0
		for _ in $(seq 150); do
			kill -0 "$stave_pid" 2>/dev/null || die "stave serve exited: $(tail -20 "$out/stave-serve.log")"
			if [[ -S $sock ]] && "$stave_bin" --api "unix:$sock" volume list >>"$out/stave-serve.log" 2>&1; then
				up=1
				break
			fi
			sleep 0.2
		done
		((up)) || die "stave serve did not answer on $sock (see $out/stave-serve.log)"
		policy=()
		if ((pool)); then
			devs=()
			for i in 0 1 2; do
				truncate -s 2G "$work/pool-dev$i" || die "cannot make $work/pool-dev$i"
				devs+=(--device "$work/pool-dev$i")
			done
			"$stave_bin" --api "unix:$sock" pool create "${devs[@]}" >>"$out/stave-serve.log" 2>&1 ||
				die "could not create the pool (see $out/stave-serve.log)"
			policy=(--policy 2+1)
		fi
		"$stave_bin" --api "unix:$sock" volume create conformance --size 1GiB "${policy[@]}" \
			>>"$out/stave-serve.log" 2>&1 || die "could not create the volume (see $out/stave-serve.log)"
		url="iscsi://127.0.0.1:$stave_port/iqn.2026-11.dev.stave:conformance/0"
	fi
	wait_lu "$url" 30 || die "Stave LU $url not reachable"
	stave_url=$url
fi

if want tgt && want stave && ((parallel)); then
	run_suite tgt "$tgt_url" &
	bg_pid=$!
	run_suite stave "$stave_url"
	wait "$bg_pid" || die "the tgt run failed"
	bg_pid=""
else
	if want tgt; then run_suite tgt "$tgt_url"; fi
	if want stave; then run_suite stave "$stave_url"; fi
fi

if ((do_report)); then
	args=(-out docs/conformance.md -reasons tools/conformance/reasons.txt -list "$out/list.txt")
	if ((pool)); then
		args=(-out docs/conformance-pool.md -stave-lu "one 1 GiB pool volume of policy 2+1 (checksums on) on three sparse 2 GiB files, LUN 0 (make conformance-pool: run.sh --pool --report)"
			-reasons tools/conformance/reasons.txt -list "$out/list.txt")
	fi
	[[ -f $out/stave.log ]] && args+=(-stave "$out/stave.log" -stave-detail "$out/stave-detail.log" -baseline tools/conformance/stave-passing.txt)
	[[ -f $out/tgt.log ]] && args+=(-tgt "$out/tgt.log")
	[[ -f $out/times.txt ]] && args+=(-times "$out/times.txt" -env "$out/env.txt")
	(cd "$root" && go run ./tools/conformance/report "${args[@]}")
fi
if ((stave_died)); then
	echo "run.sh: the Stave daemon died or its LU stopped answering during the run" >&2
	exit 1
fi
