#!/usr/bin/env bash
# Training throughput (patches/s of forward + backward + AdamW step) of medpatch-train (tch) and of
# PyTorch/torchvision (tests/python/train_bench.py) on the same architecture, batch and thread
# count, alternating ROUNDS times in one run so both see the same machine load. Prints one JSON
# line per run, then the medians and the tch/PyTorch ratio.
#
#   scripts/bench_train.sh                       # efficientnet_v2_tiny, 2 images (128 patches), 1 thread, CPU
#   ARCH=efficientnet_v2_s BATCH=4 THREADS=2 scripts/bench_train.sh
#   DEVICE=cuda AMP=1 BATCH=16 scripts/bench_train.sh
set -euo pipefail
cd "$(dirname "$0")/.."

ARCH=${ARCH:-efficientnet_v2_tiny}
PATCH=${PATCH:-64}
BATCH=${BATCH:-2}
THREADS=${THREADS:-1}
STEPS=${STEPS:-10}
WARMUP=${WARMUP:-3}
ROUNDS=${ROUNDS:-3}
DEVICE=${DEVICE:-cpu}
AMP=${AMP:-0}

# shellcheck disable=SC1091
source .venv/bin/activate
export LIBTORCH_USE_PYTORCH=1
cargo build -p medpatch-train --locked -q

common=(--arch "$ARCH" --patch-size "$PATCH" --batch "$BATCH" --steps "$STEPS" --warmup "$WARMUP" --threads "$THREADS" --device "$DEVICE")
[ "$AMP" = 1 ] && common+=(--amp)
results=$(mktemp)
for _ in $(seq "$ROUNDS"); do
    target/debug/medpatch-train bench "${common[@]}" | tee -a "$results"
    python tests/python/train_bench.py "${common[@]}" | tee -a "$results"
done
python - "$results" <<'EOF'
import json, statistics, sys
runs = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
med = {}
for impl in ("tch", "pytorch"):
    r = [x for x in runs if x["impl"] == impl]
    med[impl] = statistics.median(x["patches_per_s"] for x in r)
    mem = max(x["peak_rss_mib"] or 0 for x in r)
    cuda = [x["peak_cuda_mib"] for x in r if x.get("peak_cuda_mib")]
    extra = f", peak CUDA {max(cuda):.0f} MiB" if cuda else ""
    print(f"{impl:>8}: {med[impl]:8.1f} patches/s (median of {len(r)} runs), peak RSS {mem:.0f} MiB{extra}")
print(f"   ratio: tch / PyTorch = {med['tch'] / med['pytorch']:.3f}")
EOF
rm -f "$results"
