"""`headlens world report`: the validation report of the bundled world model (Markdown + PNGs + JSON)."""
# ruff: noqa: B008  (typer declares options as argument defaults)

from __future__ import annotations

from pathlib import Path

import typer

from . import app
from .common import (
    DRY_RUN_HELP,
    THREADS_HELP,
    UserError,
    at_least,
    calibrate,
    echo,
    output_file,
    output_folder,
    report_cost,
    set_threads,
    stdout,
)

REPORT_EXAMPLES = """Examples:

  headlens world report --quick --out world-report-quick

  headlens world report --out docs/world-report --dry-run
"""

world_app = typer.Typer(name="world", help="The bundled world model: validation report of its HRVs.",
                        no_args_is_help=True)
app.add_typer(world_app)


@world_app.command("report", epilog=REPORT_EXAMPLES)
def report_command(
    out: Path = typer.Option(Path("docs/world-report"), "--out", "-o", help="Folder for the PNG plots, report.json and the HRVs."),
    markdown: Path = typer.Option(None, "--markdown", help="Markdown file to write (default: <out>.md beside the folder)."),
    quick: bool = typer.Option(False, "--quick", help="Tiny sample sizes (a smoke run of every section, about a minute)."),
    model: str = typer.Option("world", "--model", "-m", help="'world' (the bundled default model), 'world-joint' (the jointly trained one) or a local pipeline folder with the world's vocabulary."),
    threads: int = typer.Option(1, "--threads", help=THREADS_HELP + " Default 1."),
    seed: int = typer.Option(0, "--seed", help="Seed of the prompt samples (generation seeds are fixed per item)."),
    poly_hard_guidance: float = typer.Option(None, "--poly-hard-guidance", help="Guidance of the hard polysemy case ('an orange circle'), low so that the model misreads 'orange' as the fruit (default: ReportConfig's; 1 = no classifier-free guidance)."),
    resume: bool = typer.Option(False, "--resume", help="Reuse the finished sections of an interrupted run (same model and settings)."),
    sections: str = typer.Option(None, "--sections", help="Compute only these sections, comma-separated (attention_mass, weakening, effects, polysemy, polysemy_hard, p2p, ae; weakening:Color or effects:Color for one concept of a section), into OUT/.partial, reusing finished ones: several processes can fill one report side by side; then `--resume` without --sections writes it."),
    render_only: bool = typer.Option(False, "--render-only", help="Only re-write the Markdown from <out>/report.json (no generation)."),
    dry_run: bool = typer.Option(False, "--dry-run", help=DRY_RUN_HELP),
) -> None:
    """Validate the world model's HRVs against ground truth: control, weakening, single heads, polysemy, P2P, A&E."""
    from headlens import world
    from headlens.validation import ReportConfig, render_from_json, run_report

    if markdown is not None:
        output_file(markdown, "--markdown", (".md", ".markdown"), "report")
    if render_only:
        if not (out / "report.json").exists():
            raise UserError(f"no report.json in {out}; run `headlens world report --out {out}` first")
        echo(f"wrote {render_from_json(out, markdown)}")
        return
    set_threads(threads)
    variant = world.variant_of(model)
    folder = None if variant else Path(model)
    path = folder or world.model_path(variant)
    if not (path / "model_index.json").exists():
        raise UserError(f"no world pipeline at {path} (model_index.json missing); train one with "
                        "`python -m headlens.world.train` or give --model FOLDER")
    at_least(poly_hard_guidance, 1.0, "--poly-hard-guidance")
    chosen = _sections(sections)
    output_folder(out, create=not dry_run)
    pipe = world.load_pipeline(folder=folder, variant=variant or "default")
    cfg = ReportConfig.quick() if quick else ReportConfig()
    cfg.seed = seed
    if poly_hard_guidance is not None:
        cfg.poly_hard_guidance = poly_hard_guidance
    if dry_run:
        _dry_run(pipe, cfg)
        return
    try:
        reader = world.Scorer()
    except FileNotFoundError as e:
        raise UserError(str(e)) from None
    name = {"default": "bundled world model", "joint": "bundled world-joint model"}.get(variant, f"world model at {folder}")
    run_report(pipe, reader, out, config=cfg, markdown=markdown, log=echo, model_name=name, resume=resume,
               sections=chosen)


def _sections(text: str | None) -> list[str] | None:
    """--sections: comma-separated names of the report's sections, checked before any work."""
    from headlens.validation import check_sections

    if text is None:
        return None
    try:
        return check_sections([t.strip() for t in text.split(",") if t.strip()])
    except ValueError as e:
        raise UserError(f"--sections {text!r}: {e}, comma-separated") from None


COMPARE_EXAMPLES = """Examples:

  headlens world compare world=docs/world-report world-joint=docs/world-report-joint
"""


def _dry_run(pipe, cfg) -> None:
    """Print each section's number of generations and the calibrated total time."""
    from dataclasses import replace

    from headlens.analysis.common import GenerationSettings, Item, generate
    from headlens.heads import HeadIndex
    from headlens.validation import planned_generations
    from headlens.validation.world_report import use_scheduler

    counts = planned_generations(cfg, len(HeadIndex.from_unet(pipe.unet)))
    for name, n in counts.items():
        stdout(f"  {name}: {n} generations")
    use_scheduler(pipe, cfg.scheduler)
    settings = GenerationSettings(num_inference_steps=cfg.steps, guidance_scale=cfg.guidance,
                                  batch_size=min(cfg.batch_size, 16))
    items = [Item("a red circle", "red", s) for s in range(settings.batch_size)]

    def run(n: int) -> None:
        for _ in generate(pipe, items, replace(settings, num_inference_steps=n)):
            pass

    report_cost(sum(counts.values()), calibrate(run, cfg.steps) / len(items),
                f"generations of {cfg.steps} {cfg.scheduler.upper()} steps (A&E and P2P cost more per image)")


@world_app.command("compare", epilog=COMPARE_EXAMPLES)
def compare_command(
    reports: list[str] = typer.Argument(..., help="NAME=FOLDER pairs: each folder holds a report.json of `headlens world report`."),
    markdown: Path = typer.Option(Path("docs/world-regimes.md"), "--markdown", help="Markdown file to write."),
) -> None:
    """Put the world reports of several models side by side (e.g. world=docs/world-report world-joint=docs/world-report-joint)."""
    from headlens.validation.compare import DESCRIPTIONS, load_reports, render_comparison

    output_file(markdown, "--markdown", (".md", ".markdown"), "comparison")
    folders = {}
    for spec in reports:
        name, sep, folder = spec.partition("=")
        if not sep or not name or not folder:
            raise UserError(f"bad report {spec!r}: give NAME=FOLDER, e.g. world=docs/world-report")
        folders[name] = folder
    try:
        loaded = load_reports(folders)
    except FileNotFoundError as e:
        raise UserError(str(e)) from None
    markdown.parent.mkdir(parents=True, exist_ok=True)
    markdown.write_text(render_comparison(loaded, DESCRIPTIONS))
    echo(f"wrote {markdown}")
