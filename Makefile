# Leadrelay: `make run` starts the product on its embedded default, `make test` runs lint
# and the whole suite (PostgreSQL + Redis). See README.md.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
export UV_PYTHON_DOWNLOADS := never
export UV_COMPILE_BYTECODE := 1

.PHONY: run test lint format venv deps dev-deps services lock e2e bench-intake bench-integration bench-engine bench-pingtree bench-callbacks clean

$(BIN)/uv:
	@$(PY) -m venv $(VENV)
	@$(BIN)/pip install --quiet --disable-pip-version-check uv

venv: $(BIN)/uv

deps: venv
	@$(BIN)/uv pip install --quiet --python $(BIN)/python -r requirements.txt

dev-deps: venv
	@$(BIN)/uv pip install --quiet --python $(BIN)/python -r requirements-dev.txt

## run: web + worker + beat on SQLite and the file-system broker, with demo data and
## the demo's fake buyers (Procfile.demo = Procfile + bench/fake_buyers.py on :8765)
# The demo may call local fake buyers on loopback; production leaves this empty.
run: export OUTBOUND_ALLOWED_NETWORKS ?= 127.0.0.0/8,::1/128
run: deps
	@mkdir -p var
	@$(BIN)/python manage.py migrate --no-input -v0
	@$(BIN)/python manage.py collectstatic --no-input -v0
	@LOG_LEVEL=WARNING $(BIN)/python manage.py demo_load
	@echo "Starting web, worker, beat and the demo's local fake buyers (Ctrl-C stops all of them)..."
	@exec $(BIN)/honcho start -f Procfile.demo

## test: ruff, then the whole suite on PostgreSQL + Redis (started if installed but down)
test: dev-deps
	@$(BIN)/ruff check .
	@$(BIN)/ruff format --check .
	@source scripts/test-env.sh && $(BIN)/pytest $(PYTEST_ARGS)
	@echo "Fault tests (real Celery workers, kill -9, Redis flush) in their own session:"
	@source scripts/test-env.sh && LEADRELAY_FAULT_TESTS=1 $(BIN)/pytest tests/fault $(PYTEST_ARGS)

lint: dev-deps
	@$(BIN)/ruff check . && $(BIN)/ruff format --check .

format: dev-deps
	@$(BIN)/ruff check --fix . && $(BIN)/ruff format .

## lock: re-pin requirements*.txt from pyproject.toml
lock: venv
	@$(BIN)/uv pip compile --quiet pyproject.toml -o requirements.txt
	@$(BIN)/uv pip compile --quiet --extra dev pyproject.toml -o requirements-dev.txt

bench-intake: dev-deps
	@source scripts/test-env.sh && $(BIN)/python bench/intake.py

bench-integration: dev-deps
	@source scripts/test-env.sh && $(BIN)/python bench/integration.py

bench-engine: dev-deps
	@source scripts/test-env.sh && $(BIN)/python bench/engine.py

bench-pingtree: dev-deps
	@source scripts/test-env.sh && $(BIN)/python bench/pingtree.py

bench-callbacks: dev-deps
	@source scripts/test-env.sh && $(BIN)/python bench/callbacks.py

clean:
	rm -rf var .venv
