# Both main targets bootstrap their own virtualenv (.venv) on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CONFIG ?= configs/default.yaml
# extra arguments for `preserve run`, e.g. RUN_ARGS="--log-format json" from cron or a timer
RUN_ARGS ?=

.PHONY: archive test lint bench clean

$(BIN)/.installed: pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11 or newer is needed")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	@touch $@

## archive: the batch run over the documents of $(CONFIG)
archive: $(BIN)/.installed
	$(BIN)/preserve run --config $(CONFIG) $(RUN_ARGS)

## test: lint, then the whole test suite
test: $(BIN)/.installed lint
	$(BIN)/python -m pytest

lint: $(BIN)/.installed
	$(BIN)/ruff check pipeline tests bench
	$(BIN)/ruff format --check pipeline tests bench

## bench: the benchmarks (results go to BENCHMARKS.md by hand, with the command)
bench: $(BIN)/.installed
	$(BIN)/python bench/bench_links.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis
