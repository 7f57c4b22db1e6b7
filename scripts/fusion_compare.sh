#!/usr/bin/env bash
# Does fusing blocks and noise levels help?  One fusion head on all the (t, block) keys
# of the shipped l-DAE against the best single key, for a linear and an attention head.
# Keys: t = 10, 100 x its 4 blocks, pooled to 2x2.  The best single key is the one whose
# linear probe has the best validation top-1 (the test set never picks it); the
# attention head is trained on that key (on all 8 it would cost 8 attention heads).
#
# Usage: scripts/fusion_compare.sh [demo|fashion-mnist] [OUT_DIR]
#   demo: 2,000 / 1,000 images, a few minutes on 2 CPU cores;
#   fashion-mnist: the full split (60,000 / 10,000), about 30 minutes.
# PROBE="python -m probe" runs it from a source checkout without installing.
set -euo pipefail
data=${1:-demo}
out=${2:-runs/fusion-$data}
probe=${PROBE:-probe}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
mkdir -p "$out" && cd "$out"
for split in train test; do
    [ -f "$split.h5" ] || $probe extract --model ldae-fmnist --data "$data" --split "$split" \
        --t 10,100 --blocks all --pool avg2 --threads 1 --quiet --out "$split.h5"
done
# the linear probe on every key (one L-BFGS call for the 8 keys)
[ -f single/results.json ] || $probe compare train.h5 test.h5 --heads linear --threads 1 \
    --quiet --out single > /dev/null
best=$(python -c "import json; s = max(json.load(open('single/results.json')), \
key=lambda s: (s['val_top1'], -s['val_loss'])); print(f\"t{s['t']}/{s['block']}\")")
[ -f attention.json ] || $probe fit train.h5 --test test.h5 --head attention --keys "$best" \
    --threads 1 --quiet --out attention.json > /dev/null
for head in linear attention; do
    [ -f "fusion-$head.json" ] || $probe fit train.h5 --test test.h5 --head fusion \
        --fusion-head "$head" --threads 1 --quiet --out "fusion-$head.json" > /dev/null
done
python - <<'EOF'
import json

single = json.load(open("single/results.json"))
best = max(single, key=lambda s: (s["val_top1"], -s["val_loss"]))
oracle = max(single, key=lambda s: s["top1"])
att = json.load(open("attention.json"))
print(f"best single key (by the linear probe's validation top-1): t{best['t']}/{best['block']}; "
      f"the best linear test top-1 of any key: {100 * oracle['top1']:.1f} "
      f"(t{oracle['t']}/{oracle['block']})\n")
print("| head | best single key: test top-1 (parameters) | fusion of all 8 keys: test top-1 "
      "(parameters) | largest weights |")
print("|---|---|---|---|")
for head, one in (("linear", best), ("attention", att)):
    fused = json.load(open(f"fusion-{head}.json"))
    top = sorted(fused["key_weights"].items(), key=lambda kv: -kv[1])[:3]
    print(f"| {head} | {100 * one['top1']:.1f} ({one['params']:,}) | {100 * fused['top1']:.1f} "
          f"({fused['params']:,}) | {', '.join(f'{k} {w:.2f}' for k, w in top)} |")
for head in ("linear", "attention"):
    fused = json.load(open(f"fusion-{head}.json"))
    print(f"\nfusion ({head}) weights: " + ", ".join(f"{k} {w:.3f}" for k, w in
                                                  fused["key_weights"].items()))
    print(f"  trained {fused['epochs_run']} epochs (kept {fused['selected_epoch']}) "
          f"in {fused['train_time_s']:.0f} s")
print(f"\nattention on t{best['t']}/{best['block']}: trained {att['epochs_run']} epochs "
      f"(kept {att['selected_epoch']}) in {att['train_time_s']:.0f} s")
EOF
