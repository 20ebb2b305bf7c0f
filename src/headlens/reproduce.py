"""`headlens reproduce`: the paper's protocol as a plan of resumable units, and its report.

The stages reuse headlens' own commands — ``build`` (HRVs on the paper's concepts), ``weaken``
(ordered weakening of the paper's concept families), ``generate --benchmark`` (polysemous words),
``edit --benchmark`` (P2P vs P2P-HRV on five attributes) and ``excite --benchmark`` (SD vs A&E vs
A&E-HRV) — each unit writing its own folder under OUT. This module plans the units, prepares the
benchmark lists on the paper's concept names, estimates the cost from a timed calibration, and
writes the report that puts every result beside the released one or the paper's claim.
"""

from __future__ import annotations

import csv
import functools
import json
import math
import re
import time
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np

try:  # Python 3.11+
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

from . import __version__

STAGES = ("hrv", "weaken", "polysemy", "edit", "excite", "report")
WEAKEN_CONCEPTS = ("Image Style", "Color", "Material", "Geometric Patterns", "Weather Conditions", "Texture",
                   "Animals", "Nature Scenes", "Fruits and Vegetables", "Plants")
EDIT_ATTRIBUTES = ("Color", "Material", "Geometric patterns", "Image style", "Weather conditions")
EXCITE_GROUPS = ("animal-animal", "animal-object", "object-object", "color-object")
DEFAULT_CLIP = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"  # the paper scores with OpenCLIP ViT-H-14 (laion2B)
RUN_FILE = "reproduce.json"
DONE_FILE = "reproduce-unit.json"
INPUTS = "inputs"
REPORT_MD, REPORT_HTML, REPORT_DIR = "report.md", "report.html", "report"

CLAIMS = {
    "hrv": ("The paper's HRVs of SD v1.4 come from 2,100 prompts × 50 PNDM steps (guidance 7.5, seed 22). A rebuild "
            "with the same protocol on the same model should rank heads alike: high Spearman and large top-10 overlap "
            "with the released matrix."),
    "weaken": ("Paper (SD v1.4, Image Style): weakening the most relevant heads first (MoRHF) drops the CLIP score "
               "from 0.235 to ≈0.13 by k = 51, while weakening the least relevant first (LeRHF) keeps it ≈0.23 until "
               "k ≈ 91 — the HRV ranks heads by their effect on the concept; the other concepts show the same gap "
               "(a positive area LeRHF − MoRHF)."),
    "polysemy": ("Paper: concept adjusting of the ambiguous word toward the desired concept (away from the undesired "
                 "one) reduces its misinterpretation, e.g. 'lavender' drawn as the plant instead of the colour."),
    "edit": ("Paper: P2P-HRV (the edited word's own maps strengthened by the attribute's HRV) edits Color, Material, "
             "Geometric patterns, Image style and Weather conditions more successfully than Prompt-to-Prompt, while "
             "keeping the rest of the image."),
    "excite": ("Paper: A&E-HRV (Attend-and-Excite on maps weighted by the subject concept's HRV) reduces the neglect "
               "of objects in multi-concept prompts compared with Attend-and-Excite."),
}


# ---------------------------------------------------------------------------------------------- settings
@dataclass
class Settings:
    """Everything that defines a reproduce run (recorded in OUT/reproduce.json; a resume must match it)."""

    model: str
    prompts: str = "default"
    limit_prompts: int | None = None
    steps: int = 50
    guidance: float = 7.5
    batch_size: int = 8
    seed: int = 22
    size: int | None = None
    dtype: str = "float32"
    clip: str = DEFAULT_CLIP
    weaken_concepts: tuple[str, ...] = WEAKEN_CONCEPTS
    weaken_seeds: str = "10,20,30"
    max_prompts: int | None = None
    ks: str = "default"
    random_draws: int = 0
    seeds: str = "1-4"
    cases: int | None = None
    edit_attributes: tuple[str, ...] = EDIT_ATTRIBUTES
    excite_groups: tuple[str, ...] = EXCITE_GROUPS

    def record(self) -> dict:
        """Plain data (lists for tuples)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @property
    def max_iter(self) -> int:
        """Attend-and-Excite's steps with a latent update: 25 of 50 as the reference, scaled with the steps."""
        return max(1, round(self.steps / 2))


def check_settings(settings: Settings) -> None:
    """One-line errors for bad lists and seeds, before any model loads."""
    from .analysis.common import load_templates
    from .attend_excite import load_multi_concept
    from .cli.common import parse_seeds
    from .cli.steer_cmd import parse_ks
    from .edit import load_edits

    parse_seeds(settings.seeds)
    parse_seeds(settings.weaken_seeds)
    parse_ks(settings.ks, 10**6)  # syntax only; the range is checked against the model's heads
    families = {paper_concept(k) for k in load_templates()} - {None}
    for c in settings.weaken_concepts:
        if paper_concept(c) not in families:
            raise ValueError(f"--weaken-concepts: {c!r} has no template family (have: {', '.join(sorted(families))})")
    for a in settings.edit_attributes:
        load_edits(a)  # names the known attributes when it fails
    for g in settings.excite_groups:
        load_multi_concept(g)
    for name, value in (("--build-prompts", settings.limit_prompts), ("--weaken-prompts", settings.max_prompts),
                        ("--limit-cases", settings.cases)):
        if value is not None and value < 1:
            raise ValueError(f"{name} must be ≥ 1 (got {value})")
    if settings.random_draws < 0:
        raise ValueError(f"--random-draws must be ≥ 0 (got {settings.random_draws})")


def check_run_file(out: Path, settings: Settings) -> None:
    """Refuse an OUT that holds a run with other settings; record ours in a new one."""
    path = Path(out) / RUN_FILE
    mine = settings.record()
    if path.is_file():
        theirs = json.loads(path.read_text(encoding="utf-8")).get("settings", {})
        diff = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))
        if diff:
            raise ValueError(f"{out} holds a reproduce run with other settings (differs in: {', '.join(diff)}); "
                             "use another --out or the same options")
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"settings": mine, "headlens_version": __version__}, indent=2), encoding="utf-8")


def parse_stages(spec: str | None) -> list[str]:
    """``--only`` → stage names in run order (None: all)."""
    if not spec:
        return list(STAGES)
    chosen = [s.strip().lower() for s in spec.split(",") if s.strip()]
    bad = [s for s in chosen if s not in STAGES]
    if bad or not chosen:
        raise ValueError(f"unknown stage(s) {', '.join(bad) or repr(spec)} in --only: use a comma list of "
                         f"{', '.join(STAGES)}")
    return [s for s in STAGES if s in chosen]


def slug(text: str) -> str:
    """Folder name of a concept or group: ``Image Style`` → ``image-style``."""
    return re.sub(r"[^a-z0-9]+", "-", str(text).lower()).strip("-") or "x"


# ---------------------------------------------------------------------------------------------- concept names
@functools.lru_cache(maxsize=1)
def _names_and_map() -> tuple[dict[str, str], dict]:
    """The paper's concept names by lower-case name, and data/paper_concept_map.toml."""
    from .concepts import ConceptSet

    text = (resources.files("headlens") / "data" / "paper_concept_map.toml").read_text(encoding="utf-8")
    return {n.lower(): n for n in ConceptSet.paper().names}, tomllib.loads(text)


def paper_concept(concept: str, word: str | None = None) -> str | None:
    """The paper's name for one of headlens' benchmark concepts (per word for ``Objects``); None if it has none."""
    names, table = _names_and_map()
    if str(concept).lower() in names:
        return names[str(concept).lower()]
    if concept in table.get("concepts", {}):
        return table["concepts"][concept]
    per_word = table.get(concept)
    if isinstance(per_word, dict) and word is not None:
        return per_word.get(str(word).lower())
    return None


def _q(s) -> str:
    return json.dumps(str(s), ensure_ascii=False)


