"""`headlens generate`, `headlens weaken`, `headlens validate`: steering and its analyses from the command line."""
# ruff: noqa: B008  (typer declares options as argument defaults)

from __future__ import annotations

import json
import re
from pathlib import Path

import typer

from . import app
from .common import UserError, echo, is_world, load_model, parse_seeds, stdout

MODEL_HELP = "Hub id or local pipeline folder; 'world' = the bundled model ('world-joint': its jointly trained contrast), 'tiny' = a random tiny smoke-test model."
HRV_HELP = ("HRV folder (hrv.safetensors + hrv.json, from `headlens build`) built for this model; or a shipped paper HRV "
            "(paper:sd-v1-4, paper:sdxl-base-1.0) or hf://OWNER/REPO.")
SCORER_HELP = ("How images are scored against their concept-word: 'auto' (world model: ground truth, else CLIP), "
               "'clip[:MODEL]' (transformers CLIP, hub id or local folder), 'openclip[:ARCH/PRETRAINED]' "
               "(needs open_clip_torch), 'world' (bundled model's ground-truth reader).")
PROMPTS_HELP = ("Prompts: 'default' (the concept's family in the shipped weakening_templates.toml; for --model world "
                "a family built from the world vocabulary), 'world', a template .toml file, or a text file with one "
                "prompt a line, optionally 'prompt | target-word' (else the target is the HRV concept-word found in "
                "the prompt).")


# ---------------------------------------------------------------------------- parsing helpers
def _load_hrv(path: Path | None, pipe, required: bool = True):
    from headlens import HRV

    if path is None:
        if required:
            raise UserError("this command needs --hrv DIR (an HRV folder from `headlens build`)")
        return None
    return HRV.load(path, model=pipe)


def _step_range(spec: str) -> tuple[float, float]:
    from headlens.steering import check_steps

    parts = re.split(r"[:,]", spec.strip())
    if len(parts) != 2:
        raise UserError(f"bad step range {spec!r}: use START:END as fractions of the run, e.g. 0:0.5")
    try:
        return check_steps((float(parts[0]), float(parts[1])))
    except ValueError as e:
        raise UserError(f"bad step range {spec!r}: {e}") from None


def _clamp(spec: str, num_heads: int) -> float | None:
    s = spec.strip().lower()
    if s == "none":
        return None
    if s == "auto":
        return 9.0 if num_heads > 300 else None  # the reference clamps at 9 for SDXL-size models
    try:
        value = float(s)
    except ValueError:
        raise UserError(f"bad --clamp {spec!r}: use auto, none or a positive number such as 9") from None
    if value <= 0:
        raise UserError(f"bad --clamp {spec!r}: it must be positive")
    return value


def parse_adjust(spec: str) -> tuple[str, str, str]:
    """'word:Toward:Away' → (word, toward, away)."""
    parts = [p.strip() for p in spec.split(":")]
    if len(parts) != 3 or not all(parts):
        raise UserError(f"bad --adjust {spec!r}: use WORD:TOWARD:AWAY, e.g. lavender:Color:Plants")
    return parts[0], parts[1], parts[2]


def parse_strengthen(spec: str) -> tuple[str, str]:
    """'word:Concept' → (word, concept)."""
    parts = [p.strip() for p in spec.split(":")]
    if len(parts) != 2 or not all(parts):
        raise UserError(f"bad --strengthen {spec!r}: use WORD:CONCEPT, e.g. red:Color")
    return parts[0], parts[1]


def parse_ks(spec: str, num_heads: int) -> list[int] | None:
    """'default' → None; else a comma list of k values where 'H' is the number of heads."""
    if spec.strip().lower() == "default":
        return None
    out = []
    for part in spec.split(","):
        part = part.strip()
        if not part:
            continue
        if part.upper() == "H":
            out.append(num_heads)
            continue
        try:
            out.append(int(part))
        except ValueError:
            raise UserError(f"bad --ks {spec!r}: use 'default' or a comma list such as 0,1,11,21,H") from None
    if not out:
        raise UserError(f"bad --ks {spec!r}: it names no k")
    return out


