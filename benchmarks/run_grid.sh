#!/usr/bin/env bash
# Runs the recipe grid in two worker processes of one thread each, cheapest cells first and, within a budget, the
# configurations the advisor's rule and its targets need most first. Every finished run is appended to
# benchmarks/results/recipe_grid.jsonl, so the script can be stopped and started again (recorded runs are
# skipped). WORKERS=1 THREADS=0 runs one process with torch's default threads (a GPU machine).
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
ORDER=(--config advisor --config light --config moderate --config plain --config resnet --config medium --config none --config tune
  --config deit --config strong)
grid() { $PY benchmarks/recipe_grid.py --workers "${WORKERS:-2}" --threads "${THREADS:-1}" "${ORDER[@]}" "$@"; }
grid --budget short
grid --budget 3x --dataset digits --dataset fmnist-1k --dataset fmnist-5k --dataset fmnist-10k
grid --budget 10x --dataset digits --dataset fmnist-1k
grid --budget 3x --dataset fmnist-60k
grid --budget 10x --dataset fmnist-5k --dataset fmnist-10k
grid --budget 10x --dataset fmnist-60k
