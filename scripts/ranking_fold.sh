#!/usr/bin/env bash
# One fold of the ranking protocol (docs/relation_rerank.md): train the fold's model (resumable:
# run it again after a stop), then score [Ret], rn@10 and the relation variants on the fold's
# validation classes and keep the result in docs/protocol/, so that folds run at different times
# or on different machines pool together (`zse-sbir protocol docs/protocol/fold?-variants.json`);
# the last checkpoint is scored too, as a sensitivity analysis of the checkpoint selection.
# usage: scripts/ranking_fold.sh I [K]      (K = 5 by default; about 1.5 h per fold on 2 CPU cores)
set -euo pipefail
i=${1:?usage: scripts/ranking_fold.sh I [K]}
k=${2:-5}
cd "$(dirname "$0")/.."
run=runs/fold$i
if [ ! -d "$run/best" ]; then
  resume=()
  [ -f "$run/train_config.json" ] && resume=(--resume)
  zse-sbir train --config offline-cpu --correspondence-weight 1.0 --stamp-pair-prob 0.25 --stamp-negative-prob 0.15 \
    --render-cache --val-fold "$i/$k" --out "$run" "${resume[@]}"
fi
variants=(--val-fold "$i/$k" --weights --betas 1)
python benchmarks/bench_rerank_variants.py --model "$run/best" "${variants[@]}" --out "docs/protocol/fold$i-variants.json"
# the sensitivity analysis: the run's last checkpoint, not selected on the fold's classes
last=$(ls -d "$run"/checkpoint-* | sort -t- -k2 -n | tail -n 1)
python benchmarks/bench_rerank_variants.py --model "$last" "${variants[@]}" --out "docs/protocol/fold$i-last-variants.json"
zse-sbir protocol docs/protocol/fold?-variants.json --plot docs/protocol/protocol.png
