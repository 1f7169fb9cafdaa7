# Two commands do all set-up on a fresh machine:
#   make demo   creates .venv, installs, ingests the bundled sample into an embedded SQLite database, trains briefly
#   make test   creates .venv (with test tools) and runs the whole test suite
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
TEST_WORKERS ?= 2

.PHONY: demo test test-tt venv venv-dev lint bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# torch first and pinned: 2.13.0 has a local CPU wheel; letting a resolver choose would pull CUDA builds.
$(VENV)/.runtime: requirements.txt | $(BIN)/python
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -r requirements.txt
	touch $@

$(VENV)/.dev: requirements-dev.txt $(VENV)/.runtime
	$(BIN)/pip install -q -r requirements-dev.txt
	touch $@

venv: $(VENV)/.runtime
venv-dev: $(VENV)/.dev

demo: venv
	$(BIN)/python mvp_pipeline.py --source sample --start 2005-01-03 --end 2025-09-26
	@if [ -f train_mvp.py ]; then $(BIN)/python train_mvp.py --episodes 2; fi

test: venv-dev
	$(BIN)/python -m pytest -n $(TEST_WORKERS)

# The TensorTrade lane (Python >= 3.12 in .venv-tt; prints SKIPPED and succeeds when there is none):
# docs/tensortrade_backend.md. Its training tests run here in .venv, hence venv-dev.
test-tt: venv-dev
	TEST_WORKERS=$(TEST_WORKERS) bash tools/tt_lane.sh

lint: venv-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

bench: venv-dev
	for b in bench/bench_*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(VENV) var reports checkpoints .pytest_cache .ruff_cache .hypothesis