def write_inputs(folder: Path, settings: Settings) -> dict[str, list[str]]:
    """Write the benchmark lists on the paper's concept names into ``folder`` (OUT/inputs); returns the skipped cases."""
    from .analysis.common import load_templates
    from .analysis.polysemous import load_cases
    from .attend_excite import load_multi_concept

    d = Path(folder)
    d.mkdir(parents=True, exist_ok=True)
    skipped: dict[str, list[str]] = {"polysemy": [], "excite": [], "weaken": []}
    # polysemous words
    lines, kept = [], 0
    for case in load_cases():
        toward, away = paper_concept(case.toward, case.word), paper_concept(case.away, case.word)
        if toward is None or away is None:
            skipped["polysemy"].append(f"{case.prompt!r} ({case.toward} / {case.away}: no paper concept)")
            continue
        if settings.cases is not None and kept >= settings.cases:
            continue
        kept += 1
        lines += ["[[prompt]]", f"prompt = {_q(case.prompt)}", f"word = {_q(case.word)}", f"toward = {_q(toward)}",
                  f"away = {_q(away)}", ""]
    (d / "polysemous.toml").write_text("\n".join(lines), encoding="utf-8")
    # multi-concept prompts
    lines = []
    for case in load_multi_concept():
        tokens = [(w, paper_concept(c, w) if c else None) for w, c in case.tokens]
        mods = [(w, paper_concept(c, w) if c else None) for w, c in case.modifiers]
        missing = [f"{w}:{c}" for (w, c), (_, p) in zip(case.tokens + case.modifiers, tokens + mods) if c and p is None]
        if missing:
            skipped["excite"].append(f"{case.prompt!r} ({', '.join(missing)}: no paper concept)")
            continue
        lines += [f"[[{case.group}]]", f"prompt = {_q(case.prompt)}",
                  "tokens = [" + ", ".join(f"[{_q(w)}, {_q(c)}]" for w, c in tokens) + "]"]
        if mods:
            lines.append("modifiers = [" + ", ".join(f"[{_q(w)}, {_q(c)}]" for w, c in mods) + "]")
        lines.append("")
    (d / "multi_concept.toml").write_text("\n".join(lines), encoding="utf-8")
    # weakening template families, keyed by the paper's concept names
    lines = []
    for name, fam in load_templates().items():
        paper_name = paper_concept(name)
        if paper_name is None:
            skipped["weaken"].append(f"{name} (no paper concept)")
            continue
        lines += [f"[{_q(paper_name)}]", f"template = {_q(fam.template)}", f"target = {_q(fam.target)}",
                  f"[{_q(paper_name)}.slots]"]
        lines += [f"{_q(k)} = [" + ", ".join(_q(w) for w in v) + "]" for k, v in fam.slots.items()]
        lines.append("")
    (d / "weakening_templates.toml").write_text("\n".join(lines), encoding="utf-8")
    (d / "skipped.json").write_text(json.dumps(skipped, indent=2), encoding="utf-8")
    return skipped


# ---------------------------------------------------------------------------------------------- plan
@dataclass
class Unit:
    """One resumable piece of a stage: a headlens command writing its own folder."""

    stage: str
    name: str
    folder: Path
    args: list[str]
    generations: int
    cost: str = "batch"  # which calibrated rate prices its images: batch, single or excite

    @property
    def done(self) -> bool:
        """True once the unit finished (its marker file exists)."""
        return (self.folder / DONE_FILE).is_file()

    def mark_done(self) -> None:
        """Write the marker: the unit finished with these arguments."""
        self.folder.mkdir(parents=True, exist_ok=True)
        (self.folder / DONE_FILE).write_text(json.dumps({"args": self.args, "time": time.time()}, indent=2),
                                             encoding="utf-8")


@dataclass
class Plan:
    """The units of a run, with what was left out."""

    units: list[Unit]
    skipped: dict[str, list[str]] = field(default_factory=dict)


def hrv_folder(out: Path) -> Path:
    """Where the rebuilt HRV goes."""
    return Path(out) / "hrv"


def shard_folder(out: Path, shard: tuple[int, int]) -> Path:
    """Where shard i/N of the HRV build goes."""
    return Path(out) / "hrv-shards" / f"part-{shard[0]}-of-{shard[1]}"


def _common(settings: Settings, device: str) -> list[str]:
    args = ["--device", device, "--dtype", settings.dtype]
    return args + (["--size", str(settings.size)] if settings.size else [])


