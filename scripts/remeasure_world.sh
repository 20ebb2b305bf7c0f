#!/usr/bin/env bash
# Re-measure everything the docs and the README say about the default world model, after a new UNet stage ships
# (scripts/train_world.sh, its UNet copied into src/headlens/world/model/unet/). One step per line, in order; each
# writes its docs block or prints its table. Resume from step K with: bash scripts/remeasure_world.sh K
#
# About 3.5 h at one thread on a 2-core machine (the report alone: 57 min on the earlier machine, 108 on a
# slower one). Steps 2 and 8 read step 1's report; the others are independent of one another and can run side by side.
# Afterwards, by hand: the README's world-summary and world-numbers blocks (tests/test_readme_numbers.py checks them
# against docs/world-report/report.json), docs/world.md's stage paragraph and its steps table (step 7 prints it),
# the hard-case sweep numbers (step 6 prints them), and the demo's numbers in the README (step 10 prints them).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
HL=${HL:-.venv/bin/headlens}
FIRST=${1:-1}
step() {  # step K COMMAND...: run COMMAND unless resuming past K; a failing step stops the script
    if [ "$FIRST" -le "$1" ]; then echo "== step $1: ${*:2}"; "${@:2}"; fi
}
step 1 "$HL" world report --out docs/world-report
step 2 "$HL" world compare world=docs/world-report world-joint=docs/world-report-joint --markdown docs/world-regimes.md
step 3 "$PY" scripts/world_quality.py
step 4 "$PY" scripts/world_binding_split.py
step 5 "$PY" scripts/world_binding_noise.py
step 6 "$PY" scripts/world_hard_sweep.py
step 7 "$PY" scripts/world_steps.py --prompts 80
step 8 "$PY" scripts/world_polysemy_route.py --guidance 1 --section world-poly-route-default
step 9 bash docs/images/make_examples.sh
step 10 "$HL" demo
step 11 "$PY" scripts/world_binding_attention.py
step 12 "$PY" scripts/world_binding_places.py
step 13 "$PY" scripts/world_binding_blind.py
