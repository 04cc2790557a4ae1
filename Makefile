# panelboard: `make demo` and `make test` set up everything on a fresh machine.
#   make test                     build, then cargo test + pytest (PYTHON=python3 by default)
#   make test-ft PYTHON=/path/3.13t   the same pytest suite on free-threaded CPython
#   make demo | bench | bench-policy | loom | soak | stubtest | typecheck
#   make test-valkey              the Redis-sharing suites against Valkey (Debian's valkey-server)
#   make wheels                   manylinux_2_17 wheels for $(WHEELS) + the sdist into dist/, checked
#   make test-wheels              each wheel installed without Rust, whole pytest suite (RELEASING.md)
#   make test-sdist               the sdist built from source by pip, then a smoke test
#   make lint                     the FFI fence, cargo fmt/clippy, ruff check/format, stubtest, mypy --strict
#   make bench-insns | bench-insns-baseline | bench-insns-check   instruction counts (callgrind)
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=
SOAK_SECONDS ?= 60
# What the pytest suite needs; the development venv adds maturin to build the extension.
# redis: the client the Redis-sharing tests inspect their redis-server with (tests/redis_fixtures.py).
SUITE_DEPS := pytest pytest-asyncio hypothesis==6.150.0 redis
TEST_DEPS := maturin $(SUITE_DEPS)
# mypy's newest releases build a PyO3 0.29 part that refuses free-threaded 3.13, so the typing
# checks (make stubtest, make typecheck, tests/test_typing.py) run on the GIL build only.
TYPING_DEPS := mypy
# The optional integrations' libraries, for their tests (panelboard.httpx, .aiohttp, .grpc, .prometheus,
# .opentelemetry). Each is installed from a wheel on its own: one without a wheel for this interpreter
# (grpcio on free-threaded 3.13t) is skipped here and its tests skip with the reason.
INTEGRATION_DEPS := httpx httpx2 aiohttp grpcio prometheus_client opentelemetry-api opentelemetry-sdk
# The multi-process server the shared-memory tests start for real (tests/test_gunicorn.py): pure Python,
# needed on every interpreter, so a missing one fails the test rather than skipping it on Linux.
SERVER_DEPS := gunicorn
BENCH_DEPS := pybreaker circuitbreaker aiobreaker purgatory matplotlib
# Release artifacts: one wheel per interpreter tag (release/python-for finds each interpreter).
WHEELS ?= cp311 cp312 cp313 cp313t
DIST ?= dist
TOOLS_VENV ?= .venv-tools
# Pinned, so that a release is built and checked by known versions (maturin's zig support follows
# zig's releases; maturin >= 1.9 writes PEP 639 license metadata, twine >= 6.1 reads it).
RELEASE_TOOLS := maturin==1.16.0 ziglang==0.17.1 auditwheel==6.8.2 twine==7.0.0 trove-classifiers

# Pinned: a new ruff release may format differently, and `make lint` must not change verdict by itself.
LINT_DEPS := ruff==0.17.6

.PHONY: all venv build test test-rust test-python test-ft demo bench bench-rust loom soak stubtest typecheck \
	wheels test-wheels test-sdist lint clean
.PHONY: bench-policy valgrind redis-server build-ft bench-insns bench-insns-baseline bench-insns-check
.PHONY: valkey-server test-valkey

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

$(VENV)/.server-deps: $(VENV)/.deps
	$(PY) -m pip install -q $(SERVER_DEPS)
	touch $@

venv: $(VENV)/.deps $(VENV)/.integration-deps $(VENV)/.server-deps

# Editable install of the release build (maturin puts _core.*.so next to the Python sources).
build: venv
	VIRTUAL_ENV=$(abspath $(VENV)) $(VENV)/bin/maturin develop --release -q

test: test-rust test-python

# The engine crate's unit tests (the extension crate is a cdylib with no Rust tests of its own).
test-rust:
	cargo test --workspace --quiet

test-python: build redis-server
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

bench: build $(VENV)/.bench-deps redis-server
	$(PY) benches/bench.py
	$(PY) benches/policy_bench.py
	$(PY) benches/redis_bench.py
	$(PY) benches/shared_bench.py

# What a rate policy costs (issue 11): closed success vs consecutive-only on this interpreter, 3.13t
# two-thread scaling on one rate-policy breaker, memory per breaker at 100,000 names -> benches/policy.md
bench-policy: build
	$(PY) benches/policy_bench.py

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

# A real redis-server (Debian's package) for the Redis-sharing tests and bench (issue 13): installed
# only when missing; the tests start their own servers on loopback, persistence off.
redis-server:
	@command -v redis-server >/dev/null || { \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq redis-server; }

# Valkey, the Linux Foundation's fork of Redis (issue 13): Debian's valkey-server, installed only when
# missing (.ci/install-valkey: main from Debian 13 on, bookworm-backports on Debian 12).
valkey-server:
	@command -v valkey-server >/dev/null || .ci/install-valkey

# The Redis-sharing suites with the fixtures starting valkey-server instead of redis-server.
REDIS_SUITES := tests/test_redis_sync.py tests/test_redis_fleet.py tests/test_redis_faults.py \
	tests/test_redis_footprint.py
test-valkey: build valkey-server
	valkey-server --version
	PANELBOARD_REDIS_SERVER=valkey-server $(PY) -m pytest -q $(REDIS_SUITES) $(PYTEST_ARGS)

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
	cargo bench -p panelboard-engine --bench engine

loom:
	RUSTFLAGS="--cfg loom" CARGO_TARGET_DIR=target/loom cargo test --release -p panelboard-engine --test loom --test loom_remote
	RUSTFLAGS="--cfg loom" CARGO_TARGET_DIR=target/loom cargo test --release -p panelboard-shm --test loom

soak: build
	PANELBOARD_SOAK_SECONDS=$(SOAK_SECONDS) $(PY) -m pytest -q tests/test_soak.py

stubtest: build
	$(PY) -m mypy.stubtest panelboard._core --allowlist tests/stubtest-allowlist.txt

typecheck: build
	$(PY) -m mypy --strict tests/typing_examples.py

$(TOOLS_VENV)/.tools:
	$(PYTHON) -m venv $(TOOLS_VENV)
	$(TOOLS_VENV)/bin/python -m pip install -q --upgrade pip
	$(TOOLS_VENV)/bin/python -m pip install -q $(RELEASE_TOOLS)
	touch $@

wheels: $(TOOLS_VENV)/.tools
	TOOLS=$(TOOLS_VENV) DIST=$(DIST) release/build-wheels $(WHEELS)

test-wheels:
	DIST=$(DIST) SUITE_DEPS="$(SUITE_DEPS) $(SERVER_DEPS)" TYPING_DEPS="$(TYPING_DEPS)" INTEGRATION_DEPS="$(INTEGRATION_DEPS)" \
		PYTEST_ARGS="$(PYTEST_ARGS)" release/test-wheels $(WHEELS)

test-sdist:
	DIST=$(DIST) PYTHON=$(PYTHON) release/test-sdist

$(VENV)/.lint-deps: venv
	$(PY) -m pip install -q $(LINT_DEPS)
	touch $@

# Formatting and lints of both languages, the FFI fence (raw CPython API and `unsafe` only in
# src/py/ffi/), and the typing checks (GIL build: see TYPING_DEPS).
lint: $(VENV)/.lint-deps stubtest typecheck
	.ci/check-ffi-fence
	cargo fmt --all --check
	cargo clippy --workspace --all-targets -- -D warnings
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

clean:
	rm -rf target dist .venv .venv-ft $(TOOLS_VENV) python/panelboard/_core.*.so
