# The two commands the README gives:  `make run`  and  `make test`.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test lint venv clean container-check

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

## Set everything up and run the service (demo model trained when the store is empty).
run: $(STAMP)
	$(BIN)/python -m scripts.quickstart

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

## Lint, type-check and run the whole test suite, on two pytest-xdist workers (the CI machine's
## two cores; worksteal keeps each worker on a run of neighbouring tests, so session- and
## module-scoped fixtures are built about once per worker). Plain `python -m pytest`: one process.
test: lint
	$(BIN)/python -m pytest -n 2 --dist worksteal

## Build the image and run it for real (PostgreSQL, migrations, training job, API, a DICOM);
## needs a Docker engine (docs/deployment.md).
container-check: $(STAMP)
	$(BIN)/python -m scripts.container_check

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
