"""`headlens merge` and `headlens convergence`: combine separate runs; judge how many prompts suffice."""

from __future__ import annotations

from pathlib import Path

import typer

from . import app
from .common import at_least, echo, output_folder, stdout

MERGE_EXAMPLES = """Examples:

  headlens merge part-0 part-1 part-2 part-3 --out sd15-hrv
"""
CONVERGENCE_EXAMPLES = """Examples:

  headlens build --per-prompt -o world-hrv && headlens convergence world-hrv -o world-conv
"""


@app.command("merge", epilog=MERGE_EXAMPLES)
def merge_command(
    runs: list[Path] = typer.Argument(..., help="Two or more HRV folders and/or build --out folders holding checkpoints."),  # noqa: B008
    out: Path = typer.Option(..., "--out", "-o", help="Folder for the merged HRV (+ checkpoint, + per-prompt votes if all runs kept them)."),  # noqa: B008
    force: bool = typer.Option(False, "--force", help="Also merge older files that do not record their settings/batches (overlaps cannot be checked)."),
) -> None:
    """Add up the vote counts of separate runs (e.g. `build --shard i/N` on several machines) exactly.

    Refuses runs of another model, concept set, prompt set or settings, and runs that did the same
    batches. The merged folder also holds a checkpoint: `headlens build --resume --out OUT` with the
    run's arguments finishes any batches no run did.
    """
    from headlens.building import check_output_dir
    from headlens.distributed import merge_runs

    output_folder(out)
    check_output_dir(out)
    hrv, merged = merge_runs(runs, out, allow_unknown=force)
    md = hrv.metadata
    total, done = int(md.get("num_prompts", 0)), int(md.get("prompts_done", 0))
    echo(f"merged {len(runs)} runs: {done} of {total} prompts, {int(hrv.votes.sum())} votes → {out}")
    if merged.batches is not None and done < total:
        echo(f"{total - done} prompts are in no run yet: `headlens build --resume --out {out}` with the same "
             "arguments does the rest")
    stdout(str(out))


@app.command("convergence", epilog=CONVERGENCE_EXAMPLES)
def convergence_command(
    hrv_dir: Path = typer.Argument(..., help="HRV folder built with --per-prompt (has prompt_votes.safetensors)."),  # noqa: B008
    out: Path = typer.Option(..., "--out", "-o", help="Folder for stability.csv, stability.png, intervals.csv, summary.json."),  # noqa: B008
    boot: int = typer.Option(1000, "--boot", help="Bootstrap resamples of the prompts."),
    level: float = typer.Option(0.95, "--level", help="Confidence level of the intervals."),
    top: int = typer.Option(10, "--top", help="k of the top-k head sets (overlap curve and stopping rule)."),
    window: int = typer.Option(None, "--window", help="Prompts without a top-k change that count as stable (default: a quarter of the prompts)."),
    points: int = typer.Option(20, "--points", help="Points on the stability curve (log-spaced prompt counts)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the bootstrap resampling."),
) -> None:
    """How stable is an HRV? Bootstrap intervals per element and rank stability as prompts accumulate."""
    from headlens.convergence import convergence_report

    at_least(boot, 2, "--boot")
    at_least(top, 1, "--top")
    at_least(window, 1, "--window")
    at_least(points, 1, "--points")
    if not 0 < level < 1:
        raise ValueError(f"--level must lie between 0 and 1 (got {level:g}), e.g. 0.95")
    from .show_cmd import _load_hrv

    _load_hrv(hrv_dir)
    output_folder(out)
    s = convergence_report(hrv_dir, out, num_boot=boot, level=level, top=top, window=window, points=points, seed=seed)
    widths = s["mean_interval_width"]
    echo(f"{s['prompts']} prompts, {s['heads']} heads × {len(s['concepts'])} concepts; "
         f"{int(100 * s['level'])} % intervals, mean width {sum(widths.values()) / len(widths):.3f} "
         f"(HRV mean is 1)")
    curve = ", ".join(f"{n}: {rho:.2f}" for n, rho in list(s["spearman_at"].items())[-6:])
    echo(f"median Spearman vs final by prompts — {curve}")
    if s["stable_after_prompts"] is None:
        echo(f"top-{s['top']} sets were still changing within the last {s['window']} prompts: more prompts would help")
    else:
        echo(f"top-{s['top']} sets stable (unchanged for {s['window']} prompts) after {s['stable_after_prompts']} prompts")
    stdout(str(out))