def make_plan(out: Path, settings: Settings, num_heads: int, stages: list[str], device: str = "cpu",
              shard: tuple[int, int] | None = None, inputs: Path | None = None) -> Plan:
    """Every unit of the chosen stages (all units, also those of other shards; see :func:`mine`).

    ``inputs``: the folder :func:`write_inputs` wrote (default OUT/inputs).
    """
    from . import distributed
    from .analysis.common import load_templates, make_items, prompt_targets
    from .analysis.polysemous import load_cases
    from .analysis.weakening import check_ks, plan_conditions
    from .attend_excite import load_multi_concept
    from .cli.common import parse_seeds
    from .cli.steer_cmd import parse_ks
    from .concepts import load_prompts
    from .edit import load_edits
    from .heads import HeadIndex, Layer
    from .hrv import HRV

    out = Path(out)
    inputs = Path(inputs) if inputs is not None else out / INPUTS
    skipped = json.loads((inputs / "skipped.json").read_text(encoding="utf-8"))
    units: list[Unit] = []
    s, hrv = settings, str(hrv_folder(out))
    common = _common(s, device)
    gen = ["--steps", str(s.steps), "--guidance", str(s.guidance)]
    if "hrv" in stages:
        n = len(load_prompts(s.prompts))
        n = min(n, s.limit_prompts) if s.limit_prompts else n
        args = ["build", "--model", s.model, "--concepts", "paper", "--prompts", s.prompts, *gen, "--batch-size",
                str(s.batch_size), "--seed", str(s.seed), "--resume", "--top", "0", *common]
        args += ["--limit", str(s.limit_prompts)] if s.limit_prompts else []
        if shard is None:
            units.append(Unit("hrv", "hrv", hrv_folder(out), [*args, "--out", hrv], n))
        else:
            batches = distributed.shard_batches(math.ceil(n / s.batch_size), shard)
            mine_n = sum(min(s.batch_size, n - b * s.batch_size) for b in batches)
            units.append(Unit("hrv", f"hrv shard {shard[0]}/{shard[1]}", shard_folder(out, shard),
                              [*args, "--shard", f"{shard[0]}/{shard[1]}", "--out", str(shard_folder(out, shard))],
                              mine_n))
    if "weaken" in stages:
        families = load_templates(inputs / "weakening_templates.toml")
        ks = check_ks(parse_ks(s.ks, num_heads), num_heads)
        seeds = parse_seeds(s.weaken_seeds)
        layout = HeadIndex([Layer(0, "layer", "down", 0, num_heads, 1, 0, 1)])
        for concept in s.weaken_concepts:
            name = paper_concept(concept)
            if name is None or not any(k.lower() == name.lower() for k in families):
                raise ValueError(f"--weaken-concepts: {concept!r} has no template family (have: {', '.join(families)})")
            items = make_items(prompt_targets(str(inputs / "weakening_templates.toml"), name), seeds, s.max_prompts)
            dummy = HRV.from_matrix(np.ones((1, num_heads), dtype=np.float32), layout, [name])
            keys = {c.key for c in plan_conditions(dummy, name, ks, ("words",), s.random_draws)}
            args = ["weaken", name, "--model", s.model, "--hrv", hrv, "--prompts", str(inputs / "weakening_templates.toml"),
                    "--seeds", s.weaken_seeds, "--ks", s.ks, "--random-draws", str(s.random_draws), "--scorer",
                    f"clip:{s.clip}", *gen, "--batch-size", str(s.batch_size), "--resume", *common]
            args += ["--max-prompts", str(s.max_prompts)] if s.max_prompts else []
            folder = out / "weaken" / slug(name)
            units.append(Unit("weaken", f"weaken {name}", folder, [*args, "--out", str(folder)], len(items) * len(keys)))
    seeds = parse_seeds(s.seeds)
    if "polysemy" in stages:
        cases = load_cases(inputs / "polysemous.toml") if (inputs / "polysemous.toml").read_text().strip() else []
        if cases:
            folder = out / "polysemy"
            units.append(Unit("polysemy", "polysemy", folder, [
                "generate", "--benchmark", "--cases", str(inputs / "polysemous.toml"), "--model", s.model, "--hrv", hrv,
                "--seeds", s.seeds, *gen, "--batch-size", str(s.batch_size), *common, "--out", str(folder)],
                2 * len(cases) * len(seeds)))
    if "edit" in stages:
        for attr in s.edit_attributes:
            cases = load_edits(attr)
            cases = cases[: s.cases] if s.cases else cases
            folder = out / "edit" / slug(attr)
            units.append(Unit("edit", f"edit {attr}", folder, [
                "edit", "--benchmark", attr, "--model", s.model, "--hrv", hrv, "--seeds", s.seeds, *gen, "--scorer",
                s.clip, *common, "--out", str(folder), *(["--limit", str(s.cases)] if s.cases else [])],
                4 * len(cases) * len(seeds), cost="single"))
    if "excite" in stages:
        path = inputs / "multi_concept.toml"
        for group in s.excite_groups:
            try:
                cases = load_multi_concept(group, path)
            except ValueError:
                skipped.setdefault("excite", []).append(f"group {group}: no case with paper concepts")
                continue
            cases = cases[: s.cases] if s.cases else cases
            folder = out / "excite" / slug(group)
            units.append(Unit("excite", f"excite {group}", folder, [
                "excite", "--benchmark", group, "--cases", str(path), "--model", s.model, "--hrv", hrv, "--seeds",
                s.seeds, *gen, "--max-iter", str(s.max_iter), "--scorer", s.clip, *common, "--out", str(folder),
                *(["--limit", str(s.cases)] if s.cases else [])], 3 * len(cases) * len(seeds), cost="excite"))
    return Plan(units, skipped)


def mine(units: list[Unit], shard: tuple[int, int] | None) -> list[Unit]:
    """The units this shard runs: the HRV shard, and of the other units those with index % N == i."""
    if shard is None:
        return list(units)
    rest = [u for u in units if u.stage != "hrv"]
    return [u for u in units if u.stage == "hrv"] + [u for j, u in enumerate(rest) if j % shard[1] == shard[0]]


