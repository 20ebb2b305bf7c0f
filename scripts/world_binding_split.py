"""Which half of two-object binding the shipped world UNet loses: the colours or the shapes?

For the 200 two-object prompts of `scripts/world_quality.py` ('a c1 s1 [pos] and a c2 s2 [pos]', different
colours and shapes), read back by the ground-truth scorer: an object missing (colour + shape), colours swapped,
both asked colours present anywhere, both asked shapes present anywhere. At the shipped setting split by whether
the positions were said; then at other guidance scales, at more steps, and with the padding (or end+padding) token
columns of every cross-attention head set to 0 — does the side channel through the padding tokens leak the colours?
Writes the `world-binding-split` block of docs/world.md.

    python scripts/world_binding_split.py [--model world|FOLDER] [--doc docs/world.md]   # about 20 min, one thread
    python scripts/world_binding_split.py --model runs/world/s9/pipeline --shipped-only --doc /tmp/s9.md  # one row
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
import torch

from headlens import world
from headlens.world.probe import ColumnProbe
from headlens.world.quality import Prompt, generate, install, load_measured, two_metrics, two_prompts
from headlens.world.report import fmt_ci, write_section

# (DDIM steps, guidance, token classes whose columns are set to 0: 2 end, 3 padding); the first is the shipped default
SETTINGS = ((25, 5.0, ()), (25, 1.0, ()), (25, 2.0, ()), (25, 3.0, ()), (25, 10.0, ()), (50, 5.0, ()),
            (25, 5.0, (3,)), (25, 5.0, (2, 3)))
REMOVED = {(): "none", (3,): "padding", (2, 3): "end+padding"}
COLUMNS = {"an object missing": "an object missing (colour+shape)", "colours swapped": "colours swapped",
           "both colours present": "both colours present", "both shapes present": "both shapes present"}


def measures(scorer: world.Scorer, prompts: list[Prompt], images: list[np.ndarray]) -> dict[str, list[bool]]:
    """Per prompt: an object missing, colours swapped, both colours present, both shapes present (the columns of
    `headlens.world.quality.two_metrics` this table shows, under its short names)."""
    m = two_metrics(scorer, prompts, images)
    return {short: m[long] for short, long in COLUMNS.items()}


def main() -> None:
    """Generate, read back, print and write the table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="world", help="world, world-joint or a pipeline folder")
    ap.add_argument("--doc", default="docs/world.md")
    ap.add_argument("--shipped-only", action="store_true", help="only the shipped setting, all prompts (one row)")
    a = ap.parse_args()
    torch.set_num_threads(1)
    pipe = load_measured(a.model)
    probe = ColumnProbe(n_classes=4)  # passes attention through unchanged unless columns are removed
    install(pipe.unet, probe)
    scorer = world.Scorer()
    prompts = two_prompts(200)
    said = [p.scene.objects[0].position is not None for p in prompts]
    keys = tuple(COLUMNS)
    rows = ["| DDIM steps | guidance | columns removed | prompts | " + " | ".join(keys) + " |",
            "|---|---|---|---|" + "---|" * len(keys)]
    for i, (steps, cfg, zero) in enumerate(SETTINGS[:1] if a.shipped_only else SETTINGS):
        images = generate(pipe, prompts, steps, cfg, probe=probe, zero=zero)
        splits = [("all", [True] * len(prompts))]
        if i == 0 and not a.shipped_only:
            splits += [("positions said", said), ("positions unsaid", [not s for s in said])]
        for name, keep in splits:
            ps = [p for p, k in zip(prompts, keep) if k]
            m = measures(scorer, ps, [im for im, k in zip(images, keep) if k])
            rows.append(f"| {steps} | {cfg:g} | {REMOVED[zero]} | {name} | "
                        + " | ".join(fmt_ci(m[k]) for k in keys) + " |")
        print(rows[-1], file=sys.stderr, flush=True)  # progress
    md = "\n".join([f"`scripts/world_binding_split.py`, model `{a.model}`: the 200 two-object prompts of "
                    f"`two_prompts(200)` (different colours and shapes, positions said for {sum(said)}), one seed each, read by "
                    "`headlens.world.Scorer`; columns removed: those token classes' attention set to 0 at every head "
                    "of every layer (conditional half, all steps); 95 % bootstrap intervals.", "", *rows])
    print(md)
    write_section(a.doc, "world-binding-split", md)


if __name__ == "__main__":
    main()
