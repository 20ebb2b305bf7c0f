"""How many prompts does the bundled world model need? Build with per-prompt votes, then judge convergence.

    .venv/bin/python benchmarks/bench_convergence.py [--steps 25] [--prompts 512] [--top 10] [--window 64]

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

import torch
from _common import HERE, machine, setup_threads, write_section

import headlens
from headlens.convergence import StabilityTracker, convergence_report, prompts_until_stable
from headlens.distributed import read_prompt_votes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--prompts", type=int, default=512)
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
        pv, done, _ = read_prompt_votes(out)
    grid = {}  # (k, window) -> prompts after which the rule fires; and when each top-k last changed
    last_change = {}
    for k in (3, 5, 10):
        for w in (16, 32, 64):
            grid[k, w] = prompts_until_stable(pv, k, w, step=args.batch_size, done=done)
        t = StabilityTracker(k, 1)
        total = torch.zeros(pv.shape[1:], dtype=torch.int64)
        for start in range(0, pv.shape[0], args.batch_size):
            total += pv[start : start + args.batch_size].to(torch.int64).sum(0)
            t.update(total, min(start + args.batch_size, pv.shape[0]))
        last_change[k] = t.since
    print(json.dumps(s, indent=1))
    print("rule fires after (k, window) → prompts:", grid, "top-k sets last changed at:", last_change)
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
             "- Curve: `benchmarks/convergence-world.png`.", "",
             ("When would `--until-stable W --stable-top k` have stopped (prompts; — = not within the run)? "
              "And after how many prompts did each concept's top-k set change for the last time?"), "",
             "| k | W = 16 | W = 32 | W = 64 | last change of any top-k set |", "|---|---|---|---|---|"]
    for k in (3, 5, 10):
        cells = [str(grid[k, w]) if grid[k, w] is not None else "—" for w in (16, 32, 64)]
        lines.append(f"| {k} | {' | '.join(cells)} | {last_change[k]} |")
    if not args.no_write:
        write_section("Convergence", "\n".join(lines))
        print("written to benchmarks/RESULTS.md")


if __name__ == "__main__":
    main()
