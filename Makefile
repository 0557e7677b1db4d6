# medgate: `make run` trains and serves on the embedded default; `make test` runs the test suite
# (what CI runs); `make test-fast` only its unit tier (tests/unit, about a minute); `make test-scale`
# the scale-out tier (tests/scale: real Prefect server on PostgreSQL, S3-compatible store, shared registry).
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cat requirements.lock pyproject.toml | sha1sum | cut -c1-12)

UV     := $(BIN)/uv --quiet

# uv reads no pip.conf: this prints `export UV_...` lines with the package locations pip is set up with
# (its environment over its files; a UV_ variable already set wins), so that both take the same wheels.
PIP_LOCATIONS_FOR_UV := $(BIN)/python -m pip config list | awk -F= ' \
	BEGIN { uv["index-url"] = "UV_INDEX_URL"; uv["extra-index-url"] = "UV_EXTRA_INDEX_URL"; uv["find-links"] = "UV_FIND_LINKS" } \
	{ dot = index($$1, "."); scope = substr($$1, 1, dot - 1); key = substr($$1, dot + 1); \
	  rank = scope == ":env:" ? 3 : scope == "install" ? 2 : scope == "global" ? 1 : 0; \
	  if (rank > 0 && (key in uv) && rank > seen[key]) { seen[key] = rank; value[key] = substr($$0, length($$1) + 3, length($$0) - length($$1) - 3) } } \
	END { for (k in value) { if (k == "find-links") gsub(/[ \t]+/, ",", value[k]); printf "export %s=\"$${%s:-%s}\"\n", uv[k], uv[k], value[k] } }'

.PHONY: screenshots setup speech-engine browser run test test-fast test-slow test-scale test-all lint clean

setup: $(STAMP) speech-engine browser
	@# A registry server named in the environment is migrated here, once; a SQLite registry migrates itself.
	@if [ -n "$$MEDGATE_DATABASE_URL" ]; then $(BIN)/medgate db upgrade; fi

# espeak-ng speaks the embedded cohort:dictation (Debian package; CI runs as root). Without it that
# cohort says what is missing and its tests skip naming it; cohort:tones needs nothing.
speech-engine:
	@command -v espeak-ng >/dev/null || (apt-get install -y -qq espeak-ng >/dev/null 2>&1 || \
	  (apt-get update -qq && apt-get install -y -qq espeak-ng >/dev/null)) || \
	  echo "note: espeak-ng could not be installed (apt-get install -y espeak-ng as root); cohort:dictation needs it"

# The console's browser tests drive Debian's Chromium through Playwright (whose own browser download
# does not work offline); without it they skip naming it.
browser:
	@command -v chromium >/dev/null || (apt-get install -y -qq chromium >/dev/null 2>&1 || \
	  (apt-get update -qq && apt-get install -y -qq chromium >/dev/null)) || \
	  echo "note: chromium could not be installed (apt-get install -y chromium as root); the console's browser tests need it"

# Re-installs only when requirements.lock or pyproject.toml change; a second call takes seconds.
# pip brings the locked uv, which installs the lock (seconds, where pip takes a minute or more);
# --compile-bytecode writes every .pyc once: where PYTHONDONTWRITEBYTECODE is set (this machine and CI),
# each process would otherwise compile the stack's sources at import (15 CPU-s against 6 for torch, MONAI,
# Prefect, BentoML and GX), and the tests start well over a hundred such processes.
# unsafe-best-match is pip's rule: each pinned version from whichever location has it.
$(STAMP): requirements.lock pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip $$(grep '^uv==' requirements.lock)
	@eval "$$($(PIP_LOCATIONS_FOR_UV))" && \
	  $(UV) pip install --python $(BIN)/python --index-strategy unsafe-best-match --compile-bytecode -r requirements.lock
	$(UV) pip install --python $(BIN)/python --no-deps --no-build-isolation -e .
	@rm -f $(VENV)/.installed-* && touch $@

run: setup
	$(BIN)/medgate run

# Everything but the `slow` and `scale` tiers; tests needing ../shared/data or PostgreSQL skip with the reason.
# Tests run in TEST_WORKERS processes (pytest-xdist): most of a flow run waits on one core (imports,
# subprocesses, the Prefect API). worksteal: each takes half of the list in order, and one that is done
# takes over the tail of the other's; whole files per worker (loadfile) left the longest file to the end.
TEST_WORKERS ?= 2

test: setup lint
	$(BIN)/python -m pytest -m "not slow and not scale" -q -n $(TEST_WORKERS) --dist worksteal --durations=15

# pyflakes and pycodestyle's error rules (pyproject.toml [tool.ruff.lint]); under a second.
lint: setup
	$(BIN)/ruff check --quiet .

# The unit tier: one component at a time, in this process; no servers, no flow runs.
test-fast: setup
	$(BIN)/python -m pytest tests/unit -m "not slow" -q

# The README's console screenshots, rewritten by the browser test that takes them.
screenshots: setup
	MEDGATE_UPDATE_SCREENSHOTS=1 $(BIN)/python -m pytest tests/integration/test_console_browser.py -q

test-slow: setup
	$(BIN)/python -m pytest -m "slow and not scale" -q

# The scale-out paths on real servers on 127.0.0.1, one test at a time (each starts several flow runs
# and servers; one of them runs two flows at once): a Prefect server on PostgreSQL with a process work
# pool and worker, the DVC remote on moto's S3 server, two workspaces and a serving host on one
# PostgreSQL registry. Needs PostgreSQL on 127.0.0.1:5432 (else those tests skip, saying so).
test-scale: setup
	$(BIN)/python -m pytest tests/scale -m scale -q --durations=10

test-all: setup
	$(BIN)/python -m pytest -q

clean:
	rm -rf data runs .medgate dvc.lock data/*.dvc
