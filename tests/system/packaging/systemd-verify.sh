#!/bin/sh
# The systemd files in dist/systemd, checked by systemd itself in a temporary root (no unit is
# installed on, or started by, this machine):
#   - systemd-sysusers --root creates the nfs-tls-proxy user and group from nfs-tls-proxy.sysusers;
#   - systemd-tmpfiles --root --create makes /etc/nfs-tls-proxy 0750 root:nfs-tls-proxy and
#     /run/nfs-tls-proxy owned by the user, from nfs-tls-proxy.tmpfiles;
#   - systemd-analyze verify --root checks each unit, with the real built nfs-tls-proxy at
#     /usr/local/bin (the path the units name) and, for the RPM's copies, at /usr/bin; the root also
#     holds this machine's systemd units (targets the units refer to) and /bin/sh, /bin/kill.
#     Man pages are not looked up by verify (--man=no): instead, every man: page a unit names must
#     be among those `nfs-tls-proxy manual --out DIR` writes.
# NFS_TLS_PROXY_BIN: the binary to use (default: target/release, else target/debug, else build it).
# One PASS/FAIL line per case; exit status 1 if any failed.
set -u

HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../../.." && pwd)
DIST=$REPO/dist/systemd
T=$(mktemp -d /tmp/systemd-verify.XXXXXX)
trap 'rm -rf "$T"' EXIT
trap 'exit 1' INT TERM
. "$HERE/lib.sh"

if ! command -v systemd-analyze >/dev/null; then
	echo "FAIL: systemd-analyze is not installed (apt-get install systemd)"
	exit 1
fi

BIN=${NFS_TLS_PROXY_BIN:-}
if [ -z "$BIN" ]; then
	for b in "$REPO/target/release/nfs-tls-proxy" "$REPO/target/debug/nfs-tls-proxy"; do
		[ -x "$b" ] && BIN=$b && break
	done
fi
if [ -z "$BIN" ]; then
	(cd "$REPO" && cargo build --locked -q -p nfs-tls-proxy) || { echo "FAIL: cargo build"; exit 1; }
	BIN=$REPO/target/debug/nfs-tls-proxy
fi

ROOT=$T/root
mkdir -p "$ROOT/usr/lib" "$ROOT/usr/local/bin" "$ROOT/usr/bin" "$ROOT/bin" "$ROOT/etc/systemd/system" \
	"$ROOT/usr/lib/sysusers.d" "$ROOT/usr/lib/tmpfiles.d" "$ROOT/run"
cp -a /lib/systemd/system "$ROOT/usr/lib/systemd-system-host"
mkdir -p "$ROOT/usr/lib/systemd"
mv "$ROOT/usr/lib/systemd-system-host" "$ROOT/usr/lib/systemd/system"
cp "$BIN" "$ROOT/usr/local/bin/nfs-tls-proxy"
cp "$BIN" "$ROOT/usr/bin/nfs-tls-proxy"
cp "$(readlink -f /bin/sh)" "$ROOT/bin/sh"
cp "$(readlink -f /bin/kill)" "$ROOT/bin/kill"
: >"$ROOT/etc/passwd"
: >"$ROOT/etc/group"

# -- sysusers and tmpfiles -------------------------------------------------------------------------
case_="sysusers.d: creates the system user and group nfs-tls-proxy"
cp "$DIST/nfs-tls-proxy.sysusers" "$ROOT/usr/lib/sysusers.d/nfs-tls-proxy.conf"
out=$(systemd-sysusers --root="$ROOT" 2>&1)
uid=$(awk -F: '$1 == "nfs-tls-proxy" { print $3 }' "$ROOT/etc/passwd")
gid=$(awk -F: '$1 == "nfs-tls-proxy" { print $3 }' "$ROOT/etc/group")
if [ -n "$uid" ] && [ -n "$gid" ] && [ "$uid" -lt 1000 ] && [ "$uid" -gt 0 ]; then
	pass "$case_ (uid $uid, gid $gid)"
else
	fail "$case_" "output: $out" "passwd: $(cat "$ROOT/etc/passwd")"
fi

