# The two front-door commands: `make up` and `make test`. Everything else is a step they need.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
MODELS := models
ZIG    := $(abspath $(PY)) -m ziglang

.PHONY: up test venv filters models lint zig-test pytest docs bench clean

up: venv filters models
	$(PY) -m sluice up --model-repository $(MODELS)

test: venv filters models lint zig-test pytest

venv: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip==25.3
	$(PY) -m pip install -q -e '.[test,docs]'
	# xds-protos ships its own, older copy of the OpenTelemetry protos (no InstrumentationScope)
	# in the same package folder; whichever installs last wins. The OTLP exporter needs the current
	# ones, which Envoy's protos also load, so opentelemetry-proto (pinned in pyproject.toml) goes last.
	$(PY) -m pip install -q --no-deps --force-reinstall "$$(grep -o 'opentelemetry-proto==[0-9.]*' pyproject.toml)"
	touch $@

# No compiled .wasm is committed: the filters are built from filters/ by the pinned ziglang wheel.
filters: $(STAMP)
	cd filters && $(ZIG) build -Doptimize=ReleaseSafe --prefix ../build/filters

zig-test: $(STAMP)
	cd filters && $(ZIG) build test

models: $(STAMP)
	$(PY) -m inference.gen_models --out $(MODELS)

# Lint the repository; type-check the two services strictly (settings in pyproject.toml).
lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m mypy controlplane inference

pytest: $(STAMP)
	$(PY) -m pytest -q

# The site in build/site; the policy and admin API references are generated from the code as it builds
# (docs/hooks.py). `make test` runs the same build with --strict (tests/test_docs.py).
docs: $(STAMP)
	$(PY) -m mkdocs build --strict --site-dir build/site

clean:
	rm -rf build $(MODELS) .pytest_cache filters/.zig-cache filters/zig-out
