# medgate: `make run` trains and serves on the embedded default; `make test` runs the test suite.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cat requirements.lock pyproject.toml | sha1sum | cut -c1-12)

.PHONY: setup run test test-slow test-all lint clean

setup: $(STAMP)

# Re-installs only when requirements.lock or pyproject.toml change; a second call takes seconds.
$(STAMP): requirements.lock pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -r requirements.lock
	$(BIN)/python -m pip install -q --no-deps --no-build-isolation -e .
	@rm -f $(VENV)/.installed-* && touch $@

run: setup
	$(BIN)/medgate run

# Everything but the `slow` tier; tests needing ../shared/data or PostgreSQL skip with the reason.
test: setup
	$(BIN)/python -m pytest -m "not slow" -q

test-slow: setup
	$(BIN)/python -m pytest -m slow -q

test-all: setup
	$(BIN)/python -m pytest -q

clean:
	rm -rf data runs .medgate dvc.lock data/*.dvc
