#!/usr/bin/env bash
# Regenerate the example pictures of docs/plots.md from the bundled world model (CPU, a few minutes).
set -euo pipefail
cd "$(dirname "$0")/../.."
HRV=${HRV:-/tmp/hrv-world}
OUT=docs/images
HL=.venv/bin/headlens
[ -f "$HRV/hrv.json" ] || $HL build --model world --limit 200 --steps 20 --out "$HRV" --top 0
$HL show "$HRV" --out /tmp/hrv-world-plots --latent-size 16 --k 8
$HL maps --model world --prompt "a large red striped circle on the left on a navy background" --word circle \
    --concept Shape --hrv "$HRV" --k 6 --seed 3 --steps 20 --out /tmp/hrv-world-maps
cp /tmp/hrv-world-plots/heatmap.png "$OUT/heatmap.png"
cp /tmp/hrv-world-plots/bars_sheet_01.png "$OUT/bars.png"
cp /tmp/hrv-world-plots/top_heads.png "$OUT/top_heads.png"
cp /tmp/hrv-world-plots/timesteps/color.png "$OUT/timesteps_color.png"
cp /tmp/hrv-world-plots/timesteps.png "$OUT/timesteps.png"
cp /tmp/hrv-world-plots/similarity.png "$OUT/similarity.png"
cp /tmp/hrv-world-maps/maps.png "$OUT/maps.png"
ls -l "$OUT"/*.png
