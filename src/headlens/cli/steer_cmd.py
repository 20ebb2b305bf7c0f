"""`headlens generate`, `headlens weaken`, `headlens validate`: steering and its analyses from the command line."""
# ruff: noqa: B008  (typer declares options as argument defaults)

from __future__ import annotations

import json
import re
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
    check_fresh,
    check_hrv_dir,
    check_size,
    console,
    echo,
    generation_defaults,
    is_world,
    load_model,
    model_label,
    output_folder,
    parse_seeds,
    report_cost,
    stdout,
    warn,
)

HRV_HELP = ("HRV folder (hrv.safetensors + hrv.json, from `headlens build`) built for this model; or a shipped paper HRV "
            "(paper:sd-v1-4, paper:sdxl-base-1.0) or hf://OWNER/REPO.")
CONCEPT_HELP = "Concept of the HRV, e.g. Color (same as the CONCEPT argument)."
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

    hint = "use START:END with fractions of the run, 0 ≤ START < END ≤ 1, e.g. 0:0.5 (first half) or 0:1 (all steps)"
    parts = re.split(r"[:,]", spec.strip())
    if len(parts) != 2:
        raise UserError(f"bad --step-range {spec!r}: {hint}")
    try:
        return check_steps((float(parts[0]), float(parts[1])))
    except ValueError:
        raise UserError(f"bad --step-range {spec!r}: {hint}") from None


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
        else:
            try:
                if re.fullmatch(r"\d+-\d+", part):
                    lo, hi = (int(x) for x in part.split("-"))
                    chosen = [heads.resolve(i) for i in range(lo, hi + 1)]
                else:
                    chosen = [heads.resolve(part)]
            except (KeyError, ValueError, IndexError) as e:
                msg = e.args[0] if e.args else str(e)
                raise UserError(f"bad --heads {spec!r}: {msg}; or use all, top:N, bottom:N or a range such as 0-9"
                                ) from None
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

    at_least(steps, 1, "--steps")
    at_least(batch_size, 1, "--batch-size")
    check_size(size)
    return GenerationSettings(num_inference_steps=steps, guidance_scale=guidance, batch_size=batch_size,
                              height=size, width=size)


def _analysis_run(model: str, steps: int | None, guidance: float | None, batch_size: int, size: int | None,
                  prompts: str, hrv_dir: Path, out: Path, resume: bool, dry_run: bool, device: str, dtype: str):
    """Check the flags weaken and validate share, prepare --out and load the model: (settings, prompts, pipe, hrv)."""
    steps, guidance = generation_defaults(model, steps, guidance)
    settings = _settings(steps, guidance, batch_size, size)
    prompt_arg = _prompts_arg(prompts, model)
    check_hrv_dir(hrv_dir)
    output_folder(out, create=not dry_run)
    check_fresh(out, resume or dry_run)
    pipe = load_model(model, device, dtype)
    return settings, prompt_arg, pipe, _load_hrv(hrv_dir, pipe)


def pick_concept(positional: str | None, option: str | None) -> str:
    """The concept from the CONCEPT argument or --concept (one of them, or both the same)."""
    if positional and option and positional != option:
        raise UserError(f"two concepts given ({positional!r} and --concept {option!r}); give one")
    concept = positional or option
    if not concept:
        raise UserError("give the concept to analyse: CONCEPT or --concept NAME, e.g. --concept Color")
    return concept


def _calibrated(pipe, items, settings, setup=None, hrv=None) -> float:
    """Seconds per image at the run's settings, from two short generations of one batch."""
    from dataclasses import replace

    from headlens.analysis.common import generate

    batch = list(items[: settings.batch_size])

    def run(n_steps: int) -> None:
        for _ in generate(pipe, batch, replace(settings, num_inference_steps=n_steps), setup, hrv):
            pass

    return calibrate(run, settings.num_inference_steps) / max(1, len(batch))


def _warn_small(n_items: int) -> None:
    from headlens.analysis.stats import MIN_CI_ITEMS

    if n_items < MIN_CI_ITEMS:
        warn(f"only {n_items} prompt×seed items: 95% intervals from fewer than {MIN_CI_ITEMS} items are unreliable "
             "(use more prompts or seeds)")


def _slug(text: str, n: int = 40) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:n] or "prompt"


