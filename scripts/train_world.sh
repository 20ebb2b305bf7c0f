#!/usr/bin/env bash
# Re-create the shipped default world model (src/headlens/world/model, `--model world`) and the world CLIP
# (src/headlens/world/clip) the way they were made. SD's regime: the text encoder is the text tower of a CLIP
# pre-trained contrastively on (render, caption) pairs *before and apart from* the denoiser, then frozen.
# Stages (times on the project's 2-core CPU machine, one torch thread each; see docs/world.md, "Training",
# and src/headlens/world/model/training.json for what each stage really ran):
#   1. world CLIP, contrastive, 2500 steps of 256 pairs               (≈ 15 min)
#   2. the VAE: the same command as the joint model's stage 1          (≈ 5 min; the shipped VAE, bit for bit)
#   3. UNet (SD layout, 80 heads) from scratch, text encoder frozen    (95 min budget; the cosine follows time)
#   4. UNet, a second cosine cycle from stage 3, new renders (seed 1)  (55 min budget)
#   5. UNet, a third cycle from stage 4 with a new caption mix: 65 % two-object captions (was 40 %), patterns said
#      60 % of the time (was 40 %), the colour sense of 'orange' at weight 0.2 (was 0.4), new renders (seed 2);
#      two torch threads (50 min budget)
#   6. UNet, a fourth cycle from stage 5: patterns said 80 % of the time, colour 'orange' at weight 0.1, seed 3
#      (22 min budget, two threads)
#   7. UNet, a fifth cycle from stage 6: the fruit sense of 'orange' three times as common as each other shape
#      (--fruit-weight 3), seed 4 (25 min budget, two threads)
#   8. UNet, a sixth cycle from stage 7: the colour sense of 'orange' rarer again (weight 0.02), seed 5 (25 min
#      budget, two threads)
#   9. UNet grown to the sd-tx2 layout (two transformer blocks per attention module: 20 cross-attention layers x 8 =
#      160 heads; the new blocks start as the identity), from stage 8, seed 6 (55 min budget, two threads)
#  10. UNet, sd-tx2, binding: 80 % two-object captions, every colour said (--p-color 1.0), the binding loss at
#      weight 0.05, seed 8 (130 min budget, two threads)
#  11. UNet, the same flags again from stage 10, seed 9 (130 min budget, two threads) -- the shipped UNet
# Each stage is one command that writes its own folder, so the chain can be run across sessions.
#   bash scripts/train_world.sh [OUT] [FIRST_STAGE]
#   then: cp -r OUT/clip/clip/. src/headlens/world/clip/ ; cp -r OUT/unet9/pipeline/unet/. src/headlens/world/model/unet/
#   (the shipped VAE, tokenizer and scheduler are stage 3's: cp -r OUT/unet1/pipeline/. src/headlens/world/model/ first)
# The learning-rate schedules follow max(step fraction, time fraction): on a slower or busier machine the
# stages end on time with fewer steps. Add --no-time-schedule to each line for a step-exact repeat.
set -euo pipefail
PY=${PY:-.venv/bin/python}
OUT=${1:-runs/world}
FIRST=${2:-1}
T="--threads 1"
[ "$FIRST" -le 1 ] && $PY -m headlens.world.clip_train --out "$OUT/clip" --seed 0 --n-images 60000 --steps 2500 --minutes 28 $T
[ "$FIRST" -le 2 ] && $PY -m headlens.world.train --out "$OUT/vae" --seed 0 --n-images 60000 --vae-steps 1000 --unet-steps 0 --minutes 20
[ "$FIRST" -le 3 ] && $PY -m headlens.world.train --out "$OUT/unet1" --seed 0 --n-images 60000 --vae-from "$OUT/vae/pipeline" \
    --text-encoder-from "$OUT/clip/clip" --arch sd --unet-steps 12000 --lr 8e-4 --minutes 95 $T
