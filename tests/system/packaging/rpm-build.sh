#!/bin/sh
# Builds the RPM from dist/rpm/nfs-tls-proxy.spec as a packager would, then checks what it holds:
#   1. the vendored source tarball (dist/source-tarball.sh: the working tree, or SOURCE_REF if set,
#      plus `cargo vendor`) into a temporary _topdir;
#   2. rpmbuild -bb (Debian's rpm package; installed with apt-get if rpmbuild is missing). --nodeps,
#      because the Rust toolchain here is rustup's, not an RPM; the build itself is offline and
#      --locked against vendor/;
#   3. rpm -qlp (file list, /etc/nfs-tls-proxy's mode and group), rpm -qp --scripts (scriptlets),
#      and the packaged binary and units unpacked with rpm2archive.
# RPM_CARGO_TARGET_DIR: cargo's build directory (default: inside the temporary _topdir, removed
# afterwards; point it somewhere lasting to reuse the build). One release build of both binaries
# takes a few minutes on 2 cores. One PASS/FAIL line per case; exit status 1 if any failed.
set -u

HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../../.." && pwd)
SPEC=$REPO/dist/rpm/nfs-tls-proxy.spec
TOP=$(mktemp -d /tmp/rpm-build.XXXXXX)
trap 'rm -rf "$TOP"' EXIT
trap 'exit 1' INT TERM
. "$HERE/lib.sh"
finish()
{
	if [ $failures -ne 0 ]; then
		echo "rpm-build: $failures case(s) failed"
		exit 1
	fi
	echo "rpm-build: all cases passed"
	exit 0
}

if ! command -v rpmbuild >/dev/null; then
	if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq rpm >/dev/null 2>&1
	fi
fi
if ! command -v rpmbuild >/dev/null; then
	fail "rpmbuild is available (apt-get install rpm)"
	finish
fi

VERSION=$(sed -n '/^\[workspace.package\]/,/^\[/s/^version *= *"\(.*\)"/\1/p' "$REPO/Cargo.toml")
case_="spec Version matches the workspace version ($VERSION)"
spec_version=$(sed -n 's/^Version: *//p' "$SPEC")
if [ "$spec_version" = "$VERSION" ]; then pass "$case_"; else fail "$case_" "spec has $spec_version"; fi

mkdir -p "$TOP/SOURCES" "$TOP/SPECS" "$TOP/BUILD" "$TOP/RPMS" "$TOP/SRPMS"
case_="source tarball with vendored crates"
if tarball=$("$REPO/dist/source-tarball.sh" "$TOP/SOURCES" ${SOURCE_REF:-} 2>"$TOP/tarball.log") &&
	tar -tzf "$tarball" | grep -q "^nfs-tls-proxy-$VERSION/vendor/ring/"; then
	pass "$case_ ($(du -h "$tarball" | cut -f1))"
else
	fail "$case_" "$(tail -5 "$TOP/tarball.log")"
	finish
fi
cp "$REPO/dist/systemd/nfs-tls-proxy.sysusers" "$TOP/SOURCES/"
cp "$SPEC" "$TOP/SPECS/"

case_="rpmbuild -bb (offline, --locked, from vendor/)"
target=${RPM_CARGO_TARGET_DIR:-$TOP/cargo-target}
started=$(date +%s)
# No network needed from here on: cargo must not reach crates.io (CARGO_NET_OFFLINE as well as
# --offline in the spec).
if CARGO_NET_OFFLINE=true rpmbuild -bb --nodeps \
	--define "_topdir $TOP" --define "cargo_target_dir $target" \
	"$TOP/SPECS/nfs-tls-proxy.spec" >"$TOP/rpmbuild.log" 2>&1; then
	pass "$case_ ($(($(date +%s) - started)) s)"
else
	fail "$case_" "$(tail -25 "$TOP/rpmbuild.log")"
	finish
