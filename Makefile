# dropwatch: the two commands a newcomer needs are `make run` and `make test`.
# Everything installs into .venv from pyproject.toml; nothing is installed by hand.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.DEFAULT_GOAL := help
.PHONY: help install run test test-quick lint typecheck proto proto-check buf-lint imports pytest test-db bench hunt clean image image-test

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F ':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "dropwatch needs Python 3.11 or newer")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP) ## create .venv with the project and its dev tools

run: $(STAMP) ## bring up the whole local stack (Ctrl-C stops it)
	$(BIN)/dropwatch up

test: lint pytest ## every check and the whole test suite

test-quick: $(STAMP) ## the tests without the slow end-to-end ones (the edit-test loop; CI runs all)
	$(BIN)/python -m pytest -m "not slow"

lint: $(STAMP) typecheck proto-check buf-lint imports ## ruff, mypy, proto freshness, buf, import contracts
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

proto: $(STAMP) ## regenerate shared/gen from protos/
	$(BIN)/python scripts/gen_proto.py

proto-check: $(STAMP)
	$(BIN)/python scripts/gen_proto.py --check

buf-lint: $(STAMP)
	$(BIN)/buf lint
	$(BIN)/buf format -d --exit-code

imports: $(STAMP)
	$(BIN)/lint-imports

pytest: $(STAMP)
	$(BIN)/python -m pytest

test-db: $(STAMP) ## only the database tests (CI reruns them against DROPWATCH_DATABASE_URL)
	$(BIN)/python -m pytest -m db

hunt: $(STAMP) ## the model-based tests, long run (DROPWATCH_HUNT_EXAMPLES=N sets the size)
	DROPWATCH_HUNT=1 $(BIN)/python -m pytest tests/poller/test_hunt.py tests/maintenance/test_hunt.py tests/feed/test_hunt.py -q -p no:cacheprovider

image: $(STAMP) ## build the container image dropwatch:dev with podman (docs/deploy.md)
	bash scripts/build_image.sh

image-test: image ## run every component from the image against PostgreSQL, as uid 10001
	$(BIN)/python -m tools.image_check

clean: ## remove the venv and local state (.dropwatch holds make run's database)
	rm -rf $(VENV) .dropwatch .mypy_cache .ruff_cache .pytest_cache
