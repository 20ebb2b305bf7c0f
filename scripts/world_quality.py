"""Measure the world model's prompt adherence with the ground-truth scorer; write docs/world.md.

.venv/bin/python scripts/world_quality.py [--model DIR] [--n-single 300] [--n-two 200] [--n-poly 200] [--section NAME]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from headlens.world import Scorer, load_pipeline, model_path
from headlens.world.probe import ColumnProbe, install
from headlens.world.quality import (
    TOKEN_CLASSES,
    Prompt,
    attention_mass,
    generate,
    measuring_scheduler,
    poly_prompts,
    single_metrics,
    single_prompts,
    two_metrics,
    two_prompts,
)
from headlens.world.report import bootstrap_ci, fmt_ci, write_section
from headlens.world.vocab import ObjectSpec, SceneSpec


def main() -> None:
    """Run all measurements and write the markdown section."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=str(model_path()))
    ap.add_argument("--n-single", type=int, default=300)
    ap.add_argument("--n-two", type=int, default=200)
    ap.add_argument("--n-poly", type=int, default=200)
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--cfg", type=float, default=5.0)
    ap.add_argument("--doc", default="docs/world.md")
    ap.add_argument("--section", default="world-quality", help="the <!-- NAME:begin/end --> block of --doc to write")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a shared 2-core machine)")
    ap.add_argument("--json", default="")
    ap.add_argument("--no-endpad", action="store_true")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    t0 = time.time()
    pipe = measuring_scheduler(load_pipeline(folder=a.model))
    probe = ColumnProbe(n_classes=4)
    install(pipe.unet, probe)
    scorer = Scorer()

    def gen(ps: list[Prompt], zero: tuple[int, ...] = ()) -> list[np.ndarray]:
        """Generate with progress on stderr."""
        print(f"[{time.time() - t0:6.0f}s] generating {len(ps)} images ({ps[0].text!r}, zero={zero})",
              file=sys.stderr, flush=True)
        return generate(pipe, ps, a.steps, a.cfg, probe=probe, zero=zero)

    res: dict = {}
    shown = Path(a.model).resolve()
    shown = shown.relative_to(Path.cwd()) if shown.is_relative_to(Path.cwd()) else shown
    md = [(f"Model `{shown}`; DDIM {a.steps} steps, guidance {a.cfg}, one seed per prompt; "
          "judged by `headlens.world.Scorer`; 95 % bootstrap intervals (2,000 resamples)."), ""]

    single = single_prompts(a.n_single)
    probe.mass.clear()
    s_imgs = gen(single)
    mass = attention_mass(probe)
    sm = single_metrics(scorer, single, s_imgs)
    uncond = [Prompt("", 40_000 + i, SceneSpec()) for i in range(100)]
    u_imgs = gen(uncond)
    u_scores = [scorer.score(im) for im in u_imgs]
    md += ["#### Single-object prompts", "", (f"{len(single)} prompts 'a [size] {{colour}} [pattern] {{shape}} "
           "[position] [on a {background} background]' (colour and shape always said, the rest half the time; "
           "the polysemous 'orange' is measured separately below). Chance = how often unconditional images "
           "(empty prompt, 100 seeds) happen to show the asked value."), "",
           "| concept | adherence [95 % CI] | chance |", "|---|---|---|"]
    for k, v in sm.items():
        chance = ""
        if k in ("Color", "Shape", "Size", "Position", "Pattern", "Background"):
            wants = [getattr(p.scene.objects[0], k.lower()) if k != "Background" else p.scene.background
                     for p in single]
            chance = f"{100 * np.mean([np.mean([u[k] == w for u in u_scores]) for w in wants if w]):.1f} %"
        md.append(f"| {k} | {fmt_ci(v)} | {chance} |")
        res[f"single/{k}"] = bootstrap_ci(v)

    two = two_prompts(a.n_two)
    t_imgs = gen(two)
    tm = two_metrics(scorer, two, t_imgs)
    md += ["", "#### Two-object prompts", "", (f"{len(two)} prompts 'a {{c1}} {{s1}} [pos] and a {{c2}} {{s2}} [pos]' "
           "(different colours and shapes)."), "", "| measure | rate [95 % CI] |", "|---|---|"]
    for k, v in tm.items():
        md.append(f"| {k} | {fmt_ci(v)} |")
        res[f"two/{k}"] = bootstrap_ci(v)

    poly = poly_prompts(a.n_poly)
    p_imgs = gen(poly)
    p_sc = [scorer.score(im) for im in p_imgs]
    fruit_other = [scorer.score(im)["Shape"] == "orange" for im in s_imgs]
    bare = [Prompt("an orange", 50_000 + i, SceneSpec(objects=[ObjectSpec(shape="orange")])) for i in range(50)]
    b_sc = [scorer.score(im) for im in gen(bare)]
    rows = {
        "misread: fruit drawn for 'an orange {shape}'": [s["Shape"] == "orange" for s in p_sc],
        "asked shape drawn": [s["Shape"] == p.scene.objects[0].shape for s, p in zip(p_sc, poly)],
        "colour orange drawn": [s["Color"] == "orange" for s in p_sc],
        "control: fruit drawn for 'a {other colour} {shape}'": fruit_other,
        "control: fruit drawn for 'an orange'": [s["Shape"] == "orange" for s in b_sc],
    }
    md += ["", "#### Polysemous 'orange'", "", f"{len(poly)} prompts 'an orange {{shape}}' (colour sense).", "",
           "| measure | rate [95 % CI] |", "|---|---|"]
    for k, v in rows.items():
        md.append(f"| {k} | {fmt_ci(v)} |")
        res[f"poly/{k}"] = bootstrap_ci(v)

    md += ["", "#### End/padding-token route", "", ("Share of the conditional cross-attention mass (all steps, "
           f"the {len(single)} single-object prompts) on each token class:"), "",
           "| layer | " + " | ".join(TOKEN_CLASSES) + " |", "|---|" + "---|" * len(TOKEN_CLASSES)]
    for name, v in mass.items():
        md.append(f"| {name} | " + " | ".join(f"{100 * x:.1f} %" for x in v) + " |")
    res["endpad/mass"] = mass
    if not a.no_endpad:
        sub = single[:200]
        base = single_metrics(scorer, sub, s_imgs[:200])
        md += ["", (f"Causal check on {len(sub)} single-object prompts: the columns of a token class set to 0 "
               "at every head of every layer (conditional half, all steps):"), "",
               "| columns removed | colour | shape | object found |", "|---|---|---|---|",
               f"| none | {fmt_ci(base['Color'])} | {fmt_ci(base['Shape'])} | {fmt_ci(base['object found'])} |"]
        for label, zero in (("words", (1,)), ("end+pad", (2, 3)), ("words+end+pad", (1, 2, 3))):
            m = single_metrics(scorer, sub, gen(sub, zero))
            md.append(f"| {label} | {fmt_ci(m['Color'])} | {fmt_ci(m['Shape'])} | {fmt_ci(m['object found'])} |")
            res[f"endpad/{label}"] = {k: bootstrap_ci(m[k]) for k in ("Color", "Shape", "object found")}
    md.append(f"\n_{time.time() - t0:.0f} s on CPU._")
    write_section(a.doc, a.section, "\n".join(md))
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=1))
    print("\n".join(md))


if __name__ == "__main__":
    main()