def parse_heads(spec: str, hrv, concept: str, heads) -> list[int] | str:
    """'all', or comma-separated indices, ranges (0-9), names, short names, top:N, bottom:N."""
    if spec.strip().lower() == "all":
        return "all"
    out: list[int] = []
    for part in (p.strip() for p in spec.split(",")):
        if not part:
            continue
        m = re.fullmatch(r"(top|bottom):(\d+)", part.lower())
        if m:
            ranking = hrv.ranking(concept)
            chosen = ranking[: int(m.group(2))] if m.group(1) == "top" else ranking[::-1][: int(m.group(2))]
        elif re.fullmatch(r"\d+-\d+", part):
            lo, hi = (int(x) for x in part.split("-"))
            chosen = [heads.resolve(i) for i in range(lo, hi + 1)]
        else:
            chosen = [heads.resolve(part)]
        out.extend(h for h in chosen if h not in out)
    if not out:
        raise UserError(f"bad --heads {spec!r}: it names no head")
    return out


def _prompts_arg(spec: str, model: str):
    """The `prompts` argument of the analyses from --prompts."""
    if spec in ("default", "world"):
        return "world" if (spec == "world" or is_world(model)) else None
    p = Path(spec)
    if not p.is_file():
        raise UserError(f"prompt file {spec!r} not found; give 'default', 'world', a template .toml or a text file")
    if p.suffix.lower() == ".toml":
        return str(p)
    lines = [ln.strip() for ln in p.read_text(encoding="utf-8").splitlines()]
    out = []
    for ln in lines:
        if not ln or ln.startswith("#"):
            continue
        if "|" in ln:
            prompt, target = (x.strip() for x in ln.split("|", 1))
            out.append((prompt, target))
        else:
            out.append(ln)
    if not out:
        raise UserError(f"prompt file {spec!r} holds no prompts")
    return out


def _scorer(spec: str, model: str, concept: str, device: str):
    from headlens.scorers import make_scorer

    if spec == "auto":
        spec = "world" if is_world(model) else "clip"
    if spec.startswith(("clip", "openclip")):
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # no weight-loading bars between our own progress lines
    return make_scorer(spec, concept, device)


def _settings(steps: int, guidance: float, batch_size: int, size: int | None):
    from headlens.analysis import GenerationSettings

    s = GenerationSettings(num_inference_steps=steps, guidance_scale=guidance, batch_size=batch_size,
                           height=size, width=size)
    s.validate()
    return s


def _slug(text: str, n: int = 40) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:n] or "prompt"


