#!/usr/bin/env bash
# Audit the installed Python packages for known vulnerabilities with pip-audit, when a
# vulnerability database answers; say plainly when none does (offline CI must not fail for it).
# Usage: scripts/audit.sh [VENV]   (default .venv). Exit 1 only if vulnerabilities are found.
set -uo pipefail
cd "$(dirname "$0")/.."
VENV="${1:-${VENV:-.venv}}"
PROBE_TIMEOUT_S="${PARCOURS_AUDIT_PROBE_TIMEOUT_S:-5}"

# Which service answers with vulnerability data for a package we have: PyPI's JSON API (the
# per-version document carries a `vulnerabilities` list), else OSV. A mirror that serves packages
# but not that API counts as no database.
service="$("$VENV/bin/python" - "$PROBE_TIMEOUT_S" <<'PY' 2>/dev/null
import json, sys, urllib.request
from importlib.metadata import version

timeout = float(sys.argv[1])
pip_version = version("pip")
try:
    url = f"https://pypi.org/pypi/pip/{pip_version}/json"
    with urllib.request.urlopen(url, timeout=timeout) as r:
        if "vulnerabilities" in json.load(r):
            print("pypi")
            sys.exit(0)
except Exception:
    pass
try:
    query = json.dumps({"package": {"name": "pip", "ecosystem": "PyPI"}, "version": pip_version})
    req = urllib.request.Request(
        "https://api.osv.dev/v1/query", data=query.encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=timeout) as r:
        json.load(r)
        print("osv")
except Exception:
    pass
PY
)"
if [ -z "$service" ]; then
  echo "audit: pip-audit NOT run: no vulnerability database reachable (neither PyPI's JSON API nor OSV answered within ${PROBE_TIMEOUT_S}s). Run scripts/audit.sh where the internet is reachable."
  exit 0
fi
if [ ! -x "$VENV/bin/pip-audit" ]; then
  echo "audit: pip-audit NOT run: it is not installed in $VENV (pip install -e '.[dev]')"
  exit 0
fi
echo "audit: pip-audit against $service"
out="$(timeout 600 "$VENV/bin/pip-audit" --vulnerability-service "$service" --skip-editable \
  --progress-spinner off --timeout 15 2>&1)"
code=$?
echo "$out" | grep -v "could not be audited" || true
if [ "$code" -eq 0 ]; then
  exit 0
fi
if echo "$out" | grep -q "known vulnerabilit"; then
  echo "audit: pip-audit found known vulnerabilities (above): upgrade, or ignore one with a reason" >&2
  exit 1
fi
echo "audit: pip-audit could not finish (code $code, network?); vulnerabilities NOT checked"
exit 0
