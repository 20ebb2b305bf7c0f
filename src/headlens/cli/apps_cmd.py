"""`headlens edit` (Prompt-to-Prompt vs P2P-HRV) and `headlens excite` (SD vs A&E vs A&E-HRV)."""
# ruff: noqa: B008  (typer declares options as argument defaults)

from __future__ import annotations

import csv
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
    check_hrv_dir,
    check_size,
    echo,
    generation_defaults,
    load_model,
    model_label,
    output_folder,
    parse_seeds,
    report_cost,
)

MIN_TILE = 128
EDIT_EXAMPLES = """Examples:

  headlens edit --source "a red circle" --target "a blue circle" -c Color --hrv world-hrv -o edits

  headlens edit --benchmark Material --max-prompts 5 --hrv sd15-hrv -m M -o edits --dry-run
"""
EXCITE_EXAMPLES = """Examples:

  headlens excite "a red circle and a blue square" -t circle:Shape -t square:Shape --hrv world-hrv -o excite

  headlens excite --benchmark animal-animal --max-prompts 4 --hrv sd15-hrv -m M -o excite --dry-run
"""


# ---------------------------------------------------------------------------------------------- helpers
def slug(text: str, limit: int = 60) -> str:
    """A file-name-safe short form of a prompt."""
    s = re.sub(r"[^a-zA-Z0-9]+", "-", text.strip().lower()).strip("-")
    return s[:limit].rstrip("-") or "prompt"


