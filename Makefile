# Developer and CI entry points. `make run` starts everything; `make test` is what CI runs.
.DEFAULT_GOAL := help
VENV  := .venv
BIN   := $(VENV)/bin
# Everything this project lints and type-checks.
SRC   := ledger shared services deploy tests benchmarks

.PHONY: help install run test bench chaos recovery lint typecheck test-unit test-integration stack-down clean-stack constraints

help:
	@echo "make install           system packages, .venv, and the local stack's programs (idempotent)"
	@echo "make run               install, then 'ledger dev' (stack + pipeline, Ctrl-C stops)"
	@echo "make test              install, ruff, mypy, unit tests, then integration tests"
	@echo "make bench             install, then the benchmarks (~20 min; rewrites docs/benchmarks.md)"
	@echo "make chaos             install, then a seeded fault schedule over 50,000 appends and 10,000"
	@echo "                       API fuzz cases (~30 min; records the run in docs/reliability.md)"
	@echo "make recovery          install, then measure recovery from a killed stage (~10 min;"
	@echo "                       records the figures in docs/reliability.md)"
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
# release's stages run the Kafka path in the same run, next to this release's, on a second
# stack with plain links (stages older than the secured links cannot connect to the normal
# one); `secured_links` compares the two stacks. `make test` runs only a tiny profile.
BENCH_BASELINE_REF ?= fecd862
bench: install
	$(BIN)/python -m benchmarks --profile full --baseline-ref $(BENCH_BASELINE_REF)

# Faults on a local stack of its own: every dependency restarted (Kafka kill -9, PostgreSQL,
# OpenBao coming back sealed, Rekor + Trillian) and every stage killed with -9, in a seeded
# random order, over 50,000 appends; then the invariant table. Exit 1 if an invariant fails.
CHAOS_SEED ?= 9
chaos: install
	$(BIN)/python -m benchmarks.chaos --seed $(CHAOS_SEED) --http 20000 --kafka 30000 --write
	LEDGER_FUZZ_CASES=10000 $(BIN)/python -m pytest -m integration tests/integration/test_api_fuzz.py

# Time from a kill -9 of a signer/anchorer to its partitions being worked by the survivors,
# and from a restart to the new process working; consumer settings before/after, same run.
recovery: install
	$(BIN)/python -m benchmarks.recovery --repeat 2 --write
	$(BIN)/python -m benchmarks.recovery --churn --write

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
