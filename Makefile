# The documented commands. CI runs `make test` (via .ci/run).
PYTHON ?= python3
VENV ?= .venv
BIN = $(VENV)/bin

.PHONY: install run test lint typecheck unit docs bench plugin

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $@

run: install
	$(BIN)/fleetops serve

lint: install
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench

typecheck: install
	$(BIN)/mypy

docs: install
	$(BIN)/python -m fleetops.api.docs > docs/api.md
	$(BIN)/python -m fleetops.settings > docs/configuration.md

test: lint typecheck
	$(BIN)/python -m fleetops.api.docs --check docs/api.md
	$(BIN)/python -m fleetops.settings | diff -q - docs/configuration.md >/dev/null || \
		{ echo "docs/configuration.md is stale: run make docs"; exit 1; }
	$(BIN)/pytest -q

# The Mosquitto plugin (docs/mosquitto.md): build/mosquitto/fleetops_plugin.so
plugin: install
	$(BIN)/fleetops mosquitto build --output build/mosquitto

unit: install
	$(BIN)/pytest -q tests/unit