# ---------------------------------------------------------------------------------------------- cost
def calibrate(pipe, settings: Settings, steps: int = 2) -> dict:
    """Seconds per image per denoising step (batched, batch 1) and per A&E gradient step, from short timed runs."""
    import torch

    from .attend_excite import excite

    kw = {"num_inference_steps": steps, "guidance_scale": settings.guidance}
    if settings.size:
        kw.update(height=settings.size, width=settings.size)

    def timed(fn) -> float:
        fn()  # warm-up (kernels, caches)
        t = time.perf_counter()
        fn()
        return time.perf_counter() - t

    def gen(n):
        return lambda: pipe(["a photo of a cat"] * n, generator=torch.Generator("cpu").manual_seed(0), **kw)

    b = settings.batch_size
    batch = timed(gen(b)) / (b * steps)
    single = timed(gen(1)) / steps
    # every step with a latent update, no refinement: the price of one A&E step with its gradient
    grad = timed(lambda: excite(pipe, "a cat and a dog", [("cat", None), ("dog", None)], seed=0, max_iter_to_alter=steps,
                                thresholds={}, **kw)) / steps
    return {"batch": batch, "single": single, "excite_step": grad, "steps": steps, "batch_size": b}


A_E_REFINEMENTS = 3 * 20  # the reference refines at steps 0, 10 and 20, up to 20 iterations each


def unit_hours(unit: Unit, settings: Settings, rates: dict) -> float:
    """Estimated device-hours of a unit; A&E images priced as an upper bound (every refinement iteration run)."""
    if unit.cost != "excite":
        return unit.generations * settings.steps * rates[unit.cost] / 3600
    plain = settings.steps * rates["single"]
    ae = plain + (settings.max_iter + A_E_REFINEMENTS) * rates["excite_step"]
    return unit.generations * (plain + 2 * ae) / 3 / 3600


# ---------------------------------------------------------------------------------------------- comparisons
def compare_hrvs(rebuilt, released, k: int = 10) -> list[dict]:
    """Per shared concept: Spearman of the two HRVs over heads and the overlap of their top-k head sets."""
    from .analysis.stats import spearman

    if rebuilt.heads.fingerprint != released.heads.fingerprint:
        raise ValueError("the two HRVs have different head layouts; compare HRVs of the same model")
    rows = []
    for c in released.concepts:
        try:
            mine_ = rebuilt[c]
        except KeyError:
            continue
        theirs = released[c]
        top_a, top_b = set(rebuilt.ranking(c)[:k]), set(released.ranking(c)[:k])
        rows.append({"concept": c, "spearman": float(spearman(mine_.numpy(), theirs.numpy())),
                     f"top{k}_overlap": len(top_a & top_b) / k})
    return rows


def weakening_vs_released(summary: dict, released: dict[str, list[tuple[int, float]]], released_heads: int = 128
                          ) -> list[dict]:
    """Our MoRHF/LeRHF curve beside the released one, at the same k (same H) or the nearest k/H (else)."""
    ks = [int(k) for k in summary["ks"]]
    H = int(summary["num_heads"])
    curves = {c["order"]: c["mean"] for c in summary["curves"] if c.get("tokens", "words") == "words"}
    rows = []
    for j, k in enumerate(ks):
        row = {"k": k, "k/H": k / H}
        for order in ("morhf", "lerhf"):
            row[f"ours_{order}"] = curves[order][j] if order in curves else None
            ref = released[order]
            if H == released_heads:
                match = [v for kk, v in ref if kk == k]
                row[f"paper_{order}"] = match[0] if match else None
            else:
                kk, v = min(ref, key=lambda t: abs(t[0] / released_heads - k / H))
                row[f"paper_{order}"] = v
                row["paper_k"] = kk
        rows.append(row)
    return rows


def polysemy_texts(word: str, toward: str, away: str) -> tuple[str, str]:
    """The two senses as CLIP texts: ``lavender, color`` / ``lavender, plants``."""
    return f"{word}, {toward.lower()}", f"{word}, {away.lower()}"


def score_polysemy(folder: Path, scorer) -> list[dict]:
    """CLIP similarity of every plain / steered image with the desired and the undesired sense of its word."""
    from PIL import Image

    rows = []
    for run_file in sorted(Path(folder).glob("*/run.json")):
        run = json.loads(run_file.read_text(encoding="utf-8"))
        (word, toward, away), = run["adjust"]
        t_text, a_text = polysemy_texts(word, toward, away)
        for kind in ("plain", "steered"):
            for seed in run["seeds"]:
                path = run_file.parent / kind / f"seed{seed}.png"
                if not path.is_file():
                    continue
                im = Image.open(path).convert("RGB")
                sims = scorer.similarity([im, im], [t_text, a_text])
                rows.append({"prompt": run["prompt"], "word": word, "toward": toward, "away": away, "seed": seed,
                             "kind": kind, "sim_toward": float(sims[0]), "sim_away": float(sims[1])})
    return rows


