#!/bin/sh
# The FreeBSD rc.d script (dist/freebsd/nfs_tls_proxy) under /bin/sh (dash), run the three ways
# FreeBSD runs it, against rc-subr-standin.sh (a stand-in for /etc/rc.subr written from rc.subr(8)):
#
#   service(8)        executes the script: $0 is the script (or the symlink of a second instance)
#   /etc/rc (boot)    sources it with run_rc_script ... faststart: $0 is /etc/rc, the file in $_file
#   /etc/rc.shutdown  sources it with run_rc_script ... faststop:  $0 is /etc/rc.shutdown
#
# Everything lives under a temporary root: the script's fixed paths (/etc/rc.subr, /usr/sbin/daemon,
# /usr/local/, /var/run/) are rewritten to it, as the port's %%PREFIX%% is. daemon(8) and the proxy
# are fakes that record their command lines; they run as real processes (the supervisor with the
# ps title "daemon: /PATH/nfs-tls-proxy[PID] (daemon)", as daemon(8) shows it) so that status, stop
# and reload act on real pids and signals. Usage: rc-d-test.sh [RC_D_SCRIPT]
# One PASS/FAIL line per case; exit status 1 if any failed.
set -u

HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../../.." && pwd)
SCRIPT=${1:-$REPO/dist/freebsd/nfs_tls_proxy}
PORT_RC_IN=$REPO/dist/freebsd/port/files/nfs_tls_proxy.in

T=$(mktemp -d /tmp/rc-d-test.XXXXXX)
ROOT=$T/root
LOG=$ROOT/log
RCD=$ROOT/usr/local/etc/rc.d

cleanup()
{
	if [ -f "$ROOT/procs" ]; then
		# shellcheck disable=SC2046
		kill -KILL $(cat "$ROOT/procs") 2>/dev/null
	fi
	rm -rf "$T"
}
trap cleanup EXIT
trap 'exit 1' INT TERM

. "$HERE/lib.sh"

# -- the temporary root ----------------------------------------------------------------------------
mkdir -p "$RCD" "$ROOT/etc" "$ROOT/usr/sbin" "$ROOT/usr/local/bin" "$ROOT/var/run" \
	"$ROOT/usr/local/etc/nfs-tls-proxy"
{
	echo "RC_ROOT='$ROOT'"
	cat "$HERE/rc-subr-standin.sh"
} >"$ROOT/etc/rc.subr"
: >"$ROOT/usr/local/etc/nfs-tls-proxy/server.toml"
: >"$ROOT/usr/local/etc/nfs-tls-proxy/client.toml"
: >"$ROOT/procs"

# Fake daemon(8): records its arguments, rejects options it does not know (as getopt does: a proxy
# flag placed before the command fails here as it does on FreeBSD), starts the command and a
# supervisor process titled like daemon(8)'s, writes both pid files, and returns (daemon(8) forks).
# On SIGTERM the supervisor passes it to the proxy, waits for it and exits, removing the pid files.
cat >"$ROOT/usr/sbin/daemon" <<EOF
#!/bin/bash
LOG='$LOG' PROCS='$ROOT/procs'
EOF
cat >>"$ROOT/usr/sbin/daemon" <<'EOF'
echo "daemon $*" >>"$LOG"
child_pidfile= sup_pidfile=
while getopts ':cfHrSp:P:u:o:s:l:t:m:R:T:' opt; do
	case $opt in
	p) child_pidfile=$OPTARG ;;
	P) sup_pidfile=$OPTARG ;;
	\?) echo "daemon: illegal option -- $OPTARG" >&2; exit 1 ;;
	:) echo "daemon: option requires an argument -- $OPTARG" >&2; exit 1 ;;
	esac
