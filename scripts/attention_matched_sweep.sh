#!/usr/bin/env bash
# Is the matched-size attention head of the Findings under-trained?  Sweeps its learning
# rate and epochs on the l-DAE's best key (t=10, blocks.1, avg2), full Fashion-MNIST split.
# About 8 minutes on 2 CPU cores.  Usage: scripts/attention_matched_sweep.sh [OUT_DIR]
set -euo pipefail
out=${1:-runs/attention-sweep}
mkdir -p "$out" && cd "$out"
for split in train test; do
    [ -f "$split.h5" ] || probe extract --model ldae-fmnist --data fashion-mnist --split "$split" \
        --t 10 --blocks blocks.1 --pool avg2 --quiet --out "$split.h5"
done
for cfg in "30 0.001" "30 0.003" "30 0.01" "100 0.001" "100 0.003" "100 0.01" "300 0.003"; do
    set -- $cfg
    probe fit train.h5 --test test.h5 --head attention --comparable-size --no-progress \
        --epochs "$1" --lr "$2" --out "attention-e$1-lr$2.json" > /dev/null
    python -c "import json; d = json.load(open('attention-e$1-lr$2.json')); \
print(f\"epochs $1, lr $2: test top-1 {100 * d['top1']:.1f}, best epoch {d['selected_epoch']}\")"
done
