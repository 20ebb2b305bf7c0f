"""Causal head ranking: weaken each head alone, measure the score drop, compare with the HRV ranking.

For every selected head h, prompts × seeds are generated with only h weakened (all word tokens,
factor −2 by default) and scored; the head's *effect* is the mean drop of the score against the
unweakened images of the same prompt and seed. Heads ranked by effect are compared with their
HRV values by Spearman correlation, with a bootstrap 95% CI over prompt × seed items.
Costs (heads + 1) × prompts × seeds generations.

Files written to ``out``: ``scores.csv`` (one row per image, appended as it is scored),
``head_effects.csv`` (per head: HRV value, effect with CI, causal and HRV ranks), ``effects.png``,
``summary.json``, ``settings.json``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..steering import check_steps, check_tokens, resolve_heads
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
from .figures import plot_effects
from .verdict import format_ci
from .stats import bootstrap_indices, percentile_ci, permutation_p, spearman

SCORE_HEADER = ["head", "item", "prompt", "target", "seed", "score"]  # head -1: unweakened


def estimate_cost(num_heads: int, num_prompts: int, num_seeds: int) -> int:
    """Generations a causal ranking needs: (heads + 1 baseline) × prompts × seeds."""
    return (int(num_heads) + 1) * int(num_prompts) * int(num_seeds)


@dataclass
class HeadEffectsResult:
    """Per-head causal effects, their ranking and its agreement with the HRV."""

    concept: str
    heads: list[int]  # flat indices, in the order they were given
    names: list[str]
    hrv_values: np.ndarray  # [heads]
    effects: np.ndarray  # [heads] mean score drop (baseline − weakened)
    low: np.ndarray
    high: np.ndarray
    spearman: float | None  # Spearman(effects, HRV values); None without an HRV or with < 2 heads
    spearman_low: float | None
    spearman_high: float | None
    baseline: np.ndarray  # [items]
    scores: np.ndarray = field(repr=False)  # [heads, items]
    items: list[Item] = field(default_factory=list, repr=False)
    files: dict[str, Path] = field(default_factory=dict)
    generations: int = 0
    spearman_p: float | None = None  # two-sided permutation p-value of the Spearman correlation

    @property
    def no_effect(self) -> list[int]:
        """Heads whose effect is 0 and whose CI is [0, 0]: weakening them changed no score at all."""
        return [h for j, h in enumerate(self.heads)
                if self.effects[j] == 0 and self.low[j] == 0 and self.high[j] == 0]

    @property
    def ranking(self) -> list[int]:
        """Heads by causal effect, largest drop first (ties by head index)."""
        order = sorted(range(len(self.heads)), key=lambda j: (-float(self.effects[j]), self.heads[j]))
        return [self.heads[j] for j in order]


def head_effects(pipe, hrv, concept: str, prompts=None, seeds: Sequence[int] = DEFAULT_SEEDS, heads=None,
                 scorer=None, out: str | Path | None = None, *, targets: Sequence[str] | None = None,
                 templates: str | Path | None = None, factor: float = -2.0, tokens: str = "words",
                 steps: tuple[float, float] = (0.0, 1.0), settings: GenerationSettings | None = None,
                 max_prompts: int | None = None, n_boot: int = 1000, resume: bool = False, progress: bool = True,
                 console=None) -> HeadEffectsResult:
    """Weaken each head of ``heads`` (default: all) alone and rank heads by the drop of ``concept``'s score.

    ``prompts`` as in :func:`~headlens.analysis.ordered_weakening`; ``heads`` as indices, names or ``"all"``.
    """
    from ..heads import HeadIndex

    index = HeadIndex.from_model(pipe)
    if hrv is not None:
        hrv.check_layout(index)
        concept = hrv.concepts[hrv.concept_index(concept)]
    selected = resolve_heads(index, "all" if heads is None else heads)
    if not selected:
        raise ValueError("no heads selected; give head indices or names, or 'all'")
    settings = settings or GenerationSettings()
    settings.validate()
    check_steps(steps)
    check_tokens(tokens)
    if scorer is None:
        from ..scorers import ClipScorer

        scorer = ClipScorer()
    pairs = prompt_targets(prompts, concept, hrv, targets, templates)
    items = make_items(pairs, seeds, max_prompts)
    cost = estimate_cost(len(selected), len(items), 1)
    if console is not None:
        console.print(f"causal ranking of {concept!r}: ({len(selected)} heads + 1 baseline) × {len(items)} "
                      f"prompt×seed items = {cost} generations", highlight=False)

    run_settings = {"analysis": "head_effects", "concept": concept, "heads": selected, "items": [asdict(i) for i in items],
                    "factor": factor, "tokens": tokens, "steps": list(steps), "generation": asdict(settings),
                    "layout": index.fingerprint, "scorer": getattr(scorer, "name", type(scorer).__name__)}
    files: dict[str, Path] = {}
    scores = np.full((len(selected) + 1, len(items)), np.nan)  # row 0: baseline
    log = None
    if out is not None:
        d = prepare_out(out, run_settings, resume, "scores.csv")
        files["scores"] = d / "scores.csv"
        if resume and files["scores"].exists():
            row_of = {h: j + 1 for j, h in enumerate(selected)} | {-1: 0}
            for r in read_csv(files["scores"]):
                if int(r["head"]) in row_of:
                    scores[row_of[int(r["head"])], int(r["item"])] = float(r["score"])
        log = CsvLog(files["scores"], SCORE_HEADER)
    generated = 0
    todo = [(row, [i for i in range(len(items)) if np.isnan(scores[row, i])]) for row in range(len(selected) + 1)]
    try:
        with progress_bar(progress, console) as bar:
            task = bar.add_task(f"heads of {concept}", total=sum(len(i) for _, i in todo))
            for row, idx in todo:
                if not idx:
                    continue
                head = -1 if row == 0 else selected[row - 1]
                setup = None if row == 0 else (
                    lambda s, h=head: s.weaken(heads=[h], words="all", factor=factor, steps=steps, tokens=tokens))
                pos = 0
                for batch, images in generate(pipe, [items[i] for i in idx], settings, setup):
                    values = scorer.score(images, [b.target for b in batch], [b.prompt for b in batch])
                    rows = []
                    for j, (it, v) in enumerate(zip(batch, values)):
                        i = idx[pos + j]
                        scores[row, i] = v
                        rows.append([head, i, it.prompt, it.target, it.seed, v])
                    pos += len(batch)
                    generated += len(batch)
                    if log is not None:
                        log.write(rows)
                    bar.advance(task, len(batch))
    finally:
        if log is not None:
            log.close()

    baseline, per_head = scores[0], scores[1:]
    drops = baseline[None, :] - per_head  # [heads, items]
    boot = bootstrap_indices(len(items), n_boot, seed=0)
    effects = drops.mean(axis=1)
    samples = drops[:, boot].mean(axis=-1).T  # [boot, heads]
    low, high = percentile_ci(samples)
    hrv_values = np.asarray(hrv[concept][selected].tolist()) if hrv is not None else np.full(len(selected), np.nan)
    rho = rho_low = rho_high = rho_p = None
    if hrv is not None and len(selected) > 1:
        rho = spearman(effects, hrv_values)
        rs = np.array([spearman(s, hrv_values) for s in samples])
        rho_low, rho_high = (float(x) for x in percentile_ci(rs))
        rho_p = permutation_p(effects, hrv_values, n_boot)
    result = HeadEffectsResult(concept, selected, [index[h].name for h in selected], hrv_values, effects, low, high,
                               rho, rho_low, rho_high, baseline, per_head, items, files, generated, rho_p)
    if out is not None:
        files.update(_write(Path(out), result, hrv.fingerprint if hrv is not None else None))
    return result


def _rank_positions(values: np.ndarray, heads: list[int]) -> list[int]:
    order = sorted(range(len(values)), key=lambda j: (-float(values[j]), heads[j]))
    ranks = [0] * len(values)
    for r, j in enumerate(order, 1):
        ranks[j] = r
    return ranks


def _write(d: Path, r: HeadEffectsResult, hrv_id: str | None = None) -> dict[str, Path]:
    import csv

    files: dict[str, Path] = {}
    files["effects"] = d / "head_effects.csv"
    causal = _rank_positions(r.effects, r.heads)
    by_hrv = _rank_positions(np.nan_to_num(r.hrv_values, nan=0.0), r.heads)
    with open(files["effects"], "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["head", "name", "hrv", "effect", "ci_low", "ci_high", "causal_rank", "hrv_rank"])
        for j, h in enumerate(r.heads):
            w.writerow([h, r.names[j], f"{r.hrv_values[j]:.6g}", f"{r.effects[j]:.6g}", f"{r.low[j]:.6g}",
                        f"{r.high[j]:.6g}", causal[j], by_hrv[j]])
    title = f"{r.concept}: causal effect per head"
    if r.spearman is not None:
        title += (f"\nSpearman vs HRV {format_ci(r.spearman, r.spearman_low, r.spearman_high)}, "
                  f"permutation p {r.spearman_p:.2f} ({len(r.items)} prompt×seed items)")
    files["plot"] = plot_effects(d / "effects.png", r.hrv_values, r.effects, r.low, r.high, title)
    files["summary"] = d / "summary.json"
    summary = {"analysis": "head_effects", "hrv_id": hrv_id, "concept": r.concept, "heads": r.heads, "items": len(r.items),
               "spearman": r.spearman, "spearman_ci": [r.spearman_low, r.spearman_high], "spearman_p": r.spearman_p,
               "no_effect_heads": len(r.no_effect), "ranking": r.ranking,
               "baseline_mean": float(np.mean(r.baseline)), "files": {k: str(v) for k, v in (r.files | files).items()}}
    files["summary"].write_text(json.dumps(summary, indent=2), encoding="utf-8")
    return files
