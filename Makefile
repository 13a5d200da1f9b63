# Two commands on a fresh machine: `make run` and `make test`. `make check` is the fast loop.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CONFIG ?= examples/claude-hooks.toml
# What `make upgrade` resolves against: the locks hold the hashes of PyPI's files.
INDEX_URL ?= https://pypi.org/simple
# Test workers: the suite runs in parallel (pytest-xdist); PYTEST_WORKERS=0 runs it in one process.
PYTEST_WORKERS ?= auto

.PHONY: run test check lint typecheck unit clean bench sandbox upgrade

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# Exactly the locked versions, every file checked against its hash, then the project itself;
# a changed lock installs again. The Claude Code CLI ships inside the SDK's wheel: a link puts
# it beside claude-hooks (`.venv/bin/claude setup-token`).
CLAUDE_LINK = ln -sf "$$($(BIN)/python -c 'import claude_agent_sdk, pathlib; \
  print(pathlib.Path(claude_agent_sdk.__file__).parent / "_bundled" / "claude")')" $(BIN)/claude
$(VENV)/.installed: requirements/run.lock pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --require-hashes -r requirements/run.lock
	$(BIN)/python -m pip install --quiet --no-deps -e .
	$(CLAUDE_LINK)
	touch $@

# The dev lock is resolved with the run lock as a constraint, so it holds every package of it at
# the same version, and setuptools: one pip pass installs both, and the project builds without
# an isolated build environment (fetching setuptools again cost 15 s on a fresh clone).
$(VENV)/.installed-dev: requirements/dev.lock requirements/run.lock pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --require-hashes -r requirements/dev.lock
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	$(CLAUDE_LINK)
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

# The tests start hundreds of `claude-hooks` processes: compiled once here, the package is not
# compiled again in each of them where PYTHONDONTWRITEBYTECODE is set (0.1-0.25 s per process).
unit: $(VENV)/.installed-dev sandbox
	$(BIN)/python -m compileall -q src tests bench
	$(BIN)/pytest -n $(PYTEST_WORKERS) --dist loadgroup

# mypy (about 20 s on a fresh clone, which has no cache) runs beside the tests, which spend
# much of their time waiting on processes and sockets.
test: lint
	@$(MAKE) --no-print-directory -j2 typecheck unit

# The edit-test loop: lint, types, the import contract and the pure rules (tests/unit).
check: lint typecheck
	$(BIN)/pytest tests/unit -q

# Resolve the newest versions pyproject.toml allows, from $(INDEX_URL) alone (not this
# machine's pip configuration), with every file's hash; then test them.
LOCK := env -u PIP_FIND_LINKS -u PIP_INDEX_URL -u PIP_EXTRA_INDEX_URL PIP_CONFIG_FILE=/dev/null \
  $(BIN)/pip-compile --quiet --upgrade --generate-hashes --strip-extras --allow-unsafe \
  --index-url $(INDEX_URL) --no-emit-index-url
upgrade: $(VENV)/.installed-dev
	$(LOCK) --output-file requirements/run.lock pyproject.toml
	$(LOCK) --extra dev --constraint requirements/run.lock --output-file requirements/dev.lock pyproject.toml
	$(MAKE) test

clean:
	rm -rf $(VENV) data .pytest_cache .mypy_cache .ruff_cache

# Benchmarks: `make bench` records bench/RESULTS.md; `make bench QUICK=1` only checks they run;
# `make bench BENCH_DATABASE_URL=postgresql://user@host/db` measures PostgreSQL there (default: 127.0.0.1:5432).
# Compiled first, as an installation is: where PYTHONDONTWRITEBYTECODE is set, every start of
# `serve` would otherwise compile the package again (~0.4 s of the restart figure).
bench: $(VENV)/.installed-dev
	@command -v wrk >/dev/null && command -v webhook >/dev/null || \
	  { [ "$$(id -u)" = 0 ] && apt-get update -qq && apt-get install -y -qq wrk webhook; } || \
	  echo "wrk and webhook (Debian packages) are missing: the ingest comparison needs them"
	$(BIN)/python -m compileall -q src bench
	$(BIN)/python -m bench.run $(if $(QUICK),--quick --out bench/results/quick.json,) \
	  $(if $(BENCH_DATABASE_URL),--database-url $(BENCH_DATABASE_URL),)
