# The two commands: `make test` (what CI runs) and `make run` (the main job).
# Both do their own set-up on a fresh Debian 12 machine.
VENV ?= .venv
PY := $(VENV)/bin

.PHONY: test run setup-test setup-run lint typecheck imports pytest bench clean

test: setup-test lint typecheck imports pytest

setup-test:
	@scripts/setup-host.sh test

setup-run:
	@scripts/setup-host.sh run

lint:
	$(PY)/ruff check .
	$(PY)/ruff format --check .

typecheck:
	$(PY)/mypy

imports:
	$(PY)/lint-imports

pytest:
	$(PY)/pytest $(PYTEST_ARGS)

run: setup-run
	$(PY)/diskplane doctor
	$(PY)/diskplane demo

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
