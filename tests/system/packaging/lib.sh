# Shared by the packaging checks (sourced, POSIX sh): one PASS/FAIL line per case, a count of
# failures for the exit status.
failures=0
pass() { echo "PASS: $1"; }
fail()
{
	echo "FAIL: $1"
	shift
	for line in "$@"; do echo "    $line"; done
	failures=$((failures + 1))
}
