"""`headlens build` (and `headlens demo`): construct HRVs from the command line."""

from __future__ import annotations

from pathlib import Path

import typer

from . import app
from .common import (
    DEVICE_HELP,
    DRY_RUN_HELP,
    DTYPE_HELP,
    GUIDANCE_HELP,
    MODEL_HELP,
    STEPS_HELP,
    UserError,
    at_least,
    calibrate,
    check_device,
    check_dtype,
    check_size,
    console,
    echo,
    generation_defaults,
    is_world,
    load_model,
    model_label,
    output_folder,
    report_cost,
)

BUILD_EXAMPLES = """Examples:

  headlens build --model world --out world-hrv

  headlens build -m M --concepts default --prompts default -b 8 -o sd15-hrv --dry-run
"""


def _print_top_heads(hrv, k: int = 5, concepts: list[str] | None = None) -> None:
    from rich.table import Table

    from headlens.plots import display_model_name

    table = Table(title=f"Top {k} heads per concept — {display_model_name(hrv.metadata.get('model'))}")
    table.add_column("concept")
    table.add_column("top heads (short name: HRV)")
    for c in concepts or hrv.concepts:
        table.add_row(c, ", ".join(f"{name}: {value:.2f}" for name, value in hrv.top_heads(c, k, names="short")))
    console.print(table)


def _check_choices(variant: str, concept_keys: str, scheduler: str | None) -> None:
    """--variant, --concept-keys and --scheduler name known choices (before the model loads)."""
    from headlens.building import SCHEDULERS
    from headlens.capture import CONCEPT_KEYS, VARIANTS

    for flag, value, choices in (("--variant", variant, VARIANTS), ("--concept-keys", concept_keys, CONCEPT_KEYS),
                                 ("--scheduler", scheduler, tuple(SCHEDULERS))):
        if value is not None and value not in choices:
            raise UserError(f"unknown {flag} {value!r}: use one of {', '.join(choices)}")


