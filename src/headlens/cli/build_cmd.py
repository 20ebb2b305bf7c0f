"""`headlens build` (and `headlens demo`): construct HRVs from the command line."""

from __future__ import annotations

from pathlib import Path

import typer

from . import app
from .common import UserError, echo, load_model


def _print_top_heads(hrv, k: int = 5, concepts: list[str] | None = None) -> None:
    from rich.table import Table

    from .common import console

    table = Table(title=f"Top {k} heads per concept — {hrv.metadata.get('model', '')}")
    table.add_column("concept")
    table.add_column("top heads (short name: HRV)")
    for c in concepts or hrv.concepts:
        idx = hrv.ranking(c)[:k]
        table.add_row(c, ", ".join(f"{hrv.heads[i].short_name}: {float(hrv[c][i]):.2f}" for i in idx))
    console.print(table)


@app.command("build")
def build_command(
    model: str = typer.Option("world", "--model", "-m", help="Hub id or local pipeline folder; 'world' = the bundled model, 'tiny' = a random tiny smoke-test model."),
    concepts: str = typer.Option("default", "--concepts", "-c", help="Concept file (.toml or 'Name: w1, w2' text) or 'default'; 'world' = the bundled world's vocabulary. For --model world, 'default' means 'world'."),
    prompts: str = typer.Option("default", "--prompts", "-p", help="Prompt file (one a line) or 'default' (2,100 shipped prompts); 'world' = the bundled world's prompts. For --model world, 'default' means 'world'."),
    steps: int = typer.Option(50, "--steps", "-n", help="Denoising steps per image (reference: 50)."),
    guidance: float = typer.Option(7.5, "--guidance", "-g", help="Classifier-free guidance scale (reference: 7.5)."),
    batch_size: int = typer.Option(8, "--batch-size", "-b", help="Prompts per pipeline call (fixes batch composition; keep it when resuming)."),
    seed: int = typer.Option(22, "--seed", "-s", help="Base seed: latents and word draws of prompt i come from (seed, i)."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder: hrv.safetensors + hrv.json (+ checkpoint files)."),
    resume: bool = typer.Option(False, "--resume", help="Continue an interrupted run in --out (refuses a checkpoint of another run)."),
    variant: str = typer.Option("reference", "--variant", help="'reference': one random word per concept per layer call (paper); 'all-words': every word scored, averaged per concept (deterministic)."),
    no_start_token: bool = typer.Option(False, "--no-start-token", help="Drop the start token from the vote softmax (the reference keeps it)."),
    scheduler: str = typer.Option(None, "--scheduler", help="Replace the pipeline's scheduler: ddim, pndm, euler, euler-a, dpm, lms, heun, unipc."),
    size: int = typer.Option(None, "--size", help="Image height and width in pixels (default: the model's)."),
    limit: int = typer.Option(None, "--limit", help="Use only the first N prompts (quick runs)."),
    checkpoint_every: int = typer.Option(64, "--checkpoint-every", help="Write a checkpoint every N prompts (0: only at the end)."),
    device: str = typer.Option("cpu", "--device", help="Torch device, e.g. cpu, cuda, cuda:1."),
    dtype: str = typer.Option("float32", "--dtype", help="float32, float16 or bfloat16."),
    top: int = typer.Option(5, "--top", help="Print the top-N heads per concept at the end."),
) -> None:
    """Build Head Relevance Vectors: generate the prompts while every cross-attention head votes."""
    from headlens.building import build
    from headlens.concepts import load_prompts

    if model in ("world", "default"):
        concepts = "world" if concepts == "default" else concepts
        prompts = "world" if prompts == "default" else prompts
    from headlens.concepts import ConceptSet

    concept_set = ConceptSet.coerce(concepts)
    prompt_list = load_prompts(prompts)
    if limit is not None:
        if limit < 1:
            raise UserError(f"--limit must be ≥ 1 (got {limit})")
        prompt_list = prompt_list[:limit]
    from headlens.building import check_output_dir

    check_output_dir(out)  # fail before loading anything if the folder cannot be written
    pipe = load_model(model, device, dtype)
    echo(f"model {model}: {len(prompt_list)} prompts × {steps} steps, batch {batch_size}, seed {seed} → {out}")
    hrv = build(
        pipe, concept_set, prompt_list, num_inference_steps=steps, guidance_scale=guidance, batch_size=batch_size,
        seed=seed, variant=variant, start_token=not no_start_token, scheduler=scheduler, height=size, width=size,
        out=out, checkpoint_every=checkpoint_every, resume=resume, progress=True,
    )
    if top:
        _print_top_heads(hrv, top)
    echo(f"saved {hrv!r} to {out}")
