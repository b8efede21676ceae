#!/usr/bin/env bash
# The paper's comparison on the synthetic benchmark, end to end: data → MedicalPatchNet and the
# whole-image EfficientNetV2 baseline, trained the same way → predictions → saliency (MedicalPatchNet
# raw and scaled; Grad-CAM, Grad-CAM++, Eigen-CAM on the baseline) → `medpatch evaluate` (thresholds
# and mIoU segmentation thresholds tuned on the validation split, scored on the test split) →
# docs/reproduction.md with the paper's Tables 1–3 layout, the ROC figure and a saliency figure.
#
#   scripts/reproduce_paper.sh                     # the CPU configuration (see docs/reproduction.md)
#   EPOCHS=8 TRAIN=4000 THREADS=16 scripts/reproduce_paper.sh
#   SMOKE=1 scripts/reproduce_paper.sh             # a few images, one epoch: checks the pipeline only
#   TRAINED=runs/gpu scripts/reproduce_paper.sh    # both models from scripts/gpu-train.sh (GPU machine)
#
# MEDPATCH_BIN / MEDPATCH_TRAIN_BIN: use these binaries instead of building them (the test suite
# passes the ones it has just built).
#
# Everything lands under OUT (default runs/reproduction); the report goes to REPORT (default
# docs/reproduction.md, figures beside it in docs/reproduction/). Re-running reuses finished steps
# (the data, trained checkpoints, maps); delete OUT to start over. Disk: about 30 MB per test image
# plus 30 MB per validation image while it is scored (the maps are 1 MB each): ~20 GB for 200 + 300.
set -euo pipefail
cd "$(dirname "$0")/.."

ARCH=${ARCH:-efficientnet_v2_tiny}
TRAIN=${TRAIN:-1000}
VALID=${VALID:-200}
TEST=${TEST:-300}
EPOCHS=${EPOCHS:-2}
BATCH=${BATCH:-8}
LR=${LR:-2e-3}
SEED=${SEED:-0}
THREADS=${THREADS:-2}
DIFFICULTY=${DIFFICULTY:-0.5}
BOOTSTRAP=${BOOTSTRAP:-10000}
SHIFT_STEPS=${SHIFT_STEPS:-4}
OUT=${OUT:-runs/reproduction}
REPORT=${REPORT:-docs/reproduction.md}
if [ "${SMOKE:-0}" = 1 ]; then
    TRAIN=8 VALID=6 TEST=6 EPOCHS=1 BATCH=4 BOOTSTRAP=100 SHIFT_STEPS=2
    OUT=${OUT%/}-smoke REPORT=$OUT/reproduction.md
fi