def read_csv_rows(path: Path) -> list[dict]:
    """Rows of a CSV with numbers parsed."""
    out = []
    with open(path, newline="", encoding="utf-8") as f:
        for r in csv.DictReader(f):
            row = {}
            for k, v in r.items():
                try:
                    row[k] = float(v)
                except (TypeError, ValueError):
                    row[k] = v
            out.append(row)
    return out


def mean_by(rows: list[dict], key: str, fields: list[str]) -> dict[str, dict[str, float]]:
    """Mean of each field per value of ``key`` (and the count ``n``)."""
    groups: dict[str, list[dict]] = {}
    for r in rows:
        groups.setdefault(str(r[key]), []).append(r)
    out = {}
    for g, rs in groups.items():
        out[g] = {"n": len(rs)}
        for f_ in fields:
            vals = [float(r[f_]) for r in rs if isinstance(r.get(f_), float) and not math.isnan(r[f_])]
            out[g][f_] = sum(vals) / len(vals) if vals else float("nan")
    return out


# ---------------------------------------------------------------------------------------------- report
@dataclass
class Section:
    """One part of the report: Markdown blocks and pictures, in order."""

    title: str
    blocks: list = field(default_factory=list)  # ("md", text) | ("img", path, caption)

    def md(self, text: str) -> None:
        """Add Markdown."""
        self.blocks.append(("md", text))

    def img(self, path: Path, caption: str) -> None:
        """Add a picture."""
        self.blocks.append(("img", Path(path), caption))


