# The first two commands of the README: `make run` and `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
PY := $(VENV)/bin/python
# Tests run with DEBUG off, as in production; this key signs nothing outside the test run.
TEST_ENV := SECRET_KEY=$${SECRET_KEY:-test-only-not-secret-key-0123456789abcdefghijklmnop}

.DEFAULT_GOAL := help
.PHONY: help install run test lint format migrate-up seed-admin setup run-controller

help: ## Show the available commands
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-18s %s\n", $$1, $$2}'

$(VENV)/.installed: requirements.txt requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $@

install: $(VENV)/.installed ## Create .venv and install the pinned requirements

lint: install ## ruff check and format check
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: install ## Apply ruff's fixes and formatting
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

test: install lint ## Install, lint, validate the OpenAPI schema and run the whole test suite
	$(TEST_ENV) $(PY) manage.py spectacular --validate --fail-on-warn --file /dev/null
	$(TEST_ENV) $(PY) -m pytest $(PYTEST_ARGS)

migrate-up: install ## Apply database migrations
	DEBUG=$${DEBUG:-1} $(PY) manage.py migrate --noinput

seed-admin: install ## Create the default admin
	DEBUG=$${DEBUG:-1} $(PY) manage.py seed_admin

setup: migrate-up seed-admin ## Migrate and seed

run-controller: setup ## Run the controller on 127.0.0.1:8080
	DEBUG=$${DEBUG:-1} $(PY) manage.py runserver 127.0.0.1:8080

run: run-controller ## Set up and start the stack on the embedded defaults
