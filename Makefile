# `make run` and `make test` work in a fresh clone: each installs what is missing first.
VENV   ?= .venv
PY     := $(VENV)/bin/python
HOST   ?= 127.0.0.1
PORT   ?= 8000
GRAPH  ?= examples.quickstart:graph
BACKEND ?= ray

.PHONY: setup run test test-fast bench bench-quick chaos docs-images clean

setup:
	@./scripts/setup.sh

run: setup
	$(PY) -m dagserve run $(GRAPH) --host $(HOST) --port $(PORT) --backend $(BACKEND)

test: setup
	@./scripts/setup.sh --test
	$(PY) -m pytest -q $(PYTEST_ARGS)

# Unit tests only (no Ray, no servers): seconds.
test-fast: setup
	$(PY) -m pytest -q -m "not ray and not http" $(PYTEST_ARGS)

# Every system and workload, the chain's curves, the scaling figures; then the charts
# (docs/img/bench-*.svg, redrawn from benchmarks/results/*.json) and every target, met or not.
bench: setup
	@./scripts/setup.sh --bench
	$(PY) -m benchmarks.run
	$(PY) -m benchmarks.stream_bench
	$(PY) -m benchmarks.multiplex_bench
	$(PY) -m benchmarks.oip_bench
	$(PY) -m benchmarks.openai_bench
	$(PY) -m benchmarks.job_bench
	$(PY) -m benchmarks.scaling
	$(PY) -m benchmarks.charts
	$(PY) -m benchmarks.targets

bench-quick: setup
	@./scripts/setup.sh --bench
	$(PY) -m benchmarks.run --quick

chaos: setup
	@./scripts/setup.sh --bench
	$(PY) -m benchmarks.chaos
	$(PY) -m benchmarks.job_chaos

# Screenshots of the live dashboard for docs/ and the README (headless Chromium; ~2 minutes).
docs-images: setup
	$(PY) scripts/docs_images.py

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
