# Developer and CI entry points. `make run` starts everything; `make test` is what CI runs.
.DEFAULT_GOAL := help
VENV  := .venv
BIN   := $(VENV)/bin
# Everything this project lints and type-checks.
SRC   := ledger shared services deploy tests benchmarks

.PHONY: help install run test bench lint typecheck test-unit test-integration stack-down clean-stack constraints

help:
	@echo "make install           system packages, .venv, and the local stack's programs (idempotent)"
	@echo "make run               install, then 'ledger dev' (stack + pipeline, Ctrl-C stops)"
	@echo "make test              install, ruff, mypy, unit tests, then integration tests"
	@echo "make bench             install, then the benchmarks (~20 min; rewrites docs/benchmarks.md)"
	@echo "make stack-down        stop a stack left running in .stack"
	@echo "make constraints       re-pin constraints.txt after a dependency change"

install:
	scripts/install.sh

run: install
	$(BIN)/ledger dev --no-install

lint: install
	$(BIN)/ruff check $(SRC)

typecheck: install
	$(BIN)/mypy $(SRC)

test-unit: install
	$(BIN)/python -m pytest -m unit tests

test-integration: install
	$(BIN)/python -m pytest -m integration tests

test: install
	$(BIN)/ruff check $(SRC)
	$(BIN)/mypy $(SRC)
	$(BIN)/python -m pytest -m unit tests
	$(BIN)/python -m pytest -m integration tests

# Benchmarks against a real local stack started for the run, every stage its own process;
# rewrites docs/benchmarks.md, docs/benchmarks/results.json and the charts. The previous
# release's stages run the Kafka path in the same run. `make test` runs only a tiny profile.
BENCH_BASELINE_REF ?= fecd862
bench: install
	$(BIN)/python -m benchmarks --profile full --baseline-ref $(BENCH_BASELINE_REF)

stack-down:
	$(BIN)/ledger stack down

clean-stack: stack-down
	rm -rf .stack .stack-test

# Re-pin constraints.txt after changing dependencies in pyproject.toml: a fresh venv,
# the project with its extras, then pip freeze.
constraints:
	rm -rf .venv-constraints
	python3.11 -m venv .venv-constraints
	.venv-constraints/bin/python -m pip install -q --upgrade pip
	.venv-constraints/bin/python -m pip install -q -e '.[test,stack]'
	.venv-constraints/bin/python -m pip freeze --exclude-editable > constraints.txt
	rm -rf .venv-constraints
