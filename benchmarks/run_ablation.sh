#!/usr/bin/env bash
# Runs the whole recipe ablation one configuration at a time; each result is appended as soon as it is done,
# so the script can be stopped and started again (recorded runs are skipped).
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
for c in vit-plain small-data deit +augmentation +mixup-cutmix +regularisation resnet; do
  $PY benchmarks/recipe_ablation.py --budget short --config "$c" || echo "configuration $c failed"
done
for c in vit-plain small-data deit resnet; do
  $PY benchmarks/recipe_ablation.py --budget long --config "$c" || echo "configuration $c failed"
done
