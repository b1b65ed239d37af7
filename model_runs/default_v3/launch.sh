#!/usr/bin/env bash
# Model v3 training run (issue 22): one thread, nice, detached. Run from the repository root:
#   ./model_runs/default_v3/launch.sh            # first launch (fine-tune from the shipped v2 weights)
#   ./model_runs/default_v3/launch.sh --resume   # continue from model_runs/default_v3/checkpoint.pt
# Extra arguments go to `samvolseg train` (e.g. --resume --minutes 720 --decay-from-minute 600).
set -euo pipefail
cd "$(dirname "$0")/../.."
RUN=model_runs/default_v3
SHARED=${SAMVOLSEG_SHARED:-../shared}
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
setsid nohup nice -n 10 .venv/bin/samvolseg train \
    --data "$SHARED/train" --data "$SHARED/data/ct_totalseg_example_multiorgan" \
    --data "$SHARED/data/mr_totalseg_example_multiorgan" \
    --output "$RUN" --export "$RUN/export.pt" --threads 1 --seed 0 \
    --init-from SAMVolSegmentLib/model/weights/samvolseg_default.pt --box-input --normalization robust_zscore_inside \
    --lr 1e-3 --minutes 600 --decay-from-minute 420 --clicks 6 --checkpoint-minutes 5 --keep-exports-from-minute 480 \
    --box-fraction 0.35 --local-loss 1.0 --cvpr-click-fraction 0.3 --large-fraction 0.15 --large-blob-fraction 0.25 \
    --seed-fraction 0.2 --stroke-fraction 0.3 --clock cpu \
    "$@" >> "$RUN/stdout.txt" 2>&1 < /dev/null &
echo "training PID $! (log: $RUN/log.jsonl, $RUN/stdout.txt)"
