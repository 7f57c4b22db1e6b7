#!/usr/bin/env bash
# The README finding "DDPM against flow matching": dit-fmnist and sit-fmnist at matched
# log-SNR (DDPM t = 10, 100, 300, 600 <-> SiT t = 0.955, 0.745, 0.446, 0.139), linear probes
# on the first LIMIT train images and the full test split, CKA with an other-noise control.
#   [LIMIT=10000] [OUT=runs/cmp] scripts/ddpm_vs_flow.sh
set -euo pipefail
out=${OUT:-runs/cmp}; mkdir -p "$out"
common=(--blocks all --pool avg2 --data fashion-mnist --batch-size 256 --threads 1 --quiet)
for split in train test; do
    limit=(); [ "$split" = train ] && limit=(--limit "${LIMIT:-10000}")
    probe extract --model dit-fmnist --t 10,100,300,600 --split $split "${limit[@]}" "${common[@]}" --out "$out/dit-$split.h5"
    probe extract --model sit-fmnist --t 0.955,0.745,0.446,0.139 --split $split "${limit[@]}" "${common[@]}" --out "$out/sit-$split.h5"
done
probe extract --model dit-fmnist --t 10,100,300,600 --split test --noise-seed 1 "${common[@]}" --out "$out/dit-test-seed1.h5"
for m in dit sit; do
    probe compare "$out/$m-train.h5" "$out/$m-test.h5" --heads linear --threads 1 --quiet --out "$out/$m-compare"
done
probe cka "$out/dit-test.h5" "$out/sit-test.h5" --across all --minibatch 1000 --threads 1 --quiet --out "$out/cka-dit-vs-sit.png"
probe cka "$out/dit-test.h5" "$out/dit-test-seed1.h5" --across all --minibatch 1000 --threads 1 --quiet --out "$out/cka-dit-vs-dit-seed1.png"
