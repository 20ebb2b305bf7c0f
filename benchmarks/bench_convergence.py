"""How many prompts does the bundled world model need? Build with per-prompt votes, then judge convergence.

    .venv/bin/python benchmarks/bench_convergence.py [--steps 25] [--prompts 256] [--top 10] [--window 64]

Same as ``headlens build --model world --per-prompt`` followed by ``headlens convergence``; the
summary (prompts after which every concept's top-k heads stopped changing, rank stability, interval
widths) goes into the "Convergence" section of benchmarks/RESULTS.md and the curve to
benchmarks/convergence-world.png.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

from _common import HERE, machine, setup_threads, write_section

import headlens
from headlens.convergence import convergence_report


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--prompts", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--top", type=int, default=10)
    ap.add_argument("--window", type=int, default=64)
    ap.add_argument("--boot", type=int, default=1000)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    setup_threads()
    from headlens import world

    pipe = world.load_pipeline()  # the trained model only: random weights say nothing about convergence
    prompts = world.default_prompts(args.prompts)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "hrv"
        t = time.perf_counter()
        headlens.build(pipe, world.concept_words(), prompts, num_inference_steps=args.steps,
                       batch_size=args.batch_size, out=out, per_prompt=True)
        took = time.perf_counter() - t
        s = convergence_report(out, Path(tmp) / "conv", num_boot=args.boot, top=args.top, window=args.window)
        shutil.copy(Path(tmp) / "conv" / "stability.png", HERE / "convergence-world.png")
    print(json.dumps(s, indent=1))
    curve = " · ".join(f"{n}: {rho:.3f}" for n, rho in s["spearman_at"].items())
    widths = s["mean_interval_width"]
    lines = [f"Machine: {machine()}.", "",
             (f"Command: `.venv/bin/python benchmarks/bench_convergence.py` — bundled world model, {s['prompts']} "
             f"world prompts × {args.steps} steps, batch {args.batch_size}, {s['heads']} heads × "
             f"{len(s['concepts'])} concepts; build {took:.0f} s."), "",
             (f"- Top-{s['top']} head sets of every concept unchanged for {s['window']} prompts after: "
             f"**{s['stable_after_prompts'] if s['stable_after_prompts'] is not None else 'not reached'} prompts** "
             "(`--until-stable` rule, checked every batch)."),
             f"- Median Spearman (HRV after n prompts vs all {s['prompts']}): {curve}.",
             f"- 95 % bootstrap intervals ({s['bootstrap']} resamples), mean width per concept (HRV mean = 1): "
             + ", ".join(f"{k} {v:.3f}" for k, v in widths.items()) + ".",
             "- Curve: `benchmarks/convergence-world.png`."]
    if not args.no_write:
        write_section("Convergence", "\n".join(lines))
        print("written to benchmarks/RESULTS.md")


if __name__ == "__main__":
    main()
