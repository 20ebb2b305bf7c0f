"""Does the world UNet put each object of a two-object prompt where the prompt says, and in its own colour?

For the two-object prompts of `two_prompts(200)` that say both positions ('a red circle on the left and a blue
square on the right'), each asked object is looked up at its own said position and, as the control, at the other
object's said position: is the asked shape there, the asked colour, both? If the denoiser bound each phrase to its
place, the own-position rates would be far above the other-position ones; if it drew the two phrases' shapes and
colours in either order, the two would be alike. Writes the `world-binding-places` block of docs/world.md.

    python scripts/world_binding_places.py [--model world|FOLDER] [--doc docs/world.md]   # about 2 min, one thread
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from headlens import world
from headlens.world.quality import Prompt, generate, load_measured, two_prompts
from headlens.world.report import fmt_ci, write_section

READS = ("shape", "colour", "shape and colour")


def place_hits(scorer: world.Scorer, prompts: list[Prompt], images: list[np.ndarray]) -> dict[str, list[bool]]:
    """Per asked object (two per prompt; prompts that say both positions): is its shape / colour / both read on the
    object the scorer finds at its own said position, and at the other object's said position (the control)?"""
    out: dict[str, list[bool]] = {f"{r} at {w}": [] for w in ("own place", "other's place") for r in READS}
    for p, img in zip(prompts, images):
        at = {o["Position"]: o for o in scorer.score_objects(img)}
        a, b = p.scene.objects
        for obj, other in ((a, b), (b, a)):
            for where, pos in (("own place", obj.position), ("other's place", other.position)):
                seen = at.get(pos)
                shape = seen is not None and seen["Shape"] == obj.shape
                colour = seen is not None and seen["Color"] == obj.color
                for r, hit in zip(READS, (shape, colour, shape and colour)):
                    out[f"{r} at {where}"].append(hit)
    return out


def main() -> None:
    """Generate, read back, print and write the table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="world", help="world, world-joint or a pipeline folder")
    ap.add_argument("--doc", default="docs/world.md")
    a = ap.parse_args()
    torch.set_num_threads(1)
    t0 = time.time()
    pipe = load_measured(a.model)
    prompts = [p for p in two_prompts(200) if p.scene.objects[0].position and p.scene.objects[1].position]
    scorer = world.Scorer()
    renders = [np.asarray(world.render(p.text, seed=p.seed)[0]) for p in prompts]
    rows = ["| images | read | at its own said place | at the other object's said place |", "|---|---|---|---|"]
    for name, images in (("the ground-truth renders", renders), ("drawn (DDIM 25, guidance 5)",
                                                                 generate(pipe, prompts, 25, 5.0))):
        hits = place_hits(scorer, prompts, images)
        for r in READS:
            own, other = hits[f"{r} at own place"], hits[f"{r} at other's place"]
            rows.append(f"| {name} | {r} | {fmt_ci(own)} | {fmt_ci(other)} |")
    md = "\n".join([f"`scripts/world_binding_places.py`, model `{a.model}`: the {len(prompts)} prompts of "
                    "`two_prompts(200)` that say both positions, each prompt's seed, read by `headlens.world.Scorer`; "
                    f"n = {2 * len(prompts)} asked objects; 95 % bootstrap intervals.", "", *rows, "",
                    f"_{time.time() - t0:.0f} s on CPU, 1 thread._"])
    print(md)
    write_section(a.doc, "world-binding-places", md)


if __name__ == "__main__":
    main()
