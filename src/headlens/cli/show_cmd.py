"""`headlens show`, `headlens maps` and `headlens report`: see HRVs and per-head attention maps."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated

import typer

from . import app
from .common import (
    DEVICE_HELP,
    DTYPE_HELP,
    GUIDANCE_HELP,
    MODEL_HELP,
    STEPS_HELP,
    UserError,
    at_least,
    check_device,
    check_dtype,
    check_hrv_dir,
    check_size,
    echo,
    generation_defaults,
    load_model,
    model_label,
    output_file,
    output_folder,
    stdout,
)

MPL_ENV = "MPLBACKEND"
DEFAULT_MAPS_OUT = Path("headlens-maps")
SHOW_EXAMPLES = """Examples:

  headlens show world-hrv

  headlens show world-hrv --concept Color,Shape --k 5 --out world-plots
"""
MAPS_EXAMPLES = """Examples:

  headlens maps "a red circle" -w circle -c Shape --hrv world-hrv -o maps-circle

  headlens maps "a photo of an apple" -w apple -m M -k 8 --scale shared -o maps-apple
"""
REPORT_EXAMPLES = """Examples:

  headlens report world-hrv

  headlens report world-hrv --out world-report.html --include runs/weaken-size
"""


def _agg() -> None:
    """Draw without a display (figures are built without pyplot; this keeps any stray import headless)."""
    import os

    os.environ.setdefault(MPL_ENV, "Agg")


def _named(hrv_dir: Path) -> bool:
    """True for a shipped or Hub HRV (``paper:NAME``, ``hf://OWNER/REPO``) rather than a folder."""
    return str(hrv_dir).startswith(("paper:", "hf:/"))


def _name_dir(hrv_dir: Path) -> Path:
    """Local folder for the outputs of a named HRV: ``paper:sd-v1-4`` → ``paper-sd-v1-4``."""
    return Path(re.sub(r"[^A-Za-z0-9._-]+", "-", str(hrv_dir)).strip("-"))


def _load_hrv(hrv_dir: Path):
    from headlens.hrv import HRV

    if _named(hrv_dir):
        return HRV.load(str(hrv_dir))
    if not hrv_dir.exists():
        raise UserError(f"HRV folder {str(hrv_dir)!r} does not exist; create one with `headlens build --out {hrv_dir}`")
    if not hrv_dir.is_dir():
        raise UserError(f"{str(hrv_dir)!r} is a file, not an HRV folder (give the folder `headlens build` wrote)")
    return HRV.load(hrv_dir)


def _concepts(hrv, spec: str | None) -> list[str] | None:
    if not spec:
        return None
    names = [c.strip() for c in spec.split(",") if c.strip()]
    return [hrv.concepts[hrv.concept_index(c)] for c in names]  # KeyError names the bad one


def _latent(spec: str | None):
    if spec is None:
        return None
    try:
        parts = [int(x) for x in spec.lower().replace("x", ",").replace("×", ",").split(",") if x.strip()]
    except ValueError:
        raise UserError(f"bad --latent-size {spec!r}: use e.g. 64 or 64x48") from None
    if len(parts) == 1:
        parts = parts * 2
    if len(parts) != 2 or min(parts) < 1:
        raise UserError(f"bad --latent-size {spec!r}: use e.g. 64 or 64x48")
    return tuple(parts)


@app.command("show", epilog=SHOW_EXAMPLES)
def show_command(
    hrv_dir: Annotated[Path, typer.Argument(help="HRV folder written by `headlens build`, a shipped HRV (paper:sd-v1-4, paper:sdxl-base-1.0) or hf://OWNER/REPO.")],
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Folder for the pictures (default: HRV_DIR/plots; for paper:NAME / hf://… ./paper-NAME/plots …).")] = None,
    concepts: str = typer.Option(None, "--concepts", "--concept", "-c", help="Comma-separated concepts to draw (default: all)."),
    k: int = typer.Option(10, "--k", "-k", help="Heads per concept in the top-heads table."),
    latent_size: str = typer.Option(None, "--latent-size", help="Latent size for resolution labels, e.g. 64 or 64x48 (default: from the HRV metadata, else relative like '/2')."),
    similarity: str = typer.Option("pearson", "--similarity", help="Concept similarity: pearson (centred) or cosine."),
    no_cluster: bool = typer.Option(False, "--no-cluster", help="Keep concept order in the similarity map (no average-linkage ordering)."),
) -> None:
    """Draw an HRV: heatmap, per-concept bars, top-heads table, timesteps, concept similarity (PNG + CSV/Markdown)."""
    _agg()
    from headlens import plots

    hrv = _load_hrv(hrv_dir)
    names = _concepts(hrv, concepts)
    at_least(k, 1, "--k")
    if similarity not in ("pearson", "cosine"):
        raise UserError(f"unknown --similarity {similarity!r}: use pearson or cosine")
    latent = _latent(latent_size)
    out = output_folder(out or (_name_dir(hrv_dir) if _named(hrv_dir) else hrv_dir) / "plots")
    echo(f"drawing {len(names or hrv.concepts)} concepts × {len(hrv.heads)} heads → {out}")
    files = plots.save_all(hrv, out, concepts=names, k=k, latent_size=latent, similarity=similarity,
                           cluster=not no_cluster)
    for kind, paths in files.items():
        shown = ", ".join(str(p.relative_to(out)) for p in paths[:3]) + (f", … ({len(paths)} files)" if len(paths) > 3 else "")
        stdout(f"{kind}: {shown}")
    echo(f"wrote {sum(len(v) for v in files.values())} files to {out}")


@app.command("maps", epilog=MAPS_EXAMPLES)
def maps_command(
    prompt_arg: str = typer.Argument(None, help="Prompt to generate (or --prompt).", metavar="PROMPT"),
    prompt_opt: str = typer.Option(None, "--prompt", help="Prompt to generate (same as the PROMPT argument)."),
    word: str = typer.Option(..., "--word", "-w", help="Word of the prompt whose attention maps to draw (e.g. apple, 'oak tree')."),
    concept: str = typer.Option(None, "--concept", "-c", help="Draw this concept's top-k heads by HRV (needs --hrv)."),
    hrv_dir: Annotated[Path | None, typer.Option("--hrv", help="HRV folder for --concept (must match the model's heads), paper:NAME or hf://OWNER/REPO.")] = None,
    k: int = typer.Option(6, "--k", "-k", help="Number of heads to draw."),
    scale: str = typer.Option("both", "--scale", help="Colour scale of the maps: 'both' (each map stretched to its own min–max, and below it all maps on one shared scale), 'each' or 'shared'."),
    heads: str = typer.Option(None, "--heads", help="Comma-separated heads to draw instead (index, short name like down1.h3, or full name)."),
    model: str = typer.Option("world", "--model", "-m", help=MODEL_HELP),
    seed: int = typer.Option(0, "--seed", "-s", help="Seed of the generation."),
    steps: int = typer.Option(None, "--steps", "-n", help=STEPS_HELP),
    guidance: float = typer.Option(None, "--guidance", "-g", help=GUIDANCE_HELP),
    size: int = typer.Option(None, "--size", help="Image height and width in pixels (default: the model's)."),
    occurrence: int = typer.Option(None, "--occurrence", help="Use only the n-th occurrence of the word (0-based; default: all)."),
    map_size: str = typer.Option("auto", "--map-size", help="Accumulate maps at 'image', 'latent', 'auto' (image unless > 1 GiB) or N pixels."),
    save_maps: bool = typer.Option(False, "--save-maps", help="Also write the raw maps [heads, h, w] as maps.safetensors."),
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder: image.png, maps.png, run.json.")] = DEFAULT_MAPS_OUT,
    device: str = typer.Option("cpu", "--device", help=DEVICE_HELP),
    dtype: str = typer.Option("float32", "--dtype", help=DTYPE_HELP),
) -> None:
    """Per-head attention maps of a word (DAAM-style): the chosen heads' maps over the generated image."""
    _agg()
    from headlens import plots
    from headlens.maps import head_maps, plot_head_maps
    from headlens.families import prompt_map

    check_device(device)
    check_dtype(dtype)
    if prompt_arg and prompt_opt and prompt_arg != prompt_opt:
        raise UserError("two prompts given (PROMPT and --prompt); give one")
    prompt = prompt_arg or prompt_opt
    if not prompt:
        raise UserError('give the prompt to generate: PROMPT or --prompt, e.g. "a red circle"')
    at_least(k, 1, "--k")
    steps, guidance = generation_defaults(model, steps, guidance)
    check_size(size)
    if scale not in ("both", "each", "shared"):
        raise UserError(f"unknown --scale {scale!r}: use both, each or shared")
    hrv = None
    if concept is not None and hrv_dir is None:
        raise UserError("--concept needs --hrv HRV_DIR (an HRV built for this model) to rank the heads")
    if hrv_dir is not None:
        check_hrv_dir(hrv_dir)
        hrv = _load_hrv(hrv_dir)
        if concept is not None:
            concept = hrv.concepts[hrv.concept_index(concept)]
    ms = map_size if map_size in ("auto", "image", "latent") else _int(map_size, "--map-size")
    if not isinstance(ms, str):
        at_least(ms, 1, "--map-size")
    at_least(occurrence, 0, "--occurrence")
    output_folder(out)
    pipe = load_model(model, device, dtype)
    try:
        prompt_map(pipe, prompt).find(word, occurrence=occurrence)  # fail before generating
    except ValueError as e:
        raise UserError(str(e).replace("; occurrence ", "; --occurrence ")) from None
    if hrv is not None:
        hrv.check_layout(pipe)
    head_list = [h.strip() for h in heads.split(",") if h.strip()] if heads else None
    if head_list:
        from headlens.heads import HeadIndex

        index = HeadIndex.from_model(pipe)
        try:
            head_list = [index.resolve(h) for h in head_list]  # unknown heads fail before generating
        except (KeyError, ValueError, IndexError) as e:
            raise UserError(f"bad --heads {heads!r}: {e.args[0] if e.args else e}") from None
    echo(f"generating {prompt!r} (seed {seed}, {steps} steps) and mapping {word!r} at every head")
    result = head_maps(pipe, prompt, word, seed=seed, num_inference_steps=steps, guidance_scale=guidance,
                       height=size, width=size, occurrence=occurrence, map_size=ms)
    fig = plot_head_maps(result, hrv=hrv, concept=concept, k=k, heads=head_list, scale=scale)
    result.metadata["model_arg"] = model_label(model)
    if hrv is not None:
        result.metadata["hrv"] = str(hrv_dir)
        result.metadata["hrv_id"] = hrv.fingerprint
    if concept:
        result.metadata["concept"] = concept
    result.save(out, tensors=save_maps)
    plots.save_figure(fig, out / "maps.png")
    echo(f"wrote image.png, maps.png, run.json{', maps.safetensors' if save_maps else ''} to {out}")
    stdout(str(out / "maps.png"))


def _int(value: str, flag: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise UserError(f"bad {flag} {value!r}: use auto, image, latent or a number of pixels") from None


@app.command("report", epilog=REPORT_EXAMPLES)
def report_command(
    hrv_dir: Annotated[Path, typer.Argument(help="HRV folder written by `headlens build` (analyses saved inside it, and sibling analysis folders made from it, are included); paper:NAME or hf://OWNER/REPO are first saved to ./paper-NAME (./hf-OWNER-REPO).")],
    out: Annotated[Path | None, typer.Option("--out", "-o", help="HTML file to write, ending in .html (default: HRV_DIR/report.html).")] = None,
    include: Annotated[list[Path] | None, typer.Option("--include", "-i", help="Extra folder of analysis outputs to include (repeatable).")] = None,
    concepts: str = typer.Option(None, "--concepts", "--concept", "-c", help="Comma-separated concepts (default: all)."),
    k: int = typer.Option(10, "--k", "-k", help="Heads per concept in the top-heads table."),
    regenerate: bool = typer.Option(False, "--regenerate", help="Redraw `headlens show`'s pictures even if HRV_DIR/plots exists."),
    latent_size: str = typer.Option(None, "--latent-size", help="Latent size for resolution labels, e.g. 64 (default: from metadata)."),
) -> None:
    """One self-contained HTML page (pictures embedded, no external resources) about an HRV and its analyses."""
    _agg()
    from headlens.report import build_report

    at_least(k, 1, "--k")
    if out is not None:
        output_file(out, "--out", (".html", ".htm"), "report")
    for d in include or []:
        if not d.is_dir():
            raise UserError(f"--include folder {str(d)!r} does not exist")
    hrv = _load_hrv(hrv_dir)
    if _named(hrv_dir):  # a shipped / Hub HRV: a local folder holds its files, pictures and report
        name, hrv_dir = str(hrv_dir), _name_dir(hrv_dir)
        hrv.save(hrv_dir)
        echo(f"saved {name} to {hrv_dir}")
    if out is None:
        output_file(hrv_dir / "report.html", "--out", (".html", ".htm"), "report")
    path = build_report(hrv_dir, out, k=k, regenerate=regenerate, include=include or [],
                        concepts=_concepts(hrv, concepts), latent_size=_latent(latent_size))
    echo(f"wrote {path} ({path.stat().st_size / 2**20:.1f} MB, self-contained)")
    stdout(str(path))