def _f(v, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "—"
    return f"{v:.{digits}f}" if isinstance(v, float) else str(v)


def _table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_f(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def _claim(stage: str) -> str:
    return f"**Published claim.** {CLAIMS[stage]}"


def _hrv_section(out: Path, pics: Path) -> Section:
    from . import paper, plots
    from .hrv import HRV

    sec = Section("HRVs: rebuilt vs released")
    d = hrv_folder(out)
    if not (d / DONE_FILE).is_file():
        sec.md(f"Not run yet: no finished HRV in `{d}` (stage `hrv`).")
        return sec
    hrv = HRV.load(d)
    md = hrv.metadata
    sec.md(f"Rebuilt: {len(hrv.concepts)} concepts × {len(hrv.heads)} heads of `{md.get('model')}`, "
           f"{md.get('prompts_done', md.get('num_prompts'))} prompts × {md.get('num_inference_steps')} steps "
           f"(guidance {md.get('guidance_scale')}, seed {md.get('seed')}).")
    plots.save_figure(plots.plot_heatmap(hrv), pics / "hrv-rebuilt.png")
    sec.img(pics / "hrv-rebuilt.png", "Rebuilt HRVs")
    name = paper.release_for(hrv.heads)
    if name is None:
        sec.md(f"No released HRV has this model's head layout ({len(hrv.heads)} heads in {len(hrv.heads.layers)} "
               "layers; released: SD v1.4, 128 heads, and SDXL base 1.0, 1300 heads), so there is nothing to compare "
               "with.")
        sec.md(_claim("hrv"))
        return sec
    released = paper.load(name)
    rows = compare_hrvs(hrv, released)
    rho = np.array([r["spearman"] for r in rows])
    ov = np.array([r["top10_overlap"] for r in rows])
    sec.md(_claim("hrv"))
    sec.md(f"**Measured.** Against `paper:{name}` over {len(rows)} concepts: Spearman median {np.median(rho):.3f} "
           f"(min {rho.min():.3f}, max {rho.max():.3f}); top-10 overlap median {np.median(ov):.2f} "
           f"(min {ov.min():.2f}, max {ov.max():.2f}).")
    sec.md(_table(["concept", "Spearman (rebuilt, released)", "top-10 overlap"],
                  [[r["concept"], r["spearman"], r["top10_overlap"]] for r in rows]))
    plots.save_figure(plots.plot_heatmap(released), pics / "hrv-released.png")
    sec.img(pics / "hrv-released.png", f"Released HRVs (paper:{name})")
    (pics / "hrv-vs-released.csv").write_text(
        "concept,spearman,top10_overlap\n" + "".join(f"{r['concept']},{r['spearman']:.6g},{r['top10_overlap']}\n"
                                                      for r in rows), encoding="utf-8")
    return sec


def _weaken_section(out: Path, pics: Path) -> Section:
    from . import paper

    sec = Section("Ordered weakening")
    sec.md(_claim("weaken"))
    summaries = {}
    for f in sorted((Path(out) / "weaken").glob(f"*/{DONE_FILE}")):
        summaries[f.parent.name] = json.loads((f.parent / "summary.json").read_text(encoding="utf-8"))
    if not summaries:
        sec.md("Not run yet: no finished unit under `weaken/` (stage `weaken`).")
        return sec
    rows = []
    for s in summaries.values():
        a, r = s["area"].get("words", {}), s.get("area_vs_random", {}).get("words")
        rows.append([s["concept"], s["items"], f"{_f(a.get('value'))} [{_f(a.get('low'))}, {_f(a.get('high'))}]",
                     f"{_f(r['value'])} [{_f(r['low'])}, {_f(r['high'])}]" if r else "—",
                     "gap as claimed" if a.get("low", 0) > 0 else "no clear gap" if a.get("high", 0) >= 0 else "inverted"])
    sec.md("**Measured.** Normalised area between the curves (mean gap over k, 95% bootstrap CI over prompt × seed "
           "items; positive = the HRV's top heads matter more):")
    sec.md(_table(["concept", "items", "area LeRHF − MoRHF [95% CI]", "area random − MoRHF", "reading"], rows))
    style = next((s for s in summaries.values() if s["concept"].lower() == "image style"), None)
    if style is None:
        sec.md("Image Style was not among the weakened concepts, so the released curve is not compared.")
        return sec
    ref = paper.released_weakening_curve()
    cmp_rows = weakening_vs_released(style, ref)
    same = all("paper_k" not in r for r in cmp_rows)
    sec.md("**Image Style beside the released curve** (paper: SD v1.4, OpenCLIP ViT-H-14; absolute scores depend on "
           "the CLIP model" + ("" if same else f"; this model has {style['num_heads']} heads, so the paper's values are "
                               "taken at the nearest fraction k/H") + "):")
    sec.md(_table(["k", "ours MoRHF", "paper MoRHF", "ours LeRHF", "paper LeRHF"] + ([] if same else ["paper k"]),
                  [[r["k"], r["ours_morhf"], r["paper_morhf"], r["ours_lerhf"], r["paper_lerhf"]]
                   + ([] if same else [r["paper_k"]]) for r in cmp_rows]))
    _plot_style(style, ref, pics / "image-style-vs-paper.png")
    sec.img(pics / "image-style-vs-paper.png", "Image Style: ordered weakening, ours vs the paper's released curve")
    return sec


def _plot_style(summary: dict, ref: dict, path: Path) -> None:
    from matplotlib.figure import Figure

    from . import plots

    H = summary["num_heads"]
    fig = Figure(figsize=(6.4, 3.6), dpi=110)
    ax = fig.add_subplot(1, 1, 1)
    colors = {"morhf": "#c0392b", "lerhf": "#2471a3"}
    for c in summary["curves"]:
        if c.get("tokens", "words") == "words" and c["order"] in colors:
            ax.plot(np.array(summary["ks"]) / H, c["mean"], "-o", ms=3, color=colors[c["order"]],
                    label=f"ours {c['order'].upper()}")
    for order, pts in ref.items():
        ks, vs = zip(*pts)
        ax.plot(np.array(ks) / 128, vs, "--", color=colors[order], alpha=0.6, label=f"paper {order.upper()}")
    ax.set_xlabel("fraction of heads weakened (k / H)")
    ax.set_ylabel("CLIP score")
    ax.legend(fontsize=7)
    ax.set_title("Image Style: ordered weakening vs the released curve", fontsize=9)
    plots.save_figure(fig, path)


def _polysemy_section(out: Path, scorer_factory) -> Section:
    sec = Section("Polysemous words: concept adjusting")
    sec.md(_claim("polysemy"))
    folder = Path(out) / "polysemy"
    if not (folder / DONE_FILE).is_file():
        sec.md("Not run yet (stage `polysemy`).")
        return sec
    scores = folder / "sense_scores.csv"
    if not scores.is_file():
        scorer = scorer_factory()
        rows = score_polysemy(folder, scorer)
        with open(scores, "w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ["prompt"])
            w.writeheader()
            w.writerows(rows)
    rows = read_csv_rows(scores)
    if not rows:
        sec.md("No images to score.")
        return sec
    for r in rows:
        r["margin"] = r["sim_toward"] - r["sim_away"]
        r["misread"] = float(r["sim_away"] > r["sim_toward"])
    by = mean_by(rows, "kind", ["sim_toward", "sim_away", "margin", "misread"])
    sec.md("**Measured.** CLIP similarity of each image with the desired sense (`word, concept`) and the undesired one; "
           "an image counts as misread when the undesired sense scores higher:")
    sec.md(_table(["images", "n", "desired sense", "undesired sense", "margin (desired − undesired)", "misread"],
                  [[k, v["n"], v["sim_toward"], v["sim_away"], v["margin"], v["misread"]]
                   for k, v in by.items()]))
    per_case = {}
    for r in rows:
        per_case.setdefault(r["prompt"], {}).setdefault(r["kind"], []).append(r["margin"])
    sec.md(_table(["prompt", "margin plain", "margin adjusted"],
                  [[p, float(np.mean(v.get("plain", [np.nan]))), float(np.mean(v.get("steered", [np.nan])))]
                   for p, v in per_case.items()]))
    return sec


def _scores_section(out: Path, stage: str, title: str, key: str, fields: list[str], labels: list[str]) -> Section:
    sec = Section(title)
    sec.md(_claim(stage))
    done = sorted((Path(out) / stage).glob(f"*/{DONE_FILE}"))
    if not done:
        sec.md(f"Not run yet (stage `{stage}`).")
        return sec
    rows_md, unscored = [], []
    for f in done:
        path = f.parent / "scores.csv"
        if not path.is_file():
            unscored.append(f.parent.name)
            continue
        for method, v in mean_by(read_csv_rows(path), key, fields).items():
            rows_md.append([f.parent.name, method, v["n"], *[v[x] for x in fields]])
    sec.md("**Measured** (means over cases × seeds):")
    sec.md(_table(["benchmark", "method", "n", *labels], rows_md))
    if unscored:
        sec.md(f"Not scored: {', '.join(unscored)}.")
    return sec


def write_report(out: Path, settings: Settings, scorer_factory, skipped: dict | None = None) -> tuple[Path, Path]:
    """Write OUT/report.md and OUT/report.html (pictures in OUT/report/, embedded in the HTML)."""
    import os

    os.environ.setdefault("MPLBACKEND", "Agg")
    from .report import CSS, _e, image_tag, markdown_to_html

    out = Path(out)
    pics = out / REPORT_DIR
    pics.mkdir(parents=True, exist_ok=True)
    run = Section("Run")
    run.md(_table(["setting", "value"], [[k, json.dumps(v) if isinstance(v, list) else str(v)]
                                         for k, v in settings.record().items()]))
    run.md(f"headlens {__version__}. Each stage's files are in OUT/<stage>/; the published claims are quoted "
           "in words beside the measured numbers.")
    sections = [run, _hrv_section(out, pics), _weaken_section(out, pics), _polysemy_section(out, scorer_factory),
                _scores_section(out, "edit", "P2P vs P2P-HRV editing", "method",
                                ["clip_target", "clip_word", "distance"],
                                ["CLIP to target prompt", "CLIP to edited word", "distance to source"]),
                _scores_section(out, "excite", "SD vs A&E vs A&E-HRV (multi-concept)", "method",
                                ["clip_full", "clip_min_object"], ["CLIP full prompt", "CLIP min over objects"])]
    skipped = skipped or {}
    if any(skipped.values()):
        sec = Section("Skipped benchmark cases")
        sec.md("Cases whose concepts have no counterpart among the paper's 34 (see data/paper_concept_map.toml):")
        sec.md("\n".join(f"- {stage}: {c}" for stage, cs in skipped.items() for c in cs))
        sections.append(sec)
    title = f"headlens reproduce — {settings.model}"
    md_lines = [f"# {title}", ""]
    html_parts = []
    for sec in sections:
        md_lines += [f"## {sec.title}", ""]
        body = []
        for block in sec.blocks:
            if block[0] == "md":
                md_lines += [block[1], ""]
                body.append(markdown_to_html(block[1]))
            else:
                md_lines += [f"![{block[2]}]({block[1].relative_to(out).as_posix()})", ""]
                body.append(image_tag(block[1], block[2], block[2]))
        html_parts.append(f"<section><h2>{_e(sec.title)}</h2>{''.join(body)}</section>")
    md_path, html_path = out / REPORT_MD, out / REPORT_HTML
    md_path.write_text("\n".join(md_lines), encoding="utf-8")
    html_path.write_text(
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{_e(title)}</title><style>{CSS}</style>'
        f"</head><body><header><h1>{_e(title)}</h1></header><main>{''.join(html_parts)}</main></body></html>\n",
        encoding="utf-8")
    return md_path, html_path
