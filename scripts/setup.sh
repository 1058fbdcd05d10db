#!/usr/bin/env bash
# Install factlearn and everything it needs into ./.venv.
# torch 2.13.0 goes first: with it installed, pyproject's loose torch range is already satisfied,
# so pip never pulls a multi-GB CUDA build on a CPU machine.
set -euo pipefail
cd "$(dirname "$0")/.."
python="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    "$python" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check torch==2.13.0
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e '.[test]'
echo "factlearn installed in .venv ($(.venv/bin/python -c 'import torch; print("torch", torch.__version__)'))"