@app.command("build", epilog=BUILD_EXAMPLES)
def build_command(
    model: str = typer.Option("world", "--model", "-m", help=MODEL_HELP),
    concepts: str = typer.Option("default", "--concepts", help="Concept file (.toml or 'Name: w1, w2' text) or 'default'; 'paper' = the HRV paper's 34 concepts × 10 words; 'world' = the bundled world's vocabulary. For --model world, 'default' means 'world'."),
    prompts: str = typer.Option("default", "--prompts", "-p", help="Prompt file (one a line) or 'default' (2,100 shipped prompts); 'world' = the bundled world's prompts. For --model world, 'default' means 'world'."),
    steps: int = typer.Option(None, "--steps", "-n", help=STEPS_HELP + " The reference used 50."),
    guidance: float = typer.Option(None, "--guidance", "-g", help=GUIDANCE_HELP + " The reference used 7.5."),
    batch_size: int = typer.Option(8, "--batch-size", "-b", help="Prompts per pipeline call (fixes batch composition; keep it when resuming)."),
    seed: int = typer.Option(22, "--seed", "-s", help="Base seed: latents and word draws of prompt i come from (seed, i)."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder: hrv.safetensors + hrv.json (+ checkpoint files)."),  # noqa: B008
    resume: bool = typer.Option(False, "--resume", help="Continue an interrupted run in --out (refuses a checkpoint of another run)."),
    variant: str = typer.Option("reference", "--variant", help="'reference': one random word per concept per layer call (paper); 'all-words': every word scored, averaged per concept (deterministic)."),
    no_start_token: bool = typer.Option(False, "--no-start-token", help="Drop the start token from the vote softmax (the reference keeps it)."),
    concept_keys: str = typer.Option("probes", "--concept-keys", help="SD3/FLUX only: 'probes' (concept-words ride along as probe tokens that see the image) or 'text-only' (each word sees only itself)."),
    scheduler: str = typer.Option(None, "--scheduler", help="Replace the pipeline's scheduler: ddim, pndm, euler, euler-a, dpm, lms, heun, unipc."),
    size: int = typer.Option(None, "--size", help="Image height and width in pixels (default: the model's)."),
    limit: int = typer.Option(None, "--max-prompts", "--limit", help="Use only the first N prompts (quick runs; the prompt list's order fixes each prompt's seed, so a build takes the first N, not a random subset)."),
    checkpoint_every: int = typer.Option(64, "--checkpoint-every", help="Write a checkpoint every N prompts (0: only at the end)."),
    device: str = typer.Option("cpu", "--device", help=DEVICE_HELP),
    dtype: str = typer.Option("float32", "--dtype", help=DTYPE_HELP),
    top: int = typer.Option(5, "--top", help="Print the top-N heads per concept at the end."),
    shard: str = typer.Option(None, "--shard", help="Do only part i of N (i/N, batches b with b % N == i); combine the parts with `headlens merge`."),
    per_prompt: bool = typer.Option(False, "--per-prompt", help="Also keep each prompt's votes (prompt_votes.safetensors) for `headlens convergence`."),
    until_stable: int = typer.Option(0, "--until-stable", help="Stop once no concept's top heads (--stable-top) have changed for this many prompts (0: off)."),
    stable_top: int = typer.Option(10, "--stable-top", help="Size k of the top-k head sets watched by --until-stable."),
    min_free_mb: float = typer.Option(16, "--min-free-mb", help="Refuse to start unless the output disk has the build's output size plus this much free."),
    dry_run: bool = typer.Option(False, "--dry-run", help=DRY_RUN_HELP),
) -> None:
    """Build Head Relevance Vectors: generate the prompts while every text-attention head votes.

    Runs on several processes too: `torchrun --nproc_per_node N -m headlens build ...` (or
    `accelerate launch`) splits the batches over the processes and writes the same folder.
    """
    from headlens import distributed
    from headlens.building import build
    from headlens.concepts import load_prompts

    check_device(device)
    check_dtype(dtype)
    if is_world(model):
        concepts = "world" if concepts == "default" else concepts
        prompts = "world" if prompts == "default" else prompts
    from headlens.concepts import ConceptSet

    steps, guidance = generation_defaults(model, steps, guidance)
    at_least(batch_size, 1, "--batch-size")
    at_least(checkpoint_every, 0, "--checkpoint-every")
    at_least(until_stable, 0, "--until-stable")
    at_least(stable_top, 1, "--stable-top")
    at_least(top, 0, "--top")
    check_size(size)
    _check_choices(variant, concept_keys, scheduler)
    concept_set = ConceptSet.coerce(concepts)
    prompt_list = load_prompts(prompts)
    if limit is not None:
        at_least(limit, 1, "--max-prompts")
        prompt_list = prompt_list[:limit]
    from headlens.building import check_output_dir, has_checkpoint

    shard_spec = distributed.parse_shard(shard)
    if not resume and has_checkpoint(out):  # checked again by build(); here before the model loads
        raise UserError(f"--out {str(out)!r} holds a checkpoint of an earlier build; add --resume to continue it or "
                        "choose another --out")
    if dry_run:
        output_folder(out, create=False)
        pipe = load_model(model, device, dtype)
        few = prompt_list[: max(1, min(batch_size, len(prompt_list)))]

        def run(n: int) -> None:
            build(pipe, concept_set, few, num_inference_steps=n, guidance_scale=guidance, batch_size=len(few),
                  seed=seed, variant=variant, start_token=not no_start_token, scheduler=scheduler, height=size,
                  width=size, distributed=False)

        n_prompts = len(prompt_list) // shard_spec[1] if shard_spec else len(prompt_list)
        report_cost(n_prompts, calibrate(run, steps) / len(few), f"generations ({n_prompts} prompts × {steps} steps)")
        return
    comm = distributed.setup(device)  # torchrun / accelerate launch: one process group, rank 0 writes
    try:
        # fail before loading anything if the folder cannot be written
        comm.on_root(lambda: output_folder(out))
        comm.on_root(lambda: check_output_dir(out, min_free_mb=min_free_mb))
        device = comm.device_for(device)
        pipe = load_model(model, device, dtype)
        if comm.is_root and resume and not has_checkpoint(out):
            console.print(f"no checkpoint in {out}: starting a new build", highlight=False, soft_wrap=True)
        if comm.is_root:
            part = f", shard {shard_spec[0]}/{shard_spec[1]}" if shard_spec else ""
            procs = f", {comm.world_size} processes" if comm.distributed else ""
            echo(f"model {model_label(model)}: {len(prompt_list)} prompts × {steps} steps, batch {batch_size}, seed {seed}{part}{procs} → {out}")
        hrv = build(
            pipe, concept_set, prompt_list, num_inference_steps=steps, guidance_scale=guidance, batch_size=batch_size,
            seed=seed, variant=variant, start_token=not no_start_token, scheduler=scheduler, height=size, width=size,
            out=out, checkpoint_every=checkpoint_every, resume=resume, progress=comm.is_root, shard=shard_spec,
            per_prompt=per_prompt, until_stable=until_stable, stable_top=stable_top, distributed=comm,
            min_free_mb=min_free_mb, concept_keys=concept_keys,
        )
    finally:
        comm.close()
    if not comm.is_root:
        return
    if top:
        _print_top_heads(hrv, top)
    info = hrv.metadata.get("until_stable")
    if info and info.get("stopped_early"):
        echo(f"stable: top-{stable_top} heads unchanged for {until_stable} prompts; stopped after "
             f"{info['prompts_used']} of {len(prompt_list)} prompts")
    done = hrv.metadata.get("prompts_done", len(prompt_list))
    if shard_spec and done < len(prompt_list):
        echo(f"shard {shard_spec[0]}/{shard_spec[1]}: {done} of {len(prompt_list)} prompts; combine the shards with "
             "`headlens merge`")
    echo(f"saved {hrv!r} to {out}")
