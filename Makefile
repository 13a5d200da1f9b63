# Two commands on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CONFIG ?= examples/claude-hooks.toml

.PHONY: run test lint typecheck unit clean bench sandbox

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(VENV)/.installed $@

# Agents run in a bubblewrap sandbox: as root, install Debian's package when it is missing.
sandbox:
	@command -v bwrap >/dev/null || { [ "$$(id -u)" = 0 ] && apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq bubblewrap >/dev/null; } || \
	  { echo "bubblewrap is missing: install it (apt-get install bubblewrap), agents run in it"; exit 1; }

run: $(VENV)/.installed sandbox
	$(BIN)/claude-hooks serve --config $(CONFIG)

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/lint-imports

typecheck: $(VENV)/.installed-dev
	$(BIN)/mypy

unit: $(VENV)/.installed-dev sandbox
	$(BIN)/pytest

test: lint typecheck unit

clean:
	rm -rf $(VENV) data .pytest_cache .mypy_cache .ruff_cache

# Benchmarks: `make bench` records bench/RESULTS.md; `make bench QUICK=1` only checks they run;
# `make bench BENCH_DATABASE_URL=postgresql://user@host/db` measures PostgreSQL there (default: 127.0.0.1:5432).
bench: $(VENV)/.installed-dev
	@command -v wrk >/dev/null && command -v webhook >/dev/null || \
	  { [ "$$(id -u)" = 0 ] && apt-get update -qq && apt-get install -y -qq wrk webhook; } || \
	  echo "wrk and webhook (Debian packages) are missing: the ingest comparison needs them"
	$(BIN)/python -m bench.run $(if $(QUICK),--quick --out bench/results/quick.json,) \
	  $(if $(BENCH_DATABASE_URL),--database-url $(BENCH_DATABASE_URL),)
