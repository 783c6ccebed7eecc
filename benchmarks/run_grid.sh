#!/usr/bin/env bash
# Runs the recipe grid in two processes of one thread each, cheapest cells first; every finished run is appended
# to benchmarks/results/recipe_grid.jsonl, so the script can be stopped and started again (recorded runs are
# skipped). SHARDS=1 THREADS=0 runs it in one process with torch's default threads (a GPU machine).
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
SHARDS=${SHARDS:-2}
THREADS=${THREADS:-1}
part() {
  for ((i = 0; i < SHARDS; i++)); do
    OMP_NUM_THREADS=$THREADS $PY benchmarks/recipe_grid.py --shard "$i/$SHARDS" --threads "$THREADS" "$@" &
  done
  wait
}
part --budget short
part --budget 3x --dataset digits --dataset fmnist-1k --dataset fmnist-5k --dataset fmnist-10k
part --budget 10x --dataset digits --dataset fmnist-1k
part --budget 3x --dataset fmnist-60k
part --budget 10x --dataset fmnist-5k --dataset fmnist-10k
part --budget 10x --dataset fmnist-60k
