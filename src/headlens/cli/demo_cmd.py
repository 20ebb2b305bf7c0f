"""`headlens demo`: the main job on the bundled model, end to end, in a few minutes on a CPU."""

from __future__ import annotations

import time
from pathlib import Path

import typer

from . import app
from .common import console, echo


def _world_available() -> bool:
    from headlens import world

    return (world.model_path() / "model_index.json").exists()


@app.command("demo")
def demo_command(
    out: Path = typer.Option(Path("demo-out"), "--out", "-o", help="Folder for everything the demo writes."),
    prompts: int = typer.Option(128, "--prompts", help="Prompts used to build the HRVs (from the world's prompt set)."),
    steps: int = typer.Option(20, "--steps", "-n", help="Denoising steps per image."),
    concept: str = typer.Option("Color", "--concept", "-c", help="Concept of the ordered weakening curve."),
    weaken_prompts: int = typer.Option(24, "--weaken-prompts", help="Prompts (× 2 seeds) of the weakening curve."),
    batch_size: int = typer.Option(32, "--batch-size", "-b", help="Images per pipeline call."),
) -> None:
    """Build HRVs on the bundled world model, print the top heads per concept, draw the HRV plots and
    one ordered weakening curve scored by the world's ground truth, and write an HTML report."""
    from headlens import ConceptSet, load_prompts
    from headlens.analysis import GenerationSettings, ordered_weakening
    from headlens.building import build, check_output_dir
    from headlens.plots import save_all
    from headlens.report import build_report
    from headlens.scorers import WorldScorer

    from .build_cmd import _print_top_heads
    from .common import load_model

    check_output_dir(out)
    t0 = time.perf_counter()
    if _world_available():
        pipe = load_model("world")
        model_label = "bundled world model"
    else:  # a fresh checkout before the model was trained: still exercise every step
        pipe = load_model("tiny")
        model_label = "TINY RANDOM MODEL (smoke run: the bundled world model is missing)"
        console.print(f"[bold yellow]warning:[/] {model_label}")
    concepts = ConceptSet.load("world")
    prompt_list = load_prompts("world")[:prompts]
    hrv_dir = out / "hrv"
    echo(f"[1/4] building HRVs on the {model_label}: {len(prompt_list)} prompts × {steps} steps")
    hrv = build(pipe, concepts, prompt_list, num_inference_steps=steps, guidance_scale=5.0, batch_size=batch_size,
                seed=22, out=hrv_dir, resume=True, checkpoint_every=batch_size, progress=True)
    _print_top_heads(hrv, 5)

    echo(f"[2/4] drawing the HRV plots → {hrv_dir / 'plots'}")
    save_all(hrv, hrv_dir / "plots")

    echo(f"[3/4] ordered weakening of {concept!r}: top-k vs bottom-k vs random heads, scored by ground truth")
    H = hrv.num_heads
    ks = sorted({0, 1, H // 8, H // 4, H // 2, (3 * H) // 4, H})
    scorer = WorldScorer(concept) if _world_available() else None
    if scorer is None:
        from headlens.scorers import FunctionScorer

        scorer = FunctionScorer(lambda image, target, prompt: float(sum(image.convert("L").getdata())) / 255 / 256,
                                name="mean-brightness (smoke run)")
    result = ordered_weakening(
        pipe, hrv, concept, prompts="world" if _world_available() else None, seeds=[10, 20], ks=ks, scorer=scorer,
        out=hrv_dir / f"weaken-{concept}", random_draws=2, max_prompts=weaken_prompts, resume=True,
        settings=GenerationSettings(num_inference_steps=steps, guidance_scale=5.0, batch_size=batch_size),
    )
    for tokens, area in result.areas.items():
        echo(f"    area between LeRHF and MoRHF ({tokens}): {area.value:+.3f} [95% CI {area.low:+.3f}, {area.high:+.3f}]"
             " — positive means the HRV's top heads matter most")
        if area.high < 0:
            echo("    (negative: on this model the HRV's bottom heads hurt this concept more than its top heads — a "
                 "measured result, see docs/world-report.md; `--concept Size` is one the model does validate)")
    echo(f"    curve: {result.files['plot']}   scores: {result.files['curves']}")

    echo("[4/4] writing the HTML report")
    report = build_report(hrv_dir, hrv_dir / "report.html")
    echo(f"done in {time.perf_counter() - t0:.0f} s — open {report}")
