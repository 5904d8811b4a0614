#!/usr/bin/env bash
# Set up ./.venv (scripts/setup.sh), lint (ruff, config in pyproject.toml) and run the whole test suite.
# Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check .
export TORCHDYNAMO_DISABLE=1  # nerfstudio's torch.compile'd helpers cost seconds per graph on CPU
exec .venv/bin/python -m pytest -q -p no:cacheprovider "$@"
