# The commands a newcomer types. Each creates .venv when missing and installs what it needs.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8000
DEMO_UPSTREAM_PORT ?= 8765

.PHONY: run demo test lint format migrate superuser clean mutation lock

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# What is installed comes from the lock files: every package, direct and indirect, at an exact
# version with the hashes of its files. requirements*.txt name what we depend on directly; `make
# lock` compiles them into the lock files (README, "Dependencies").
$(VENV)/.runtime: requirements.lock | $(BIN)/python
	$(BIN)/pip install --quiet --require-hashes -r requirements.lock
	touch $@

$(VENV)/.dev: requirements-dev.lock $(VENV)/.runtime
	$(BIN)/pip install --quiet --require-hashes -r requirements-dev.lock
	touch $@

# The development lock is compiled first; the runtime lock starts from its versions, so both
# files agree on every package they share (chat/tests/test_lock.py checks it). pip-compile keeps
# the versions already locked unless told otherwise: `make lock LOCK_ARGS=--upgrade` takes the
# newest of everything, `make lock LOCK_ARGS="-P autobahn"` of one package.
LOCK_FLAGS := --quiet --generate-hashes --strip-extras --allow-unsafe --no-emit-index-url \
	--no-emit-find-links $(LOCK_ARGS)

## lock: compile requirements*.txt into the lock files (needs the package index)
lock: $(VENV)/.dev
	$(BIN)/pip-compile $(LOCK_FLAGS) -o requirements-dev.lock requirements-dev.txt
	cp requirements-dev.lock requirements.lock
	$(BIN)/pip-compile $(LOCK_FLAGS) -o requirements.lock requirements.txt

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
	$(BIN)/python -m chat.testing.fakeupstream --host 127.0.0.1 --port $(DEMO_UPSTREAM_PORT) --token demo-token & \
	  trap 'kill $$!' EXIT INT TERM; \
	  DEMO_MODE=true LAVA_FORWARD_URL=http://127.0.0.1:$(DEMO_UPSTREAM_PORT)/v1/forward \
	  CHUTES_API_BASE=http://127.0.0.1:$(DEMO_UPSTREAM_PORT)/v1 LAVA_FORWARD_TOKEN=demo-token \
	  $(BIN)/python -m chutesweb.serve -b $(HOST) -p $(PORT) chutesweb.asgi:application

## test: lint, formatting, types (mypy), migrations up to date, and the whole test suite
test: $(VENV)/.dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/python manage.py makemigrations --check --dry-run
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(VENV)/.dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: $(VENV)/.dev
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

# The functions mutated (mutmut's names; `?` stands for the separator in a method's name): the
# money rules, the stream reader and the delivery rule. docs/reliability.md, "Mutation testing".
MUTANTS := 'chat.billing.prices.*' 'chat.billing.budgets.*' \
	'chat.upstream.sse.*' 'chat.upstream.reasoning.*' \
	'chat.billing.settlement.x_price_reply__*' 'chat.billing.settlement.x_bounded__*' \
	'chat.billing.settlement.x_settled_fields__*' \
	'chat.actions.progress.x_finish_generation__*' 'chat.actions.titles.x_finish_title__*' \
	'chat.actions.replies.x__check_limits__*' 'chat.actions.prompts.x_build_prompt__*' \
	'chat.realtime.consumer.x?ChatConsumer?deliver__*' \
	'chat.realtime.consumer.x?ChatConsumer?_deliver_delta__*' \
	'chat.realtime.consumer.x?ChatConsumer?_deliver_snapshot__*' \
	'chat.realtime.consumer.x?ChatConsumer?_deliver_done__*' \
	'chat.realtime.consumer.x?ChatConsumer?_resync__*' \
	'chat.realtime.consumer.x?ChatConsumer?chat_snapshot__*' \
	'chat.realtime.consumer.x?ChatConsumer?send_text__*' \
	'chat.realtime.consumer.x?ChatConsumer?_orphaned__*' \
	'chat.realtime.consumer.x_snapshot_frames__*' \
	'chat.protocol.x_snapshot_frames__*' 'chat.realtime.engine.x?GenerationManager?reap__*'

## mutation: mutation testing of those functions (one worker, about an hour; not part of CI)
mutation: $(VENV)/.dev
	rm -rf mutants
	$(BIN)/mutmut run --max-children 1 $(MUTANTS)
	@$(BIN)/mutmut results --all true | awk '$$2 != "not" { split($$1, name, "."); \
	  total[name[2]]++; if ($$2 == "killed" || $$2 == "timeout") caught[name[2]]++ } \
	  END { for (m in total) printf "%-12s %4d / %4d caught\n", m, caught[m], total[m] }' | sort
	@$(BIN)/mutmut results | grep -v "not checked" || true

superuser: migrate
	$(BIN)/python manage.py createsuperuser

clean:
	rm -rf $(VENV) staticfiles
