#!/usr/bin/env bash
# The test command: set up, make sure PostgreSQL runs, lint (ruff, bandit), type-check, audit the
# installed packages (pip-audit, when a vulnerability database answers), run every test tier.
# Extra arguments go to pytest (for example: scripts/test.sh tests/unit -k pathway).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VENV:-.venv}"

scripts/setup.sh

PG_URL="${PARCOURS_TEST_DATABASE_URL:-postgresql://postgres@127.0.0.1:5432/test}"
if ! "$VENV/bin/python" - "$PG_URL" <<'PY' 2>/dev/null
import sys, psycopg2
psycopg2.connect(sys.argv[1].replace("postgresql+psycopg2://", "postgresql://"), connect_timeout=3).close()
PY
then
  echo "test: PostgreSQL is not answering at $PG_URL; trying to start the local cluster"
  if command -v pg_ctlcluster >/dev/null 2>&1 && [ -d /etc/postgresql ]; then
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start || true
    sleep 2
  fi
fi

echo "test: ruff"
"$VENV/bin/ruff" check .
"$VENV/bin/ruff" format --check .
echo "test: bandit"
# Its "nosec encountered" warnings repeat a suppression already explained beside the code.
"$VENV/bin/bandit" -q -c pyproject.toml -r parcours ingest streams forecasting dashboard bench simulate \
  2> >(grep -v "nosec encountered" >&2)
echo "test: mypy"
"$VENV/bin/mypy" parcours ingest streams forecasting dashboard bench simulate
echo "test: pip-audit"
scripts/audit.sh "$VENV"
echo "test: pytest"
set +e
if [ "$#" -eq 0 ]; then set -- tests/unit tests/integration tests/e2e; fi
"$VENV/bin/python" -m pytest -p no:cacheprovider "$@"
code=$?
set -e
if [ "$code" -eq 5 ]; then
  # pytest's exit code 5: nothing was collected for these arguments. Say so plainly.
  echo "test: pytest collected no test for: $*" >&2
  exit 0
fi
exit "$code"