def grid(rows: list[list], columns: list[str], row_labels: list[str], title: str = ""):
    """Labelled image grid with gaps: one row per seed, one column per method (tiles upscaled to >= 128 px)."""
    import textwrap

    from headlens.analysis.figures import image_grid

    w0, h0 = rows[0][0].size
    cell = max(MIN_TILE, min(w0, h0), 160)
    width = max(12, cell // 8)
    cols = ["\n".join(textwrap.wrap(c, width)) for c in columns]
    return image_grid(rows, row_labels, cols, cell=cell, title=title or None)


def make_scorer(spec: str | None, device: str):
    """None, the world model's ground-truth reader ('world'), or a CLIP model by hub id / folder."""
    if spec in (None, "", "none"):
        return None
    if spec == "world":
        from headlens import world

        return world.Scorer()
    from headlens.evaluation import CLIPScorer

    return CLIPScorer.from_pretrained(spec, device=device)


def load_hrv(path: Path | None, pipe):
    """An HRV folder checked against the model, or None."""
    if path is None:
        return None
    from headlens import HRV

    return HRV.load(path, model=pipe)


def write_scores(path: Path, rows: list[dict]) -> None:
    """Write score rows as CSV (union of the keys, in first-seen order)."""
    if not rows:
        return
    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        for r in rows:
            w.writerow({k: (json.dumps(v) if isinstance(v, (dict, list)) else v) for k, v in r.items()})


def _run_flags(device: str, dtype: str, seeds: str, size: int | None, model: str, steps: int | None,
               guidance: float | None) -> tuple[list[int], int, float]:
    """The flags edit and excite share, checked: the seed list and the model's default steps and guidance."""
    check_device(device)
    check_dtype(dtype)
    seed_list = parse_seeds(seeds)
    check_size(size)
    steps, guidance = generation_defaults(model, steps, guidance)
    return seed_list, steps, guidance


def _load_run(model: str, hrv: Path | None, out: Path, dry_run: bool, device: str, dtype: str):
    """Check --hrv and --out, then load the model and its HRV (None without --hrv)."""
    check_hrv_dir(hrv)
    output_folder(out, create=not dry_run)
    pipe = load_model(model, device, dtype)
    return pipe, load_hrv(hrv, pipe)


def _check_replace(pipe, cases: list, edit: str) -> None:
    """A replace edit needs source and target of the same token count: say so in CLI terms before generating."""
    if edit != "replace":
        return
    from headlens.edit import _tokenizer
    from headlens.tokens import TokenMap

    tok = _tokenizer(pipe)
    for case in cases:
        a, b = TokenMap.from_tokenizer(tok, case.source), TokenMap.from_tokenizer(tok, case.target)
        if len(a.word_positions) != len(b.word_positions):
            raise UserError(f"--source {case.source!r} has {len(a.word_positions)} tokens and --target {case.target!r} "
                            f"{len(b.word_positions)}: --edit replace needs equal counts; add --edit refine for "
                            "different wordings")


# Python argument names in library messages → the CLI's flags (the CLI speaks in flags).
_EDIT_FLAGS = (("local_blend", "--local-blend"), ("word=", "--word"), ("edit='refine'", "--edit refine"),
               ("cross_replace", "--cross-replace"), ("concept=", "--concept"))


def _check_plans(pipe, cases: list, edit: str, steps: int, hrv_obj, local_blend, size: int | None) -> None:
    """Resolve every edit's words (--word, --local-blend, the HRV's concept) before anything is generated or written."""
    from headlens.edit import plan_edit

    for case in cases:
        variants = [(None, None)] + ([(hrv_obj, case.concept)] if hrv_obj is not None else [])
        for h, c in variants:
            try:
                plan_edit(pipe, case.source, case.target, num_inference_steps=steps, edit=edit, hrv=h, concept=c,
                          word=(case.word or None) if h is not None else None,
                          local_blend=list(local_blend) if local_blend else None, height=size, width=size)
            except ValueError as e:
                msg = str(e)
                for name, flag in _EDIT_FLAGS:
                    msg = msg.replace(name, flag)
                raise UserError(msg) from None


# ---------------------------------------------------------------------------------------------- edit
@app.command("edit", epilog=EDIT_EXAMPLES)
def edit_command(
    source: str = typer.Option(None, "--source", help="Source prompt, e.g. 'a bowl made of wood'."),
    target: str = typer.Option(None, "--target", help="Target prompt: the source with the attribute word replaced."),
    concept: str = typer.Option(None, "--concept", "-c", help="Concept of the edited attribute (its HRV strengthens the edited word), e.g. Material."),
    word: str = typer.Option(None, "--word", help="The edited word of the target (default: the word that differs)."),
    benchmark: str = typer.Option(None, "--benchmark", help="Run the shipped edit list of a concept instead: Color, Material, 'Geometric patterns', 'Image style', 'Weather conditions'."),
    limit: int = typer.Option(None, "--max-prompts", "--limit", help="With --benchmark: only the first N edits."),
    cases_file: Path = typer.Option(None, "--cases", help="With --benchmark: read the edits from this TOML file ([[edit]] tables with source, target, word, concept) instead of the shipped edits.toml."),
    hrv: Path = typer.Option(None, "--hrv", help="HRV folder (from `headlens build`), paper:sd-v1-4 / paper:sdxl-base-1.0 or hf://OWNER/REPO; adds the P2P-HRV column."),
    seeds: str = typer.Option("1-4", "--seeds", "-s", help="Seeds: '1-4', '1,5,9' or '3'."),
    model: str = typer.Option("world", "--model", "-m", help=MODEL_HELP),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder (one sub-folder per edit)."),
    steps: int = typer.Option(None, "--steps", "-n", help=STEPS_HELP),
    guidance: float = typer.Option(None, "--guidance", "-g", help=GUIDANCE_HELP),
    edit: str = typer.Option("replace", "--edit", help="replace (same token count) or refine (different wording)."),
    cross_replace: float = typer.Option(0.8, "--cross-replace", help="Plain P2P: fraction of steps with cross-attention replaced (reference 0.8)."),
    self_replace: float = typer.Option(0.4, "--self-replace", help="Plain P2P: fraction of steps with self-attention replaced (reference 0.4)."),
    hrv_cross_replace: float = typer.Option(0.8, "--hrv-cross-replace", help="P2P-HRV: cross-attention window (reference 0.8)."),
    hrv_self_replace: float = typer.Option(0.9, "--hrv-self-replace", help="P2P-HRV: self-attention window (reference 0.9)."),
    local_blend: list[str] = typer.Option(None, "--local-blend", help="Words whose region may change (repeatable); the rest stays as in the source."),
    scorer: str = typer.Option(None, "--scorer", help="Score the images: a CLIP hub id/folder, or 'world' (the bundled ground-truth reader); writes scores.csv."),
    size: int = typer.Option(None, "--size", help="Image height and width in pixels (default: the model's)."),
    dry_run: bool = typer.Option(False, "--dry-run", help=DRY_RUN_HELP),
    device: str = typer.Option("cpu", "--device", help=DEVICE_HELP),
    dtype: str = typer.Option("float32", "--dtype", help=DTYPE_HELP),
) -> None:
    """Prompt-to-Prompt edits: writes source | P2P | P2P-HRV images and a labelled grid per edit."""
    from headlens.edit import EditCase, load_edits, p2p
    from headlens.evaluation import ImageDistance, edit_scores

    seed_list, steps, guidance = _run_flags(device, dtype, seeds, size, model, steps, guidance)
    for flag, v in (("--cross-replace", cross_replace), ("--self-replace", self_replace),
                    ("--hrv-cross-replace", hrv_cross_replace), ("--hrv-self-replace", hrv_self_replace)):
        if not 0 <= v <= 1:
            raise UserError(f"{flag} must be a fraction of the run in [0, 1] (got {v:g}), e.g. 0.8")
    if benchmark is not None:
        if source or target:
            raise UserError("give either --source/--target or --benchmark, not both")
        cases = _first(load_edits(benchmark, _cases_path(cases_file)), limit)
    else:
        _benchmark_only(cases_file, limit)
        if not source or not target:
            raise UserError("give --source and --target prompts (or --benchmark CONCEPT)")
        cases = [EditCase(source, target, word or "", concept or "")]
    if edit not in ("replace", "refine"):
        raise UserError(f"unknown --edit {edit!r}: use replace or refine")
    if hrv is not None and any(not case.concept for case in cases):
        raise UserError("--hrv needs --concept (the edited attribute's concept, e.g. Material)")
    pipe, hrv_obj = _load_run(model, hrv, out, dry_run, device, dtype)
    if hrv_obj is not None:
        for case in cases:
            hrv_obj.concept_index(case.concept)
    _check_replace(pipe, cases, edit)
    _check_plans(pipe, cases, edit, steps, hrv_obj, local_blend, size)
    if dry_run:
        calls = len(cases) * len(seed_list) * (2 if hrv_obj is not None else 1)
        c0 = cases[0]

        def run(n: int) -> None:
            p2p(pipe, c0.source, c0.target, num_inference_steps=n, guidance_scale=guidance, edit=edit, height=size,
                width=size, seed=seed_list[0])

        report_cost(2 * calls, calibrate(run, steps) / 2,
                    f"images ({len(cases)} edit(s) × {len(seed_list)} seeds × source + P2P"
                    f"{' + P2P-HRV' if hrv_obj is not None else ''}, each pair one batched generation)")
        return
    score = make_scorer(scorer, device)
    distance = ImageDistance() if score is not None else None
    settings = {"model": model_label(model), "seeds": seed_list, "steps": steps, "guidance": guidance, "edit": edit,
                "p2p": {"cross_replace": cross_replace, "self_replace": self_replace},
                "p2p_hrv": {"cross_replace": hrv_cross_replace, "self_replace": hrv_self_replace},
                "hrv": str(hrv) if hrv else None,
                "hrv_id": hrv_obj.fingerprint if hrv_obj is not None else None, "local_blend": list(local_blend or []), "size": size}
    (out / "run.json").write_text(json.dumps(settings, indent=2), encoding="utf-8")
    rows = []
    common = {"num_inference_steps": steps, "guidance_scale": guidance, "edit": edit, "height": size, "width": size,
              "local_blend": list(local_blend) if local_blend else None}
    for n, case in enumerate(cases):
        folder = out / f"{n:02d}-{slug(case.target)}"
        folder.mkdir(parents=True, exist_ok=True)
        echo(f"[{n + 1}/{len(cases)}] {case.source!r} → {case.target!r}")
        word_arg = case.word or None
        grid_rows = []
        for s in seed_list:
            src, plain = p2p(pipe, case.source, case.target, cross_replace=cross_replace, self_replace=self_replace,
                             seed=s, **common)
            images = {"source": src, "p2p": plain}
            if hrv_obj is not None:
                _, images["p2p-hrv"] = p2p(pipe, case.source, case.target, cross_replace=hrv_cross_replace,
                                           self_replace=hrv_self_replace, hrv=hrv_obj, concept=case.concept,
                                           word=word_arg, seed=s, **common)
            for name, image in images.items():
                image.save(folder / f"seed{s}_{name}.png")
            grid_rows.append(list(images.values()))
            if score is not None:
                attr_word = case.word or _differing_word(case.source, case.target)
                for name in [k for k in images if k != "source"]:
                    r = edit_scores(src, images[name], case.target, attr_word, score,
                                    concept=case.concept or None, distance=distance)
                    rows.append({"source": case.source, "target": case.target, "word": attr_word,
                                 "concept": case.concept, "seed": s, "method": name, **r})
        columns = [f"source: {case.source}", f"P2P: {case.target}"] + (
            [f"P2P-HRV ({case.concept}): {case.target}"] if hrv_obj is not None else [])
        grid(grid_rows, columns, [f"seed {s}" for s in seed_list], f"{case.source} → {case.target}").save(
            folder / "grid.png")
        (folder / "case.json").write_text(json.dumps(case.__dict__, indent=2), encoding="utf-8")
    if rows:
        write_scores(out / "scores.csv", rows)
    echo(f"wrote {len(cases)} edit(s) × {len(seed_list)} seed(s) to {out}")


def _cases_path(path: Path | None) -> Path | None:
    """A --cases file that exists (None: the shipped list)."""
    if path is not None and not path.is_file():
        raise UserError(f"--cases file {str(path)!r} not found; give a TOML file like the shipped benchmark list")
    return path


def _benchmark_only(cases_file: Path | None, limit: int | None) -> None:
    """--cases and --max-prompts only mean something with --benchmark: say so instead of ignoring them."""
    for flag, value in (("--cases", cases_file), ("--max-prompts", limit)):
        if value is not None:
            raise UserError(f"{flag} applies to --benchmark runs; add --benchmark or leave {flag} out")


def _first(cases: list, limit: int | None) -> list:
    """The first ``limit`` benchmark cases (all when None)."""
    if limit is None:
        return cases
    at_least(limit, 1, "--max-prompts")
    return cases[:limit]


def _check_subjects(pipe, cases: list, resolution: int | None, size: int | None) -> None:
    """Every --token word is found in its prompt and --resolution exists, before anything is generated or written."""
    from headlens.attend_excite import resolve_subjects, select_layers
    from headlens.families import family_of
    from headlens.heads import HeadIndex

    family = family_of(pipe)
    layout = family.text_layout(pipe)
    for case in cases:
        resolve_subjects(layout.tokenizer, case.prompt, list(case.tokens), token_map=layout.token_map(case.prompt))
    if resolution is not None:
        h, w = family.generation_size(pipe, size, size)
        try:
            select_layers(HeadIndex.from_model(pipe), family.latent_size(pipe, h, w), resolution, None, False)
        except ValueError as e:
            raise UserError(str(e).replace("at resolution", "at --resolution")
                            .replace("pick one of those or layers='all'", "give --resolution as one of those")) from None


def _differing_word(source: str, target: str) -> str:
    a, b = source.split(), target.split()
    diff = [y for x, y in zip(a, b) if x != y] if len(a) == len(b) else [w for w in b if w not in a]
    return " ".join(diff) or target


# ---------------------------------------------------------------------------------------------- excite
@app.command("excite", epilog=EXCITE_EXAMPLES)
def excite_command(
    prompt: str = typer.Argument(None, help="Prompt with several subjects, e.g. 'a cat and a dog'."),
    token: list[str] = typer.Option(None, "--token", "-t", help="Subject word and its concept, WORD:CONCEPT (repeatable), e.g. cat:Animals."),
    benchmark: str = typer.Option(None, "--benchmark", help="Run a shipped prompt group instead: animal-animal, animal-object, object-object, color-object."),
    limit: int = typer.Option(None, "--max-prompts", "--limit", help="With --benchmark: only the first N prompts."),
    cases_file: Path = typer.Option(None, "--cases", help="With --benchmark: read the prompt groups from this TOML file (as the shipped multi_concept.toml) instead."),
    hrv: Path = typer.Option(None, "--hrv", help="HRV folder (from `headlens build`), paper:sd-v1-4 / paper:sdxl-base-1.0 or hf://OWNER/REPO; adds the A&E-HRV column."),
    seeds: str = typer.Option("1-4", "--seeds", "-s", help="Seeds: '1-4', '1,5,9' or '3'."),
    model: str = typer.Option("world", "--model", "-m", help=MODEL_HELP),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder (one sub-folder per prompt)."),
    steps: int = typer.Option(None, "--steps", "-n", help=STEPS_HELP),
    guidance: float = typer.Option(None, "--guidance", "-g", help=GUIDANCE_HELP),
    max_iter: int = typer.Option(25, "--max-iter", help="Steps with a latent update (reference max_iter_to_alter 25)."),
    resolution: int = typer.Option(None, "--resolution", help="A&E map resolution (default: the layers closest to latent/4, 16 for SD at 512 px)."),
    hrv_resolution: int = typer.Option(None, "--hrv-resolution", help="A&E-HRV map resolution, all layers resized (default latent/8, 8 for SD at 512 px)."),
    scorer: str = typer.Option(None, "--scorer", help="Score the images: a CLIP hub id/folder, or 'world'; writes scores.csv."),
    size: int = typer.Option(None, "--size", help="Image height and width in pixels (default: the model's)."),
    dry_run: bool = typer.Option(False, "--dry-run", help=DRY_RUN_HELP),
    device: str = typer.Option("cpu", "--device", help=DEVICE_HELP),
    dtype: str = typer.Option("float32", "--dtype", help=DTYPE_HELP),
) -> None:
    """Attend-and-Excite: writes SD | A&E | A&E-HRV images and a labelled grid per prompt."""
    from headlens.attend_excite import MultiConceptCase, excite, load_multi_concept, parse_tokens
    from headlens.evaluation import multi_concept_scores

    seed_list, steps, guidance = _run_flags(device, dtype, seeds, size, model, steps, guidance)
    at_least(max_iter, 0, "--max-iter")
    at_least(resolution, 1, "--resolution")
    at_least(hrv_resolution, 1, "--hrv-resolution")
    if benchmark is not None:
        if prompt or token:
            raise UserError("give either a prompt with --token or --benchmark, not both")
        cases = _first(load_multi_concept(benchmark, _cases_path(cases_file)), limit)
    else:
        _benchmark_only(cases_file, limit)
        if not prompt or not token:
            raise UserError("give a prompt and its subjects with --token WORD:CONCEPT (or --benchmark GROUP)")
        cases = [MultiConceptCase("custom", prompt, tuple(parse_tokens(token)))]
    if hrv is not None:
        for case in cases:
            for w, c in case.tokens:
                if not c:
                    raise UserError(f"--token {w!r} has no concept; A&E-HRV (--hrv) needs WORD:CONCEPT, e.g. "
                                    f"{w}:Animals")
    pipe, hrv_obj = _load_run(model, hrv, out, dry_run, device, dtype)
    if hrv_obj is not None:
        for case in cases:
            for _, c in case.tokens:
                hrv_obj.concept_index(c)
    _check_subjects(pipe, cases, resolution, size)
    if dry_run:
        methods = 3 if hrv_obj is not None else 2
        c0 = cases[0]

        def run(n: int) -> None:
            excite(pipe, c0.prompt, list(c0.tokens), seed=seed_list[0], num_inference_steps=n, guidance_scale=guidance,
                   max_iter_to_alter=max(n, max_iter), height=size, width=size)

        report_cost(methods * len(cases) * len(seed_list), calibrate(run, steps),
                    f"images ({len(cases)} prompt(s) × {len(seed_list)} seeds × SD, A&E"
                    f"{', A&E-HRV' if hrv_obj is not None else ''}; time as if every step were optimised)")
        return
    score = make_scorer(scorer, device)
    settings = {"model": model_label(model), "seeds": seed_list, "steps": steps, "guidance": guidance, "max_iter": max_iter,
                "resolution": resolution, "hrv_resolution": hrv_resolution, "hrv": str(hrv) if hrv else None,
                "hrv_id": hrv_obj.fingerprint if hrv_obj is not None else None,
                "size": size}
    (out / "run.json").write_text(json.dumps(settings, indent=2), encoding="utf-8")
    rows = []
    common = {"num_inference_steps": steps, "guidance_scale": guidance, "max_iter_to_alter": max_iter,
              "height": size, "width": size}
    for n, case in enumerate(cases):
        folder = out / f"{n:02d}-{slug(case.prompt)}"
        folder.mkdir(parents=True, exist_ok=True)
        echo(f"[{n + 1}/{len(cases)}] {case.prompt!r}: {', '.join(w + (':' + c if c else '') for w, c in case.tokens)}")
        tokens = list(case.tokens)
        grid_rows = []
        for s in seed_list:
            images = {
                "sd": excite(pipe, case.prompt, tokens, seed=s, optimize=False, **common),
                "ae": excite(pipe, case.prompt, tokens, seed=s, resolution=resolution, **common),
            }
            if hrv_obj is not None:
                images["ae-hrv"] = excite(pipe, case.prompt, tokens, hrv=hrv_obj, seed=s, resolution=hrv_resolution,
                                          **common)
            for name, image in images.items():
                image.save(folder / f"seed{s}_{name}.png")
            grid_rows.append(list(images.values()))
            if score is not None:
                for name, image in images.items():
                    r = multi_concept_scores(image, case.prompt, tokens, score)
                    rows.append({"group": case.group, "prompt": case.prompt, "seed": s, "method": name, **r})
        subjects = ", ".join(w for w, _ in case.tokens)
        columns = [f"SD: {case.prompt}", f"A&E ({subjects})"] + (
            [f"A&E-HRV ({', '.join(f'{w}→{c}' for w, c in case.tokens)})"] if hrv_obj is not None else [])
        grid(grid_rows, columns, [f"seed {s}" for s in seed_list], case.prompt).save(folder / "grid.png")
        (folder / "case.json").write_text(json.dumps({"group": case.group, "prompt": case.prompt,
                                                      "tokens": [list(t) for t in case.tokens]}, indent=2),
                                          encoding="utf-8")
    if rows:
        write_scores(out / "scores.csv", rows)
    echo(f"wrote {len(cases)} prompt(s) × {len(seed_list)} seed(s) to {out}")