# ---------------------------------------------------------------------------- generate
GENERATE_EXAMPLES = """Examples:

  headlens generate "an orange circle" -a orange:Color:Shape --hrv world-hrv -s 1-8 -o orange

  headlens generate "a lavender vase" -a lavender:Color:Plants --hrv sd15-hrv -m M --scorer clip -o vase
"""


def _involved(hrv, adj, st) -> list[str]:
    names = []
    for c in [x for _, t, a in adj for x in (t, a)] + [c for _, c in st]:
        name = hrv.concepts[hrv.concept_index(c)]
        if name not in names:
            names.append(name)
    return names


def pixel_change(a, b) -> float:
    """Mean absolute difference of two images' RGB values, on the 0–255 scale."""
    import numpy as np

    x = np.asarray(a.convert("RGB"), dtype=np.float64)
    y = np.asarray(b.convert("RGB"), dtype=np.float64)
    return float(np.abs(x - y).mean())


def _reader(spec: str, model: str, device: str):
    """None, or a function (concepts, hrv) -> reading object, from --scorer."""
    spec = spec.strip()
    if spec == "auto":
        spec = "world" if is_world(model) else "none"
    if spec == "none":
        return None
    if spec == "world":
        from headlens.analysis.readings import WorldReading

        reader = WorldReading()
        return lambda concepts, hrv: WorldReading(concepts, reader.reader)
    kind, _, arg = spec.partition(":")
    if kind != "clip":
        raise UserError(f"unknown --scorer {spec!r}: use auto, world, clip, clip:MODEL or none")
    from headlens.analysis.readings import ClipReading
    from headlens.scorers import DEFAULT_CLIP, ClipScorer

    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    clip = ClipScorer(arg or DEFAULT_CLIP, device=device)
    return lambda concepts, hrv: ClipReading(clip, {c: list(hrv.words.get(c, [])) for c in concepts})


