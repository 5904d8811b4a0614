#!/usr/bin/env bash
# Set up ./.venv (scripts/setup.sh), write the procedural demo scene and train splatseg on it.
# Extra arguments go to `splatseg demo` (see `splatseg demo --help`).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/splatseg demo "$@"
