# crewship: the two front-door commands are `make run` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint bench chaos venv clean bubblewrap

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade uv
	$(BIN)/uv pip install -q --compile-bytecode --python $(BIN)/python -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

## Start the server on the embedded defaults (SSH 2222, HTTP 8000, data in ./.crewship).
## Backups go to ./.crewship/backups every 24 h; restic (apt-get install restic) is optional,
## for off-machine copies (CREWSHIP_BACKUP_RESTIC_REPO, CREWSHIP_BACKUP_RESTIC_PASSWORD_FILE).
run: venv bubblewrap
	@command -v restic >/dev/null || echo "note: restic is not installed (optional: off-machine backup copies; apt-get install restic)"
	$(BIN)/crewship admin bootstrap
	exec $(BIN)/crewship server

## The process runtime runs every crew under bubblewrap: root installs it, others get the command.
bubblewrap:
	@command -v bwrap >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get install -y -qq bubblewrap || { apt-get update -qq && apt-get install -y -qq bubblewrap; }; \
	  else \
	    echo "crewship runs crews under bubblewrap: install it with 'sudo apt-get install bubblewrap'"; \
	  fi; }

## Run every test (unit, integration, e2e). Crew envs, uv.locks and docker dependency layers
## are built once per lock file and kept in ~/.cache/crewship-tests (CREWSHIP_TEST_CACHE) and
## tagged crewship-test-deps:* (README "Tests"); the slowest tests are listed at the end.
## TEST_WORKERS pytest-xdist workers: modules spread over them, docker modules share one
## (tests/conftest.py). Three on two cores: a worker whose test waits (on Swarm, on a
## restarted daemon) leaves its core to the other two (idle time 15 % -> 6 %).
## Bytecode is written (PYTHONDONTWRITEBYTECODE unset): every server and CLI the tests
## start imports crewship from .pyc files (1.2 s instead of 2.9 s each).
TEST_WORKERS ?= 3
test: venv
	env -u PYTHONDONTWRITEBYTECODE $(BIN)/python -m pytest -q -ra --durations=15 \
	  -n $(TEST_WORKERS) --no-loadscope-reorder

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
