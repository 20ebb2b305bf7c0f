"""`headlens reproduce`: the paper's protocol in one resumable, shardable command, and its report."""
# ruff: noqa: B008  (typer declares options as argument defaults)

from __future__ import annotations

import shlex
import tempfile
from pathlib import Path

import typer

from . import app
from .common import (
    DEVICE_HELP,
    DTYPE_HELP,
    USER_ERRORS,
    UserError,
    at_least,
    check_device,
    check_dtype,
    check_size,
    console,
    echo,
    human_time,
    load_model,
    output_folder,
    reuse_models,
    stdout,
)


REPRODUCE_EXAMPLES = """Examples:

  headlens reproduce -m CompVis/stable-diffusion-v1-4 --device cuda --dry-run

  headlens reproduce -m tiny --build-prompts 8 --weaken-prompts 2 --limit-cases 1 --steps 2 -o reproduce-smoke
"""


@app.command("reproduce", epilog=REPRODUCE_EXAMPLES)
def reproduce_command(
    model: str = typer.Option(..., "--model", "-m", help="Hub id or local pipeline folder (the paper: CompVis/stable-diffusion-v1-4, stabilityai/stable-diffusion-xl-base-1.0); 'tiny' = a random tiny model for a smoke run."),
    out: Path = typer.Option(None, "--out", "-o", help="Output folder (default: ./reproduce-MODEL). Rerun the same command to resume."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print every stage, its number of generations and a device-hour estimate from a short timed calibration; run nothing."),
    only: str = typer.Option(None, "--only", help="Comma list of stages to run: hrv, weaken, polysemy, edit, excite, report (default: all, in that order)."),
    clip: str = typer.Option("laion/CLIP-ViT-H-14-laion2B-s32B-b79K", "--clip", help="CLIP model scoring weakening, polysemy, edits and A&E: hub id or local folder (transformers CLIPModel). Default: the ViT-H-14 laion2B CLIP the paper used."),
    shard: str = typer.Option(None, "--shard", help="Do part i of N (i/N) on this machine: shard i of the HRV build, and every N-th unit of the other stages. Gather the folders into one OUT, then rerun without --shard (merges the HRV parts, writes the report)."),
    prompts: str = typer.Option("default", "--prompts", "-p", help="Prompts for the HRV build: 'default' (the 2,100 shipped prompts, as the paper) or a prompt file."),
    limit: int = typer.Option(None, "--build-prompts", help="HRV build: only the first N prompts (quick runs; as `build --max-prompts`)."),
    limit_old: int = typer.Option(None, "--limit", hidden=True, help="Old name of --build-prompts."),
    steps: int = typer.Option(50, "--steps", "-n", help="Denoising steps of every generation (paper: 50)."),
    guidance: float = typer.Option(7.5, "--guidance", "-g", help="Classifier-free guidance scale (paper: 7.5)."),
    batch_size: int = typer.Option(8, "--batch-size", "-b", help="Images per pipeline call (keep it when resuming)."),
    seed: int = typer.Option(22, "--seed", "-s", help="Base seed of the HRV build (paper: 22)."),
    weaken_concepts: str = typer.Option(",".join(["Image Style", "Color", "Material", "Geometric Patterns", "Weather Conditions", "Texture", "Animals", "Nature Scenes", "Fruits and Vegetables", "Plants"]), "--weaken-concepts", help="Comma list of paper concepts for ordered weakening (each has a template family)."),
    weaken_seeds: str = typer.Option("10,20,30", "--weaken-seeds", help="Seeds per weakening prompt (paper: 10,20,30)."),
    max_prompts: int = typer.Option(None, "--weaken-prompts", help="Weakening: a seeded random subset of N prompts per concept (quick runs; as `weaken --max-prompts`; default: all 100)."),
    max_prompts_old: int = typer.Option(None, "--max-prompts", hidden=True, help="Old name of --weaken-prompts."),
    ks: str = typer.Option("default", "--ks", help="Weakening k values: 'default' (0, 1, 11, 21, …, H as the paper) or a comma list; 'H' = all heads."),
    random_draws: int = typer.Option(0, "--random-draws", help="Weakening: random head orders as a control (the paper has none: 0)."),
    seeds: str = typer.Option("1-4", "--seeds", help="Seeds of the polysemy, edit and A&E benchmarks."),
    limit_cases: int = typer.Option(None, "--limit-cases", help="Only the first N cases of the polysemy list, of each edit attribute and of each A&E group."),
    edit_attributes: str = typer.Option("Color,Material,Geometric patterns,Image style,Weather conditions", "--edit-attributes", help="Comma list of edit benchmarks (P2P vs P2P-HRV)."),
    excite_groups: str = typer.Option("animal-animal,animal-object,object-object,color-object", "--excite-groups", help="Comma list of A&E prompt groups."),
    size: int = typer.Option(None, "--size", help="Image height and width in pixels (default: the model's)."),
    calibration_steps: int = typer.Option(2, "--calibration-steps", help="--dry-run: denoising steps of each timed calibration run."),
    device: str = typer.Option("cpu", "--device", help=DEVICE_HELP),
    dtype: str = typer.Option("float32", "--dtype", help=DTYPE_HELP),
) -> None:
    """Reproduce the paper: HRVs on its concepts, ordered weakening, polysemy, P2P-HRV, A&E-HRV, and one report.

    Every stage runs headlens' own commands (build, weaken, generate --benchmark, edit --benchmark,
    excite --benchmark) into OUT/<stage>/; finished units are kept, so rerunning the command resumes.
    The report (OUT/report.md, OUT/report.html) puts each result beside the released one where a
    release exists (HRVs of SD v1.4 / SDXL base 1.0, the Image Style weakening curve of SD v1.4) and
    beside the paper's claim in words otherwise.
    """
    from headlens import distributed
    from headlens import reproduce as rp
    from headlens.heads import HeadIndex

    limit = _one_of(limit, limit_old, "--build-prompts", "--limit")
    max_prompts = _one_of(max_prompts, max_prompts_old, "--weaken-prompts", "--max-prompts")
    stages = rp.parse_stages(only)
    shard_spec = distributed.parse_shard(shard)
    split = [c.strip() for c in weaken_concepts.split(",") if c.strip()]
    settings = rp.Settings(
        model=model, prompts=prompts, limit_prompts=limit, steps=steps, guidance=guidance, batch_size=batch_size,
        seed=seed, size=size, dtype=dtype, clip=clip, weaken_concepts=tuple(split), weaken_seeds=weaken_seeds,
        max_prompts=max_prompts, ks=ks, random_draws=random_draws, seeds=seeds, cases=limit_cases,
        edit_attributes=tuple(a.strip() for a in edit_attributes.split(",") if a.strip()),
        excite_groups=tuple(g.strip() for g in excite_groups.split(",") if g.strip()))
    for name, value in (("--steps", steps), ("--batch-size", batch_size), ("--calibration-steps", calibration_steps)):
        at_least(value, 1, name)
    check_device(device)
    check_dtype(dtype)
    check_size(size)
    out = out or Path(f"reproduce-{rp.slug(model)}")
    rp.check_settings(settings)
    output_folder(out, create=not dry_run)
    if not dry_run:
        rp.check_run_file(out, settings)  # another run's folder is refused before the model loads
    with reuse_models():
        pipe = load_model(model, device, dtype)
        num_heads = len(HeadIndex.from_unet(pipe.unet))
        if dry_run:
            with tempfile.TemporaryDirectory(prefix="headlens-reproduce-") as tmp:
                rp.write_inputs(Path(tmp), settings)
                plan = rp.make_plan(out, settings, num_heads, stages, device, shard_spec, inputs=Path(tmp))
            _print_plan(rp, plan, settings, stages, shard_spec, pipe, device, calibration_steps, num_heads, out)
            return
        skipped = rp.write_inputs(out / rp.INPUTS, settings)
        plan = rp.make_plan(out, settings, num_heads, stages, device, shard_spec)
        units = rp.mine(plan.units, shard_spec)
        echo(f"reproduce {model} → {out}: {len(units)} unit(s) in stages {', '.join(stages)}"
             + (f", shard {shard_spec[0]}/{shard_spec[1]}" if shard_spec else ""))
        for unit in units:
            _run_unit(rp, unit, out, shard_spec)
    if "report" in stages:
        if shard_spec is not None:
            echo("report: skipped on a shard; gather the shards' folders into one OUT and run `--only report`")
            return
        from headlens.scorers import ClipScorer

        md, html = rp.write_report(out, settings, lambda: ClipScorer(clip, device=device), skipped)
        echo(f"wrote {md} and {html}")
        stdout(str(html))


def _one_of(value, old, flag: str, old_flag: str):
    """A flag given by its name or its old name (not both, differently)."""
    if value is not None and old is not None and value != old:
        raise UserError(f"{flag} {value} and {old_flag} {old} disagree: {old_flag} is the old name of {flag}; give one")
    return value if value is not None else old


def _invoke(args: list[str], what: str) -> None:
    """Run one headlens command in this process (the model stays loaded)."""
    from typer.main import get_command

    console.print(f"[dim]$ headlens {shlex.join(args)}[/]", highlight=False, soft_wrap=True)
    try:
        get_command(app).main(args=args, prog_name="headlens", standalone_mode=False)
    except (UserError, *USER_ERRORS) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
        raise UserError(f"{what}: {msg} (finished units are kept; rerun to resume)") from None


def _run_unit(rp, unit, out: Path, shard) -> None:
    if unit.done:
        echo(f"[green]done[/] {unit.name} ({unit.folder})")
        return
    hrv_dir = rp.hrv_folder(out)
    if unit.stage == "hrv" and shard is None:
        parts = sorted((out / "hrv-shards").glob(f"part-*-of-*/{rp.DONE_FILE}"))
        if parts and not (hrv_dir / "checkpoint.json").exists():
            ns = {p.parent.name.rsplit("-", 1)[1] for p in parts}
            n = int(next(iter(ns)))
            if len(ns) != 1 or len(parts) != n:
                raise UserError(f"found {len(parts)} finished HRV shard(s) in {out / 'hrv-shards'} (of "
                                f"{', '.join(sorted(ns))}); finish every part with --shard i/N --only hrv first")
            _invoke(["merge", *[str(p.parent) for p in parts], "--out", str(hrv_dir)], "merge HRV shards")
    elif unit.stage != "hrv" and not (hrv_dir / rp.DONE_FILE).is_file():
        raise UserError(f"{unit.name} needs the finished HRV in {hrv_dir}: run the hrv stage first"
                        + (" (gather the shards and rerun without --shard --only hrv)" if shard else ""))
    echo(f"[bold]{unit.stage}[/]: {unit.name} ({unit.generations} generations) → {unit.folder}")
    _invoke(unit.args, unit.name)
    unit.mark_done()


def _print_plan(rp, plan, settings, stages, shard, pipe, device: str, calibration_steps: int, num_heads: int,
                out: Path) -> None:
    from rich.table import Table

    echo(f"calibrating on {device}: {calibration_steps} steps, batch {settings.batch_size}, batch 1 and Attend-and-Excite …")
    rates = rp.calibrate(pipe, settings, calibration_steps)
    units = rp.mine(plan.units, shard)
    table = Table(title=f"headlens reproduce --model {settings.model} ({num_heads} heads), {settings.steps} steps per image")
    for col in ("stage", "unit", "generations", "est. device-hours", "status"):
        table.add_column(col, justify="right" if col in ("generations", "est. device-hours") else "left",
                         no_wrap=col in ("stage", "unit"))
    total_g, total_h = 0, 0.0
    for u in units:
        h = rp.unit_hours(u, settings, rates)
        total_g += u.generations
        total_h += h
        table.add_row(u.stage, u.name, str(u.generations), f"{h:.3g}", "done" if u.done else "to do")
    if "report" in stages:
        table.add_row("report", "report.md + report.html", "0", "—", "CLIP scoring only")
    table.add_row("total", "", str(total_g), f"{total_h:.3g}", "")
    console.print(table)
    stdout(f"dry run: {len(units)} units, {total_g} generations of {settings.steps} steps, about "
           f"{human_time(total_h * 3600)} on this machine: ≈ {total_h:.3g} "
           f"{'GPU' if str(device).startswith('cuda') else 'device'}-hours on {device} "
           f"(calibration: {rates['batch']:.3g} s per image-step at batch {settings.batch_size}, "
           f"{rates['single']:.3g} at batch 1, {rates['excite_step']:.3g} per A&E gradient step; A&E priced as an upper "
           "bound: every refinement iteration run)")
    for stage, cases in plan.skipped.items():
        if cases:
            echo(f"{stage}: {len(cases)} benchmark case(s) skipped (no paper concept): {'; '.join(cases[:3])}"
                 + (" …" if len(cases) > 3 else ""))
    echo(f"nothing was run; without --dry-run the results go to {out}")
