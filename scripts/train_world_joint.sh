#!/usr/bin/env bash
# Re-create the shipped *joint* world model (src/headlens/world/model-joint, `--model world-joint`: its text
# encoder trained jointly with the UNet) the way it was made: three runs of the same training script,
# ≈ 85 min together on the project's 2-core CPU machine when it is otherwise idle
# (VAE 5.1 min, UNet + text encoder 63 min, fine-tune 17 min). See docs/world.md, "Training".
#   bash scripts/train_world_joint.sh [OUT]   # then copy OUT/ft1/pipeline/* to src/headlens/world/model-joint/
# The learning-rate schedule follows max(step fraction, time fraction): on a slower or busy machine the
# runs end on time with fewer steps. Add --no-time-schedule to each line for a step-exact repeat.
set -euo pipefail
PY=${PY:-.venv/bin/python}
OUT=${1:-runs/world-joint}
# 1. the VAE (60k renders, 1000 steps); --unet-steps 0 stops before the UNet
$PY -m headlens.world.train --out "$OUT/vae" --seed 0 --n-images 60000 --vae-steps 1000 --unet-steps 0 --arch joint --minutes 20
# 2. UNet + text encoder from scratch, 8000 steps (cosine from 8e-4)
$PY -m headlens.world.train --out "$OUT/main1" --seed 0 --n-images 40000 --vae-from "$OUT/vae/pipeline" \
    --arch joint --unet-steps 8000 --lr 8e-4 --minutes 80
# 3. fine-tune from the EMA weights of 2: a second, shorter cosine cycle (3e-4), 20 min
$PY -m headlens.world.train --out "$OUT/ft1" --seed 0 --n-images 40000 --vae-from "$OUT/vae/pipeline" \
    --arch joint --init-from "$OUT/main1/pipeline" --unet-steps 3000 --lr 3e-4 --minutes 20
echo "done: $OUT/ft1/pipeline"
