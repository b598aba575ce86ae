# Voronka. `make run` and `make test` are the whole quickstart.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
HOST ?= 127.0.0.1
PORT ?= 8000
# `make test` runs on the local PostgreSQL and Redis unless DATABASE_URL / REDIS_URL
# are given; an empty DATABASE_URL= means the embedded SQLite default.
TEST_PG_URL := postgres://postgres@127.0.0.1:5432/voronka
TEST_REDIS_URL := redis://127.0.0.1:6379/15
PYTEST_ARGS ?=

.PHONY: install run migrate demo test test-embedded test-all lint format messages clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

migrate: install
	$(BIN)/python manage.py migrate --noinput

demo: migrate
	$(BIN)/python manage.py demo --if-empty

run: demo
	@$(BIN)/python manage.py demo_logins
	@if [ -n "$$REDIS_URL" ]; then \
		trap 'kill 0' EXIT; \
		$(BIN)/celery -A crm worker --loglevel=INFO --concurrency=2 & \
		$(BIN)/celery -A crm beat --loglevel=INFO --schedule=/tmp/voronka-celerybeat-schedule & \
		$(BIN)/python manage.py runserver $(HOST):$(PORT); \
	else \
		$(BIN)/python manage.py runserver $(HOST):$(PORT); \
	fi

test: install
	DATABASE_URL="$${DATABASE_URL-$(TEST_PG_URL)}" REDIS_URL="$${REDIS_URL-$(TEST_REDIS_URL)}" \
		$(BIN)/pytest $(PYTEST_ARGS)

test-embedded: install
	DATABASE_URL= REDIS_URL= $(BIN)/pytest $(PYTEST_ARGS)

test-all: test test-embedded

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# Russian catalogue: collect every marked string, then compile the committed django.mo.
# Needs GNU gettext (apt-get install gettext). Translate new empty msgstr before committing.
messages: install
	$(BIN)/python manage.py makemessages -l ru --no-location --ignore=.venv --ignore=staticfiles --ignore=tests
	$(BIN)/python manage.py compilemessages -l ru --ignore=.venv

clean:
	rm -rf $(VENV) staticfiles .pytest_cache .ruff_cache *.egg-info
