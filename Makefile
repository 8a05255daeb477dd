# Every target runs with Flower's telemetry, update check and runtime dependency
# installation off, and Ray's usage stats off: no process reaches an outside host.
export FLWR_TELEMETRY_ENABLED := 0
export FLWR_DISABLE_UPDATE_CHECK := 1
export RAY_USAGE_STATS_ENABLED := 0
export FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION := 1

PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.install-stamp

.PHONY: install demo test lint bench clean

install: $(STAMP)

# torch 2.13.0 goes in first, from the CPU wheel that pip finds for that exact
# version, so that no later requirement pulls a CUDA build.
$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "$(PYTHON) not found: install Python 3.11 or run 'make PYTHON=/path/to/python3.11'"; exit 2; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

demo: install
	$(BIN)/federation-hub demo

test: install
	$(BIN)/python -m pytest -q tests

lint: install
	$(BIN)/ruff check silo_agent federation_hub schemas policies secure_aggregation
	$(BIN)/mypy silo_agent federation_hub schemas policies secure_aggregation

bench: install
	$(BIN)/python -m benchmarks

clean:
	rm -rf $(VENV) .demo .pytest_cache .hypothesis
