"""Which token carries the fruit sense of "orange"? Column interventions on 'an orange circle'; writes docs/world.md.

.venv/bin/python scripts/world_polysemy_route.py [--n 200] [--guidance 2] [--steps 8] [--variant joint] [--section NAME]

The report's hard polysemy case ('an orange circle' at low guidance) shows the fruit misreading
and that adjusting the "orange" token does not reduce it. This script asks why: it removes or
boosts the columns of single tokens at every head and measures the fruit rate (paired with the
plain images, same prompts and seeds as the report).
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch

import headlens
from headlens.world import Scorer, load_pipeline
from headlens.world.quality import measuring_scheduler
from headlens.world.report import bootstrap_ci, fmt_ci, write_section


def main() -> None:
    """Generate each condition, read fruit / colour sense back, write the table."""
    from headlens.validation.world_report import polysemy_prompts

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--guidance", type=float, default=2.0)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--variant", default="default", help="shipped world model: default or joint")
    ap.add_argument("--hrv", default=None, help="HRV folder (default: the model's report's, docs/world-report[-joint]/hrv)")
    ap.add_argument("--doc", default="docs/world.md")
    ap.add_argument("--section", default="world-poly-route", help="the <!-- NAME:begin/end --> block of --doc to write")
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    t0 = time.time()
    pipe = measuring_scheduler(load_pipeline(variant=a.variant))
    if a.hrv is None:
        a.hrv = "docs/world-report-joint/hrv" if a.variant == "joint" else "docs/world-report/hrv"
    reader = Scorer()
    hrv = headlens.HRV.load(a.hrv, pipe)
    every = list(range(len(hrv.heads)))
    perm = torch.from_numpy(np.random.default_rng([0, 400]).permutation(hrv.num_heads))
    shuffled = headlens.HRV.from_matrix(hrv.matrix[:, perm], hrv.heads, hrv.concepts, hrv.words)
    items = polysemy_prompts(a.n, 0, shapes=["circle"])
    # name -> (HRV to steer with, what to do inside the steering context)
    conditions = {
        "plain": (hrv, None),
        "'orange' column × 0 at every head": (hrv, lambda s: s.weaken(every, words="orange", factor=0.0)),
        "'orange' + end/padding columns × 0 at every head": (
            hrv, lambda s: s.weaken(every, words="orange", factor=0.0, tokens="words+end")),
        "adjust 'orange' toward Color, away from Shape (words+end)": (
            hrv, lambda s: s.adjust("orange", toward="Color", away="Shape", tokens="words+end")),
        "same, head-shuffled HRV (control)": (
            shuffled, lambda s: s.adjust("orange", toward="Color", away="Shape", tokens="words+end")),
        "'circle' column × 3 at every head": (hrv, lambda s: s.weaken(every, words="circle", factor=3.0)),
        "strengthen 'circle' by HRV_Shape": (hrv, lambda s: s.strengthen("circle", "Shape")),
    }
    fruit: dict[str, np.ndarray] = {}
    colour: dict[str, np.ndarray] = {}
    for name, (use, setup) in conditions.items():
        f, c = [], []
        for i in range(0, len(items), 50):
            part = items[i:i + 50]
            with headlens.steer(pipe, use) as s:
                if setup is not None:
                    setup(s)
                ims = pipe([p for p, _, _ in part], num_inference_steps=a.steps, guidance_scale=a.guidance,
                           generator=[torch.Generator().manual_seed(sd) for _, _, sd in part], output_type="np").images
            got = [reader.score((im * 255).round().astype(np.uint8)) for im in ims]
            f += [g["Shape"] == "orange" for g in got]
            c += [g["Shape"] == "circle" and g["Color"] == "orange" for g in got]
        fruit[name], colour[name] = np.array(f, float), np.array(c, float)
        print(f"[{time.time() - t0:5.0f}s] {name}: fruit {fmt_ci(f)}", flush=True)

    def diff(x: np.ndarray, y: np.ndarray) -> str:
        m, lo, hi = bootstrap_ci(x - y)
        return f"{100 * m:+.1f} % [{100 * lo:+.1f}, {100 * hi:+.1f}]"

    md = [(f"{a.n} prompts 'an orange circle' (size and position said half the time; the report's hard-case items), "
           f"DDIM {a.steps} steps, guidance {a.guidance:g}; read by `headlens.world.Scorer`; differences paired "
           "with the plain images (same seeds), 95 % bootstrap intervals."), "",
          "| condition | fruit drawn | fruit − plain | orange circle (colour sense) |", "|---|---|---|---|"]
    for name in conditions:
        md.append(f"| {name} | {fmt_ci(fruit[name])} | {'—' if name == 'plain' else diff(fruit[name], fruit['plain'])} "
                  f"| {fmt_ci(colour[name])} |")
    md.append(f"\n_{time.time() - t0:.0f} s on CPU (`scripts/world_polysemy_route.py`)._")
    write_section(a.doc, a.section, "\n".join(md))
    print("\n".join(md))


if __name__ == "__main__":
    main()
