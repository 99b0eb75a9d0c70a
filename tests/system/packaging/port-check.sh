#!/bin/sh
# The FreeBSD port skeleton (dist/freebsd/port) cannot be built here (no FreeBSD); this checks what
# can be checked on Linux, so the skeleton does not drift from the tree:
#   - DISTVERSION is the workspace version (the distfile is dist/source-tarball.sh's output);
#   - the man pages and completions in pkg-plist are exactly what `nfs-tls-proxy manual` writes;
#   - every file post-install copies from WRKSRC exists; USE_RC_SUBR names files/<name>.in;
#   - the sample configurations are accepted by `nfs-tls-proxy check` up to the certificate files
#     (pointed at certs-example; servers at an unused loopback port so nothing leaves the host).
# NFS_TLS_PROXY_BIN: the binary (default: target/release or target/debug). One PASS/FAIL line per
# case; exit status 1 if any failed.
set -u

HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../../.." && pwd)
PORT=$REPO/dist/freebsd/port
T=$(mktemp -d /tmp/port-check.XXXXXX)
trap 'rm -rf "$T"' EXIT
trap 'exit 1' INT TERM
. "$HERE/lib.sh"

BIN=${NFS_TLS_PROXY_BIN:-}
for b in "$REPO/target/release/nfs-tls-proxy" "$REPO/target/debug/nfs-tls-proxy"; do
	[ -z "$BIN" ] && [ -x "$b" ] && BIN=$b
done
[ -n "$BIN" ] || { echo "FAIL: no built nfs-tls-proxy (cargo build -p nfs-tls-proxy)"; exit 1; }

VERSION=$(sed -n '/^\[workspace.package\]/,/^\[/s/^version *= *"\(.*\)"/\1/p' "$REPO/Cargo.toml")
case_="DISTVERSION is the workspace version ($VERSION)"
v=$(sed -n 's/^DISTVERSION=[[:space:]]*//p' "$PORT/Makefile")
if [ "$v" = "$VERSION" ]; then pass "$case_"; else fail "$case_" "DISTVERSION=$v"; fi

case_="pkg-plist's man pages and completions are what nfs-tls-proxy manual writes"
"$BIN" manual --out "$T/manual" >/dev/null 2>&1
{
	for f in "$T"/manual/man/*.1; do echo "share/man/man1/${f##*/}.gz"; done
	for b in nfs-tls-proxy ca-tool; do
		echo "share/bash-completion/completions/$b"
		echo "share/zsh/site-functions/_$b"
		echo "share/fish/vendor_completions.d/$b.fish"
	done
} | sort >"$T/want"
grep -E '^share/(man|bash-completion|zsh|fish)/' "$PORT/pkg-plist" | sort >"$T/have"
ls "$T"/manual/completions/ | LC_ALL=C sort >"$T/completions"
if cmp -s "$T/want" "$T/have" &&
	[ "$(tr '\n' ' ' <"$T/completions")" = "_ca-tool _nfs-tls-proxy ca-tool.bash ca-tool.fish nfs-tls-proxy.bash nfs-tls-proxy.fish " ]; then
	pass "$case_"
else
	fail "$case_" "$(diff "$T/have" "$T/want")" "completions written: $(tr '\n' ' ' <"$T/completions")"
fi

case_="files that post-install copies from WRKSRC exist; USE_RC_SUBR has files/NAME.in"
missing=
for f in $(sed -n '/INSTALL_/s/.*\${WRKSRC}\/\([^ ]*\).*/\1/p' "$PORT/Makefile"); do
	[ -f "$REPO/$f" ] || missing="$missing $f"
done
for rc in $(sed -n 's/^USE_RC_SUBR=[[:space:]]*//p' "$PORT/Makefile"); do
	[ -f "$PORT/files/$rc.in" ] || missing="$missing files/$rc.in"
done
for f in pkg-descr pkg-plist files/pkg-message.in; do [ -f "$PORT/$f" ] || missing="$missing $f"; done
if [ -z "$missing" ]; then pass "$case_"; else fail "$case_" "missing:$missing"; fi

for mode in server client; do
	case_="dist/config/$mode.toml.sample: nfs-tls-proxy check reports no problem (example PKI)"
	mkdir -p "$T/pki"
	cp "$REPO"/certs-example/*.pem "$T/pki/"
	chmod 600 "$T"/pki/*-key.pem
	sed -e "s,/usr/local/etc/nfs-tls-proxy/,$T/pki/,; s,/etc/nfs-tls-proxy/,$T/pki/," \
		-e 's,"f3s-storage-ha:2323","127.0.0.1:1",' \
		-e 's,^listen = \["192.168.1.138:2323"\],listen = ["127.0.0.1:0"],' \
		-e 's,127.0.0.1:2049,127.0.0.1:0,; s,"127.0.0.1:2323",,; s|, ]|]|' \
		"$REPO/dist/config/$mode.toml.sample" >"$T/$mode.toml"
	if out=$("$BIN" check --mode $mode --config "$T/$mode.toml" 2>&1); then
		pass "$case_"
	else
		fail "$case_" "$out"
	fi
done

if [ $failures -ne 0 ]; then
	echo "port-check: $failures case(s) failed"
	exit 1
fi
echo "port-check: all cases passed"
