"""Adherence of a shipped world model by step count and guidance, with SD's PNDM and with DDIM (the shipped one).

Chooses the default generation setting every CLI command uses on `--model world`
(`headlens.world.GENERATION`; docs/world.md, "Steps and guidance"). Prints one Markdown row per
setting: how often the colour, shape and pattern asked for are read back from the image.

    python scripts/world_steps.py --prompts 80          # about 10 minutes on 2 CPU cores
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from diffusers import DDIMScheduler, PNDMScheduler

from headlens import world
from headlens.world.quality import generate, single_metrics, single_prompts


def main() -> None:
    """Generate the held-out single-object prompts at each setting and print the adherence table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=int, default=80)
    ap.add_argument("--seed", type=int, default=5)
    ap.add_argument("--variant", default="default", help="shipped world model: default or joint")
    ap.add_argument("--schedulers", default="PNDM,DDIM", help="comma-separated subset of PNDM,DDIM")
    args = ap.parse_args()
    torch.set_num_threads(1)
    pipe = world.load_pipeline(variant=args.variant)
    reader = world.Scorer()
    prompts = single_prompts(args.prompts, seed=args.seed)
    settings = [("PNDM", s, g) for s in (10, 20, 25, 30) for g in (5.0, 7.5)]
    settings += [("PNDM", 40, 5.0), ("PNDM", 50, 5.0), ("PNDM", 50, 7.5)]
    settings += [("DDIM", s, g) for s, g in ((20, 5.0), (25, 5.0), (25, 7.5), (50, 5.0))]
    config = pipe.scheduler.config  # SD's betas; PNDM as SD ships it, DDIM as the world models ship it
    schedulers = {"PNDM": PNDMScheduler.from_config(config, skip_prk_steps=True),
                  "DDIM": DDIMScheduler.from_config(config, clip_sample=False)}
    print("| scheduler | steps | guidance | colour | shape | pattern |\n|---|---|---|---|---|---|")
    for name, steps, guidance in [s for s in settings if s[0] in args.schedulers.split(",")]:
        pipe.scheduler = schedulers[name]
        hits = single_metrics(reader, prompts, generate(pipe, prompts, steps=steps, cfg=guidance, batch=40))
        row = " | ".join(f"{100 * float(np.mean(hits[k])):.1f} %" for k in ("Color", "Shape", "Pattern"))
        print(f"| {name} | {steps} | {guidance:g} | {row} |", flush=True)


if __name__ == "__main__":
    main()
