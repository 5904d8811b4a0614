#!/usr/bin/env bash
# On a GPU box without network, from the repository root: install gpu/wheels (from scripts/gpu_wheelhouse.sh)
# into a venv over the system's CUDA torch, build gsplat's kernels, run the parity test, train and score the
# tabletop scene on CUDA, time `splatseg bench`; one JSON of every number and what failed ($OUT/gpu_check.json,
# or gpu/gpu_check.json). Each stage has its own time limit (about 9 minutes in all); without CUDA every stage
# is skipped and the JSON still written. Options: scripts/gpu_check.py --help.
set -euo pipefail
cd "$(dirname "$0")/.."
exec "${PYTHON:-python3}" scripts/gpu_check.py "$@"