@app.command("generate", epilog=GENERATE_EXAMPLES)
def generate_command(
    prompt: str = typer.Argument(None, help="The prompt (leave out with --benchmark)."),
    adjust: list[str] = typer.Option(None, "--adjust", "-a", help="WORD:TOWARD:AWAY — concept adjusting: the word's attention columns × (2·HRV_toward − HRV_away) at every head. Repeatable."),
    strengthen: list[str] = typer.Option(None, "--strengthen", help="WORD:CONCEPT — concept strengthening: the word's columns × HRV_concept at every head. Repeatable."),
    model: str = typer.Option("world", "--model", "-m", help=MODEL_HELP),
    hrv_dir: Path = typer.Option(..., "--hrv", help=HRV_HELP),
    seeds: str = typer.Option("1-4", "--seeds", "-s", help="Seeds, e.g. '1-8', '1,5,9' or '3'; one column per seed."),
    clamp: str = typer.Option("auto", "--clamp", help="Clamp HRV values at b before adjusting: 'auto' (9 for models with > 300 heads such as SDXL, as the reference; else none), 'none' or a number."),
    step_range: str = typer.Option("0:1", "--step-range", help="Steer only in this part of the run, START:END as fractions (reference 0:1), e.g. 0:0.5 for the first half."),
    benchmark: bool = typer.Option(False, "--benchmark", help="Run every case of the polysemous-word benchmark instead of one prompt (world model: its own 'orange' cases)."),
    cases: Path = typer.Option(None, "--cases", help="Benchmark TOML file, one 'prompt' table per case with keys prompt, word, toward, away; default: the shipped polysemous.toml."),
    scorer: str = typer.Option("auto", "--scorer", help="Read what each image shows and report the seeds whose reading steering changed: 'auto' (world model: its ground-truth reader; else none), 'world', 'clip[:MODEL]' (zero-shot over the HRV words of the concepts involved) or 'none'."),
    steps: int = typer.Option(None, "--steps", "-n", help=STEPS_HELP),
    guidance: float = typer.Option(None, "--guidance", "-g", help=GUIDANCE_HELP),
    batch_size: int = typer.Option(8, "--batch-size", "-b", help="Images per pipeline call."),
    size: int = typer.Option(None, "--size", help="Image height and width in pixels (default: the model's)."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder: grid.png (plain row above the steered row), plain/ and steered/ images, readings.csv, run.json."),
    dry_run: bool = typer.Option(False, "--dry-run", help=DRY_RUN_HELP),
    device: str = typer.Option("cpu", "--device", help=DEVICE_HELP),
    dtype: str = typer.Option("float32", "--dtype", help=DTYPE_HELP),
) -> None:
    """Generate a prompt with and without concept adjusting / strengthening for the same seeds, side by side.

    With a scorer (the bundled model's ground-truth reader by default there) it prints and saves what
    each image shows, plain and steered, and the share of seeds whose reading changed.
    """
    from headlens.analysis.polysemous import PolysemousCase, compare, comparison_grid, load_cases, world_cases
    from headlens.analysis.readings import compare_readings, reading_text

    check_device(device)
    check_dtype(dtype)
    seed_list = parse_seeds(seeds)
    adjusts = [parse_adjust(a) for a in adjust or []]
    strengths = [parse_strengthen(s) for s in strengthen or []]
    window = _step_range(step_range)
    if benchmark:
        if prompt is not None or adjusts or strengths:
            raise UserError("--benchmark runs the benchmark's own prompts; leave out PROMPT, --adjust and --strengthen")
        todo = world_cases() if (is_world(model) and cases is None) else load_cases(cases)
    else:
        if cases is not None:
            raise UserError("--cases names a benchmark file: add --benchmark, or leave --cases out with a PROMPT")
        if prompt is None:
            raise UserError("give a PROMPT (or --benchmark)")
        if not adjusts and not strengths:
            raise UserError("nothing to steer: give --adjust WORD:TOWARD:AWAY and/or --strengthen WORD:CONCEPT")
        todo = [None]
    steps, guidance = generation_defaults(model, steps, guidance)
    settings = _settings(steps, guidance, batch_size, size)
    b_clamp = _clamp(clamp, 0) if clamp.strip().lower() != "auto" else None
    check_hrv_dir(hrv_dir)
    output_folder(out, create=not dry_run)
    reader_for = _reader(scorer, model, device) if not dry_run else None
    pipe = load_model(model, device, dtype)
    hrv = _load_hrv(hrv_dir, pipe)
    b = _clamp(clamp, hrv.num_heads) if clamp.strip().lower() == "auto" else b_clamp
    if dry_run:
        from headlens.analysis.common import Item

        per_image = _calibrated(pipe, [Item(prompt or todo[0].prompt, "", s) for s in seed_list], settings)
        report_cost(2 * len(todo) * len(seed_list), per_image,
                    f"generations ({len(todo)} prompt(s) × {len(seed_list)} seeds × plain and steered)")
        return
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
               "clamp": b, "steps": list(window), "seeds": seed_list, "model": model_label(model),
               "hrv": str(hrv_dir), "hrv_id": hrv.fingerprint,
               "generation": {"num_inference_steps": steps, "guidance_scale": guidance, "size": size}}
        entry = {"prompt": text, "folder": str(folder), "grid": str(folder / "grid.png")}
        stdout(str(folder / "grid.png"))
        change = [pixel_change(p_, q) for p_, q in zip(plain, steered)]
        run["pixel_change"] = {"seeds": seed_list, "mean_abs_255": change}
        entry["pixel_change"] = sum(change) / len(change)
        console.print(f"steered vs plain: pixels changed by {entry['pixel_change']:.2f}/255 on average ("
                      + ", ".join(f"seed {s}: {c:.2f}" for s, c in zip(seed_list, change)) + ")", highlight=False,
                      soft_wrap=True)
        if reader_for is None and n == 0:
            console.print("note: no reader of what the images show for this model; add --scorer clip:MODEL to read "
                          "each image and count the seeds whose reading steering changed", highlight=False,
                          soft_wrap=True)
        if reader_for is not None:
            reader = reader_for(_involved(hrv, adj, st), hrv)
            cmp = compare_readings(seed_list, reader.read(plain), reader.read(steered))
            _write_rows(folder / "readings.csv", cmp.rows())
            run["readings"] = {"scorer": reader.name, **cmp.to_dict()}
            entry["changed_share"] = cmp.changed_share
            stdout(f"readings ({reader.name}) of {text!r}, plain → steered:")
            for s, p_, q, ch in zip(cmp.seeds, cmp.plain, cmp.steered, cmp.changed):
                stdout(f"  seed {s}: {reading_text(p_)} → {reading_text(q)}{'  (changed)' if ch else ''}")
            stdout(f"reading changed in {sum(cmp.changed)} of {len(cmp.seeds)} seeds ({100 * cmp.changed_share:.0f} %)")
        (folder / "run.json").write_text(json.dumps(run, indent=2), encoding="utf-8")
        index.append(entry)
    if benchmark:
        if not index:
            raise UserError("no benchmark case fits this HRV (their concepts are missing); build an HRV with those "
                            "concepts or give --cases")
        (out / "index.json").write_text(json.dumps(index, indent=2), encoding="utf-8")


