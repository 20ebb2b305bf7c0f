"""Shared plumbing of the analyses: prompt families, items (prompt × seed), batched steered generation."""

from __future__ import annotations

import csv
import itertools
import json
import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import torch

try:  # Python 3.11+
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

from ..steering import Steering

DEFAULT_SEEDS = (10, 20, 30)


# ---------------------------------------------------------------------------- prompt families
@dataclass(frozen=True)
class TemplateFamily:
    """Prompts of one concept from a template (``"a {color} {object}"``) and slot word lists."""

    concept: str
    template: str
    target: str  # the slot whose word is the concept-word to score
    slots: dict[str, list[str]] = field(hash=False)

    def __post_init__(self):
        import string

        names = [f for _, f, _, _ in string.Formatter().parse(self.template) if f]
        missing = [n for n in names if n not in self.slots]
        if missing:
            raise ValueError(f"template {self.template!r} of {self.concept!r} uses slot(s) {missing} "
                             f"without a word list (have: {', '.join(self.slots)})")
        if self.target not in names:
            raise ValueError(f"target slot {self.target!r} of {self.concept!r} is not in its template {self.template!r}")
        for n in names:
            if not self.slots[n]:
                raise ValueError(f"slot {n!r} of {self.concept!r} has no words")

    def prompts(self) -> list[tuple[str, str]]:
        """(prompt, target word) for the full cross product of the slots, in file order."""
        names = list(self.slots)
        out = []
        for combo in itertools.product(*(self.slots[n] for n in names)):
            values = dict(zip(names, combo))
            out.append((self.template.format(**values), values[self.target]))
        return out


def read_toml(path: str | Path | None, shipped: str, kind: str) -> tuple[dict, str]:
    """(tables, name for messages) of a TOML file; None or 'default': the shipped ``data/<shipped>``."""
    if path is None or str(path) == "default":
        text, where = (resources.files("headlens") / "data" / shipped).read_text(encoding="utf-8"), shipped
    else:
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"{kind} file {str(path)!r} not found; give a .toml path or 'default'")
        text, where = p.read_text(encoding="utf-8"), str(p)
    try:
        return tomllib.loads(text), where
    except tomllib.TOMLDecodeError as e:
        raise ValueError(f"{kind} file {where} is not valid TOML: {e}") from None


def load_templates(path: str | Path | None = None) -> dict[str, TemplateFamily]:
    """Template families from a TOML file (default: the shipped ``weakening_templates.toml``)."""
    data, where = read_toml(path, "weakening_templates.toml", "template")
    out = {}
    for concept, table in data.items():
        if not isinstance(table, dict) or "template" not in table:
            continue
        if not isinstance(table.get("slots"), dict) or "target" not in table:
            raise ValueError(f"{where}: [{concept}] needs template, target and a [{concept}.slots] table")
        slots = {k: [str(w) for w in v] for k, v in table["slots"].items()}
        out[concept] = TemplateFamily(concept, str(table["template"]), str(table["target"]), slots)
    return out


def world_family(concept: str) -> TemplateFamily:
    """A template family for the bundled world model, built from its vocabulary."""
    from ..world import vocab

    shapes = [s for s in vocab.SHAPES if s != vocab.FRUIT]
    colors = list(vocab.COLORS)
    families = {
        "Color": ("a {color} {shape}", "color", {"color": colors, "shape": shapes}),
        "Shape": ("a {color} {shape}", "shape", {"color": colors[:4], "shape": shapes}),
        "Size": ("a {size} {color} {shape}", "size", {"size": vocab.SIZES, "color": colors[:4], "shape": shapes}),
        "Pattern": ("a {pattern} {shape}", "pattern", {"pattern": vocab.PATTERNS, "shape": shapes}),
        "Position": ("a {color} {shape} {position}", "position",
                     {"color": colors[:4], "shape": shapes[:3],
                      "position": [vocab.POSITION_PHRASES[p] for p in vocab.POSITIONS]}),
        "Background": ("a {color} {shape} on a {background} background", "background",
                       {"color": colors[:4], "shape": shapes[:3], "background": list(vocab.BACKGROUNDS)}),
    }
    key = _match(concept, families, "the world model")
    template, target, slots = families[key]
    fam = TemplateFamily(key, template, target, slots)
    if key == "Position":  # the target is the phrase; score against the position word
        words = {vocab.POSITION_PHRASES[p]: p for p in vocab.POSITIONS}
        return _PositionFamily(fam.concept, fam.template, fam.target, fam.slots, words)
    return fam


