# pi-daemon developer entry points. `make run` and `make test` are the README's two commands.
# Missing Debian packages are installed by the scripts: as root directly, else through sudo.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# What running needs (the journal handler and the Prometheus endpoint), and what testing adds.
RUN_EXTRAS := metrics,journald
TEST_EXTRAS := test,metrics,journald,mqtt
# The mutation run's worker processes (the machine may be shared).
MUTATION_JOBS ?= 2

.PHONY: setup setup-test run test test-fast lint bench mutation clean

# One stamp per set of extras: `make run` never installs the test stack, and a later
# `make test` adds it to the same venv.
$(VENV)/.extras-%: pyproject.toml scripts/setup-venv.sh
	bash scripts/setup-venv.sh "$(PYTHON)" "$(VENV)" "$*"
	touch $@

setup: $(VENV)/.extras-$(RUN_EXTRAS)

setup-test: $(VENV)/.extras-$(TEST_EXTRAS)

# Set up and run the daemon on the bundled demo photos (Ctrl-C stops it).
run: setup
	$(BIN)/pi-daemon run --config examples/demo.toml

# Set up everything the tests need (apt packages, venv, root filesystems) and run them all.
test:
	bash scripts/test.sh

# Unit and integration tests only: no root, no apt, no containers.
test-fast: setup-test
	$(BIN)/python -m pytest -m "not system" -q

lint: setup-test
	$(BIN)/ruff check pi_daemon tests deploy benchmarks scripts ansible/filter_plugins
	$(BIN)/ruff format --check pi_daemon tests deploy benchmarks scripts ansible/filter_plugins
	$(BIN)/mypy
	cd ansible && $(abspath $(BIN))/ansible-lint --profile production --offline

bench: setup
	$(BIN)/pi-daemon bench

# Mutation testing of the pure modules ([tool.mutmut] in pyproject.toml lists them);
# prints the score per module and fails under MUTATION_MIN percent killed.
mutation: setup-test
	bash scripts/mutation.sh "$(MUTATION_JOBS)"

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .ruff_cache mutants
