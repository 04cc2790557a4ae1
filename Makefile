# panelboard: `make demo` and `make test` set up everything on a fresh machine.
#   make test                     build, then cargo test + pytest (PYTHON=python3 by default)
#   make test-ft PYTHON=/path/3.13t   the same pytest suite on free-threaded CPython
#   make demo | bench | loom | soak | stubtest | typecheck
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=
SOAK_SECONDS ?= 60
TEST_DEPS := maturin pytest pytest-asyncio hypothesis==6.150.0
# mypy's newest releases build a PyO3 0.29 part that refuses free-threaded 3.13, so the typing
# checks (make stubtest, make typecheck, tests/test_typing.py) run on the GIL build only.
TYPING_DEPS := mypy
# The optional integrations' libraries, for their tests (panelboard.httpx, .aiohttp, .grpc, .prometheus,
# .opentelemetry). Each is installed from a wheel on its own: one without a wheel for this interpreter
# (grpcio on free-threaded 3.13t) is skipped here and its tests skip with the reason.
INTEGRATION_DEPS := httpx httpx2 aiohttp grpcio prometheus_client opentelemetry-api opentelemetry-sdk
BENCH_DEPS := pybreaker circuitbreaker aiobreaker purgatory matplotlib

.PHONY: all venv build test test-rust test-python test-ft demo bench bench-rust loom soak stubtest typecheck clean

all: test

$(VENV)/.deps:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TEST_DEPS)
	$(PY) -c 'import sys; sys.exit(not getattr(sys, "_is_gil_enabled", lambda: True)())' \
		&& $(PY) -m pip install -q $(TYPING_DEPS) || echo "free-threaded interpreter: typing checks skipped"
	touch $@

$(VENV)/.integration-deps: $(VENV)/.deps
	@for dep in $(INTEGRATION_DEPS); do \
		$(PY) -m pip install -q --only-binary=:all: $$dep \
			|| echo "$$dep: no wheel for this interpreter; its integration tests will skip"; \
	done
	touch $@

venv: $(VENV)/.deps $(VENV)/.integration-deps

# Editable install of the release build (maturin puts _core.*.so next to the Python sources).
build: venv
	VIRTUAL_ENV=$(abspath $(VENV)) $(VENV)/bin/maturin develop --release -q

test: test-rust test-python

test-rust:
	cargo test --quiet

test-python: build
	$(PY) -m pytest -q $(PYTEST_ARGS)

# The whole pytest suite on free-threaded CPython (its own virtualenv).
test-ft:
	$(MAKE) test-python VENV=.venv-ft PYTHON=$(PYTHON)

# A real httpx client through panelboard.httpx against local flaky HTTP services (httpx is pure Python).
demo: build
	$(PY) -c 'import httpx' 2>/dev/null || $(PY) -m pip install -q httpx
	$(PY) -m panelboard demo

$(VENV)/.bench-deps: venv
	$(PY) -m pip install -q $(BENCH_DEPS)
	touch $@

bench: build $(VENV)/.bench-deps
	$(PY) benches/bench.py

bench-rust:
	cargo bench --bench engine

loom:
	RUSTFLAGS="--cfg loom" CARGO_TARGET_DIR=target/loom cargo test --release --test loom

soak: build
	PANELBOARD_SOAK_SECONDS=$(SOAK_SECONDS) $(PY) -m pytest -q tests/test_soak.py

stubtest: build
	$(PY) -m mypy.stubtest panelboard._core --allowlist tests/stubtest-allowlist.txt

typecheck: build
	$(PY) -m mypy --strict tests/typing_examples.py

clean:
	rm -rf target .venv .venv-ft python/panelboard/_core.*.so