@dataclass(frozen=True)
class _PositionFamily(TemplateFamily):
    words: dict[str, str] = field(default_factory=dict, hash=False)

    def prompts(self) -> list[tuple[str, str]]:
        return [(p, self.words.get(t, t)) for p, t in super().prompts()]


def template_family(concept: str, templates: str | Path | None = None) -> TemplateFamily:
    """The family of one concept (``templates``: TOML path, ``"default"`` or ``"world"``)."""
    if str(templates) == "world":
        return world_family(concept)
    families = load_templates(templates)
    return families[_match(concept, families, "the template file")]


def _match(concept: str, table: dict, where: str) -> str:
    if concept in table:
        return concept
    lower = {k.lower(): k for k in table}
    if str(concept).lower() in lower:
        return lower[str(concept).lower()]
    raise KeyError(f"concept {concept!r} has no prompt template in {where} (have: {', '.join(table)}); "
                   "give prompts explicitly or add a template")


# ---------------------------------------------------------------------------- items
@dataclass(frozen=True)
class Item:
    """One generation unit of an analysis: a prompt, the word it should show, a seed."""

    prompt: str
    target: str
    seed: int


def prompt_targets(prompts, concept: str, hrv=None, targets: Sequence[str] | None = None,
                   templates: str | Path | None = None) -> list[tuple[str, str]]:
    """(prompt, target word) pairs from a template family, a TOML path, or a list of prompts / pairs.

    ``None`` uses the concept's family in the shipped template file. For plain prompts without
    ``targets`` the target is the first of the HRV's concept-words found in the prompt.
    """
    if prompts is None:
        return template_family(concept, templates).prompts()
    if isinstance(prompts, TemplateFamily):
        return prompts.prompts()
    if isinstance(prompts, (str, Path)):
        if str(prompts) == "world" or str(prompts).endswith(".toml") or str(prompts) == "default":
            return template_family(concept, prompts).prompts()
        prompts = [prompts]
    pairs: list[tuple[str, str]] = []
    words = list(getattr(hrv, "words", {}).get(_hrv_concept(hrv, concept), [])) if hrv is not None else []
    if targets is not None and len(targets) != len(prompts):
        raise ValueError(f"{len(targets)} targets for {len(prompts)} prompts; give one target word per prompt")
    for i, p in enumerate(prompts):
        if isinstance(p, (tuple, list)):
            pairs.append((str(p[0]), str(p[1])))
        elif targets is not None:
            pairs.append((str(p), str(targets[i])))
        else:
            found = next((w for w in words if _contains_word(p, w)), None)
            if found is None:
                raise ValueError(f"no target word for prompt {p!r}: none of the {concept!r} words of the HRV occur in "
                                 "it; give (prompt, target) pairs or targets=[...]")
            pairs.append((str(p), found))
    if not pairs:
        raise ValueError("no prompts given; give prompts or a template family")
    return pairs


def _hrv_concept(hrv, concept: str) -> str:
    return hrv.concepts[hrv.concept_index(concept)]


def _contains_word(prompt: str, word: str) -> bool:
    import re

    return re.search(rf"(?<![\w]){re.escape(word.lower())}(?![\w])", prompt.lower()) is not None


def make_items(pairs: Sequence[tuple[str, str]], seeds: Sequence[int], max_prompts: int | None = None,
               sample_seed: int = 0) -> list[Item]:
    """Items for every (prompt, seed); ``max_prompts`` keeps a seeded random subset of prompts (order kept)."""
    pairs = list(pairs)
    if max_prompts is not None and max_prompts < len(pairs):
        if max_prompts < 1:
            raise ValueError(f"max_prompts={max_prompts} must be at least 1")
        keep = sorted(random.Random(sample_seed).sample(range(len(pairs)), max_prompts))
        pairs = [pairs[i] for i in keep]
    seeds = [int(s) for s in seeds]
    if not seeds:
        raise ValueError("no seeds given; give at least one seed, e.g. 10,20,30")
    return [Item(p, t, s) for p, t in pairs for s in seeds]


