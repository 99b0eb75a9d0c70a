# A small stand-in for FreeBSD's /etc/rc.subr, written from rc.subr(8)'s documented behaviour, so that
# dist/freebsd/nfs_tls_proxy can be run under /bin/sh (dash) on Linux. Not FreeBSD's code. It covers
# what that script uses:
#
#   load_rc_config NAME   sources RC_ROOT/etc/rc.conf, rc.conf.local and rc.conf.d/NAME
#   run_rc_command ARG    start stop restart status reload rcvar enabled + extra_commands, with the
#                         fast/force/one/quiet prefixes, ARG_precmd/_cmd/_postcmd, required_files,
#                         rc_flags (= $flags or ${name}_flags, placed between $command and
#                         $command_args), ${rcvar} checked except for stop-when-not-running/status/rcvar,
#                         the pid looked up with check_pidfile (pidfile set) or check_process
#   check_pidfile FILE PROCNAME, check_process PROCNAME, _find_processes: the first word of each `ps`
#                         command matched against procname, its basename, "basename:", "(basename)"
#                         and "[basename]"
#   wait_for_pids, checkyesno, run_rc_script (sources the file in a subshell with $1 set, after
#                         unsetting the per-script variables, with _file set), find_local_scripts_new
#
# Deviations, because this runs on Linux: paths under /etc come from RC_ROOT; `ps` is procps', asked
# for "pid command" (no jail id column: no jails here); wait_for_pids gives up after 30 s; no
# cpuset/jail/login-class/limits/su handling (the script under test uses none of them); start runs
# "$command $rc_flags $command_args" directly rather than through limits(1).

: "${RC_ROOT:=}"
PS="ps -ww"

err()
{
	_exitval=$1
	shift
	echo 1>&2 "$0: ERROR: $*"
	exit "$_exitval"
}

warn()
{
	echo 1>&2 "$0: WARNING: $*"
}

info()
{
	:
}

debug()
{
	:
}

checkyesno()
{
	eval _value=\$${1}
	case $_value in
	[Yy][Ee][Ss] | [Tt][Rr][Uu][Ee] | [Oo][Nn] | 1)
		return 0
		;;
	[Nn][Oo] | [Ff][Aa][Ll][Ss][Ee] | [Oo][Ff][Ff] | 0)
		return 1
		;;
	*)
		warn "\$${1} is not set properly - see rc.conf(5)."
		return 1
		;;
	esac
}

load_rc_config()
{
	if [ -z "${_rc_conf_loaded}" ]; then
		for _f in "${RC_ROOT}/etc/rc.conf" "${RC_ROOT}/etc/rc.conf.local"; do
			[ -r "$_f" ] && . "$_f"
		done
		_rc_conf_loaded=true
	fi
	if [ -n "$1" ] && [ -r "${RC_ROOT}/etc/rc.conf.d/$1" ]; then
		. "${RC_ROOT}/etc/rc.conf.d/$1"
	fi
}

# _find_processes procname interpreter psargs: the pids whose command's first word is procname, its
# basename, "basename:", "(basename)" or "[basename]".
_find_processes()
{
	_fp_procname=$1
	_fp_bn=${_fp_procname##*/}
	_fp_found=
	# "|| [ -n ... ]": a last line without a newline still counts.
	$PS -o pid= -o command= $3 2>/dev/null | {
		_fp_out=
		while read _fp_pid _fp_arg0 _fp_rest || [ -n "$_fp_pid" ]; do
			case "$_fp_arg0" in
			"$_fp_procname" | "$_fp_bn" | "$_fp_bn:" | "($_fp_bn)" | "[$_fp_bn]")
				_fp_out="${_fp_out}${_fp_out:+ }${_fp_pid}"
				;;
			esac
			_fp_pid=
		done
		echo "$_fp_out"
	}
}

check_pidfile()
{
	[ -z "$1" ] || [ -z "$2" ] && err 3 'USAGE: check_pidfile pidfile procname [interpreter]'
	[ -f "$1" ] || return 0
	read _cp_pid _cp_junk <"$1"
	[ -n "$_cp_pid" ] || return 0
	_find_processes "$2" "${3:-.}" "-p $_cp_pid"
}