def _write_rows(path: Path, rows: list[dict]) -> None:
    import csv

    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)


# ---------------------------------------------------------------------------- weaken
WEAKEN_EXAMPLES = """Examples:

  headlens weaken -c Size --hrv world-hrv --max-prompts 24 -s 10,20 -o weaken-size

  headlens weaken -c Color --hrv world-hrv -o weaken-color --dry-run
"""


def weakening_generations(hrv, concept: str, ks: list[int], token_sets: list[str], random_draws: int,
                          n_items: int) -> int:
    """Images an ordered weakening run generates: distinct head sets × items (k = 0 once)."""
    from headlens.analysis import plan_conditions

    keys = {c.key for c in plan_conditions(hrv, concept, ks, token_sets, random_draws)}
    return len(keys) * n_items


@app.command("weaken", epilog=WEAKEN_EXAMPLES)
def weaken_command(
    concept: str = typer.Argument(None, help="Concept of the HRV to analyse, e.g. Color (or --concept)."),
    concept_opt: str = typer.Option(None, "--concept", "-c", help=CONCEPT_HELP),
    model: str = typer.Option("world", "--model", "-m", help=MODEL_HELP),
    hrv_dir: Path = typer.Option(..., "--hrv", help=HRV_HELP),
    prompts: str = typer.Option("default", "--prompts", "-p", help=PROMPTS_HELP),
    seeds: str = typer.Option("10,20,30", "--seeds", "-s", help="Seeds per prompt (reference: 10,20,30)."),
    ks: str = typer.Option("default", "--ks", help="k values: 'default' (0, 1, 11, 21, …, H) or a comma list; 'H' = all heads."),
    factor: float = typer.Option(-2.0, "--factor", help="Weakening factor applied to the word columns of the chosen heads (reference: -2)."),
    tokens: str = typer.Option("words", "--tokens", help="Token set weakened: 'words' (prompt word tokens, reference), 'words+end' (also end/padding tokens), or 'both' (two sets of curves)."),
    random_draws: int = typer.Option(3, "--random-draws", help="Random-order control: number of random head orders (0: none)."),
    scorer: str = typer.Option("auto", "--scorer", help=SCORER_HELP),
    max_prompts: int = typer.Option(None, "--max-prompts", "--limit", help="Use a seeded random subset of at most N prompts (quick runs; template families are ordered cross products, so not the first N)."),
    grid_items: int = typer.Option(8, "--grid-items", help="Prompt×seed columns shown in the image grids."),
    n_boot: int = typer.Option(1000, "--bootstrap", help="Bootstrap resamples for the 95% CIs."),
    steps: int = typer.Option(None, "--steps", "-n", help=STEPS_HELP),
    guidance: float = typer.Option(None, "--guidance", "-g", help=GUIDANCE_HELP),
    batch_size: int = typer.Option(8, "--batch-size", "-b", help="Images per pipeline call (keep it when resuming)."),
    size: int = typer.Option(None, "--size", help="Image height and width in pixels (default: the model's)."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder: scores.csv, curves.csv, curves.png, grid_<order>.png, summary.json."),
    resume: bool = typer.Option(False, "--resume", help="Continue an interrupted run in --out (scores already in scores.csv are kept)."),
    dry_run: bool = typer.Option(False, "--dry-run", help=DRY_RUN_HELP),
    device: str = typer.Option("cpu", "--device", help=DEVICE_HELP),
    dtype: str = typer.Option("float32", "--dtype", help=DTYPE_HELP),
) -> None:
    """Ordered weakening: weaken the top-k (MoRHF), bottom-k (LeRHF) and random k heads; plot the score curves.

    Prints both areas with 95% CIs — LeRHF − MoRHF and random − MoRHF — and a verdict that uses both.
    """
    from headlens.analysis import make_items, ordered_weakening, prompt_targets
    from headlens.analysis.weakening import area_lines

    from .common import console

    concept = pick_concept(concept, concept_opt)
    check_device(device)
    check_dtype(dtype)
    if tokens not in ("words", "words+end", "both"):
        raise UserError(f"bad --tokens {tokens!r}: use words, words+end or both")
    token_sets = ["words", "words+end"] if tokens == "both" else [tokens]
    seed_list = parse_seeds(seeds)
    at_least(max_prompts, 1, "--max-prompts")
    at_least(random_draws, 0, "--random-draws")
    at_least(grid_items, 0, "--grid-items")
    at_least(n_boot, 2, "--bootstrap")
    settings, prompt_arg, pipe, hrv = _analysis_run(model, steps, guidance, batch_size, size, prompts, hrv_dir, out,
                                                    resume, dry_run, device, dtype)
    from headlens.analysis.weakening import check_ks

    try:
        k_list = check_ks(parse_ks(ks, hrv.num_heads), hrv.num_heads)
    except ValueError:
        raise UserError(f"bad --ks {ks!r}: k values must lie in 0..{hrv.num_heads} (this model has {hrv.num_heads} "
                        "heads), e.g. 0,1,11,H") from None
    name = hrv.concepts[hrv.concept_index(concept)]
    items = make_items(prompt_targets(prompt_arg, name, hrv), seed_list, max_prompts)
    if dry_run:
        total = weakening_generations(hrv, name, k_list, token_sets, random_draws, len(items))
        top = hrv.ranking(name)[: max(1, hrv.num_heads // 4)]

        def setup(s):
            s.weaken(heads=top, words="all", factor=factor, tokens=token_sets[0])

        report_cost(total, _calibrated(pipe, items, settings, setup),
                    f"generations ({len(items)} prompt×seed items × distinct head sets)")
        return
    _warn_small(len(items))
    score = _scorer(scorer, model, name, device)
    r = ordered_weakening(pipe, hrv, name, prompt_arg, seed_list, k_list, score, out, factor=factor,
                          tokens=token_sets, random_draws=random_draws, settings=settings, max_prompts=max_prompts,
                          grid_items=grid_items, n_boot=n_boot, resume=resume, progress=True, console=console)
    echo(f"wrote {', '.join(p.name for p in r.files.values())} to {out}")
    for line in area_lines(r):
        stdout(f"{r.concept} {line}")
    stdout(f"verdict ({len(r.items)} items): {r.verdict}")


# ---------------------------------------------------------------------------- validate
VALIDATE_EXAMPLES = """Examples:

  headlens validate -c Color --hrv world-hrv --max-prompts 8 -s 10,20 -o validate-color

  headlens validate -c Color --hrv world-hrv --heads top:10,bottom:10 -o v-color --dry-run
"""


@app.command("validate", epilog=VALIDATE_EXAMPLES)
def validate_command(
    concept: str = typer.Argument(None, help="Concept of the HRV to validate, e.g. Color (or --concept)."),
    concept_opt: str = typer.Option(None, "--concept", "-c", help=CONCEPT_HELP),
    model: str = typer.Option("world", "--model", "-m", help=MODEL_HELP),
    hrv_dir: Path = typer.Option(..., "--hrv", help=HRV_HELP),
    heads: str = typer.Option("all", "--heads", help="Heads to test one at a time: 'all', or a comma list of indices, ranges (0-9), head names, short names (down0.h1), top:N, bottom:N (by HRV)."),
    prompts: str = typer.Option("default", "--prompts", "-p", help=PROMPTS_HELP),
    seeds: str = typer.Option("10,20,30", "--seeds", "-s", help="Seeds per prompt."),
    max_prompts: int = typer.Option(None, "--max-prompts", "--limit", help="Use a seeded random subset of at most N prompts (the cost grows with heads × prompts × seeds)."),
    factor: float = typer.Option(-2.0, "--factor", help="Weakening factor for the head under test (reference: -2)."),
    tokens: str = typer.Option("words", "--tokens", help="Token set weakened: 'words' or 'words+end'."),
    scorer: str = typer.Option("auto", "--scorer", help=SCORER_HELP),
    n_boot: int = typer.Option(1000, "--bootstrap", help="Bootstrap resamples for the 95% CIs (and permutations of the Spearman test)."),
    top: int = typer.Option(10, "--top", help="Print the N heads with the largest causal effect."),
    dry_run: bool = typer.Option(False, "--dry-run", help=DRY_RUN_HELP),
    steps: int = typer.Option(None, "--steps", "-n", help=STEPS_HELP),
    guidance: float = typer.Option(None, "--guidance", "-g", help=GUIDANCE_HELP),
    batch_size: int = typer.Option(8, "--batch-size", "-b", help="Images per pipeline call (keep it when resuming)."),
    size: int = typer.Option(None, "--size", help="Image height and width in pixels (default: the model's)."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder: scores.csv, head_effects.csv, effects.png, summary.json."),
    resume: bool = typer.Option(False, "--resume", help="Continue an interrupted run in --out."),
    device: str = typer.Option("cpu", "--device", help=DEVICE_HELP),
    dtype: str = typer.Option("float32", "--dtype", help=DTYPE_HELP),
) -> None:
    """Causal head ranking: weaken each head alone, rank heads by the score drop, compare with the HRV (Spearman)."""
    from headlens.analysis import estimate_cost, head_effects, make_items, prompt_targets
    from headlens.analysis.verdict import format_ci
    from headlens.steering import check_tokens, resolve_heads

    from .common import console

    concept = pick_concept(concept, concept_opt)
    check_device(device)
    check_dtype(dtype)
    try:
        check_tokens(tokens)
    except ValueError:
        raise UserError(f"bad --tokens {tokens!r}: use words or words+end") from None
    seed_list = parse_seeds(seeds)
    at_least(max_prompts, 1, "--max-prompts")
    at_least(top, 0, "--top")
    at_least(n_boot, 2, "--bootstrap")
    settings, prompt_arg, pipe, hrv = _analysis_run(model, steps, guidance, batch_size, size, prompts, hrv_dir, out,
                                                    resume, dry_run, device, dtype)
    name = hrv.concepts[hrv.concept_index(concept)]
    chosen = resolve_heads(hrv.heads, parse_heads(heads, hrv, name, hrv.heads))
    items = make_items(prompt_targets(prompt_arg, name, hrv), seed_list, max_prompts)
    cost = estimate_cost(len(chosen), len(items) // len(seed_list), len(seed_list))
    stdout(f"cost: ({len(chosen)} heads + 1) × {len(items) // len(seed_list)} prompts × {len(seed_list)} seeds "
           f"= {cost} generations of {settings.num_inference_steps} steps")
    if dry_run:
        def setup(s):
            s.weaken(heads=chosen[:1], words="all", factor=factor, tokens=tokens)

        report_cost(cost, _calibrated(pipe, items, settings, setup))
        return
    _warn_small(len(items))
    r = head_effects(pipe, hrv, name, prompt_arg, seed_list, chosen, _scorer(scorer, model, name, device), out,
                     factor=factor, tokens=tokens, settings=settings, max_prompts=max_prompts, n_boot=n_boot,
                     resume=resume, progress=True, console=console)
    _print_effects(r, hrv, name, top)
    echo(f"wrote {', '.join(p.name for p in r.files.values())} to {out}")
    if r.spearman is not None:
        stdout(f"Spearman(causal effect, HRV) {format_ci(r.spearman, r.spearman_low, r.spearman_high)}, permutation "
               f"p {r.spearman_p:.2f}, over {len(r.heads)} heads and {len(r.items)} prompt×seed items")


def _print_effects(r, hrv, name: str, top: int) -> None:
    """The heads with a measurable effect, largest first; heads without one are counted, not listed."""
    from rich.table import Table

    from headlens.analysis.verdict import format_ci

    from .common import console

    silent = set(r.no_effect)
    if silent:
        stdout(f"{len(silent)} of {len(r.heads)} heads had no measurable effect (no score changed when weakened "
               "alone)")
    shown = [h for h in r.ranking if h not in silent][:top]
    if not shown:
        return
    table = Table(title=f"{name}: heads by causal effect (score drop when weakened alone, 95% CI)")
    for col in ("rank", "head", "effect [95% CI]", "HRV", "HRV rank"):
        table.add_column(col)
    hrv_rank = {h: i + 1 for i, h in enumerate(hrv.ranking(name))}
    for rank, h in enumerate(shown, 1):
        j = r.heads.index(h)
        table.add_row(str(rank), hrv.heads[h].short_name, format_ci(r.effects[j], r.low[j], r.high[j], 3),
                      f"{r.hrv_values[j]:.2f}", str(hrv_rank[h]))
    console.print(table)
