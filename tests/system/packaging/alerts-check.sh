#!/bin/sh
# The monitoring kit: dist/prometheus/alerts.yml and dist/grafana/nfs-tls-proxy.json.
#   - promtool check rules, and promtool test rules with alerts.test.yml (each alert fires on its
#     situation and stays quiet otherwise). promtool comes from PATH, else from Debian's prometheus
#     package, downloaded (apt-get download, not installed: no server is started) and unpacked into
#     a temporary directory. Without promtool those two cases FAIL (set ALERTS_ALLOW_NO_PROMTOOL=1 to
#     fall back to a YAML parse only).
#   - every nfs_tls_proxy_* metric the rules and the dashboard use is one the proxy defines
#     (proxy/src/metrics.rs), or nfs_tls_proxy_reload_total (announced for `nfs-tls-proxy reload`);
#   - the dashboard is valid JSON with panels and a datasource variable.
# One PASS/FAIL line per case; exit status 1 if any failed.
set -u

HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../../.." && pwd)
RULES=$REPO/dist/prometheus/alerts.yml
DASHBOARD=$REPO/dist/grafana/nfs-tls-proxy.json
T=$(mktemp -d /tmp/alerts-check.XXXXXX)
trap 'rm -rf "$T"' EXIT
trap 'exit 1' INT TERM
. "$HERE/lib.sh"

PROMTOOL=$(command -v promtool 2>/dev/null)
if [ -z "$PROMTOOL" ] && command -v apt-get >/dev/null && command -v dpkg-deb >/dev/null; then
	if (cd "$T" && apt-get download prometheus >/dev/null 2>&1); then
		dpkg-deb -x "$T"/prometheus_*.deb "$T/prometheus" && PROMTOOL=$T/prometheus/usr/bin/promtool
	fi
fi

if [ -n "$PROMTOOL" ] && [ -x "$PROMTOOL" ]; then
	case_="promtool check rules dist/prometheus/alerts.yml"
	if out=$("$PROMTOOL" check rules "$RULES" 2>&1); then
		pass "$case_ ($(echo "$out" | grep -o '[0-9]* rules found'))"
	else
		fail "$case_" "$out"
	fi
	case_="promtool test rules alerts.test.yml (each alert fires when it should, not otherwise)"
	if out=$(cd "$HERE" && "$PROMTOOL" test rules alerts.test.yml 2>&1); then
		pass "$case_"
	else
		fail "$case_" "$out"
	fi
elif [ "${ALERTS_ALLOW_NO_PROMTOOL:-}" = 1 ]; then
	case_="alerts.yml parses as YAML with groups of rules (no promtool here)"
	if python3 -c 'import sys, yaml; d = yaml.safe_load(open(sys.argv[1])); assert all(r["alert"] and r["expr"] for g in d["groups"] for r in g["rules"])' "$RULES"; then
		pass "$case_"
	else
		fail "$case_"
	fi
else
	fail "promtool available (PATH, or apt-get download prometheus)"
fi

case_="every nfs_tls_proxy_* metric in the rules and the dashboard exists in proxy/src/metrics.rs"
# The registry's prefix is nfs_tls_proxy; counters are exposed with _total.
# register("name", ...) calls, some spread over lines (metrics.rs wherever it lives under proxy/src).
METRICS=$(find "$REPO/proxy/src" -name metrics.rs | head -n 1)
defined=$(tr -d "\n" <"$METRICS" | grep -o 'register( *"[a-z_]*"' | sed 's/.*"\(.*\)"/\1/')
known=
for m in $defined; do known="$known nfs_tls_proxy_$m nfs_tls_proxy_${m}_total nfs_tls_proxy_${m}_bucket nfs_tls_proxy_${m}_count nfs_tls_proxy_${m}_sum"; done
known="$known nfs_tls_proxy_reload_total"
unknown=
for used in $(cat "$RULES" "$DASHBOARD" 2>/dev/null | grep -o 'nfs_tls_proxy_[a-z_]*' | sort -u); do
	case " $known " in
	*" $used "*) ;;
	*) unknown="$unknown $used" ;;
	esac
done
if [ -z "$unknown" ] && [ -n "$defined" ]; then
	pass "$case_"
else
	fail "$case_" "not defined:$unknown" "defined: $(echo $defined)"
fi

case_="grafana dashboard: valid JSON, panels with PromQL targets, a Prometheus datasource variable"
if python3 - "$DASHBOARD" <<'EOF'
import json, sys
d = json.load(open(sys.argv[1]))
panels = [p for p in d["panels"] if p.get("type") != "row"]
assert len(panels) >= 6, "too few panels"
for p in panels:
    assert p.get("title"), p
    assert p.get("targets") and all(t.get("expr") for t in p["targets"]), p["title"]
names = [v["name"] for v in d["templating"]["list"]]
assert any(v["type"] == "datasource" and v["query"] == "prometheus" for v in d["templating"]["list"])
assert "instance" in names
assert d["uid"] and d["title"]
EOF
then
	pass "$case_"
else
	fail "$case_"
fi

if [ $failures -ne 0 ]; then
	echo "alerts-check: $failures case(s) failed"
	exit 1
fi
echo "alerts-check: all cases passed"