done
shift $((OPTIND - 1))
[ -x "$1" ] || { echo "daemon: $1: cannot execute" >&2; exit 1; }
"$@" </dev/null >/dev/null 2>&1 &
child=$!
echo "$child" >>"$PROCS"
[ -n "$child_pidfile" ] && echo "$child" >"$child_pidfile"
supervise='child=$1 cpid=$2 spid=$3
alive() { [ -e /proc/$1 ] && ! grep -q "^[0-9]* (.*) Z" /proc/$1/stat 2>/dev/null; }
# Only its own pid files, as daemon(8) (funlinkat: not a file that has replaced them under the name).
unlink_own() { [ "$(cat "$1" 2>/dev/null)" = "$2" ] && rm -f "$1"; }
stop() {
	kill -TERM "$child" 2>/dev/null
	for i in $(seq 100); do alive "$child" || break; sleep 0.1; done
	unlink_own "$cpid" "$child"; unlink_own "$spid" "$$"; exit 0
}
trap stop TERM
for i in $(seq 3000); do alive "$child" || break; sleep 0.1 & wait $!; done
unlink_own "$cpid" "$child"; unlink_own "$spid" "$$"'
( exec -a "daemon: $1[$child] (daemon)" bash -c "$supervise" supervisor "$child" "$child_pidfile" "$sup_pidfile" ) \
	</dev/null >/dev/null 2>&1 &
sup=$!
echo "$sup" >>"$PROCS"
[ -n "$sup_pidfile" ] && echo "$sup" >"$sup_pidfile"
exit 0
EOF

# Fake nfs-tls-proxy: records every call; `check` fails when ROOT/check-fails exists; `reload` is
# unknown when ROOT/old-binary exists (as in a binary from before that subcommand), else it signals
# the pid in --pid-file; server/client run until SIGTERM, logging each SIGHUP and the SIGTERM. With
# --handover-socket PATH it "takes over" when PATH is a socket, else creates one there (python3), then
# writes --pid-file and FILE.reload and logs "ready", as the proxy does once it accepts; it fails
# instead when ROOT/start-fails exists. At exit it removes its pid files if they are still its own.
cat >"$ROOT/usr/local/bin/nfs-tls-proxy" <<EOF
#!/bin/bash
LOG='$LOG' ROOT='$ROOT'
EOF
cat >>"$ROOT/usr/local/bin/nfs-tls-proxy" <<'EOF'
echo "nfs-tls-proxy $*" >>"$LOG"
case "$1" in
check)
	[ -e "$ROOT/check-fails" ] && { echo "problem: the key does not match the certificate" >&2; exit 1; }
	echo "mode: server"
	;;
reload)
	[ -e "$ROOT/old-binary" ] && { echo "error: unrecognized subcommand 'reload'" >&2; exit 2; }
	[ "$2" = --help ] && exit 0
	[ "$2" = --pid-file ] || exit 2
	read -r pid <"$3" && kill -HUP "$pid"
	;;
server | client)
	pidfile= socket=
	while [ $# -gt 0 ]; do
		case "$1" in
		--pid-file) pidfile=$2; shift ;;
		--handover-socket) socket=$2; shift ;;
		esac
		shift
	done
	[ -e "$ROOT/start-fails" ] && { echo "proxy $$ failed" >>"$LOG"; exit 1; }
	if [ -n "$socket" ] && [ -S "$socket" ]; then
		echo "proxy $$ took over" >>"$LOG"
	elif [ -n "$socket" ]; then
		python3 -c 'import socket, sys; socket.socket(socket.AF_UNIX).bind(sys.argv[1])' "$socket"
		echo "proxy $$ bound" >>"$LOG"
	fi
	# As the proxy does: FILE.reload is created empty before the privilege drop, written once ready.
	[ -n "$pidfile" ] && : >"$pidfile.reload"
	[ -e "$ROOT/fails-after-files" ] && { echo "proxy $$ failed after creating its files" >>"$LOG"; exit 1; }
	if [ -n "$pidfile" ]; then
		echo $$ >"$pidfile"
		echo "0 started" >"$pidfile.reload"
	fi
	echo "proxy $$ ready" >>"$LOG"
	gone() { [ -n "$pidfile" ] && [ "$(cat "$pidfile" 2>/dev/null)" = $$ ] && rm -f "$pidfile" "$pidfile.reload"; }
	trap 'echo "proxy $$ SIGHUP" >>"$LOG"' HUP
	trap 'echo "proxy $$ SIGTERM" >>"$LOG"; gone; exit 0' TERM
	for i in $(seq 3000); do sleep 0.1 & wait $!; done
	;;
