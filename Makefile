# venue-agent — the two set-up commands are `make demo` and `make test`.
# Each creates .venv and installs what it needs on a fresh Debian machine with only Python.

PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
PYTEST_ARGS ?=
# Test processes (pytest-xdist). Most end-to-end tests wait on real time (replays, brokers,
# outages), so two workers halve the wall time on a 2-core machine; each test file stays in
# one worker (module fixtures run once). TEST_WORKERS=0 runs everything in this process.
TEST_WORKERS ?= 2

.PHONY: demo test lint typecheck bench accuracy scale soak fuzz clean deps-test deps-demo system-deps

$(VENV)/bin/python:
	$(PY) -m venv $(VENV)

$(VENV)/.dev-installed: pyproject.toml | $(VENV)/bin/python
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

$(VENV)/.demo-installed: pyproject.toml | $(VENV)/bin/python
	$(BIN)/pip install -q -e '.[demo]'
	touch $@

# Debian packages the real-parts tests need (Mosquitto; D-Bus and headers for the BLE tests).
system-deps:
	@sh .ci/system-deps.sh

deps-test: system-deps $(VENV)/.dev-installed
deps-demo: $(VENV)/.demo-installed

demo: deps-demo
	$(BIN)/venue-agent demo $${DEMO_SECONDS:+--duration $$DEMO_SECONDS}

test: deps-test
	$(BIN)/ruff check agent firmware_bridge kernels simulators tests $(wildcard bench)
	$(BIN)/mypy
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile --durations=25 $(PYTEST_ARGS)

lint: deps-test
	$(BIN)/ruff check agent firmware_bridge kernels simulators tests $(wildcard bench)

typecheck: deps-test
	$(BIN)/mypy

# Speed: ingest rate, speed-ups against the reference twin and numpy, tick latency,
# start-up and memory. Writes bench/out/speed.json.
bench: deps-test
	NUMBA_NUM_THREADS=1 $(BIN)/python bench/run.py --out bench/out/speed.json

# Accuracy against the simulator's ground truth, per scenario, with a PNG per scenario.
# Writes bench/out/accuracy.json.
accuracy: deps-test
	$(BIN)/python bench/accuracy.py --out bench/out/accuracy.json --plots bench/out

# A venue's worth of gateways (SCALE_GATEWAYS, default 200) on a 3-node NATS JetStream
# cluster (MQTT 3.1.1), a consumer group of 3, one node SIGKILLed mid-run and restarted.
# Writes bench/out/scale.json; fails on loss, seq gaps, p99 >= 500 ms or a stall >= 10 s.
scale: deps-test
	$(BIN)/python bench/scale.py --gateways $${SCALE_GATEWAYS:-200} --out bench/out/scale.json

soak: deps-test
	$(BIN)/python -m pytest -m soak -s $(PYTEST_ARGS)

# 10^6 inputs per serial decoder (random bytes, mutated frames, frames split at every
# offset): no exception, bounded buffer, split-invariant reads. FUZZ_INPUTS=N changes the
# count. A slice of the same runs in `make test`.
fuzz: deps-test
	$(BIN)/python -m pytest -m fuzz -s tests/test_fuzz_decoders.py $(PYTEST_ARGS)

# A wheel with the example configs, the systemd unit, udev rules, Mosquitto templates and the
# docs as package data (venue_agent_data/): dist/venue_agent-<version>-py3-none-any.whl.
.PHONY: wheel contract
wheel: $(VENV)/.dev-installed
	rm -rf build
	$(BIN)/python -m build --wheel --outdir dist .

# The MQTT contract documents, docs/asyncapi.yaml and docs/schemas/*.json, generated from
# agent/contract.py (tests/test_contract.py fails while they differ).
contract: $(VENV)/.dev-installed
	$(BIN)/venue-agent contract --out docs

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis bench/out