# ---------------------------------------------------------------------------- generate
@app.command("generate")
def generate_command(
    prompt: str = typer.Argument(None, help="The prompt (leave out with --benchmark)."),
    adjust: list[str] = typer.Option(None, "--adjust", "-a", help="WORD:TOWARD:AWAY — concept adjusting: the word's attention columns × (2·HRV_toward − HRV_away) at every head. Repeatable."),
    strengthen: list[str] = typer.Option(None, "--strengthen", "-s", help="WORD:CONCEPT — concept strengthening: the word's columns × HRV_concept at every head. Repeatable."),
    model: str = typer.Option("world", "--model", "-m", help=MODEL_HELP),
    hrv_dir: Path = typer.Option(None, "--hrv", help=HRV_HELP),
    seeds: str = typer.Option("1-4", "--seeds", help="Seeds, e.g. '1-8', '1,5,9' or '3'; one column per seed."),
    clamp: str = typer.Option("auto", "--clamp", help="Clamp HRV values at b before adjusting: 'auto' (9 for models with > 300 heads such as SDXL, as the reference; else none), 'none' or a number."),
    step_range: str = typer.Option("0:1", "--step-range", help="Steer only in this part of the run, START:END as fractions (reference 0:1)."),
    benchmark: bool = typer.Option(False, "--benchmark", help="Run every case of the polysemous-word benchmark instead of one prompt (world model: its own 'orange' cases)."),
    cases: Path = typer.Option(None, "--cases", help="Benchmark TOML file, one 'prompt' table per case with keys prompt, word, toward, away; default: the shipped polysemous.toml."),
    steps: int = typer.Option(50, "--steps", "-n", help="Denoising steps per image."),
    guidance: float = typer.Option(7.5, "--guidance", "-g", help="Classifier-free guidance scale."),
    batch_size: int = typer.Option(8, "--batch-size", "-b", help="Images per pipeline call."),
    size: int = typer.Option(None, "--size", help="Image height and width in pixels (default: the model's)."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder: grid.png (plain row above the steered row), plain/ and steered/ images, run.json."),
    device: str = typer.Option("cpu", "--device", help="Torch device, e.g. cpu, cuda."),
    dtype: str = typer.Option("float32", "--dtype", help="float32, float16 or bfloat16."),
) -> None:
    """Generate a prompt with and without concept adjusting / strengthening for the same seeds, side by side."""
    from headlens.analysis.polysemous import PolysemousCase, compare, comparison_grid, load_cases, world_cases

    seed_list = parse_seeds(seeds)
    adjusts = [parse_adjust(a) for a in adjust or []]
    strengths = [parse_strengthen(s) for s in strengthen or []]
    window = _step_range(step_range)
    if benchmark:
        if prompt is not None or adjusts or strengths:
            raise UserError("--benchmark runs the benchmark's own prompts; leave out PROMPT, --adjust and --strengthen")
        todo = world_cases() if (is_world(model) and cases is None) else load_cases(cases)
    else:
        if prompt is None:
            raise UserError("give a PROMPT (or --benchmark)")
        if not adjusts and not strengths:
            raise UserError("nothing to steer: give --adjust WORD:TOWARD:AWAY and/or --strengthen WORD:CONCEPT")
        todo = [None]
    settings = _settings(steps, guidance, batch_size, size)
    pipe = load_model(model, device, dtype)
    hrv = _load_hrv(hrv_dir, pipe)
    b = _clamp(clamp, hrv.num_heads)
    out.mkdir(parents=True, exist_ok=True)
    index = []
    for n, case in enumerate(todo):
        if case is None:
            text, adj, st, folder = prompt, adjusts, strengths, out
        else:
            assert isinstance(case, PolysemousCase)
            missing = [c for c in (case.toward, case.away) if c.lower() not in [x.lower() for x in hrv.concepts]]
            if missing:
                echo(f"[yellow]skip[/] {case.prompt!r}: concept(s) {', '.join(missing)} not in this HRV")
                continue
            text, adj, st = case.prompt, [(case.word, case.toward, case.away)], []
            folder = out / f"{n:02d}-{_slug(case.prompt)}"
        label = "\n".join([f"adjust '{w}'\n  toward {t}\n  away from {a}" for w, t, a in adj]
                          + [f"strengthen '{w}'\n  as {c}" for w, c in st])
        echo(f"{text!r}: {label.replace(chr(10) + '  ', ' ').replace(chr(10), '; ')}; seeds {seeds}")
        plain, steered = compare(pipe, hrv, text, seed_list, adj, st, b, window, settings)
        for kind, ims in (("plain", plain), ("steered", steered)):
            (folder / kind).mkdir(parents=True, exist_ok=True)
            for s, im in zip(seed_list, ims):
                im.save(folder / kind / f"seed{s}.png")
        comparison_grid(plain, steered, seed_list, label, text).save(folder / "grid.png")
        run = {"prompt": text, "adjust": [list(a) for a in adj], "strengthen": [list(s) for s in st],
               "clamp": b, "steps": list(window), "seeds": seed_list, "model": model, "hrv": str(hrv_dir),
               "generation": {"num_inference_steps": steps, "guidance_scale": guidance, "size": size}}
        (folder / "run.json").write_text(json.dumps(run, indent=2), encoding="utf-8")
        index.append({"prompt": text, "folder": str(folder), "grid": str(folder / "grid.png")})
        stdout(str(folder / "grid.png"))
    if benchmark:
        if not index:
            raise UserError("no benchmark case fits this HRV (their concepts are missing); build an HRV with those "
                            "concepts or give --cases")
        (out / "index.json").write_text(json.dumps(index, indent=2), encoding="utf-8")


# ---------------------------------------------------------------------------- weaken
@app.command("weaken")
def weaken_command(
    concept: str = typer.Argument(..., help="Concept of the HRV to analyse, e.g. Color."),
    model: str = typer.Option("world", "--model", "-m", help=MODEL_HELP),
    hrv_dir: Path = typer.Option(None, "--hrv", help=HRV_HELP),
    prompts: str = typer.Option("default", "--prompts", "-p", help=PROMPTS_HELP),
    seeds: str = typer.Option("10,20,30", "--seeds", help="Seeds per prompt (reference: 10,20,30)."),
    ks: str = typer.Option("default", "--ks", help="k values: 'default' (0, 1, 11, 21, …, H) or a comma list; 'H' = all heads."),
    factor: float = typer.Option(-2.0, "--factor", help="Weakening factor applied to the word columns of the chosen heads (reference: -2)."),
    tokens: str = typer.Option("words", "--tokens", help="Token set weakened: 'words' (prompt word tokens, reference), 'words+end' (also end/padding tokens), or 'both' (two sets of curves)."),
    random_draws: int = typer.Option(3, "--random-draws", help="Random-order control: number of random head orders (0: none)."),
    scorer: str = typer.Option("auto", "--scorer", help=SCORER_HELP),
    max_prompts: int = typer.Option(None, "--max-prompts", help="Use a seeded random subset of N prompts (quick runs)."),
    grid_items: int = typer.Option(8, "--grid-items", help="Prompt×seed columns shown in the image grids."),
    n_boot: int = typer.Option(1000, "--bootstrap", help="Bootstrap resamples for the 95% CIs."),
    steps: int = typer.Option(50, "--steps", "-n", help="Denoising steps per image (reference: 50)."),
    guidance: float = typer.Option(7.5, "--guidance", "-g", help="Classifier-free guidance scale (reference: 7.5)."),
    batch_size: int = typer.Option(8, "--batch-size", "-b", help="Images per pipeline call (keep it when resuming)."),
    size: int = typer.Option(None, "--size", help="Image height and width in pixels (default: the model's)."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder: scores.csv, curves.csv, curves.png, grid_<order>.png, summary.json."),
    resume: bool = typer.Option(False, "--resume", help="Continue an interrupted run in --out (scores already in scores.csv are kept)."),
    device: str = typer.Option("cpu", "--device", help="Torch device, e.g. cpu, cuda."),
    dtype: str = typer.Option("float32", "--dtype", help="float32, float16 or bfloat16."),
) -> None:
    """Ordered weakening: weaken the top-k (MoRHF), bottom-k (LeRHF) and random k heads; plot the score curves."""
    from headlens.analysis import ordered_weakening

    from .common import console

    if tokens not in ("words", "words+end", "both"):
        raise UserError(f"bad --tokens {tokens!r}: use words, words+end or both")
    token_sets = ["words", "words+end"] if tokens == "both" else [tokens]
    seed_list = parse_seeds(seeds)
    settings = _settings(steps, guidance, batch_size, size)
    prompt_arg = _prompts_arg(prompts, model)
    pipe = load_model(model, device, dtype)
    hrv = _load_hrv(hrv_dir, pipe)
    from headlens.analysis.weakening import check_ks

    k_list = check_ks(parse_ks(ks, hrv.num_heads), hrv.num_heads)
    score = _scorer(scorer, model, hrv.concepts[hrv.concept_index(concept)], device)
    r = ordered_weakening(pipe, hrv, concept, prompt_arg, seed_list, k_list, score, out, factor=factor,
                          tokens=token_sets, random_draws=random_draws, settings=settings, max_prompts=max_prompts,
                          grid_items=grid_items, n_boot=n_boot, resume=resume, progress=True, console=console)
    for tok, a in r.areas.items():
        line = f"{r.concept} [{tok}]: area LeRHF−MoRHF = {a.value:.4g} (95% CI {a.low:.4g} … {a.high:.4g})"
        if tok in r.areas_vs_random:
            v = r.areas_vs_random[tok]
            line += f"; random−MoRHF = {v.value:.4g} ({v.low:.4g} … {v.high:.4g})"
        stdout(line)
    echo(f"wrote {', '.join(p.name for p in r.files.values())} to {out}")


# ---------------------------------------------------------------------------- validate
@app.command("validate")
def validate_command(
    concept: str = typer.Argument(..., help="Concept of the HRV to validate, e.g. Color."),
    model: str = typer.Option("world", "--model", "-m", help=MODEL_HELP),
    hrv_dir: Path = typer.Option(None, "--hrv", help=HRV_HELP),
    heads: str = typer.Option("all", "--heads", help="Heads to test one at a time: 'all', or a comma list of indices, ranges (0-9), head names, short names (down0.h1), top:N, bottom:N (by HRV)."),
    prompts: str = typer.Option("default", "--prompts", "-p", help=PROMPTS_HELP),
    seeds: str = typer.Option("10,20,30", "--seeds", help="Seeds per prompt."),
    max_prompts: int = typer.Option(None, "--max-prompts", help="Use a seeded random subset of N prompts (the cost grows with heads × prompts × seeds)."),
    factor: float = typer.Option(-2.0, "--factor", help="Weakening factor for the head under test (reference: -2)."),
    tokens: str = typer.Option("words", "--tokens", help="Token set weakened: 'words' or 'words+end'."),
    scorer: str = typer.Option("auto", "--scorer", help=SCORER_HELP),
    n_boot: int = typer.Option(1000, "--bootstrap", help="Bootstrap resamples for the 95% CIs."),
    top: int = typer.Option(10, "--top", help="Print the N heads with the largest causal effect."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Only print the cost estimate (number of generations)."),
    steps: int = typer.Option(50, "--steps", "-n", help="Denoising steps per image."),
    guidance: float = typer.Option(7.5, "--guidance", "-g", help="Classifier-free guidance scale."),
    batch_size: int = typer.Option(8, "--batch-size", "-b", help="Images per pipeline call (keep it when resuming)."),
    size: int = typer.Option(None, "--size", help="Image height and width in pixels (default: the model's)."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder: scores.csv, head_effects.csv, effects.png, summary.json."),
    resume: bool = typer.Option(False, "--resume", help="Continue an interrupted run in --out."),
    device: str = typer.Option("cpu", "--device", help="Torch device, e.g. cpu, cuda."),
    dtype: str = typer.Option("float32", "--dtype", help="float32, float16 or bfloat16."),
) -> None:
    """Causal head ranking: weaken each head alone, rank heads by the score drop, compare with the HRV (Spearman)."""
    from headlens.analysis import estimate_cost, head_effects, make_items, prompt_targets
    from headlens.steering import resolve_heads

    from .common import console

    seed_list = parse_seeds(seeds)
    settings = _settings(steps, guidance, batch_size, size)
    prompt_arg = _prompts_arg(prompts, model)
    pipe = load_model(model, device, dtype)
    hrv = _load_hrv(hrv_dir, pipe)
    name = hrv.concepts[hrv.concept_index(concept)]
    chosen = resolve_heads(hrv.heads, parse_heads(heads, hrv, name, hrv.heads))
    items = make_items(prompt_targets(prompt_arg, name, hrv), seed_list, max_prompts)
    cost = estimate_cost(len(chosen), len(items) // len(seed_list), len(seed_list))
    stdout(f"cost: ({len(chosen)} heads + 1) × {len(items) // len(seed_list)} prompts × {len(seed_list)} seeds "
           f"= {cost} generations of {steps} steps")
    if dry_run:
        return
    r = head_effects(pipe, hrv, name, prompt_arg, seed_list, chosen, _scorer(scorer, model, name, device), out,
                     factor=factor, tokens=tokens, settings=settings, max_prompts=max_prompts, n_boot=n_boot,
                     resume=resume, progress=True, console=console)
    from rich.table import Table

    table = Table(title=f"{name}: heads by causal effect (score drop when weakened alone)")
    for col in ("rank", "head", "effect [95% CI]", "HRV", "HRV rank"):
        table.add_column(col)
    hrv_rank = {h: i + 1 for i, h in enumerate(hrv.ranking(name))}
    for rank, h in enumerate(r.ranking[:top], 1):
        j = r.heads.index(h)
        table.add_row(str(rank), hrv.heads[h].short_name, f"{r.effects[j]:.4g} [{r.low[j]:.3g}, {r.high[j]:.3g}]",
                      f"{r.hrv_values[j]:.3g}", str(hrv_rank[h]))
    console.print(table)
    if r.spearman is not None:
        stdout(f"Spearman(causal effect, HRV) = {r.spearman:.3f} (95% CI {r.spearman_low:.3f} … {r.spearman_high:.3f}) "
               f"over {len(r.heads)} heads")
    echo(f"wrote {', '.join(p.name for p in r.files.values())} to {out}")
