# Two commands do all set-up on a fresh machine:
#   make demo   creates .venv, installs, ingests the bundled sample into an embedded SQLite database, trains briefly
#   make test   creates .venv (with the dev tools), then lint, format check, type check and the whole test suite
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
TEST_WORKERS ?= 2

.PHONY: demo test test-tt venv venv-dev lint typecheck bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# torch first and pinned: 2.13.0 has a local CPU wheel; letting a resolver choose would pull CUDA builds.
# The project goes in editable (pyproject.toml): its top-level modules and console scripts, no sys.path edits.
$(VENV)/.runtime: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e .
	touch $@

$(VENV)/.dev: pyproject.toml $(VENV)/.runtime
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

venv: $(VENV)/.runtime
venv-dev: $(VENV)/.dev

demo: venv
	$(BIN)/python mvp_pipeline.py --source sample --start 2005-01-03 --end 2025-09-26
	$(BIN)/python train_mvp.py --episodes 2

test: lint typecheck
	$(BIN)/python -m pytest -n $(TEST_WORKERS)

# The TensorTrade lane (Python >= 3.12 in .venv-tt; prints SKIPPED and succeeds when there is none):
# docs/tensortrade_backend.md. Its training tests run here in .venv, hence venv-dev.
test-tt: venv-dev
	TEST_WORKERS=$(TEST_WORKERS) bash tools/tt_lane.sh

lint: venv-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: venv-dev
	$(BIN)/mypy

bench: venv-dev
	for b in bench/bench_*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(VENV) var reports checkpoints .pytest_cache .ruff_cache .mypy_cache .hypothesis *.egg-info
