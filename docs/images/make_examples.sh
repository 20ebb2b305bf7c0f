#!/usr/bin/env bash
# Regenerate the example pictures of docs/plots.md from the bundled world model (CPU, ~5 minutes).
set -euo pipefail
cd "$(dirname "$0")/../.."
HRV=${HRV:-/tmp/hrv-world}
OUT=docs/images
HL=${HL:-.venv/bin/headlens}
[ -f "$HRV/hrv.json" ] || $HL build --model world --max-prompts 200 --out "$HRV" --top 0
$HL show "$HRV" --out /tmp/hrv-world-plots --latent-size 16 --k 8
$HL maps "a large red striped circle on the left on a navy background" --model world --word circle \
    --concept Shape --hrv "$HRV" --k 4 --seed 3 --out /tmp/hrv-world-maps
cp /tmp/hrv-world-plots/heatmap.png "$OUT/heatmap.png"
cp /tmp/hrv-world-plots/bars_sheet_01.png "$OUT/bars.png"
cp /tmp/hrv-world-plots/top_heads.png "$OUT/top_heads.png"
cp /tmp/hrv-world-plots/timesteps/color.png "$OUT/timesteps_color.png"
cp /tmp/hrv-world-plots/timesteps.png "$OUT/timesteps.png"
cp /tmp/hrv-world-plots/similarity.png "$OUT/similarity.png"
cp /tmp/hrv-world-maps/maps.png "$OUT/maps.png"
# keep every picture under 300 KB: palette PNGs for the big ones
.venv/bin/python - "$OUT" <<'PY'
import sys
from pathlib import Path
from PIL import Image
for p in sorted(Path(sys.argv[1]).glob("*.png")):
    if p.stat().st_size > 250_000:
        Image.open(p).convert("RGB").quantize(256, method=Image.Quantize.FASTOCTREE, dither=Image.Dither.NONE).save(p, optimize=True)
    print(f"{p}: {p.stat().st_size // 1024} KB")
PY
# report.png: the top of `headlens report`, rendered by headless Chromium (skipped without chromium)
if command -v chromium >/dev/null; then
    $HL report "$HRV" --latent-size 16 --out /tmp/world-report.html
    chromium --headless --no-sandbox --hide-scrollbars --window-size=1100,1500 \
        --screenshot=/tmp/world-report.png file:///tmp/world-report.html 2>/dev/null
    .venv/bin/python - "$OUT" <<'PY'
import sys
from PIL import Image
im = Image.open("/tmp/world-report.png").convert("RGB").resize((880, 1200), Image.LANCZOS)
im.quantize(256, method=Image.Quantize.FASTOCTREE, dither=Image.Dither.NONE).save(f"{sys.argv[1]}/report.png", optimize=True)
PY
fi