check_process()
{
	[ -z "$1" ] && err 3 'USAGE: check_process procname [interpreter]'
	_find_processes "$1" "${2:-.}" "-e"
}

# wait_for_pids pid...: until none of them exists (bounded: 300 x 0.1 s).
wait_for_pids()
{
	_wp_n=0
	while [ $_wp_n -lt 300 ]; do
		_wp_alive=
		for _wp_pid in "$@"; do
			kill -0 "$_wp_pid" 2>/dev/null && _wp_alive=yes
		done
		[ -z "$_wp_alive" ] && return 0
		sleep 0.1
		_wp_n=$((_wp_n + 1))
	done
	warn "wait_for_pids: still running after 30 s: $*"
	return 1
}

_rc_run_hook()
{
	# $1: the hook's command (may be empty); a failing precmd stops the command unless forced.
	[ -n "$1" ] || return 0
	eval "$1 $rc_extra_args"
}

run_rc_command()
{
	rc_arg=$1
	[ -n "$name" ] || err 3 'run_rc_command: $name is not set.'
	shift
	rc_extra_args="$*"
	rc_fast= rc_force= rc_quiet=
	case "$rc_arg" in
	fast*) rc_arg=${rc_arg#fast}; rc_fast=yes; rc_quiet=yes ;;
	force*) rc_arg=${rc_arg#force}; rc_force=yes; [ -n "$rcvar" ] && eval "${rcvar}=YES" ;;
	one*) rc_arg=${rc_arg#one}; [ -n "$rcvar" ] && eval "${rcvar}=YES" ;;
	quiet*) rc_arg=${rc_arg#quiet}; rc_quiet=yes ;;
	esac

	_keywords="start stop restart rcvar enabled $extra_commands"
	_procname=${procname:-$command}
	rc_pid=
	if [ -n "$_procname" ]; then
		if [ -n "$pidfile" ]; then
			_pidcmd='rc_pid=$(check_pidfile "$pidfile" "$_procname")'
		else
			_pidcmd='rc_pid=$(check_process "$_procname")'
		fi
		_keywords="$_keywords status"
	fi

	if [ "$rc_arg" = enabled ]; then
		checkyesno "$rcvar"
		return $?
	fi

	if [ -n "$flags" ]; then
		rc_flags=$flags
	else
		eval "rc_flags=\$${name}_flags"
	fi

	# As rc.subr: at boot ($autoboot set), no pid lookup.
	[ -z "$autoboot" ] && eval "$_pidcmd"

	for _elem in $_keywords; do
		[ "$_elem" = "$rc_arg" ] || continue

		if { [ -n "$rcvar" ] && [ "$rc_arg" != rcvar ] && [ "$rc_arg" != stop ] &&
			[ "$rc_arg" != status ]; } ||
			{ [ -n "$rcvar" ] && [ "$rc_arg" = stop ] && [ -z "$rc_pid" ]; }; then
			if ! checkyesno "$rcvar"; then
				[ -z "$rc_quiet" ] && echo "Cannot '${rc_arg}' $name. Set ${rcvar} to YES in /etc/rc.conf or use 'one${rc_arg}' instead of '${rc_arg}'."
				return 0
			fi
		fi

		if [ "$rc_arg" = start ] && [ -z "$rc_fast" ] && [ -n "$rc_pid" ]; then
			[ -z "$rc_quiet" ] && echo 1>&2 "${name} already running? (pid=$rc_pid)."
			return 1
		fi

		eval "_cmd=\$${rc_arg}_cmd _precmd=\$${rc_arg}_precmd _postcmd=\$${rc_arg}_postcmd"

		if [ -n "$_cmd" ]; then
			_rc_run_hook "$_precmd" || [ -n "$rc_force" ] || return 1
			eval "$_cmd $rc_extra_args" || [ -n "$rc_force" ] || return 1
			_rc_run_hook "$_postcmd"
			return 0
		fi

		case "$rc_arg" in
		start)
			if [ ! -x "$command" ]; then
				warn "run_rc_command: cannot run $command"
				return 1
			fi
			for _f in $required_files; do
				if [ ! -r "$_f" ]; then
					warn "$_f is not readable."
					[ -n "$rc_force" ] || return 1
				fi
			done
			if ! _rc_run_hook "$_precmd"; then
				warn "failed precmd routine for ${name}"
				[ -n "$rc_force" ] || return 1
			fi
			[ -z "$rc_quiet" ] && echo "Starting ${name}."
			if ! eval "$command $rc_flags $command_args"; then
				warn "failed to start ${name}"
				return 1
			fi
			_rc_run_hook "$_postcmd"
			;;
		stop)
			if [ -z "$rc_pid" ]; then
				[ -n "$rc_fast" ] && return 0
				echo 1>&2 "${name} not running?${pidfile:+ (check $pidfile).}"
				return 1
			fi
			_rc_run_hook "$_precmd" || return 1
			echo "Stopping ${name}."
			kill -"${sig_stop:-TERM}" $rc_pid || return 1
			wait_for_pids $rc_pid
			_rc_run_hook "$_postcmd"
			;;
		reload)
			if [ -z "$rc_pid" ]; then
				echo 1>&2 "${name} not running?${pidfile:+ (check $pidfile).}"
				return 1
			fi
			_rc_run_hook "$_precmd" || return 1
			kill -"${sig_reload:-HUP}" $rc_pid || return 1
			_rc_run_hook "$_postcmd"
			;;
		restart)
			_rc_run_hook "$_precmd" || return 1
			(run_rc_command stop $rc_extra_args)
			(run_rc_command start $rc_extra_args) || return 1
			_rc_run_hook "$_postcmd"
			;;
		status)
			_rc_run_hook "$_precmd" || return 1
			if [ -n "$rc_pid" ]; then
				echo "${name} is running as pid $rc_pid."
			else
				echo "${name} is not running."
				return 1
			fi
			;;
		rcvar)
			echo "# $name"
			[ -n "$rcvar" ] && eval "echo \"${rcvar}=\\\"\$${rcvar}\\\"\""
			;;
		*)
			echo 1>&2 "$0: unknown directive '$rc_arg'."
			return 1
			;;
		esac
		return 0
	done

	echo 1>&2 "$0: unknown directive '$rc_arg'."
	echo 1>&2 "Usage: $0 [fast|force|one|quiet](${_keywords})"
	exit 1
}

