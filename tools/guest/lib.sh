# lib.sh: helpers for test scripts run by the Stave test guest. Source it:
#   . /usr/lib/stave-guest/lib.sh
# Each helper prints one marker line the host parses:
#   STAVE-STEP <name> ok [rc=<n>] t=<seconds since boot>
#   STAVE-STEP <name> FAIL rc=<n> [want=<m>] t=<seconds since boot>
# Names are single words. Output of the command goes to the console before
# the marker. Helpers return the command's status, so `step a cmd || exit`
# works.

# _uptime prints seconds since boot.
_uptime() {
	cut -d' ' -f1 /proc/uptime
}

# step NAME CMD...: run CMD; ok when it exits 0.
step() {
	_name=$1
	shift
	echo "STAVE-RUN $_name: $*"
	"$@"
	_rc=$?
	if [ $_rc -eq 0 ]; then
		echo "STAVE-STEP $_name ok t=$(_uptime)"
	else
		echo "STAVE-STEP $_name FAIL rc=$_rc t=$(_uptime)"
	fi
	return $_rc
}

# expect_rc NAME WANT CMD...: run CMD; ok when it exits with status WANT.
expect_rc() {
	_name=$1
	_want=$2
	shift 2
	echo "STAVE-RUN $_name (want rc=$_want): $*"
	"$@"
	_rc=$?
	if [ $_rc -eq "$_want" ]; then
		echo "STAVE-STEP $_name ok rc=$_rc t=$(_uptime)"
		return 0
	fi
	echo "STAVE-STEP $_name FAIL rc=$_rc want=$_want t=$(_uptime)"
	return 1
}

# value NAME VALUE: report a value to the host (STAVE-VALUE NAME VALUE).
value() {
	echo "STAVE-VALUE $1 $2"
}
