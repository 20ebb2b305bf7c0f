"""Which half of two-object binding the shipped world UNet loses: the colours or the shapes?

For the 200 two-object prompts of `scripts/world_quality.py` ('a c1 s1 [pos] and a c2 s2 [pos]', different
colours and shapes), read back by the ground-truth scorer: an object missing (colour + shape), colours swapped,
both asked colours present anywhere, both asked shapes present anywhere — split by whether the positions were
said, at the shipped setting and at higher guidance and more steps. Writes the `world-binding-split` block of
docs/world.md.

    python scripts/world_binding_split.py [--model world|FOLDER] [--doc docs/world.md]   # about 6 min, one thread
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from diffusers import DDIMScheduler

from headlens import world
from headlens.world.quality import Prompt, generate, two_metrics, two_prompts
from headlens.world.report import fmt_ci, write_section

SETTINGS = ((25, 5.0), (25, 10.0), (50, 5.0))  # (DDIM steps, guidance); the first is the shipped default
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
    a = ap.parse_args()
    torch.set_num_threads(1)
    pipe = world.load_named(a.model)
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config, clip_sample=False)
    scorer = world.Scorer()
    prompts = two_prompts(200)
    said = [p.scene.objects[0].position is not None for p in prompts]
    keys = tuple(COLUMNS)
    rows = ["| DDIM steps | guidance | prompts | " + " | ".join(keys) + " |", "|---|---|---|" + "---|" * len(keys)]
    for steps, cfg in SETTINGS:
        images = generate(pipe, prompts, steps, cfg)
        for name, keep in (("all", [True] * len(prompts)), ("positions said", said),
                           ("positions unsaid", [not s for s in said])):
            ps = [p for p, k in zip(prompts, keep) if k]
            m = measures(scorer, ps, [im for im, k in zip(images, keep) if k])
            rows.append(f"| {steps} | {cfg:g} | {name} | " + " | ".join(fmt_ci(m[k]) for k in keys) + " |")
    md = "\n".join([f"`scripts/world_binding_split.py`, model `{a.model}`: the 200 two-object prompts of "
                    f"`two_prompts(200)` (different colours and shapes, positions said for {sum(said)}), one seed each, read by "
                    "`headlens.world.Scorer`; 95 % bootstrap intervals.", "", *rows])
    print(md)
    write_section(a.doc, "world-binding-split", md)


if __name__ == "__main__":
    main()