# run_rc_script file arg: as /etc/rc, /etc/rc.shutdown and `service -R` run each script: sourced in a
# subshell with the positional parameters set to arg, so $0 stays the caller's.
run_rc_script()
{
	_file=$1
	_arg=$2
	[ -z "$_file" ] || [ -z "$_arg" ] && err 3 'USAGE: run_rc_script file arg'
	unset name command command_args command_interpreter extra_commands pidfile procname \
		rcvar rcvars rcvars_obsolete required_dirs required_files required_vars
	eval "unset ${_arg}_cmd ${_arg}_precmd ${_arg}_postcmd"
	case "$_file" in
	*[~#] | *.OLD | *.bak | *.orig | *,v)
		warn "Ignoring scratch file $_file"
		;;
	*)
		if [ -x "$_file" ]; then
			(
				set -- "$_arg"
				. "$_file"
			)
		fi
		;;
	esac
}

# find_local_scripts_new: local_rc = every executable file in $local_startup with a "# PROVIDE:" line.
# (rc.subr leaves its loop variable $file set afterwards; so does this.)
find_local_scripts_new()
{
	local_rc=''
	for dir in ${local_startup}; do
		[ -d "${dir}" ] || continue
		for file in $(grep -l '^# PROVIDE:' "${dir}"/* 2>/dev/null); do
			case "$file" in
			*.sample | *.pkgsave) ;;
			*) [ -x "$file" ] && local_rc="${local_rc} ${file}" ;;
			esac
		done
	done
}
