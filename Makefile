# One command to run the engine, one to run the tests; both set up what they need.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: venv up test lint bench clean

$(BIN)/app-engine: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e ".[dev]"
	@touch $@

venv: $(BIN)/app-engine

## Run the whole engine on http://127.0.0.1:8080 (embedded PostgreSQL and NATS unless configured)
up: venv
	$(BIN)/app-engine up

## Run the test suite against PostgreSQL and NATS on 127.0.0.1 (and Docker when available)
test: venv
	$(BIN)/pytest -q -p no:cacheprovider

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

bench: venv
	$(BIN)/python bench/runlog.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