[ "$FIRST" -le 4 ] && $PY -m headlens.world.train --out "$OUT/unet2" --seed 1 --n-images 60000 --vae-from "$OUT/unet1/pipeline" \
    --text-encoder-from "$OUT/clip/clip" --init-from "$OUT/unet1/pipeline" --arch sd --unet-steps 6000 --lr 3e-4 --minutes 55 $T
[ "$FIRST" -le 5 ] && $PY -m headlens.world.train --out "$OUT/unet3" --seed 2 --n-images 60000 \
    --vae-from "$OUT/unet1/pipeline" --text-encoder-from "$OUT/clip/clip" --init-from "$OUT/unet2/pipeline" --arch sd \
    --unet-steps 7000 --lr 3e-4 --minutes 50 --threads 2 --p-two 0.65 --p-pattern 0.6 --orange-weight 0.2
[ "$FIRST" -le 6 ] && $PY -m headlens.world.train --out "$OUT/unet4" --seed 3 --n-images 60000 \
    --vae-from "$OUT/unet1/pipeline" --text-encoder-from "$OUT/clip/clip" --init-from "$OUT/unet3/pipeline" --arch sd \
    --unet-steps 4000 --lr 2e-4 --minutes 22 --threads 2 --p-two 0.65 --p-pattern 0.8 --orange-weight 0.1
[ "$FIRST" -le 7 ] && $PY -m headlens.world.train --out "$OUT/unet5" --seed 4 --n-images 60000 \
    --vae-from "$OUT/unet1/pipeline" --text-encoder-from "$OUT/clip/clip" --init-from "$OUT/unet4/pipeline" --arch sd \
    --unet-steps 4000 --lr 2e-4 --minutes 25 --threads 2 --p-two 0.65 --p-pattern 0.8 --orange-weight 0.1 --fruit-weight 3
[ "$FIRST" -le 8 ] && $PY -m headlens.world.train --out "$OUT/unet6" --seed 5 --n-images 60000 \
    --vae-from "$OUT/unet1/pipeline" --text-encoder-from "$OUT/clip/clip" --init-from "$OUT/unet5/pipeline" --arch sd \
    --unet-steps 4000 --lr 2e-4 --minutes 25 --threads 2 --p-two 0.65 --p-pattern 0.8 --orange-weight 0.02 --fruit-weight 3
[ "$FIRST" -le 9 ] && $PY -m headlens.world.train --out "$OUT/unet7" --seed 6 --n-images 60000 \
    --vae-from "$OUT/unet1/pipeline" --text-encoder-from "$OUT/clip/clip" --init-from "$OUT/unet6/pipeline" --arch sd-tx2 \
    --unet-steps 8000 --lr 3e-4 --minutes 55 --threads 2 --p-two 0.65 --p-pattern 0.8 --orange-weight 0.02 --fruit-weight 3
[ "$FIRST" -le 10 ] && $PY -m headlens.world.train --out "$OUT/unet8" --seed 8 --n-images 60000 \
    --vae-from "$OUT/unet1/pipeline" --text-encoder-from "$OUT/clip/clip" --init-from "$OUT/unet7/pipeline" --arch sd-tx2 \
    --unet-steps 9000 --lr 3e-4 --minutes 130 --threads 2 --p-two 0.8 --p-color 1.0 --p-pattern 0.8 --orange-weight 0.02 \
    --fruit-weight 3 --bind-weight 0.05
[ "$FIRST" -le 11 ] && $PY -m headlens.world.train --out "$OUT/unet9" --seed 9 --n-images 60000 \
    --vae-from "$OUT/unet1/pipeline" --text-encoder-from "$OUT/clip/clip" --init-from "$OUT/unet8/pipeline" --arch sd-tx2 \
    --unet-steps 9000 --lr 3e-4 --minutes 130 --threads 2 --p-two 0.8 --p-color 1.0 --p-pattern 0.8 --orange-weight 0.02 \
    --fruit-weight 3 --bind-weight 0.05
echo "done: $OUT/unet9/pipeline (the shipped UNet; VAE and the rest from $OUT/unet1/pipeline)"
