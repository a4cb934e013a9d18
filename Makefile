# crewship: the two front-door commands are `make run` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint bench chaos venv clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade uv
	$(BIN)/uv pip install -q --python $(BIN)/python -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

## Start the server on the embedded defaults (SSH 2222, HTTP 8000, data in ./.crewship).
run: venv
	$(BIN)/crewship admin bootstrap
	exec $(BIN)/crewship server

## Run every test (unit, integration, e2e).
test: venv
	$(BIN)/python -m pytest -q -ra

lint: venv
	$(BIN)/ruff check .
	$(BIN)/mypy

## Benchmarks: crewship against the natural baseline, measured in the same run.
bench: venv
	$(BIN)/python -m bench

## Reliability suite: one line per scenario (accepted, succeeded, failed, lost, recovery).
## CHAOS_ARGS="--only a,c --short" or "--runtime docker".
chaos: venv
	$(BIN)/python -m bench.chaos $(CHAOS_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
