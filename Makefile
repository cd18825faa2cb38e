# The first two commands of the README: `make run` and `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
PY := $(VENV)/bin/python
VAR_DIR ?= var
COMPOSE ?= docker compose
# Tests run with DEBUG off, as in production, with a key made afresh for each run: a key
# written here would be published, and the controller refuses published keys.
TEST_ENV := SECRET_KEY=$${SECRET_KEY:-$$($(PYTHON) -c 'import secrets; print(secrets.token_urlsafe(50))')}
# Local development: DEBUG on (a secret key is made once under var/) unless the caller says.
DEV_ENV := DEBUG=$${DEBUG:-1} VAR_DIR=$(VAR_DIR)
# The worker and the agent share INTERNAL_KEY; locally it is made once and kept under var/.
KEY_ENV := INTERNAL_KEY=$${INTERNAL_KEY:-$$(cat $(VAR_DIR)/internal_key)}

.DEFAULT_GOAL := help
.PHONY: help install run test lint format migrate-up seed-admin setup run-controller run-worker \
	run-agent build-static build-schema build-all docker-build docker-up docker-down docker-logs \
	docker-seed docker-scale k8s-dev-secrets docs docs-serve docs-view docs-redoc diagrams clean

help: ## Show the available commands
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-18s %s\n", $$1, $$2}'

$(VENV)/.installed: requirements.txt requirements-dev.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt
	# The dcsctl command (dcsctl/, pyproject.toml's scripts); the rest runs from the checkout.
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $@

install: $(VENV)/.installed ## Create .venv and install the pinned requirements

# Quickstart ---------------------------------------------------------------------------------
run: install ## Migrate, seed and run controller (8080), worker (8082) and an agent; Ctrl-C stops
	# exec: the stack takes the shell's place, so the SIGTERM make passes on reaches it.
	exec env $(DEV_ENV) $(PY) manage.py run_stack

test: install lint docs ## Install, lint, build the docs, validate the OpenAPI schema, run the whole suite
	$(TEST_ENV) $(PY) manage.py spectacular --validate --fail-on-warn --file /dev/null
	$(TEST_ENV) $(PY) -m pytest $(PYTEST_ARGS)

lint: install ## ruff check and format check, mypy over protocol/, agent/ and worker/
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/pre-commit validate-config .pre-commit-config.yaml

format: install ## Apply ruff's fixes and formatting
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

# Database -----------------------------------------------------------------------------------
migrate-up: install ## Apply database migrations
	$(DEV_ENV) $(PY) manage.py migrate --noinput

seed-admin: install ## Create the default admin (ADMIN_EMAIL, ADMIN_PASSWORD)
	$(DEV_ENV) $(PY) manage.py seed_admin

setup: migrate-up seed-admin ## Migrate and seed

# Run each process on its own (separate terminals) ------------------------------------------
$(VAR_DIR)/internal_key: | install
	@mkdir -p $(VAR_DIR)
	@umask 077 && $(PY) -c "import secrets; print(secrets.token_urlsafe(32))" > $@

run-controller: setup ## Run the controller on CONTROLLER_BIND (127.0.0.1:8080)
	$(DEV_ENV) $(PY) manage.py run_controller

run-worker: install $(VAR_DIR)/internal_key ## Run the worker on WORKER_BIND (127.0.0.1:8082)
	$(DEV_ENV) $(KEY_ENV) $(PY) manage.py run_worker

run-agent: install $(VAR_DIR)/internal_key ## Run an agent against the local controller and worker
	@token="$${REGISTRATION_TOKEN:-}"; \
	if [ -z "$$token" ] && [ ! -f "$${AGENT_STATE_DIR:-$(VAR_DIR)/agent}/credentials.json" ]; then \
		token=$$($(DEV_ENV) $(PY) manage.py create_registration_token); fi; \
	$(DEV_ENV) $(KEY_ENV) REGISTRATION_TOKEN="$$token" \
		CONTROLLER_URL=$${CONTROLLER_URL:-http://127.0.0.1:8080} \
		WORKER_URL=$${WORKER_URL:-http://127.0.0.1:8082} $(PY) manage.py run_agent

# Build --------------------------------------------------------------------------------------
build-static: install ## Collect static files (admin, API docs) into STATIC_ROOT for whitenoise
	# With the manifest storage, so that staticfiles.json is written and hashed names are used.
	$(TEST_ENV) STATICFILES_MANIFEST=1 $(PY) manage.py collectstatic --noinput

build-schema: install ## Write the OpenAPI schema to docs/openapi.yaml
	@mkdir -p docs
	$(TEST_ENV) $(PY) manage.py spectacular --validate --fail-on-warn --file docs/openapi.yaml

build-all: build-static build-schema docker-build ## Static files, schema and the Docker image

# Docker (the seed's Option 1) ---------------------------------------------------------------
.env:
	$(PYTHON) deploy/write_env.py .env.example .env

# Kubernetes ---------------------------------------------------------------------------------
K8S_DEV_SECRETS := deploy/kubernetes/overlays/dev/secrets.env

$(K8S_DEV_SECRETS):
	$(PYTHON) deploy/write_env.py $@.example $@

k8s-dev-secrets: $(K8S_DEV_SECRETS) ## Write the dev overlay's secrets.env (git-ignored) once, fresh

docker-build: .env ## Build the one image every role runs
	$(COMPOSE) build

docker-up: .env ## Start PostgreSQL, Redis, controller, worker and agent
	$(COMPOSE) up -d

docker-down: ## Stop and remove the containers (volumes are kept)
	$(COMPOSE) down

docker-logs: ## Follow the logs of every service
	$(COMPOSE) logs -f

docker-seed: ## Create the default admin in the compose database
	$(COMPOSE) run --rm admin-seeder

docker-scale: .env ## Also start a second controller behind the same Redis (port 8083)
	$(COMPOSE) -f docker-compose.yml -f docker-compose.scale.yml up -d

# Documentation ------------------------------------------------------------------------------
# Strict: a broken link or anchor, or a page left out of mkdocs.yml's navigation, fails the build.
docs: install ## Build the manual (docs/, MkDocs) into site/, strictly
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --quiet

docs-serve: run-controller ## Serve the API docs: Swagger UI at /api/docs/, Redoc at /api/redoc/

# The controller's address as run-controller binds it: CONTROLLER_BIND, else 127.0.0.1:8080.
DOCS_HOST = $${CONTROLLER_BIND:-127.0.0.1:8080}

docs-view: install ## Open Swagger UI on CONTROLLER_BIND (the controller must be running)
	$(PY) -m webbrowser "http://$(DOCS_HOST)/api/docs/"

docs-redoc: install ## Open Redoc on CONTROLLER_BIND (the controller must be running)
	$(PY) -m webbrowser "http://$(DOCS_HOST)/api/redoc/"

diagrams: ## Render docs/deployment.dot to SVG and PNG (Debian's graphviz)
	dot -Tsvg docs/deployment.dot -o docs/deployment.svg
	dot -Tpng -Gdpi=110 docs/deployment.dot -o docs/deployment.png

clean: ## Remove the local database, keys and agent state under var/, static files, the built docs
	rm -rf $(VAR_DIR) staticfiles site
