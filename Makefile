# The two commands of the README: `make demo` and `make test`. Both set everything up first.
.PHONY: setup demo test bench lint audit

setup:
	scripts/setup.sh

demo: setup
	.venv/bin/parcours demo

test:
	scripts/test.sh

lint: setup
	.venv/bin/ruff check . && .venv/bin/ruff format --check . && .venv/bin/mypy parcours ingest streams forecasting dashboard bench simulate
	.venv/bin/bandit -q -c pyproject.toml -r parcours ingest streams forecasting dashboard bench simulate

audit: setup
	scripts/audit.sh
