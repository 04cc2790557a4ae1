# panelboard: `make demo` and `make test` set up everything on a fresh machine.
#   make test                     build, then cargo test + pytest (PYTHON=python3 by default)
#   make test-ft PYTHON=/path/3.13t   the same pytest suite on free-threaded CPython
#   make demo | bench | loom | soak | stubtest | typecheck
#   make bench-insns | bench-insns-baseline | bench-insns-check   instruction counts (callgrind)
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

.PHONY: all venv build test test-rust test-python test-ft demo bench bench-rust loom soak stubtest typecheck clean
.PHONY: valgrind build-ft bench-insns bench-insns-baseline bench-insns-check

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

test-rust:
	cargo test --quiet

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

# Instructions per call of every entry point under callgrind (benches/insns.py, issue 10):
#   make bench-insns            3.11 and 3.13t, writes benches/insns.md (compared with the baseline)
#   make bench-insns-baseline   the same, and rewrites benches/insns-baseline.json
#   make bench-insns-check      CI: fewer iterations, fails when a count is >10% above the baseline
# FT_PYTHON is evaluated only by the targets that use it; INSNS_JOBS runs valgrind in parallel.
FT_PYTHON = $(shell ../shared/tools/cpython 3.13t)
INSNS_JOBS ?= 1
INSNS_CHECK_PYTHONS ?= $(PY)
INSNS := benches/insns.py --jobs $(INSNS_JOBS)

valgrind:
	@command -v valgrind >/dev/null || { \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq valgrind; }

build-ft:
	$(MAKE) build VENV=.venv-ft PYTHON=$(FT_PYTHON)

bench-insns: build build-ft valgrind
	$(PY) $(INSNS) --python $(PY) --python .venv-ft/bin/python --md benches/insns.md --command "make bench-insns"

bench-insns-baseline: build build-ft valgrind
	$(PY) $(INSNS) --python $(PY) --python .venv-ft/bin/python --write-baseline \
		--md benches/insns.md --command "make bench-insns-baseline"

bench-insns-check: build valgrind
	$(PY) $(INSNS) $(foreach p,$(INSNS_CHECK_PYTHONS),--python $(p)) --n1 200 --n2 600 --check

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
