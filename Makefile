# Quick start on a fresh clone: `make run` (embedded default), `make check` (lint, types,
# import rules, unit tests and the server-free contract cases: no server, under a minute),
# `make test` (the whole suite, on the real servers; what CI runs).
PYTHON ?= python3.11
# Python writes its bytecode caches, and pytest its rewritten test modules, whatever the
# caller's environment says: with PYTHONDONTWRITEBYTECODE=1 (this machine's shells set it)
# every pytest process of make test compiled every test module again (about 10 s of CPU
# each, against 4 with the caches) and every service process the project's modules.
unexport PYTHONDONTWRITEBYTECODE
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install run check test unit lint docs chaos bench bench-seed clean compose-test

# The virtualenv, installed with uv (pinned; 11 s against pip's 48 s from a fresh clone on
# this box); pip does it when uv cannot (no wheel for the platform, an index uv cannot reach).
UV_VERSION := 0.13.9
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip==25.3
	( $(BIN)/pip install --quiet uv==$(UV_VERSION) \
		&& $(BIN)/uv pip install --quiet --python $(BIN)/python -e '.[test]' ) \
		|| $(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/orderstack dev

# The quick lane: needs no server. The contract suites' in-process and SQLite cases run
# here; their server cases are marked `integration` (tests/contract/conftest.py). Tests run
# on two workers (pytest-xdist); PYTEST_WORKERS=0 runs them in this process. mypy runs
# beside them (from a fresh clone, with no cache, it takes about 13 s of its own).
PYTEST_WORKERS ?= auto
check: $(STAMP)
	$(BIN)/ruff check src tests harness
	$(BIN)/ruff format --check src tests harness
	$(BIN)/lint-imports
	@mkdir -p var
	$(BIN)/mypy src harness > var/mypy-check.log 2>&1 & mypy=$$!; \
	$(BIN)/python -m pytest -q -n $(PYTEST_WORKERS) -m "not integration and not e2e and not slow" \
		tests/unit tests/contract; tests=$$?; \
	wait $$mypy; typed=$$?; echo "mypy src harness:"; cat var/mypy-check.log; \
	test $$typed -eq 0 && test $$tests -eq 0

# Everything, on the real servers (`slow` ones included: chaos, bench, cluster, browser), in
# two pytest commands, both run and both must pass: first every test not marked `serial` on
# TEST_WORKERS pytest-xdist workers (each module on one worker: its stack and sandbox are
# started once), then the `serial` ones alone (they stop the broker, lock the whole MariaDB
# server or time themselves under load: SERIAL_MODULES in tests/conftest.py). Each prints
# its slowest steps. TEST_WORKERS=0: the first one in this process.
TEST_WORKERS ?= 4
# mypy runs beside the parallel part (its output printed after it).
test: $(STAMP)
	$(BIN)/ruff check src tests harness
	$(BIN)/lint-imports
	@mkdir -p var
	$(BIN)/mypy src harness > var/mypy.log 2>&1 & mypy=$$!; \
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadscope --no-loadscope-reorder -m "not serial" \
		--durations=25; parallel=$$?; \
	wait $$mypy; typed=$$?; echo "mypy src harness:"; cat var/mypy.log; \
	$(BIN)/python -m pytest -q -m serial --durations=10; serial=$$?; \
	echo "make test: mypy exited $$typed, parallel part $$parallel, serial part $$serial"; \
	test $$typed -eq 0 && test $$parallel -eq 0 && test $$serial -eq 0

unit: $(STAMP)
	$(BIN)/python -m pytest -q tests/unit

lint: $(STAMP)
	$(BIN)/ruff check src tests harness
	$(BIN)/ruff format --check src tests harness
	$(BIN)/mypy src harness
	$(BIN)/lint-imports

# docs/configuration.md from the settings' fields in config.py (tests/unit/test_docs.py
# fails when the committed file differs): run after adding or changing a setting. The event
# and queue tables of docs/CONTRACT.md from the event declarations, src/orderstack/events.py
# (tests/unit/test_event_catalog.py): run after adding or changing an event.
docs: $(STAMP)
	$(BIN)/python -m orderstack.settings_doc docs/configuration.md
	$(BIN)/python -m orderstack.messaging.events_doc docs/CONTRACT.md

clean:
	rm -rf $(VENV) var .pytest_cache

# Fault injection: replicas under load while replicas are killed and RabbitMQ, Redis and the
# database go away; checks every invariant afterwards. ARGS="--orders 6000 --rate 200" etc.
# ARGS="--embedded": orderstack dev stopped by Ctrl-C and kill -9 under load.
# ARGS="--cluster": a 3-node RabbitMQ cluster and HAProxy, broker nodes killed under load.
chaos: $(STAMP)
	$(BIN)/python -m harness.chaos $(ARGS)

# Benchmark: open-loop ladder of order rates, latencies, settled/s, CPU, memory, JSON results.
# ARGS="--rates 250,500 --step-seconds 20" etc.
bench: $(STAMP)
	$(BIN)/python -m harness.bench $(ARGS)

# The seed's own load test: 1,000 camelCase orders/s for 30 s over two products; PASS/FAIL on
# p95 < 500 ms, failed < 10 %, an id in every 201; non-zero exit on FAIL.
# ARGS="--rates 500 --step-seconds 10" to change the rate or the duration.
bench-seed: $(STAMP)
	$(BIN)/python -m harness.bench --seed-scenario $(ARGS)

# The docker-compose stack started and used for real (harness/compose_test.py): needs root,
# starts dockerd and installs compose v2 when missing, builds stand-ins for the upstream
# images that cannot be pulled (deploy/images/), runs the seed's flows, replica kills under
# load, stop, down/up, and removes what it started. ARGS="--orders 1200 --rate 60" etc.
compose-test: $(STAMP)
	$(BIN)/python -m harness.compose_test $(ARGS)