log() { printf '[%s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
started=$(date +%s)

scripts/setup.sh --venv-only >&2
# shellcheck disable=SC1091
source .venv/bin/activate
export LIBTORCH_USE_PYTORCH=1
ORT_DYLIB_PATH=$(ls "$PWD"/.venv/lib/python3*/site-packages/onnxruntime/capi/libonnxruntime.so.* | head -n1)
export ORT_DYLIB_PATH
medpatch=${MEDPATCH_BIN:-target/debug/medpatch}
train=${MEDPATCH_TRAIN_BIN:-target/debug/medpatch-train}
if [ -z "${MEDPATCH_BIN:-}" ] || [ -z "${MEDPATCH_TRAIN_BIN:-}" ]; then
    log "building medpatch and medpatch-train"
    cargo build --locked -q -p medpatch -p medpatch-train
fi
mkdir -p "$OUT"
data=$OUT/synth

if [ ! -f "$data/test_labels.csv" ]; then
    log "synthetic benchmark: $TRAIN train, $VALID valid, $TEST test images (seed $SEED, difficulty $DIFFICULTY)"
    "$train" synth --out "$data" --seed "$SEED" --train "$TRAIN" --valid "$VALID" --test "$TEST" \
        --difficulty "$DIFFICULTY" >/dev/null
fi

# Both models: same architecture, recipe, epochs, seed; only the patch size differs. With TRAINED=DIR
# they come from scripts/gpu-train.sh (DIR/{mpn,baseline}.safetensors and .json) instead.
for model in mpn:64 baseline:512; do
    name=${model%%:*} patch=${model##*:}
    if [ -n "${TRAINED:-}" ]; then
        weights=$TRAINED/$name.safetensors
        cp "$TRAINED/$name.json" "$OUT/$name.trained.json"
    else
        if [ ! -f "$OUT/$name/epoch-$(printf %03d "$EPOCHS").json" ]; then
            log "training $name ($ARCH, patch $patch, $EPOCHS epochs, batch $BATCH, lr $LR, $THREADS threads)"
            "$train" train --train-csv "$data/train_visualCheXbert.csv" --valid-csv "$data/valid.csv" \
                --out "$OUT/$name" --arch "$ARCH" --patch-size "$patch" --epochs "$EPOCHS" --batch-size "$BATCH" \
                --lr "$LR" --seed "$SEED" --threads "$THREADS" --workers 1 --no-progress >/dev/null
        fi
        weights=$OUT/$name/epoch-$(printf %03d "$EPOCHS").safetensors
    fi
    [ "$name" = baseline ] && baseline_weights=$weights
    calibrate=()
    [ "$name" = mpn ] && calibrate=(--calibrate-overlay "$data/CheXpert-synthetic/valid")
    "$medpatch" export --weights "$weights" --arch "$ARCH" --patch-size "$patch" "${calibrate[@]}" \
        -o "$OUT/$name.onnx" 2>&1 | sed 's/^/  /' >&2
done

# Post-hoc maps of the baseline, both splits (validation tunes the segmentation thresholds). Disk:
# 1 MB per map, 10 tasks × 3 methods per image (the validation split's are removed once scored).
for split in valid:valid.csv test:test_labels.csv; do
    s=${split%%:*} csv=${split##*:}
    [ "$s" = valid ] && [ -f "$OUT/eval/test/eigencam/report.json" ] && continue
    if [ ! -d "$OUT/cams/$s/eigencam" ]; then
        log "Grad-CAM, Grad-CAM++, Eigen-CAM maps of the baseline ($s split)"
        "$train" cam --weights "$baseline_weights" --arch "$ARCH" --csv "$data/$csv" --out "$OUT/cams/$s" \
            --threads "$THREADS" --workers 1 >&2
    fi
done

# `medpatch evaluate`, validation then test, per saliency method.
evaluate() { # NAME MODEL SPLIT_CSV GT [extra evaluate options]
    local name=$1 model=$2 csv=$3 gt=$4
    shift 4
    "$medpatch" evaluate --model "$model" --provider auto --csv "$data/$csv" --gt "$data/$gt" \
        --bootstrap "$BOOTSTRAP" --seed "$SEED" --quiet "$@" 2>&1 | sed 's/^/  /' >&2
}
# MedicalPatchNet's maps: the dense shift-averaged map (the paper's; S = SHIFT_STEPS, S² shifted
# forward passes per image: the paper's S = 64 is 4,096) and the plain 8×8 patch grid.
dense=(--shift-steps "$SHIFT_STEPS")
for method in mpn-raw-dense mpn-scaled-dense mpn-raw mpn-scaled gradcam gradcampp eigencam; do
    case $method in
        mpn-raw-dense) model=$OUT/mpn.onnx kind=(--map raw "${dense[@]}") ;;
        mpn-scaled-dense) model=$OUT/mpn.onnx kind=(--map scaled "${dense[@]}") ;;
        mpn-raw) model=$OUT/mpn.onnx kind=(--map raw) ;;
        mpn-scaled) model=$OUT/mpn.onnx kind=(--map scaled) ;;
        *) model=$OUT/baseline.onnx kind=() ;;
    esac
    # Maps are 1 MB each (512² float32): only the ones the saliency figure shows are kept (the dense
    # MedicalPatchNet maps and the test-split CAMs); validation CAMs go once scored.
    case $method in
        mpn-*-dense) valid=("${kind[@]}") test=("${kind[@]}" --save-maps "$OUT/eval/test/$method/maps") ;;
        mpn-*) valid=("${kind[@]}") test=("${kind[@]}") ;;
        *) valid=(--maps-dir "$OUT/cams/valid/$method") test=(--maps-dir "$OUT/cams/test/$method") ;;
    esac
    [ -f "$OUT/eval/test/$method/report.json" ] && continue
    log "evaluating $method"
    evaluate "$method" "$model" valid.csv gt_segmentations_val.json "${valid[@]}" --out "$OUT/eval/valid/$method" --sheets 0
    evaluate "$method" "$model" test_labels.csv gt_segmentations_test.json "${test[@]}" --out "$OUT/eval/test/$method" \
        --thresholds-from "$OUT/eval/valid/$method/thresholds.json" --sheets 0
    case $method in mpn-*) ;; *) rm -rf "$OUT/cams/valid/$method" ;; esac
done

log "writing $REPORT"
elapsed=$(($(date +%s) - started))
python scripts/reproduction_report.py --runs "$OUT" --out "$REPORT" --seconds "$elapsed" \
    --config "arch=$ARCH train=$TRAIN valid=$VALID test=$TEST epochs=$EPOCHS batch=$BATCH lr=$LR seed=$SEED threads=$THREADS difficulty=$DIFFICULTY bootstrap=$BOOTSTRAP shift_steps=$SHIFT_STEPS"
log "done in ${elapsed} s: $REPORT"
