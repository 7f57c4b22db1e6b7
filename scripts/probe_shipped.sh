#!/usr/bin/env bash
# Linear-probe accuracy of a trained checkpoint and of the same architecture at random
# init, on the full official Fashion-MNIST split (for the model cards in probe/weights/).
#   [LIMIT=N] scripts/probe_shipped.sh NAME MODEL_ARGS... -- EXTRACT_ARGS...  (LIMIT: first N images per split)
# e.g. scripts/probe_shipped.sh ldae-fmnist --model ldae-fmnist -- --no-noise --t 10 --blocks blocks.1
set -euo pipefail
name=$1; shift
model=(); while [ "$1" != "--" ]; do model+=("$1"); shift; done; shift
out=${OUT:-runs/cards}/$name; mkdir -p "$out"
for split in train test; do
    probe extract "${model[@]}" "$@" --data fashion-mnist --split $split --pool mean \
        --batch-size 256 --limit ${LIMIT:-70000} --quiet --out "$out/$split.h5"
done
probe fit "$out/train.h5" --test "$out/test.h5" --head linear --out "$out/linear.json" --no-progress
