#!/bin/sh
# Writes OUTDIR/nfs-tls-proxy-VERSION.tar.gz: the source tree plus every crate it needs, vendored with
# `cargo vendor`, so the RPM (dist/rpm/nfs-tls-proxy.spec) and the FreeBSD port (dist/freebsd/port)
# build offline with --locked. VERSION is the workspace version in Cargo.toml.
#
#   dist/source-tarball.sh OUTDIR            the working tree (tracked and new, not ignored, files)
#   dist/source-tarball.sh OUTDIR REF        a commit, e.g. HEAD or v0.1.0 (git archive)
#
# Needs git and cargo; `cargo vendor` downloads from crates.io (or uses ~/.cargo's cache). The
# tarball has no .cargo/config.toml: the spec and the port each point cargo at vendor/ themselves.
set -eu

OUT=${1:?usage: source-tarball.sh OUTDIR [REF]}
REF=${2:-}
REPO=$(cd "$(dirname "$0")/.." && pwd)
VERSION=$(sed -n '/^\[workspace.package\]/,/^\[/s/^version *= *"\(.*\)"/\1/p' "$REPO/Cargo.toml")
[ -n "$VERSION" ] || { echo "source-tarball: no version in $REPO/Cargo.toml" >&2; exit 1; }
NAME=nfs-tls-proxy-$VERSION

mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
WORK=$(mktemp -d /tmp/source-tarball.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
mkdir "$WORK/$NAME"

cd "$REPO"
if [ -n "$REF" ]; then
	git archive --format=tar "$REF" | tar -x -C "$WORK/$NAME"
else
	# Files as they are now, with their modes; target/ and other ignored files stay out.
	git ls-files -z --cached --others --exclude-standard |
		(cd "$REPO" && xargs -0 sh -c 'for f; do [ -e "$f" ] && printf "%s\0" "$f"; done' sh) |
		tar --null -T - -cf - | tar -x -C "$WORK/$NAME"
fi

cd "$WORK/$NAME"
# --locked: Cargo.lock as committed; the printed [source] snippet is not needed (see above).
cargo vendor --locked --quiet vendor >/dev/null

tar --sort=name --owner=0 --group=0 --numeric-owner -C "$WORK" -czf "$OUT/$NAME.tar.gz" "$NAME"
echo "$OUT/$NAME.tar.gz"
