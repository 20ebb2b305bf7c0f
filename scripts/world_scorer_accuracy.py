"""Accuracy of the world scorer on held-out renders and their VAE reconstructions; writes docs/world.md.

.venv/bin/python scripts/world_scorer_accuracy.py [--n 1000] [--vae DIR]
"""
from __future__ import annotations

import argparse

import torch
from diffusers import AutoencoderKL

from headlens.world import Scorer, model_path
from headlens.world.report import write_section
from headlens.world.scorer_train import accuracy, reconstruct, render_set


def main() -> None:
    """Score held-out renders (seed range unused in scorer training) and write a table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=2024, help="render seed (scorer training uses 1)")
    ap.add_argument("--vae", default=str(model_path() / "vae"))
    ap.add_argument("--doc", default="docs/world.md")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a shared 2-core machine)")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    scorer = Scorer()
    arrs, attrs = render_set(a.n, a.seed)
    vae = AutoencoderKL.from_pretrained(a.vae).eval()
    sets = {"renders": arrs, "VAE reconstructions": reconstruct(vae, arrs),
            "reconstructions, noised latents (0.3 std)": reconstruct(vae, arrs, noise=0.3, seed=a.seed)}
    accs = {k: accuracy(scorer, v, attrs) for k, v in sets.items()}
    n_obj = sum(len(at["objects"]) for at in attrs)
    keys = list(next(iter(accs.values())))
    md = [(f"Held-out: {a.n} renders of sampled training-grammar captions ({n_obj} objects, "
          f"{sum(len(at['objects']) == 2 for at in attrs)} two-object images), render seed {a.seed}. Per-object "
          "concepts are matched to the ground-truth object at the same position; Count = number of objects "
          "found is right; Background per image."), "",
          "| concept | " + " | ".join(sets) + " |", "|---|" + "---|" * len(sets)]
    for k in keys:
        md.append(f"| {k} | " + " | ".join(f"{100 * accs[s][k]:.2f} %" for s in sets) + " |")
    lo = min(min(v.values()) for v in accs.values())
    md.append(f"\nLowest cell: {100 * lo:.2f} % (target ≥ 97 %).")
    write_section(a.doc, "world-scorer", "\n".join(md))
    print("\n".join(md))


if __name__ == "__main__":
    main()
