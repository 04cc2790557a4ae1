# panelboard: `make demo` and `make test` set up everything on a fresh machine.
#   make test                     build, then cargo test + pytest (PYTHON=python3 by default)
#   make test-ft PYTHON=/path/3.13t   the same pytest suite on free-threaded CPython
#   make demo | bench | loom | soak | stubtest | typecheck
#   make lint                     cargo fmt/clippy, ruff check/format, stubtest, mypy --strict
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=
SOAK_SECONDS ?= 60
TEST_DEPS := maturin pytest pytest-asyncio hypothesis==6.150.0
# mypy's newest releases build a PyO3 0.29 part that refuses free-threaded 3.13, so the typing
# checks (make stubtest, make typecheck, tests/test_typing.py) run on the GIL build only.
TYPING_DEPS := mypy
BENCH_DEPS := pybreaker circuitbreaker aiobreaker purgatory matplotlib
# Pinned: a new ruff release may format differently, and `make lint` must not change verdict by itself.
LINT_DEPS := ruff==0.17.6

.PHONY: all venv build test test-rust test-python test-ft demo bench bench-rust loom soak stubtest typecheck lint clean

all: test

$(VENV)/.deps:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TEST_DEPS)
	$(PY) -c 'import sys; sys.exit(not getattr(sys, "_is_gil_enabled", lambda: True)())' \
		&& $(PY) -m pip install -q $(TYPING_DEPS) || echo "free-threaded interpreter: typing checks skipped"
	touch $@

venv: $(VENV)/.deps

# Editable install of the release build (maturin puts _core.*.so next to the Python sources).
build: venv
	VIRTUAL_ENV=$(abspath $(VENV)) $(VENV)/bin/maturin develop --release -q

test: test-rust test-python

# The engine crate's unit tests (the extension crate is a cdylib with no Rust tests of its own).
test-rust:
	cargo test --workspace --quiet

test-python: build
	$(PY) -m pytest -q $(PYTEST_ARGS)

# The whole pytest suite on free-threaded CPython (its own virtualenv).
test-ft:
	$(MAKE) test-python VENV=.venv-ft PYTHON=$(PYTHON)

demo: build
	$(PY) -m panelboard demo

$(VENV)/.bench-deps: venv
	$(PY) -m pip install -q $(BENCH_DEPS)
	touch $@

bench: build $(VENV)/.bench-deps
	$(PY) benches/bench.py

bench-rust:
	cargo bench -p panelboard-engine --bench engine

loom:
	RUSTFLAGS="--cfg loom" CARGO_TARGET_DIR=target/loom cargo test --release -p panelboard-engine --test loom

soak: build
	PANELBOARD_SOAK_SECONDS=$(SOAK_SECONDS) $(PY) -m pytest -q tests/test_soak.py

stubtest: build
	$(PY) -m mypy.stubtest panelboard._core --allowlist tests/stubtest-allowlist.txt

typecheck: build
	$(PY) -m mypy --strict tests/typing_examples.py

$(VENV)/.lint-deps: venv
	$(PY) -m pip install -q $(LINT_DEPS)
	touch $@

# Formatting and lints of both languages, and the typing checks (GIL build: see TYPING_DEPS).
lint: $(VENV)/.lint-deps stubtest typecheck
	cargo fmt --all --check
	cargo clippy --workspace --all-targets -- -D warnings
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

clean:
	rm -rf target .venv .venv-ft python/panelboard/_core.*.so
