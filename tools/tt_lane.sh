#!/usr/bin/env bash
# The TensorTrade test lane: a Python >= 3.12 virtual environment (.venv-tt) with requirements-tensortrade.txt and
# the project (editable, no dependencies), then the backend tests (default) or the backend benchmark
# (`tools/tt_lane.sh bench`).
#
# Interpreter to create .venv-tt from, first found wins: $TT_BASE_PYTHON; ~/.pyenv/versions/3.12.* (newest
# first); python3.12, then python3.13 on PATH. With none, the lane prints why it was skipped and exits 0. An
# existing .venv-tt on any Python >= 3.12 is kept.
# No torch / stable-baselines3 here: on 3.12 the registry only has the multi-GB CUDA torch build. Training
# through TensorTrade (tests/test_tensortrade_train.py) therefore runs in the main .venv (made by
# `make venv-dev` when missing), with TT_PYTHON pointing at .venv-tt's interpreter for the env workers.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=.venv-tt
MODE="${1:-test}"

supported() { "$1" -c 'import sys; sys.exit(sys.version_info < (3, 12))' 2>/dev/null; }

find_python() {
    local candidate
    if [ -n "${TT_BASE_PYTHON:-}" ]; then
        supported "$TT_BASE_PYTHON" && { echo "$TT_BASE_PYTHON"; return; }
        echo "tt-lane: TT_BASE_PYTHON=$TT_BASE_PYTHON is not a Python >= 3.12 interpreter" >&2
        exit 2
    fi
    for candidate in $(ls -d "$HOME"/.pyenv/versions/3.12.* 2>/dev/null | sort -rV); do
        supported "$candidate/bin/python" && { echo "$candidate/bin/python"; return; }
    done
    for candidate in python3.12 python3.13; do
        command -v "$candidate" >/dev/null && supported "$candidate" && { command -v "$candidate"; return; }
    done
    return 0  # none found: the caller prints the skip
}

PY="$(find_python)"
if [ -z "$PY" ]; then
    echo "tt-lane: SKIPPED: no Python >= 3.12 found (looked at \$TT_BASE_PYTHON, ~/.pyenv/versions/3.12.*," \
        "python3.12 and python3.13 on PATH); tensortrade 1.0.4 needs 3.12, so the TensorTrade backend is untested"
    exit 0
fi

if [ ! -x "$VENV/bin/python" ] || ! supported "$VENV/bin/python"; then
    rm -rf "$VENV"
    "$PY" -m venv "$VENV"
fi
# reinstall only when the requirements changed (tensorflow alone is a ~600 MB wheel); the project itself goes in
# editable and without its dependencies (they include torch), which puts its modules on the lane's import path
if ! cat requirements-tensortrade.txt pyproject.toml | cmp -s - "$VENV/.installed" 2>/dev/null; then
    "$VENV/bin/pip" install -q -r requirements-tensortrade.txt
    "$VENV/bin/pip" install -q --no-deps -e .
    cat requirements-tensortrade.txt pyproject.toml >"$VENV/.installed"
fi
echo "tt-lane: $VENV on $("$VENV/bin/python" --version) (interpreter found: $PY), tensortrade $("$VENV/bin/pip" show tensortrade | sed -n 's/^Version: //p')"

# TT_LANE=1: the tests fail instead of skipping when tensortrade or its interpreter is missing
export TF_CPP_MIN_LOG_LEVEL=2 TT_LANE=1 TT_PYTHON="$PWD/$VENV/bin/python"
case "$MODE" in
    test)
        # the repository conftest needs the main lane's database stack: the backend tests do not use it
        "$VENV/bin/python" -m pytest --noconftest -p no:cacheprovider tests/test_tensortrade_backend.py
        # PPO (torch) in the main venv, TensorTrade environments in .venv-tt worker processes
        [ -x .venv/bin/python ] || make venv-dev
        .venv/bin/python -m pytest -p no:cacheprovider -n "${TEST_WORKERS:-2}" tests/test_tensortrade_train.py ;;
    bench) exec "$VENV/bin/python" bench/bench_tensortrade.py ;;
    *) echo "usage: tools/tt_lane.sh [test|bench]" >&2; exit 2 ;;
esac