case_="tmpfiles.d: /etc/nfs-tls-proxy 0750 root:nfs-tls-proxy, /run/nfs-tls-proxy owned by nfs-tls-proxy"
cp "$DIST/nfs-tls-proxy.tmpfiles" "$ROOT/usr/lib/tmpfiles.d/nfs-tls-proxy.conf"
out=$(systemd-tmpfiles --root="$ROOT" --create "$ROOT/usr/lib/tmpfiles.d/nfs-tls-proxy.conf" 2>&1)
etc=$(stat -c '%a %u %g' "$ROOT/etc/nfs-tls-proxy" 2>/dev/null)
run=$(stat -c '%u %g' "$ROOT/run/nfs-tls-proxy" 2>/dev/null)
if [ "$etc" = "750 0 $gid" ] && [ "$run" = "$uid $gid" ]; then
	pass "$case_"
else
	fail "$case_" "output: $out" "/etc/nfs-tls-proxy: $etc (want 750 0 $gid)" "/run/nfs-tls-proxy: $run"
fi

# -- the units ---------------------------------------------------------------------------------------
for mode in client server; do
	case_="systemd-analyze verify nfs-tls-proxy-$mode.socket (socket activation, held across restarts)"
	cp "$DIST/nfs-tls-proxy-$mode.socket" "$ROOT/etc/systemd/system/"
	cp "$DIST/nfs-tls-proxy-$mode.service" "$ROOT/etc/systemd/system/"
	if out=$(systemd-analyze verify --root="$ROOT" --man=no "nfs-tls-proxy-$mode.socket" 2>&1) && [ -z "$out" ]; then
		pass "$case_"
	else
		fail "$case_" "$out"
	fi
done

for unit in nfs-tls-proxy-server.service nfs-tls-proxy-client.service; do
	cp "$DIST/$unit" "$ROOT/etc/systemd/system/$unit"
	case_="systemd-analyze verify $unit (binary at /usr/local/bin)"
	if out=$(systemd-analyze verify --root="$ROOT" --man=no "$unit" 2>&1) && [ -z "$out" ]; then
		pass "$case_"
	else
		fail "$case_" "$out"
	fi

	# The RPM's copy: the same unit with /usr/bin (what the spec's sed does).
	sed 's,/usr/local/bin/,/usr/bin/,g' "$DIST/$unit" >"$ROOT/etc/systemd/system/$unit"
	case_="systemd-analyze verify $unit as the RPM installs it (/usr/bin)"
	if grep -q /usr/local "$ROOT/etc/systemd/system/$unit"; then
		fail "$case_" "still names /usr/local: $(grep -n /usr/local "$ROOT/etc/systemd/system/$unit")"
	elif out=$(systemd-analyze verify --root="$ROOT" --man=no "$unit" 2>&1) && [ -z "$out" ]; then
		pass "$case_"
	else
		fail "$case_" "$out"
	fi

	case_="$unit: User=nfs-tls-proxy, LimitNOFILE >= 6 x 1024 + headroom (kTLS: two pipes a tunnel), ExecReload via nfs-tls-proxy reload"
	u=$(sed -n 's/^User=//p' "$DIST/$unit")
	nofile=$(sed -n 's/^LimitNOFILE=//p' "$DIST/$unit")
	reload=$(sed -n 's/^ExecReload=//p' "$DIST/$unit")
	if [ "$u" = nfs-tls-proxy ] && [ "${nofile:-0}" -ge 6400 ] 2>/dev/null &&
		echo "$reload" | grep -q '^/usr/local/bin/nfs-tls-proxy reload '; then
		pass "$case_"
	else
		fail "$case_" "User=$u LimitNOFILE=$nofile ExecReload=$reload"
	fi
done

case_="every man: page the units name is written by nfs-tls-proxy manual"
"$BIN" manual --out "$T/manual" >/dev/null 2>&1
missing=
for page in $(sed -n 's/^Documentation=//p' "$DIST"/*.service | tr ' ' '\n' | sed -n 's/^man:\(.*\)(\([0-9]\))$/\1.\2/p'); do
	[ -f "$T/manual/man/$page" ] || missing="$missing $page"
done
if [ -z "$missing" ] && [ -d "$T/manual/man" ]; then
	pass "$case_"
else
	fail "$case_" "missing:$missing" "written: $(ls "$T/manual/man" 2>&1 | tr '\n' ' ')"
fi

case_="fstab.example orders the mount after nfs-tls-proxy-client.service"
if grep -q 'x-systemd.requires=nfs-tls-proxy-client.service' "$DIST/fstab.example"; then
	pass "$case_"
else
	fail "$case_"
fi

if [ $failures -ne 0 ]; then
	echo "systemd-verify: $failures case(s) failed"
	exit 1
fi
echo "systemd-verify: all cases passed"
