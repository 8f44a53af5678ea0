# The documented commands. CI runs `make test` (via .ci/run).
PYTHON ?= python3
VENV ?= .venv
BIN = $(VENV)/bin

.PHONY: install run test check lint typecheck layers unit docs docs-check bench console plugin fuzz

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $@

run: install
	$(BIN)/fleetops serve

lint: install
	$(BIN)/ruff check src tests bench fuzz
	$(BIN)/ruff format --check src tests bench fuzz

typecheck: install
	$(BIN)/mypy

# the import direction of docs/development.md#layers (contracts in pyproject.toml)
layers: install
	$(BIN)/lint-imports --no-cache

docs: install
	$(BIN)/python -m fleetops.api.docs > docs/api.md
	$(BIN)/python -m fleetops.settings > docs/configuration.md

docs-check: install
	$(BIN)/python -m fleetops.api.docs --check docs/api.md
	$(BIN)/python -m fleetops.settings | diff -q - docs/configuration.md >/dev/null || \
		{ echo "docs/configuration.md is stale: run make docs"; exit 1; }

# The Mosquitto plugin (docs/mosquitto.md): build/mosquitto/fleetops_plugin.so
plugin: install
	$(BIN)/fleetops mosquitto build --output build/mosquitto

# pure tests only: seconds
unit: install
	$(BIN)/pytest -q tests/unit

# lint, types, layering, generated docs and the unit tests: under a minute
check: lint typecheck layers docs-check unit

# everything: the checks, then the integration and end-to-end tests against the real services
test: check
	$(BIN)/pytest -q tests/integration tests/e2e

# Rebuild the console's one built file (static/vendor/preact-htm.js) from the pinned npm packages; commit the
# result with package.json and package-lock.json. Needs Node 20 and npm; `make run` and `make test` do not.
console:
	cd src/fleetops/console && npm ci --no-audit --no-fund && npm run build

# The long fuzz runs (the short ones are part of `make test`): 1,000,000 signed HTTP requests split between SQLite
# and PostgreSQL (fuzz/http_fuzz.py; 43 minutes on two shared cores, ~390 requests/s), then malformed MQTT (about
# 150 s for 100,000 streams) against a live
# `fleetops serve` (fuzz/mqtt_fuzz.py). Each prints what it tried and exits non-zero on any failure.
FUZZ_REQUESTS ?= 1000000
FUZZ_MQTT_PACKETS ?= 100000
fuzz: install
	$(BIN)/python fuzz/http_fuzz.py --requests $(FUZZ_REQUESTS)
	$(BIN)/python fuzz/mqtt_fuzz.py --packets $(FUZZ_MQTT_PACKETS)
