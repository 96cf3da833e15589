# Entry points for a fresh machine. `make run` starts everything end to end; `make test` runs the suite.
SHELL := /usr/bin/env bash
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin

.PHONY: help run test lint check-deploy venv examples-venv stack-up stack-down stack-status freeze clean

help:
	@echo "make run          the bridge end to end: Kafka + registry, the Epic simulator, the bridge, a live tail"
	@echo "make test         run the whole test suite (starts the services it needs)"
	@echo "make lint         ruff on everything, mypy on bridge/"
	@echo "make stack-up | stack-down | stack-status"
	@echo "make freeze       record the tested dependency versions in requirements-tested.txt"
	@echo "make examples-venv  the example apps' own environment (examples/.venv, Quix Streams)"

# The virtual environment is rebuilt when the project's dependencies change.
$(BIN)/.installed: pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found; Python 3.11+ is required (set PYTHON=...)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	@touch $@

venv: $(BIN)/.installed

# The example apps (examples/) run in their own environment: Quix Streams pins another confluent-kafka.
examples-venv:
	PYTHON=$(PYTHON) examples/setup-venv

run: venv
	stack/demo

# deploy/check validates the alert rules and provides Prometheus, which one integration test runs.
test: venv check-deploy
	$(BIN)/pytest

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

stack-up:
	stack/up

stack-down:
	stack/down

stack-status:
	stack/status

freeze: venv
	$(BIN)/pip freeze --exclude-editable | sort > requirements-tested.txt

clean:
	stack/down --purge || true
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache

check-deploy:
	deploy/check
