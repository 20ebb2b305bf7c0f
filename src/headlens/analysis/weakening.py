"""Ordered weakening analysis (spec §6): weaken the k most / least relevant heads, score, compare curves.

For a concept c, prompts of a template family × seeds are generated with the top-k heads of
HRV_c weakened (MoRHF), the bottom-k (LeRHF) and, as a control, k random heads (several
draws); every image is scored against its concept-word. If the HRV ranks heads well, the MoRHF
curve falls long before the LeRHF curve: the normalised area between them (mean gap
LeRHF − MoRHF over the k range) is positive. A second control weakens the end/padding tokens
too (``tokens="words+end"``): CLIP's causal text encoder copies the prompt into them.

Files written to ``out``: ``scores.csv`` (one row per image, appended as it is scored),
``curves.csv`` (mean and bootstrap 95% CI per order/k), ``curves.png``, ``grid_<order>.png``
(rows k, columns the first prompt×seed items), ``summary.json``, ``settings.json``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..steering import TOKEN_SETS, check_steps, check_tokens
from .common import (
    DEFAULT_SEEDS,
    CsvLog,
    GenerationSettings,
    Item,
    generate,
    make_items,
    prepare_out,
    progress_bar,
    prompt_targets,
    read_csv,
)
from .figures import image_grid, plot_curves
from .stats import bootstrap_indices, normalised_area, percentile_ci
from .verdict import LERHF_MORHF, LERHF_RANDOM, RANDOM_MORHF, format_ci, short_verdict, weakening_verdict

ORDERS = ("morhf", "lerhf", "random")
SCORE_HEADER = ["tokens", "order", "draw", "k", "item", "prompt", "target", "seed", "score"]


def default_ks(num_heads: int, step: int = 10) -> list[int]:
    """The reference k grid: 0, 1, 1+step, 1+2·step, … below H, then H."""
    ks = [0] + list(range(1, num_heads, step))
    return ks + [num_heads] if ks[-1] != num_heads else ks


def check_ks(ks: Sequence[int] | None, num_heads: int) -> list[int]:
    """Sorted distinct k values in 0..H (None: :func:`default_ks`)."""
    out = sorted({int(k) for k in (ks if ks is not None else default_ks(num_heads))})
    if not out or out[0] < 0 or out[-1] > num_heads:
        raise ValueError(f"k values must lie in 0..{num_heads} (this model has {num_heads} heads), got {out}")
    return out


def head_order(hrv, concept: str, order: str, draw: int = 0, seed: int = 0) -> list[int]:
    """Heads in weakening order: ``morhf`` most relevant first, ``lerhf`` least first, ``random`` a seeded permutation."""
    if order == "morhf":
        return hrv.ranking(concept)
    if order == "lerhf":
        return list(reversed(hrv.ranking(concept)))
    if order == "random":
        return [int(i) for i in np.random.default_rng([seed, draw]).permutation(hrv.num_heads)]
    raise ValueError(f"unknown head order {order!r}: use morhf, lerhf or random")


@dataclass
class Curve:
    """One weakening curve: mean score per k with a bootstrap 95% CI (and, for random order, the spread over draws)."""

    order: str
    tokens: str
    ks: list[int]
    mean: np.ndarray
    low: np.ndarray
    high: np.ndarray
    spread: np.ndarray | None = None  # std over random draws of the per-draw mean
    per_item: np.ndarray | None = field(default=None, repr=False)  # [len(ks), items]; random: mean over draws

    def band(self) -> tuple[np.ndarray, np.ndarray]:
        """Shaded band of the plot: CI, or mean ± spread for the random order."""
        if self.spread is not None:
            return self.mean - self.spread, self.mean + self.spread
        return self.low, self.high


@dataclass
class Area:
    """Normalised area between two curves with its bootstrap 95% CI."""

    value: float
    low: float
    high: float


@dataclass
class WeakeningResult:
    """Curves, areas and files of an ordered weakening run."""

    concept: str
    num_heads: int
    ks: list[int]
    items: list[Item]
    curves: list[Curve]
    areas: dict[str, Area]  # per token set: LeRHF − MoRHF
    areas_vs_random: dict[str, Area]  # per token set: random − MoRHF
    files: dict[str, Path]
    generations: int  # images generated in this call (reused ones not counted)
    areas_lerhf_random: dict[str, Area] = field(default_factory=dict)  # per token set: LeRHF − random

    def area_cis(self) -> dict[str, dict[str, Area]]:
        """Per token set: the three areas under the keys the verdict reads (see :mod:`.verdict`)."""
        out: dict[str, dict[str, Area]] = {}
        for tok, a in self.areas.items():
            out[tok] = {LERHF_MORHF: a}
            if tok in self.areas_vs_random:
                out[tok][RANDOM_MORHF] = self.areas_vs_random[tok]
            if tok in self.areas_lerhf_random:
                out[tok][LERHF_RANDOM] = self.areas_lerhf_random[tok]
        return out

    @property
    def verdict(self) -> str:
        """What the curves showed, judged from both areas and their CIs (see :func:`.verdict.weakening_verdict`)."""
        return weakening_verdict(self.area_cis())

    def curve(self, order: str, tokens: str = "words") -> Curve:
        """The curve of one order and token set."""
        for c in self.curves:
            if c.order == order and c.tokens == tokens:
                return c
        raise KeyError(f"no curve for order {order!r}, tokens {tokens!r} "
                       f"(have: {', '.join(f'{c.order}/{c.tokens}' for c in self.curves)})")

    @property
    def area(self) -> float:
        """Normalised area LeRHF − MoRHF for the reference token set (positive: the HRV ranks heads well)."""
        key = "words" if "words" in self.areas else next(iter(self.areas))
        return self.areas[key].value


@dataclass(frozen=True)
class Condition:
    """One curve point: token set, head order, random draw, k and the heads weakened."""

    tokens: str
    order: str
    draw: int
    k: int
    heads: tuple[int, ...]

    @property
    def key(self):
        """Generation key: conditions with equal keys share their images (k = 0 shared by all)."""
        return () if self.k == 0 else (frozenset(self.heads), self.tokens)


def plan_conditions(hrv, concept: str, ks: Sequence[int], tokens: Sequence[str] = ("words",),
                    random_draws: int = 3, random_seed: int = 0) -> list[Condition]:
    """Every (token set, order, draw, k) of a run with the heads it weakens (top-k / bottom-k / random k)."""
    orders = ["morhf", "lerhf"] + (["random"] if random_draws else [])
    out = []
    for tok in tokens:
        for order in orders:
            for draw in range(random_draws if order == "random" else 1):
                ranked = head_order(hrv, concept, order, draw, random_seed)
                out.extend(Condition(tok, order, draw, int(k), tuple(ranked[:k])) for k in ks)
    return out


def ordered_weakening(pipe, hrv, concept: str, prompts=None, seeds: Sequence[int] = DEFAULT_SEEDS,
                      ks: Sequence[int] | None = None, scorer=None, out: str | Path | None = None, *,
                      targets: Sequence[str] | None = None, templates: str | Path | None = None,
                      factor: float = -2.0, tokens: str | Sequence[str] = "words", random_draws: int = 3,
                      random_seed: int = 0, steps: tuple[float, float] = (0.0, 1.0),
                      settings: GenerationSettings | None = None, max_prompts: int | None = None,
                      grid_items: int = 8, n_boot: int = 1000, resume: bool = False, progress: bool = True,
                      console=None) -> WeakeningResult:
    """Run the ordered weakening analysis of ``concept`` and write its files to ``out``.

    ``prompts``: None (the concept's family in the shipped template file), a template TOML path,
    ``"world"``, a :class:`TemplateFamily`, or a list of prompts / (prompt, target) pairs.
    ``ks``: None for :func:`default_ks`. ``tokens``: ``"words"``, ``"words+end"`` or both (a list).
    ``random_draws``: random-order control curves (0 to skip). ``scorer``: any
    :class:`~headlens.scorers.Scorer` (default: :class:`~headlens.scorers.ClipScorer`).
    """
    from ..hrv import HRV

    if not isinstance(hrv, HRV):
        raise ValueError("ordered_weakening needs an HRV (HRV.load(folder) or headlens.build)")  # noqa: TRY004
    hrv.check_layout(pipe)
    concept = hrv.concepts[hrv.concept_index(concept)]
    settings = settings or GenerationSettings()
    settings.validate()
    check_steps(steps)
    token_sets = [tokens] if isinstance(tokens, str) else list(tokens)
    for t in token_sets:
        check_tokens(t)
    H = hrv.num_heads
    ks = check_ks(ks, H)
    if random_draws < 0:
        raise ValueError(f"random_draws={random_draws} must be 0 or more")
    if scorer is None:
        from ..scorers import ClipScorer

        scorer = ClipScorer()
    pairs = prompt_targets(prompts, concept, hrv, targets, templates)
    items = make_items(pairs, seeds, max_prompts)
    orders = ["morhf", "lerhf"] + (["random"] if random_draws else [])

    conditions = plan_conditions(hrv, concept, ks, token_sets, random_draws, random_seed)
    jobs: dict = {}
    for c in conditions:
        jobs.setdefault(c.key, []).append(c)

    run_settings = {"analysis": "ordered_weakening", "concept": concept, "hrv_fingerprint": hrv.heads.fingerprint,
                    "ks": ks, "items": [asdict(i) for i in items], "factor": factor, "tokens": token_sets,
                    "random_draws": random_draws, "random_seed": random_seed, "steps": list(steps),
                    "generation": asdict(settings), "scorer": getattr(scorer, "name", type(scorer).__name__)}
    files: dict[str, Path] = {}
    done: dict[tuple, float] = {}
    log = None
    if out is not None:
        d = prepare_out(out, run_settings, resume, "scores.csv")
        files["scores"] = d / "scores.csv"
        if resume and files["scores"].exists():
            for r in read_csv(files["scores"]):
                done[(r["tokens"], r["order"], int(r["draw"]), int(r["k"]), int(r["item"]))] = float(r["score"])
        log = CsvLog(files["scores"], SCORE_HEADER)

    scores = {c: np.full(len(items), np.nan) for c in conditions}
    for c in conditions:
        for i in range(len(items)):
            if (c.tokens, c.order, c.draw, c.k, i) in done:
                scores[c][i] = done[(c.tokens, c.order, c.draw, c.k, i)]
    grid: dict = {}
    generated = 0
    todo = {key: [i for i in range(len(items)) if any(np.isnan(scores[c][i]) for c in conds)]
            for key, conds in jobs.items()}
    total = sum(len(v) for v in todo.values())
    if console is not None:
        console.print(f"ordered weakening of {concept!r}: {len(items)} prompt×seed items, {len(ks)} k values, "
                      f"{len(jobs)} distinct head sets → {total} generations", highlight=False)
    try:
        with progress_bar(progress, console) as bar:
            task = bar.add_task(f"weakening {concept}", total=total)
            for key, conds in jobs.items():
                idx = todo[key]
                if not idx:
                    continue
                sub = [items[i] for i in idx]
                setup = None
                if key != ():
                    heads, tok = sorted(key[0]), key[1]

                    def setup(s, heads=heads, tok=tok):
                        s.weaken(heads=heads, words="all", factor=factor, steps=steps, tokens=tok)
                pos = 0
                for batch, images in generate(pipe, sub, settings, setup):
                    values = scorer.score(images, [b.target for b in batch], [b.prompt for b in batch])
                    rows = []
                    for j, (it, im, v) in enumerate(zip(batch, images, values)):
                        i = idx[pos + j]
                        if i < grid_items:
                            grid[(key, i)] = im
                        for c in conds:
                            scores[c][i] = v
                            rows.append([c.tokens, c.order, c.draw, c.k, i, it.prompt, it.target, it.seed, v])
                    pos += len(batch)
                    generated += len(batch)
                    if log is not None:
                        log.write(rows)
                    bar.advance(task, len(batch))
    finally:
        if log is not None:
            log.close()

    curves, areas, vs_random, le_random = _summarise(conditions, scores, ks, token_sets, orders, random_draws, n_boot)
    result = WeakeningResult(concept, H, ks, items, curves, areas, vs_random, files, generated, le_random)
    if out is not None:
        files.update(_write_outputs(Path(out), result, conditions, grid, grid_items, token_sets, orders,
                                    random_draws, hrv.fingerprint))
    return result


def _summarise(conditions, scores, ks, token_sets, orders, random_draws, n_boot):
    n_items = len(next(iter(scores.values())))
    boot = bootstrap_indices(n_items, n_boot, seed=0)
    curves, per_item = [], {}
    for tok in token_sets:
        for order in orders:
            draws = random_draws if order == "random" else 1
            mat = np.stack([np.stack([scores[_find(conditions, tok, order, d, k)] for k in ks]) for d in range(draws)])
            m = mat.mean(axis=0)  # [ks, items]
            per_item[(tok, order)] = m
            samples = m[:, boot].mean(axis=-1).T  # [boot, ks]
            low, high = percentile_ci(samples)
            spread = mat.mean(axis=-1).std(axis=0) if order == "random" else None
            curves.append(Curve(order, tok, list(ks), m.mean(axis=-1), low, high, spread, m))
    areas, vs_random, le_random = {}, {}, {}
    for tok in token_sets:
        areas[tok] = _area(ks, per_item[(tok, "lerhf")], per_item[(tok, "morhf")], boot)
        if (tok, "random") in per_item:
            vs_random[tok] = _area(ks, per_item[(tok, "random")], per_item[(tok, "morhf")], boot)
            le_random[tok] = _area(ks, per_item[(tok, "lerhf")], per_item[(tok, "random")], boot)
    return curves, areas, vs_random, le_random


def _area(ks, upper, lower, boot) -> Area:
    value = normalised_area(ks, upper.mean(-1), lower.mean(-1))
    samples = normalised_area(ks, upper[:, boot].mean(-1).T, lower[:, boot].mean(-1).T)
    low, high = percentile_ci(np.asarray(samples))
    return Area(float(value), float(low), float(high))


def _find(conditions, tok, order, draw, k):
    for c in conditions:
        if c.tokens == tok and c.order == order and c.draw == draw and c.k == k:
            return c
    raise KeyError((tok, order, draw, k))


def area_lines(result: WeakeningResult, digits: int = 2) -> list[str]:
    """Both areas with their CIs, one line per token set: 'words: LeRHF − MoRHF +0.24 [0.10, 0.38]; random − …'."""
    lines = []
    for tok, a in result.areas.items():
        line = f"{tok}: LeRHF − MoRHF {format_ci(a.value, a.low, a.high, digits)}"
        if tok in result.areas_vs_random:
            v = result.areas_vs_random[tok]
            line += f"; random − MoRHF {format_ci(v.value, v.low, v.high, digits)}"
        lines.append(line)
    return lines


def _write_outputs(d: Path, r: WeakeningResult, conditions, grid, grid_items, token_sets, orders,
                   random_draws: int, hrv_id: str) -> dict[str, Path]:
    concept, H, curves, items, ks = r.concept, r.num_heads, r.curves, r.items, r.ks
    files: dict[str, Path] = {}
    files["curves"] = d / "curves.csv"
    with CsvLogWriter(files["curves"], ["tokens", "order", "k", "mean", "ci_low", "ci_high", "spread", "n"]) as w:
        for c in curves:
            for j, k in enumerate(c.ks):
                spread = "" if c.spread is None else f"{c.spread[j]:.6g}"
                w.write([[c.tokens, c.order, k, f"{c.mean[j]:.6g}", f"{c.low[j]:.6g}", f"{c.high[j]:.6g}", spread,
                          len(items)]])
    title = f"{concept}: ordered weakening ({len(items)} prompt×seed items)\n" + "\n".join(area_lines(r))
    title += f"\nverdict: {short_verdict(r.area_cis())}"
    files["plot"] = plot_curves(d / "curves.png", curves, title, random_draws=random_draws)
    n_cols = min(grid_items, len(items))
    for tok in token_sets:
        for order in orders:
            rows, labels = [], []
            for k in ks:
                key = _find(conditions, tok, order, 0, k).key
                rows.append([grid.get((key, i)) for i in range(n_cols)])
                labels.append(f"k={k}")
            suffix = "" if tok == "words" else "_" + tok.replace("+", "-")
            cols = [f"{items[i].target} s{items[i].seed}" for i in range(n_cols)]
            img = image_grid(rows, labels, cols, title=f"{concept} {order.upper()} {tok}")
            path = d / f"grid_{order}{suffix}.png"
            img.save(path)
            files[f"grid_{order}{suffix}"] = path
    summary = {
        "analysis": "ordered_weakening", "hrv_id": hrv_id, "concept": concept, "num_heads": H, "ks": ks,
        "items": len(items), "random_draws": random_draws,
        "area": {t: asdict(a) for t, a in r.areas.items()},
        "area_vs_random": {t: asdict(a) for t, a in r.areas_vs_random.items()},
        "area_lerhf_random": {t: asdict(a) for t, a in r.areas_lerhf_random.items()},
        "verdict": r.verdict,
        "curves": [{"order": c.order, "tokens": c.tokens, "mean": c.mean.tolist(), "ci_low": c.low.tolist(),
                    "ci_high": c.high.tolist()} for c in curves],
        "files": {k: str(v) for k, v in files.items()},
    }
    files["summary"] = d / "summary.json"
    files["summary"].write_text(json.dumps(summary, indent=2), encoding="utf-8")
    return files


class CsvLogWriter(CsvLog):
    """A :class:`CsvLog` that starts a fresh file (for derived tables) and closes as a context manager."""

    def __init__(self, path: Path, header):
        Path(path).unlink(missing_ok=True)
        super().__init__(path, header)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


__all__ = ["ORDERS", "TOKEN_SETS", "Area", "Condition", "Curve", "WeakeningResult", "default_ks", "head_order",
           "area_lines", "ordered_weakening", "plan_conditions"]
