"""`headlens demo`: the main job on the bundled model, end to end, in a few minutes on a CPU."""

from __future__ import annotations

import time
from pathlib import Path

import typer

from . import app
from .common import (
    DRY_RUN_HELP,
    THREADS_HELP,
    at_least,
    calibrate,
    console,
    echo,
    output_folder,
    report_cost,
    set_threads,
    stdout,
)

DEMO_PROMPTS = 64  # prompts of the demo's HRV build
DEMO_WEAKEN_PROMPTS = 12  # prompts (× 2 seeds) of its weakening curve

DEMO_EXAMPLES = """Examples:

  headlens demo

  headlens demo --concept Size --out demo-size
"""


# The demo's concept: the one whose ordered weakening the default model's validation report shows most
# clearly (docs/world-report.md), so the demo's small run can show it too.
DEMO_CONCEPT = "Shape"


def demo_ks(num_heads: int) -> list[int]:
    """Numbers of weakened heads on the demo's curve: none, a quarter, half and all of them (four points keep the
    demo within five minutes on a 2-core CPU with the 160-head default model)."""
    return sorted({0, num_heads // 4, num_heads // 2, num_heads})


def _world_available() -> bool:
    from headlens import world

    return (world.model_path() / "model_index.json").exists()


@app.command("demo", epilog=DEMO_EXAMPLES)
def demo_command(
    out: Path = typer.Option(Path("demo-out"), "--out", "-o", help="Folder for everything the demo writes."),
    prompts: int = typer.Option(None, "--build-prompts", help="Prompts used to build the HRVs: the first N of the world's prompt set (default: 64)."),
    prompts_old: int = typer.Option(None, "--max-prompts", hidden=True, help="Old name of --build-prompts."),
    steps: int = typer.Option(None, "--steps", "-n", help="Denoising steps per image (default: the bundled model's own, as every command uses)."),
    concept: str = typer.Option(DEMO_CONCEPT, "--concept", "-c", help="Concept of the ordered weakening curve."),
    weaken_prompts: int = typer.Option(DEMO_WEAKEN_PROMPTS, "--weaken-prompts", help="Prompts (× 2 seeds) of the weakening curve (a seeded random subset; default: 12)."),
    batch_size: int = typer.Option(32, "--batch-size", "-b", help="Images per pipeline call."),
    threads: int = typer.Option(0, "--threads", help=THREADS_HELP + " Default 0."),
    dry_run: bool = typer.Option(False, "--dry-run", help=DRY_RUN_HELP),
) -> None:
    """Build HRVs on the bundled world model, print the top heads per concept, draw the HRV plots and
    one ordered weakening curve scored by the world's ground truth, and write an HTML report."""
    from headlens import ConceptSet, HeadIndex, load_prompts
    from headlens.analysis import GenerationSettings, ordered_weakening
    from headlens.building import build, check_output_dir
    from headlens.plots import save_all
    from headlens.report import build_report
    from headlens.scorers import WorldScorer

    from headlens.analysis.weakening import area_lines
    from headlens.world import GENERATION

    from .build_cmd import _print_top_heads
    from .common import load_model
    from .reproduce_cmd import _one_of

    prompts = _one_of(prompts, prompts_old, "--build-prompts", "--max-prompts")
    prompts = DEMO_PROMPTS if prompts is None else prompts
    steps = int(GENERATION["num_inference_steps"]) if steps is None else steps
    guidance = float(GENERATION["guidance_scale"])
    at_least(steps, 1, "--steps")
    at_least(prompts, 1, "--build-prompts")
    at_least(weaken_prompts, 1, "--weaken-prompts")
    at_least(batch_size, 1, "--batch-size")
    n_threads = set_threads(threads)
    concepts = ConceptSet.load("world")
    concept = concepts.names[concepts.index(concept)]  # an unknown concept fails here, before any work
    output_folder(out, create=not dry_run)
    if not dry_run:
        check_output_dir(out)
    t0 = time.perf_counter()
    if _world_available():
        pipe = load_model("world")
        model_label = "bundled world model"
    else:  # a fresh checkout before the model was trained: still exercise every step
        pipe = load_model("tiny")
        model_label = "TINY RANDOM MODEL (smoke run: the bundled world model is missing)"
        console.print(f"[bold yellow]warning:[/] {model_label}")
    prompt_list = load_prompts("world")[:prompts]
    hrv_dir = out / "hrv"
    H = len(HeadIndex.from_unet(pipe.unet))
    ks = demo_ks(H)
    if dry_run:
        from headlens.analysis import make_items, prompt_targets
        from headlens.analysis.common import GenerationSettings as GS
        from headlens.analysis.common import generate as gen_items

        n_weaken = len(make_items(prompt_targets("world" if _world_available() else None, concept), [10, 20],
                                  weaken_prompts))
        distinct = 2 + (len(ks) - 2) * (2 + 2)  # k = 0 and k = H once; else top-k, bottom-k and 2 random draws
        total = len(prompt_list) + distinct * n_weaken
        items = make_items([(p, "") for p in prompt_list[:batch_size]], [0])

        def run(n: int) -> None:
            for _ in gen_items(pipe, items, GS(num_inference_steps=n, guidance_scale=guidance, batch_size=batch_size)):
                pass

        report_cost(total, calibrate(run, steps) / len(items),
                    f"generations ({len(prompt_list)} for the HRVs, about {distinct * n_weaken} for the weakening curve)")
        return
    echo(f"[1/4] building HRVs on the {model_label}: {len(prompt_list)} prompts × {steps} steps "
         f"({n_threads} torch thread{'s' * (n_threads != 1)})")
    hrv = build(pipe, concepts, prompt_list, num_inference_steps=steps, guidance_scale=guidance, batch_size=batch_size,
                seed=22, out=hrv_dir, resume=True, checkpoint_every=batch_size, progress=True)
    _print_top_heads(hrv, 5)

    echo(f"[2/4] drawing the HRV plots → {hrv_dir / 'plots'}")
    save_all(hrv, hrv_dir / "plots")

    echo(f"[3/4] ordered weakening of {concept!r}: top-k vs bottom-k vs random heads, scored by ground truth")
    scorer = WorldScorer(concept) if _world_available() else None
    if scorer is None:
        from headlens.scorers import FunctionScorer

        scorer = FunctionScorer(lambda image, target, prompt: float(sum(image.convert("L").getdata())) / 255 / 256,
                                name="mean-brightness (smoke run)")
    result = ordered_weakening(
        pipe, hrv, concept, prompts="world" if _world_available() else None, seeds=[10, 20], ks=ks, scorer=scorer,
        out=hrv_dir / f"weaken-{concept}", random_draws=2, max_prompts=weaken_prompts, resume=True,
        settings=GenerationSettings(num_inference_steps=steps, guidance_scale=guidance, batch_size=batch_size),
    )
    echo(f"    curve: {result.files['plot']}   scores: {result.files['curves']}")

    echo("[4/4] writing the HTML report")
    report = build_report(hrv_dir, hrv_dir / "report.html")
    echo(f"done in {time.perf_counter() - t0:.0f} s — open {report}")
    stdout(f"{result.concept}, ordered weakening over {len(result.items)} prompt×seed items (areas with 95% CIs; "
           "positive: weakening the HRV's top heads hurts more):")
    for line in area_lines(result):
        stdout(f"  {line}")
    stdout(f"verdict: {result.verdict}")