*) exit 2 ;;
esac
EOF
chmod +x "$ROOT/usr/sbin/daemon" "$ROOT/usr/local/bin/nfs-tls-proxy"

# The script under test, its fixed paths moved under ROOT (nothing else changes).
install_script()
{
	sed -e "s,^\. /etc/rc\.subr\$,. $ROOT/etc/rc.subr," \
		-e "s,/usr/sbin/daemon,$ROOT/usr/sbin/daemon,g" \
		-e "s,/usr/local/,$ROOT/usr/local/,g" \
		-e "s,/var/run/,$ROOT/var/run/,g" "$1" >"$RCD/nfs_tls_proxy"
	chmod +x "$RCD/nfs_tls_proxy"
}
install_script "$SCRIPT"
ln -s nfs_tls_proxy "$RCD/nfs_tls_proxy_client"

rc_conf()
{
	{
		echo "local_startup='$RCD'"
		for line in "$@"; do echo "$line"; done
	} >"$ROOT/etc/rc.conf"
}

SYS_PATH=/sbin:/bin:/usr/sbin:/usr/bin
# service(8): `exec env -i HOME=/ PATH=... DIR/SCRIPT ARGS`
service() { env -i HOME=/ PATH=$SYS_PATH "$RCD/$1" "$2" 2>&1; }
# /etc/rc: sources every local script that has a PROVIDE line (rcorder's sorting left out).
boot()
{
	env -i HOME=/ PATH=$SYS_PATH /bin/sh -c '. "$1"; load_rc_config; autoboot=yes; rc_fast=yes
		find_local_scripts_new
		for f in $local_rc; do run_rc_script "$f" faststart; done' /etc/rc "$ROOT/etc/rc.subr" 2>&1
}
# /etc/rc.shutdown: the same scripts (KEYWORD: shutdown), in reverse order, with faststop.
shutdown()
{
	env -i HOME=/ PATH=$SYS_PATH /bin/sh -c '. "$1"; load_rc_config
		find_local_scripts_new
		list=; for f in $local_rc; do list="$f $list"; done
		for f in $list; do run_rc_script "$f" faststop; done' /etc/rc.shutdown "$ROOT/etc/rc.subr" 2>&1
}

