#!/usr/bin/env bash
# The GPU half of the paper's comparison, as one prepared command for a lent GPU machine (PyTorch
# there, no Rust toolchain, no network): the synthetic benchmark (seed 0, the same images
# `medpatch-train synth --seed 0` writes), then MedicalPatchNet (patch 64) and the whole-image
# baseline (patch 512), same architecture, recipe, epochs and seed, trained by
# scripts/gpu/train_torch.py. The MedicalPatchNet model is also the embedded demo model's candidate.
#
# Here, before the device call (the synth binary is carried, stripped):
#   cargo build -p medpatch-synth --example synth && mkdir -p .gpu && strip -o .gpu/synth target/debug/examples/synth
# On the device (OUT is where results go):
#   scripts/gpu-train.sh            # env: ARCH TRAIN VALID TEST BUDGET_S EPOCHS BATCH LR DEVICE
# Results: OUT/{mpn,baseline}.{safetensors,json}, OUT/gpu-train.log. Then, here:
#   scripts/reproduce_paper.sh with MPN_WEIGHTS=… BASELINE_WEIGHTS=… (see docs/reproduction.md)
set -euo pipefail
cd "$(dirname "$0")/.."

ARCH=${ARCH:-efficientnet_v2_tiny}
TRAIN=${TRAIN:-3000}
VALID=${VALID:-200}
TEST=${TEST:-300}
BUDGET_S=${BUDGET_S:-170}   # training seconds for MedicalPatchNet; the baseline gets the same epochs
EPOCHS=${EPOCHS:-30}        # at most
BATCH=${BATCH:-32}
LR=${LR:-2e-3}
DEVICE=${DEVICE:-cuda}
OUT=${OUT:-runs/gpu}
DATA=${DATA:-/tmp/medpatch-synth}
mkdir -p "$OUT"
exec > >(tee "$OUT/gpu-train.log") 2>&1

command -v nvidia-smi >/dev/null && nvidia-smi -L
python3 -c "import torch, torchvision, sklearn, safetensors; print('torch', torch.__version__, 'torchvision', torchvision.__version__, 'cuda', torch.cuda.is_available())"
nproc
if [ ! -f "$DATA/test_labels.csv" ]; then
    .gpu/synth "$DATA" 0 "$TRAIN" "$VALID" "$TEST" "$(nproc)"
fi

common=(--data "$DATA" --out "$OUT" --arch "$ARCH" --batch-size "$BATCH" --lr "$LR" --seed 0 --device "$DEVICE")
python3 scripts/gpu/train_torch.py "${common[@]}" --name mpn --patch-size 64 --epochs "$EPOCHS" --budget-s "$BUDGET_S"
epochs=$(python3 -c "import json; print(json.load(open('$OUT/mpn.json'))['epochs'])")
# The baseline: the same number of epochs (its budget only guards against a much slower model).
python3 scripts/gpu/train_torch.py "${common[@]}" --name baseline --patch-size 512 --epochs "$epochs" \
    --budget-s "$((BUDGET_S * 3 / 2))"
ls -la "$OUT"