fi
RPM=$(ls "$TOP"/RPMS/*/nfs-tls-proxy-"$VERSION"-*.rpm 2>/dev/null | head -n 1)

case_="rpm -qlp: binaries, units, sysusers.d, tmpfiles.d, config dir, man pages, completions"
files=$(rpm -qlp "$RPM" 2>/dev/null)
missing=
for f in /usr/bin/nfs-tls-proxy /usr/bin/ca-tool \
	/usr/lib/systemd/system/nfs-tls-proxy-server.service /usr/lib/systemd/system/nfs-tls-proxy-client.service \
	/usr/lib/systemd/system/nfs-tls-proxy-client.socket /usr/lib/systemd/system/nfs-tls-proxy-server.socket \
	/usr/lib/sysusers.d/nfs-tls-proxy.conf /usr/lib/tmpfiles.d/nfs-tls-proxy.conf /etc/nfs-tls-proxy \
	/usr/share/bash-completion/completions/nfs-tls-proxy /usr/share/zsh/site-functions/_nfs-tls-proxy \
	/usr/share/fish/vendor_completions.d/nfs-tls-proxy.fish; do
	echo "$files" | grep -qx "$f" || missing="$missing $f"
done
for page in nfs-tls-proxy nfs-tls-proxy-server nfs-tls-proxy-client; do
	echo "$files" | grep -q "^/usr/share/man/man1/$page\.1" || missing="$missing man1/$page.1"
done
if [ -z "$missing" ]; then
	pass "$case_ ($(echo "$files" | wc -l) files)"
else
	fail "$case_" "missing:$missing" "$(echo "$files" | tr '\n' ' ')"
fi

case_="/etc/nfs-tls-proxy is packaged 0750 root:nfs-tls-proxy"
line=$(rpm -qp --qf '[%{FILEMODES:perms} %{FILEUSERNAME} %{FILEGROUPNAME} %{FILENAMES}\n]' "$RPM" 2>/dev/null |
	awk '$4 == "/etc/nfs-tls-proxy"')
if [ "$line" = "drwxr-x--- root nfs-tls-proxy /etc/nfs-tls-proxy" ]; then
	pass "$case_"
else
	fail "$case_" "rpm -qlvp: $line"
fi

case_="rpm -qp --scripts: user created in %pre; preset on install, disable --now on erase, try-restart on upgrade"
scripts=$(rpm -qp --scripts "$RPM" 2>/dev/null)
pre=$(echo "$scripts" | sed -n '/^preinstall scriptlet/,/^[a-z]* scriptlet/p')
post=$(echo "$scripts" | sed -n '/^postinstall scriptlet/,/^[a-z]* scriptlet/p')
preun=$(echo "$scripts" | sed -n '/^preuninstall scriptlet/,/^[a-z]* scriptlet/p')
postun=$(echo "$scripts" | sed -n '/^postuninstall scriptlet/,/^[a-z]* scriptlet/p')
ok=yes
echo "$pre" | grep -q 'nfs-tls-proxy' && echo "$pre" | grep -Eq 'useradd|sysusers' || ok=no
echo "$post" | grep -q 'preset.*nfs-tls-proxy-server.service nfs-tls-proxy-client.service' || ok=no
echo "$post" | grep -q 'systemd-tmpfiles --create' || ok=no
echo "$preun" | grep -q 'disable --now.*nfs-tls-proxy-server.service' || ok=no
echo "$postun" | grep -q 'try-restart.*nfs-tls-proxy-client.service' || ok=no
if [ $ok = yes ]; then pass "$case_"; else fail "$case_" "$scripts"; fi

case_="the packaged binary runs, and the packaged units name /usr/bin (not /usr/local)"
mkdir "$TOP/unpacked"
# rpm2archive (part of rpm) writes RPM.tgz; no cpio needed.
cp "$RPM" "$TOP/unpacked.rpm" && rpm2archive "$TOP/unpacked.rpm" && tar -xzf "$TOP/unpacked.rpm.tgz" -C "$TOP/unpacked"
version_out=$("$TOP/unpacked/usr/bin/nfs-tls-proxy" --version 2>&1)
ca_out=$("$TOP/unpacked/usr/bin/ca-tool" --version 2>&1)
if [ "$version_out" = "nfs-tls-proxy $VERSION" ] && [ "$ca_out" = "ca-tool $VERSION" ] &&
	grep -q '^ExecStart=/usr/bin/nfs-tls-proxy server' "$TOP/unpacked/usr/lib/systemd/system/nfs-tls-proxy-server.service" &&
	! grep -rq /usr/local "$TOP/unpacked/usr/lib/systemd/system/"; then
	pass "$case_"
else
	fail "$case_" "$version_out / $ca_out" "$(grep -rn /usr/local "$TOP/unpacked/usr/lib/systemd/system/")"
fi

case_="the packaged bash completion is valid bash and defines a completion for nfs-tls-proxy"
if bash -c ". '$TOP/unpacked/usr/share/bash-completion/completions/nfs-tls-proxy' && complete -p nfs-tls-proxy" >/dev/null 2>&1; then
	pass "$case_"
else
	fail "$case_"
fi

finish