reset()
{
	for inst in nfs_tls_proxy nfs_tls_proxy_client; do
		if [ -f "$ROOT/var/run/$inst.pid" ]; then
			kill -TERM "$(cat "$ROOT/var/run/$inst.pid")" 2>/dev/null
		fi
	done
	n=0
	while [ $n -lt 100 ] && ls "$ROOT"/var/run/*.pid >/dev/null 2>&1; do
		sleep 0.1
		n=$((n + 1))
	done
	rm -f "$ROOT"/var/run/*.pid "$ROOT"/var/run/*.old "$ROOT"/var/run/*.reload "$ROOT"/var/run/*.handover \
		"$ROOT/check-fails" "$ROOT/old-binary" "$ROOT/start-fails" "$ROOT/fails-after-files"
	: >"$LOG"
}

has_line() { grep -qxF -- "$1" "$LOG"; }
count_lines() { grep -c -- "$1" "$LOG"; }
pid_of() { cat "$ROOT/var/run/$1.pid" 2>/dev/null; }
alive() { [ -n "$1" ] && [ -e "/proc/$1" ] && ! grep -q '^[0-9]* (.*) Z' "/proc/$1/stat" 2>/dev/null; }
wait_gone()
{
	n=0
	while [ $n -lt 100 ] && alive "$1"; do sleep 0.1; n=$((n + 1)); done
	! alive "$1"
}
wait_log()
{
	n=0
	while [ $n -lt 50 ] && ! grep -q -- "$1" "$LOG"; do sleep 0.1; n=$((n + 1)); done
	grep -q -- "$1" "$LOG"
}

BIN=$ROOT/usr/local/bin/nfs-tls-proxy
ETC=$ROOT/usr/local/etc/nfs-tls-proxy
RUN=$ROOT/var/run
expect_daemon()
{
	# $1 instance, $2 mode, $3 extra proxy flags
	echo "daemon -S -T $1 -R 5 -P $RUN/$1.pid -p $RUN/$1.child.pid $BIN $2 --config $ETC/$2.toml --pid-file $RUN/$1.child.pid --handover-socket $RUN/$1.handover --user nfs-tls-proxy${3:+ $3}"
}

[ "$(readlink -f /bin/sh)" = "$(command -v dash 2>/dev/null)" ] &&
	echo "(/bin/sh is dash)" || echo "(note: /bin/sh is $(readlink -f /bin/sh), not dash)"

# -- cases -----------------------------------------------------------------------------------------
case_="rcorder header: PROVIDE nfs_tls_proxy, REQUIRE, and KEYWORD shutdown (rc.shutdown runs it)"
header=$(awk '/^# (PROVIDE|REQUIRE|BEFORE|KEYWORD):/ { inblock = 1; print; next } inblock { exit }' "$SCRIPT")
if echo "$header" | grep -qx '# PROVIDE: nfs_tls_proxy' && echo "$header" | grep -q '^# REQUIRE: ' &&
	echo "$header" | grep -q '^# KEYWORD:.* shutdown'; then
	pass "$case_"
else
	fail "$case_" "header block: $header"
fi

case_="port's files/nfs_tls_proxy.in is this script with %%PREFIX%% for /usr/local"
if [ ! -f "$PORT_RC_IN" ]; then
	fail "$case_" "$PORT_RC_IN missing"
elif sed 's,%%PREFIX%%,/usr/local,g' "$PORT_RC_IN" | cmp -s - "$SCRIPT"; then
	pass "$case_"
else
	fail "$case_" "$(sed 's,%%PREFIX%%,/usr/local,g' "$PORT_RC_IN" | diff - "$SCRIPT" | head -5)"
fi

reset
rc_conf 'nfs_tls_proxy_enable="YES"' 'nfs_tls_proxy_flags="--log-level debug"'
case_="service start: check runs first, then daemon(8) with nfs_tls_proxy_flags after the proxy's path"
out=$(service nfs_tls_proxy start)
want=$(expect_daemon nfs_tls_proxy server "--log-level debug")
first=$(head -n 2 "$LOG")
if has_line "$want" && [ "$first" = "nfs-tls-proxy check --mode server --config $ETC/server.toml
$want" ] && wait_log "nfs-tls-proxy server --config $ETC/server.toml --pid-file $RUN/nfs_tls_proxy.child.pid --handover-socket $RUN/nfs_tls_proxy.handover --user nfs-tls-proxy --log-level debug"; then
	pass "$case_"
else
	fail "$case_" "output: $out" "log: $(cat "$LOG")" "wanted: $want"
fi

case_="service status: finds the supervisor by its pid file and its ps title (daemon: ...)"
sup=$(pid_of nfs_tls_proxy)
out=$(service nfs_tls_proxy status)
title=$(ps -ww -o command= -p "${sup:-0}" 2>/dev/null)
if [ "$out" = "nfs_tls_proxy is running as pid $sup." ] && [ "${title%% *}" = "daemon:" ]; then
	pass "$case_"
else
	fail "$case_" "status said: $out" "supervisor pid ${sup:-none}, ps title: $title"
fi

case_="service start while running: refused, no second daemon(8)"
out=$(service nfs_tls_proxy start)
rc=$?
if [ $rc -ne 0 ] && [ "$(count_lines '^daemon ')" = 1 ] && echo "$out" | grep -q 'already running'; then
	pass "$case_"
else
	fail "$case_" "exit $rc, output: $out" "daemon calls: $(count_lines '^daemon ')"
fi

case_="service reload: nfs-tls-proxy reload --pid-file (the proxy's, not daemon's) and the proxy gets SIGHUP"
child=$(cat "$RUN/nfs_tls_proxy.child.pid" 2>/dev/null)
out=$(service nfs_tls_proxy reload)
if has_line "nfs-tls-proxy reload --pid-file $RUN/nfs_tls_proxy.child.pid" && wait_log "proxy $child SIGHUP"; then
	pass "$case_"
else
	fail "$case_" "output: $out" "log: $(cat "$LOG")"
fi

case_="service reload with a binary that has no reload subcommand: kill -HUP to the proxy"
touch "$ROOT/old-binary"
: >"$LOG"
out=$(service nfs_tls_proxy reload)
if ! has_line "nfs-tls-proxy reload --pid-file $RUN/nfs_tls_proxy.child.pid" && wait_log "proxy $child SIGHUP" &&
	alive "$sup"; then
	pass "$case_"
else
	fail "$case_" "output: $out" "log: $(cat "$LOG")"
fi
rm -f "$ROOT/old-binary"

case_="service check: nfs-tls-proxy check --mode server --config FILE, output shown"
: >"$LOG"
out=$(service nfs_tls_proxy check)
if has_line "nfs-tls-proxy check --mode server --config $ETC/server.toml" && [ "$out" = "mode: server" ]; then
	pass "$case_"
else
	fail "$case_" "output: $out" "log: $(cat "$LOG")"
fi

case_="service rcvar: nfs_tls_proxy_enable"
out=$(service nfs_tls_proxy rcvar)
if echo "$out" | grep -qx 'nfs_tls_proxy_enable="YES"'; then pass "$case_"; else fail "$case_" "output: $out"; fi

case_="service stop: SIGTERM to daemon(8), which stops the proxy; waits; pid files gone; status: not running"
out=$(service nfs_tls_proxy stop)
status=$(service nfs_tls_proxy status)
if ! alive "$sup" && ! alive "$child" && has_line "proxy $child SIGTERM" && [ ! -e "$RUN/nfs_tls_proxy.pid" ] &&
	[ "$status" = "nfs_tls_proxy is not running." ]; then
	pass "$case_"
else
	fail "$case_" "output: $out / $status" "supervisor alive: $(alive "$sup" && echo yes || echo no)" "log: $(cat "$LOG")"
fi

line_of() { grep -n -m1 -F -- "$1" "$LOG" | cut -d: -f1; }

case_="service restart (hand-over): the new daemon(8) and proxy start first; the old daemon(8) gets SIGTERM only once the new proxy is ready"
service nfs_tls_proxy start >/dev/null
wait_log "proxy .* ready"
old=$(pid_of nfs_tls_proxy)
old_child=$(cat "$RUN/nfs_tls_proxy.child.pid" 2>/dev/null)
: >"$LOG"
out=$(service nfs_tls_proxy restart)
rc=$?
new=$(pid_of nfs_tls_proxy)
new_child=$(cat "$RUN/nfs_tls_proxy.child.pid" 2>/dev/null)
want=$(expect_daemon nfs_tls_proxy server)
l_check=$(line_of "nfs-tls-proxy check --mode server")
l_daemon=$(line_of "$want")
l_took=$(line_of "proxy $new_child took over")
l_ready=$(line_of "proxy $new_child ready")
l_term=$(line_of "proxy $old_child SIGTERM")
if [ $rc -eq 0 ] && [ -n "$new" ] && [ "$new" != "$old" ] && wait_gone "$old" && ! alive "$old_child" &&
	alive "$new" && alive "$new_child" && [ -n "$l_check" ] && [ -n "$l_daemon" ] && [ -n "$l_took" ] &&
	[ -n "$l_ready" ] && [ -n "$l_term" ] && [ "$l_check" -lt "$l_daemon" ] && [ "$l_daemon" -lt "$l_took" ] &&
	[ "$l_ready" -lt "$l_term" ] && [ "$(count_lines '^daemon ')" = 1 ] &&
	[ "$(service nfs_tls_proxy status)" = "nfs_tls_proxy is running as pid $new." ] &&
	[ -z "$(ls "$RUN"/*.old 2>/dev/null)" ]; then
	pass "$case_"
else
	fail "$case_" "exit $rc, output: $out" "old $old/$old_child new $new/$new_child" \
		"lines: check $l_check daemon $l_daemon took $l_took ready $l_ready SIGTERM $l_term" "log: $(cat "$LOG")" \
		"run: $(ls "$RUN")"
fi

case_="service restart (hand-over) when the new proxy fails: it is stopped, the old one goes on, pid files back, exit 1"
rc_conf 'nfs_tls_proxy_enable="YES"' 'nfs_tls_proxy_handover_wait="1"'
old=$new
old_child=$new_child
touch "$ROOT/start-fails"
: >"$LOG"
out=$(service nfs_tls_proxy restart)
rc=$?
rm -f "$ROOT/start-fails"
if [ $rc -ne 0 ] && echo "$out" | grep -q 'did not take over' && alive "$old" && alive "$old_child" &&
	! grep -q "proxy $old_child SIGTERM" "$LOG" && [ "$(pid_of nfs_tls_proxy)" = "$old" ] &&
	[ "$(cat "$RUN/nfs_tls_proxy.child.pid" 2>/dev/null)" = "$old_child" ] &&
	[ "$(service nfs_tls_proxy status)" = "nfs_tls_proxy is running as pid $old." ] &&
	[ -z "$(ls "$RUN"/*.old 2>/dev/null)" ]; then
	pass "$case_"
else
	fail "$case_" "exit $rc, output: $out" "log: $(cat "$LOG")" "run: $(ls "$RUN")"
fi

case_="service restart (hand-over) when the new proxy fails after creating FILE.reload: the old one goes on"
touch "$ROOT/fails-after-files"
: >"$LOG"
out=$(service nfs_tls_proxy restart)
rc=$?
rm -f "$ROOT/fails-after-files"
if [ $rc -ne 0 ] && echo "$out" | grep -q 'did not take over' && alive "$old" && alive "$old_child" &&
	grep -q "failed after creating its files" "$LOG" && ! grep -q "proxy $old_child SIGTERM" "$LOG" &&
	[ "$(pid_of nfs_tls_proxy)" = "$old" ] &&
	[ "$(cat "$RUN/nfs_tls_proxy.child.pid" 2>/dev/null)" = "$old_child" ] &&
	[ -z "$(ls "$RUN"/*.old 2>/dev/null)" ]; then
	pass "$case_"
else
	fail "$case_" "exit $rc, output: $out" "log: $(cat "$LOG")" "run: $(ls "$RUN")"
fi

case_="service restart of a proxy without a hand-over socket (older version): stop, then start"
rm -f "$RUN/nfs_tls_proxy.handover"
: >"$LOG"
out=$(service nfs_tls_proxy restart)
new=$(pid_of nfs_tls_proxy)
l_term=$(line_of "proxy $old_child SIGTERM")
l_daemon=$(line_of "$(expect_daemon nfs_tls_proxy server)")
if [ -n "$new" ] && [ "$new" != "$old" ] && wait_gone "$old" && [ -n "$l_term" ] && [ -n "$l_daemon" ] &&
	[ "$l_term" -lt "$l_daemon" ] && wait_log "proxy .* bound"; then
	pass "$case_"
else
	fail "$case_" "old $old new $new" "output: $out" "log: $(cat "$LOG")"
fi

reset
rc_conf 'nfs_tls_proxy_enable="YES"'
case_="boot (/etc/rc sources it, \$0=/etc/rc, _file set): nfs_tls_proxy starts with its own name"
out=$(boot)
want=$(expect_daemon nfs_tls_proxy server)
sup=$(pid_of nfs_tls_proxy)
if has_line "$want" && alive "$sup" && [ "$(count_lines '^daemon ')" = 1 ]; then
	pass "$case_"
else
	fail "$case_" "output: $out" "log: $(cat "$LOG")" "wanted: $want"
fi

case_="status after boot (service): running as the supervisor's pid"
out=$(service nfs_tls_proxy status)
if [ "$out" = "nfs_tls_proxy is running as pid $sup." ]; then pass "$case_"; else fail "$case_" "output: $out"; fi

case_="shutdown (/etc/rc.shutdown sources it with faststop): stopped, no shell errors"
out=$(shutdown)
if wait_gone "$sup" && [ -z "$out" -o "$out" = "Stopping nfs_tls_proxy." ] && [ ! -e "$RUN/nfs_tls_proxy.pid" ]; then
	pass "$case_"
else
	fail "$case_" "output: $out" "supervisor alive: $(alive "$sup" && echo yes || echo no)"
fi

reset
rc_conf 'nfs_tls_proxy_enable="YES"' 'nfs_tls_proxy_client_enable="YES"' \
	'nfs_tls_proxy_client_flags="--metrics 127.0.0.1:9470"'
case_="boot with a second instance (symlink nfs_tls_proxy_client): each its own name, mode and pid files"
out=$(boot)
want_s=$(expect_daemon nfs_tls_proxy server)
want_c=$(expect_daemon nfs_tls_proxy_client client "--metrics 127.0.0.1:9470")
sup_s=$(pid_of nfs_tls_proxy)
sup_c=$(pid_of nfs_tls_proxy_client)
if has_line "$want_s" && has_line "$want_c" && alive "$sup_s" && alive "$sup_c" && [ "$sup_s" != "$sup_c" ]; then
	pass "$case_"
else
	fail "$case_" "output: $out" "log: $(cat "$LOG")" "wanted: $want_s" "and: $want_c"
fi

case_="second instance: status, reload and check address the client only"
: >"$LOG"
st=$(service nfs_tls_proxy_client status)
child_c=$(cat "$RUN/nfs_tls_proxy_client.child.pid" 2>/dev/null)
service nfs_tls_proxy_client reload >/dev/null
service nfs_tls_proxy_client check >/dev/null
if [ "$st" = "nfs_tls_proxy_client is running as pid $sup_c." ] &&
	has_line "nfs-tls-proxy reload --pid-file $RUN/nfs_tls_proxy_client.child.pid" &&
	wait_log "proxy $child_c SIGHUP" && has_line "nfs-tls-proxy check --mode client --config $ETC/client.toml"; then
	pass "$case_"
else
	fail "$case_" "status: $st" "log: $(cat "$LOG")"
fi

case_="second instance: restart hands over on its own socket and leaves the server alone"
old_c=$sup_c
child_c=$(cat "$RUN/nfs_tls_proxy_client.child.pid" 2>/dev/null)
server_child=$(cat "$RUN/nfs_tls_proxy.child.pid" 2>/dev/null)
: >"$LOG"
out=$(service nfs_tls_proxy_client restart)
sup_c=$(pid_of nfs_tls_proxy_client)
new_child_c=$(cat "$RUN/nfs_tls_proxy_client.child.pid" 2>/dev/null)
if has_line "proxy $new_child_c took over" && [ -S "$RUN/nfs_tls_proxy_client.handover" ] && [ -S "$RUN/nfs_tls_proxy.handover" ] && [ "$sup_c" != "$old_c" ] &&
	wait_gone "$old_c" && wait_log "proxy $child_c SIGTERM" && has_line "$want_c" && alive "$sup_s" &&
	! grep -q "proxy $server_child SIGTERM" "$LOG" && [ "$(pid_of nfs_tls_proxy)" = "$sup_s" ]; then
	pass "$case_"
else
	fail "$case_" "output: $out" "client supervisor $old_c -> $sup_c" "log: $(cat "$LOG")" "run: $(ls "$RUN")"
fi

case_="second instance: stopping the client leaves the server running"
service nfs_tls_proxy_client stop >/dev/null
if wait_gone "$sup_c" && alive "$sup_s" && [ "$(service nfs_tls_proxy status)" = "nfs_tls_proxy is running as pid $sup_s." ]; then
	pass "$case_"
else
	fail "$case_" "client supervisor alive: $(alive "$sup_c" && echo yes || echo no), server: $(alive "$sup_s" && echo yes || echo no)"
fi

case_="shutdown with both enabled: the server stops too"
out=$(shutdown)
if wait_gone "$sup_s"; then pass "$case_"; else fail "$case_" "output: $out"; fi

case_="service -e reads the name from the ^name= lines (file=SCRIPT): nfs_tls_proxy_client_enable"
got=$(env -i PATH=$SYS_PATH /bin/sh -c 'file=$1; eval "$(grep ^name= "$file")"; eval "$(grep ^rcvar "$file")"; echo "$name $rcvar"' \
	/usr/sbin/service "$RCD/nfs_tls_proxy_client")
if [ "$got" = "nfs_tls_proxy_client nfs_tls_proxy_client_enable" ]; then pass "$case_"; else fail "$case_" "got: $got"; fi

reset
rc_conf
case_="not enabled: boot starts nothing; service start says to set nfs_tls_proxy_enable"
out=$(boot)
out2=$(service nfs_tls_proxy start)
if [ "$(count_lines '^daemon ')" = 0 ] && echo "$out2" | grep -q 'Set nfs_tls_proxy_enable to YES'; then
	pass "$case_"
else
	fail "$case_" "boot: $out" "start: $out2" "log: $(cat "$LOG")"
fi

reset
rc_conf 'nfs_tls_proxy_enable="YES"'
case_="a configuration check that fails stops the start (no daemon(8))"
touch "$ROOT/check-fails"
out=$(service nfs_tls_proxy start)
if [ "$(count_lines '^daemon ')" = 0 ] && echo "$out" | grep -q 'problem:'; then
	pass "$case_"
else
	fail "$case_" "output: $out" "log: $(cat "$LOG")"
fi

reset
rc_conf 'nfs_tls_proxy_enable="YES"' 'nfs_tls_proxy_config="/nonexistent/server.toml"' 'nfs_tls_proxy_runas=""'
case_="a missing config file stops the start (required_files); runas=\"\" would keep root"
out=$(service nfs_tls_proxy start)
if [ "$(count_lines '^daemon ')" = 0 ] && echo "$out" | grep -q 'not readable'; then
	pass "$case_"
else
	fail "$case_" "output: $out" "log: $(cat "$LOG")"
fi

reset
rc_conf 'nfs_tls_proxy_enable="YES"' 'nfs_tls_proxy_runas=""' 'nfs_tls_proxy_mode="client"'
case_="nfs_tls_proxy_runas=\"\" and _mode=client: no --user, client.toml"
service nfs_tls_proxy start >/dev/null
want="daemon -S -T nfs_tls_proxy -R 5 -P $RUN/nfs_tls_proxy.pid -p $RUN/nfs_tls_proxy.child.pid $BIN client --config $ETC/client.toml --pid-file $RUN/nfs_tls_proxy.child.pid --handover-socket $RUN/nfs_tls_proxy.handover"
if has_line "$want"; then pass "$case_"; else fail "$case_" "log: $(cat "$LOG")" "wanted: $want"; fi
reset

if [ $failures -ne 0 ]; then
	echo "rc-d-test: $failures case(s) failed"
	exit 1
fi
echo "rc-d-test: all cases passed"
