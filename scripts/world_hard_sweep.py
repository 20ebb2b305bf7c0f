"""How often the fruit is drawn for the report's hard polysemy prompts ('an orange circle', plain sampling) by guidance.

    python scripts/world_hard_sweep.py [--model world|FOLDER] [--items 200] [--guidance 1,1.25,1.5,2]

Same prompts, seeds, scheduler and steps as `headlens world report`'s hard case (`ReportConfig`), read by the
world's ground-truth scorer; about 20 s per guidance on one CPU thread.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from headlens import world
from headlens.analysis.common import GenerationSettings, Item, generate
from headlens.validation.world_report import ReportConfig, polysemy_prompts, use_scheduler


def main() -> None:
    """Print one line per guidance: fruit drawn, and the orange circle drawn."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="world", help="world, world-joint or a pipeline folder")
    ap.add_argument("--items", type=int, default=200)
    ap.add_argument("--guidance", default="1,1.25,1.5,2")
    a = ap.parse_args()
    torch.set_num_threads(1)
    pipe = world.load_named(a.model)
    cfg = ReportConfig()
    use_scheduler(pipe, cfg.scheduler)
    reader = world.Scorer()
    items = [Item(p, s, seed) for p, s, seed in polysemy_prompts(a.items, cfg.seed, shapes=["circle"])]
    for g in (float(x) for x in a.guidance.split(",")):
        settings = GenerationSettings(num_inference_steps=cfg.steps, guidance_scale=g, batch_size=cfg.batch_size)
        got = [reader.score(im) for _, ims in generate(pipe, items, settings) for im in ims]
        fruit = np.mean([x.get("Shape") == "orange" for x in got])
        circle = np.mean([x.get("Shape") == "circle" and x.get("Color") == "orange" for x in got])
        print(f"guidance {g:g}: fruit drawn {100 * fruit:.1f} %, orange circle drawn {100 * circle:.1f} % "
              f"(n={len(items)})", flush=True)


if __name__ == "__main__":
    main()
