# The commands a newcomer types. Each creates .venv when missing and installs what it needs.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8000
DEMO_UPSTREAM_PORT ?= 8765

.PHONY: run demo test lint format migrate superuser bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.runtime: requirements.txt | $(BIN)/python
	$(BIN)/pip install --quiet -r requirements.txt
	touch $@

$(VENV)/.dev: requirements.txt requirements-dev.txt $(VENV)/.runtime
	$(BIN)/pip install --quiet -r requirements-dev.txt
	touch $@

migrate: $(VENV)/.runtime
	$(BIN)/python manage.py migrate --noinput

## run: the app on http://$(HOST):$(PORT) (daphne, SQLite, in-memory channel layer)
run: migrate
	@$(BIN)/python manage.py firstadmin --hint
	$(BIN)/python -m chutesweb.serve -b $(HOST) -p $(PORT) chutesweb.asgi:application

## demo: the app against the built-in stand-in upstream, no Lava credentials needed
demo: migrate
	@$(BIN)/python manage.py firstadmin --hint
	@echo "Demo mode: replies come from the local stand-in on port $(DEMO_UPSTREAM_PORT), not from Chutes."
	$(BIN)/python -m chat.fakeupstream --host 127.0.0.1 --port $(DEMO_UPSTREAM_PORT) --token demo-token & \
	  trap 'kill $$!' EXIT INT TERM; \
	  DEMO_MODE=true LAVA_FORWARD_URL=http://127.0.0.1:$(DEMO_UPSTREAM_PORT)/v1/forward \
	  CHUTES_API_BASE=http://127.0.0.1:$(DEMO_UPSTREAM_PORT)/v1 LAVA_FORWARD_TOKEN=demo-token \
	  $(BIN)/python -m chutesweb.serve -b $(HOST) -p $(PORT) chutesweb.asgi:application

## test: lint, formatting, migrations up to date, and the whole test suite
test: $(VENV)/.dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python manage.py makemigrations --check --dry-run
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(VENV)/.dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(VENV)/.dev
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

superuser: migrate
	$(BIN)/python manage.py createsuperuser

clean:
	rm -rf $(VENV) staticfiles