# ---------------------------------------------------------------------------- generation
@dataclass
class GenerationSettings:
    """How every image of an analysis is generated (reference: 50 steps, guidance 7.5)."""

    num_inference_steps: int = 50
    guidance_scale: float = 7.5
    batch_size: int = 8
    height: int | None = None
    width: int | None = None
    negative_prompt: str | None = None

    def validate(self) -> None:
        """One-line errors for impossible settings."""
        if self.num_inference_steps < 1:
            raise ValueError(f"num_inference_steps={self.num_inference_steps} must be at least 1")
        if self.batch_size < 1:
            raise ValueError(f"batch_size={self.batch_size} must be at least 1")

    def kwargs(self) -> dict:
        """Pipeline keyword arguments."""
        kw = {"num_inference_steps": self.num_inference_steps, "guidance_scale": self.guidance_scale}
        for name in ("height", "width", "negative_prompt"):
            if getattr(self, name) is not None:
                kw[name] = getattr(self, name)
        return kw


def generate(pipe, items: Sequence[Item], settings: GenerationSettings,
             setup: Callable[[Steering], None] | None = None, hrv=None):
    """Images for ``items`` in batches, with interventions added by ``setup(steering)``; yields (batch, images)."""
    kw = settings.kwargs()
    for start in range(0, len(items), settings.batch_size):
        batch = list(items[start:start + settings.batch_size])
        if setup is None:
            images = _call(pipe, batch, kw)
        else:
            with Steering(pipe, hrv) as s:
                setup(s)
                images = _call(pipe, batch, kw)
        yield batch, images


def _call(pipe, batch: Sequence[Item], kw: dict):
    if kw.get("negative_prompt") is not None:
        kw = dict(kw, negative_prompt=[kw["negative_prompt"]] * len(batch))
    gens = [torch.Generator("cpu").manual_seed(it.seed) for it in batch]
    return pipe(prompt=[it.prompt for it in batch], generator=gens, output_type="pil", **kw).images


# ---------------------------------------------------------------------------- files
class CsvLog:
    """Append-only CSV with a fixed header; rows are flushed at once (nothing computed is lost)."""

    def __init__(self, path: Path, header: Sequence[str]):
        self.path, self.header = Path(path), list(header)
        new = not self.path.exists() or self.path.stat().st_size == 0
        self._f = open(self.path, "a", newline="", encoding="utf-8")  # noqa: SIM115 - kept open for appends
        self._w = csv.writer(self._f)
        if new:
            self._w.writerow(self.header)
            self._f.flush()

    def write(self, rows: Sequence[Sequence]) -> None:
        """Append rows and flush."""
        self._w.writerows(rows)
        self._f.flush()

    def close(self) -> None:
        """Close the file."""
        self._f.close()


def read_csv(path: Path) -> Iterator[dict]:
    """Rows of a CSV file as dicts."""
    with open(path, newline="", encoding="utf-8") as f:
        yield from csv.DictReader(f)


def prepare_out(out: str | Path, settings: dict, resume: bool, results_file: str) -> Path:
    """Create ``out``; refuse to mix runs: existing results need ``resume`` and the same settings."""
    d = Path(out)
    if d.exists() and not d.is_dir():
        raise NotADirectoryError(f"{d} exists and is not a folder; give a folder for the results")
    d.mkdir(parents=True, exist_ok=True)
    meta = d / "settings.json"
    results = d / results_file
    has_results = results.exists() and len(results.read_text(encoding="utf-8").splitlines()) > 1  # beyond the header
    if has_results and not resume:
        raise FileExistsError(f"{d} already holds results ({results_file}); resume with resume=True (--resume) "
                              "or choose another output folder")
    if has_results and meta.exists():
        old = json.loads(meta.read_text(encoding="utf-8"))
        if old != json.loads(json.dumps(settings)):
            diff = sorted(k for k in set(old) | set(settings) if old.get(k) != json.loads(json.dumps(settings)).get(k))
            raise ValueError(f"{d} holds results of a different run (differs in: {', '.join(diff)}); "
                             "choose another output folder")
    meta.write_text(json.dumps(settings, indent=2), encoding="utf-8")
    return d


def progress_bar(enabled: bool, console=None):
    """A rich progress bar (or a silent stand-in)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(TextColumn("[progress.description]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeRemainingColumn(), console=console, disable=not enabled, transient=False)
