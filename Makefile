# pi-daemon developer entry points. `make run` and `make test` are the README's two commands.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PIP_EXTRAS ?= test,metrics,journald

.PHONY: setup run test test-fast lint bench clean

$(BIN)/pi-daemon: pyproject.toml
	bash scripts/setup-venv.sh "$(PYTHON)" "$(VENV)" "$(PIP_EXTRAS)"
	touch $@

setup: $(BIN)/pi-daemon

# Set up and run the daemon on the bundled demo photos (Ctrl-C stops it).
run: setup
	$(BIN)/pi-daemon run --config examples/demo.toml

# Set up everything the tests need (apt packages, venv, root filesystems) and run them all.
test:
	bash scripts/test.sh

# Unit and integration tests only: no root, no apt, no containers.
test-fast: setup
	$(BIN)/python -m pytest -m "not system" -q

lint: setup
	$(BIN)/ruff check pi_daemon tests deploy benchmarks
	$(BIN)/ruff format --check pi_daemon tests deploy benchmarks
	cd ansible && $(abspath $(BIN))/ansible-lint --profile production --offline

bench: setup
	$(BIN)/pi-daemon bench

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .ruff_cache
