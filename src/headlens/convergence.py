"""How many prompts an HRV needs: bootstrap intervals, rank stability, and a stopping rule.

All of it works on the per-prompt vote store ``[prompts, heads, concepts]`` that
``build(..., per_prompt=True)`` / ``headlens build --per-prompt`` keeps (summed over timesteps).

* :func:`bootstrap_ci` — percentile intervals per HRV element, resampling prompts with replacement.
* :func:`stability_curve` — Spearman correlation of each concept's HRV (head ranking) after the
  first n prompts with the final one, and the overlap of their top-k head sets.
* :class:`StabilityTracker` / :func:`prompts_until_stable` — the ``--until-stable`` rule: stop
  once no concept's top-k head set has changed for ``window`` prompts (online during a build;
  offline on a finished store, giving the same answer when checked at the same points).
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from .votes import _rank, hrv_from_votes

__all__ = [
    "BootstrapCI",
    "StabilityTracker",
    "bootstrap_ci",
    "convergence_report",
    "hrv_batch",
    "plot_stability",
    "prompts_until_stable",
    "spearman_or_nan",
    "stability_curve",
    "top_sets",
]


# ---------------------------------------------------------------------------------------------- maths
def hrv_batch(votes: torch.Tensor) -> torch.Tensor:
    """HRVs ``[..., C, H]`` from summed votes ``[..., H, C]``: :func:`headlens.votes.hrv_from_votes`, batched."""
    v = votes.to(torch.float64)
    num_heads = v.shape[-2]
    per_head = v.sum(dim=-1, keepdim=True)
    p = torch.where(per_head > 0, v / per_head.clamp_min(1e-30), torch.zeros_like(v))
    per_concept = p.sum(dim=-2, keepdim=True)
    hrv = torch.where(per_concept > 0, num_heads * p / per_concept.clamp_min(1e-30), torch.ones_like(p))
    return hrv.transpose(-1, -2).to(torch.float32).contiguous()


def top_sets(matrix: torch.Tensor, k: int) -> list[tuple[int, ...]]:
    """Each concept's k most relevant heads (HRV order, ties by head index), as sorted tuples."""
    order = torch.argsort(-matrix, dim=1, stable=True)[:, :k]
    return [tuple(sorted(int(i) for i in row)) for row in order]


def spearman_or_nan(a: torch.Tensor, b: torch.Tensor) -> float:
    """Spearman correlation (average ranks for ties); 1.0 for equal vectors, NaN if one is constant."""
    if torch.equal(a, b):
        return 1.0
    ra, rb = _rank(a.double()), _rank(b.double())
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denom = float(ra.norm() * rb.norm())
    return float(ra @ rb) / denom if denom > 0 else math.nan


# ---------------------------------------------------------------------------------------------- stopping rule
class StabilityTracker:
    """The ``--until-stable`` rule: stable once no concept's top-``top`` head set changed for ``window`` prompts."""

    def __init__(self, top: int = 10, window: int = 100):
        if top < 1 or window < 1:
            raise ValueError(f"top and window must be ≥ 1 (got {top}, {window})")
        self.top = top
        self.window = window
        self.sets: list[tuple[int, ...]] | None = None
        self.since = 0  # prompts done when the current sets first appeared
        self.prompts = 0  # prompts done at the last update
        self.history: list[tuple[int, int]] = []  # (prompts, concepts whose set changed)

    def update(self, votes: torch.Tensor, prompts_done: int) -> bool:
        """Feed summed votes ``[H, C]`` after ``prompts_done`` prompts; returns :attr:`stable`."""
        sets = top_sets(hrv_from_votes(votes), self.top)
        changed = len(sets) if self.sets is None else sum(a != b for a, b in zip(sets, self.sets))
        if changed:
            self.sets, self.since = sets, prompts_done
        self.prompts = prompts_done
        self.history.append((prompts_done, changed))
        return self.stable

    @property
    def stable(self) -> bool:
        """True once the top sets have held for ``window`` prompts."""
        return self.sets is not None and self.prompts - self.since >= self.window

    def state(self) -> dict:
        """JSON-able state (saved in checkpoints so a resumed run keeps its count)."""
        return {"top": self.top, "window": self.window, "sets": [list(s) for s in self.sets or []] or None,
                "since": self.since, "prompts": self.prompts, "stable": self.stable,
                "history": [list(h) for h in self.history]}

    @classmethod
    def from_state(cls, state: dict | None, top: int, window: int) -> StabilityTracker:
        """A tracker continuing ``state`` if it used the same ``top`` (a new window is allowed)."""
        t = cls(top, window)
        if state and int(state.get("top", -1)) == top and state.get("sets"):
            t.sets = [tuple(s) for s in state["sets"]]
            t.since, t.prompts = int(state["since"]), int(state["prompts"])
            t.history = [tuple(h) for h in state.get("history", [])]
        return t


def prompts_until_stable(prompt_votes: torch.Tensor, top: int = 10, window: int = 100, step: int = 1,
                         done: torch.Tensor | None = None) -> int | None:
    """Prompts after which the ``--until-stable`` rule (checked every ``step`` prompts) would stop; None if never.

    With ``step`` = the build's batch size this is exactly where a one-process
    ``build(until_stable=window, stable_top=top)`` stops (the counts are the same integers).
    """
    pv = _done_rows(prompt_votes, done)
    tracker = StabilityTracker(top, window)
    total = torch.zeros(pv.shape[1:], dtype=torch.int64)
    for start in range(0, pv.shape[0], step):
        total += pv[start : start + step].to(torch.int64).sum(dim=0)
        if tracker.update(total, min(start + step, pv.shape[0])):
            return tracker.prompts
    return None


def _done_rows(prompt_votes: torch.Tensor, done: torch.Tensor | None) -> torch.Tensor:
    if prompt_votes.ndim != 3:
        raise ValueError(f"per-prompt votes must be [prompts, heads, concepts], got shape {tuple(prompt_votes.shape)}")
    pv = prompt_votes[done.to(torch.bool)] if done is not None else prompt_votes
    if pv.shape[0] == 0:
        raise ValueError("no prompt has per-prompt votes yet")
    return pv


# ---------------------------------------------------------------------------------------------- bootstrap
@dataclass
class BootstrapCI:
    """Percentile bootstrap intervals of every HRV element (``[C, H]`` tensors)."""

    point: torch.Tensor
    low: torch.Tensor
    high: torch.Tensor
    std: torch.Tensor
    level: float
    num_prompts: int
    num_boot: int

    @property
    def width(self) -> torch.Tensor:
        """high − low, ``[C, H]``."""
        return self.high - self.low

    def contains_point(self) -> torch.Tensor:
        """``[C, H]`` bool: does each interval contain the point estimate?"""
        return (self.low <= self.point) & (self.point <= self.high)


def bootstrap_ci(prompt_votes: torch.Tensor, num_boot: int = 1000, level: float = 0.95, seed: int = 0,
                 done: torch.Tensor | None = None, chunk: int = 64) -> BootstrapCI:
    """Percentile intervals of the HRV matrix by resampling prompts with replacement.

    Each resample draws P prompts out of the P done ones; its votes are a weighted sum of the
    per-prompt counts (one matmul per chunk of resamples). Memory: ``num_boot × C × H`` floats.
    """
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    if num_boot < 2:
        raise ValueError(f"num_boot must be ≥ 2, got {num_boot}")
    pv = _done_rows(prompt_votes, done)
    p, h, c = pv.shape
    point = hrv_from_votes(pv.to(torch.int64).sum(dim=0))
    # integer sums stay exact in float32 below 2**24
    exact32 = float(pv.to(torch.int64).sum(dim=0).max()) * p < 2**24
    ftype = torch.float32 if exact32 else torch.float64
    x = pv.reshape(p, h * c).to(ftype)
    g = torch.Generator().manual_seed(seed)
    samples = torch.empty((num_boot, c, h), dtype=torch.float32)
    for i in range(0, num_boot, chunk):
        nb = min(chunk, num_boot - i)
        idx = torch.randint(p, (nb, p), generator=g)
        w = torch.zeros((nb, p), dtype=ftype).scatter_add_(1, idx, torch.ones((nb, p), dtype=ftype))
        votes = (w @ x).round().reshape(nb, h, c)
        samples[i : i + nb] = hrv_batch(votes)
    ordered, _ = samples.sort(dim=0)
    lo = _quantile_sorted(ordered, (1 - level) / 2)
    hi = _quantile_sorted(ordered, 1 - (1 - level) / 2)
    return BootstrapCI(point, lo, hi, samples.std(dim=0), level, p, num_boot)


def _quantile_sorted(ordered: torch.Tensor, q: float) -> torch.Tensor:
    """Linear-interpolation quantile (numpy's default) along dim 0 of sorted samples."""
    pos = q * (ordered.shape[0] - 1)
    lo, frac = math.floor(pos), pos - math.floor(pos)
    hi = min(lo + 1, ordered.shape[0] - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * frac


# ---------------------------------------------------------------------------------------------- curves
def curve_points(num_prompts: int, points: int = 20, step: int = 1) -> list[int]:
    """About ``points`` prefix sizes from ``step`` to ``num_prompts`` (log-spaced, multiples of ``step``, last included)."""
    if num_prompts < 1:
        return []
    out = set()
    for i in range(points):
        n = math.exp(math.log(max(step, 1)) + (math.log(num_prompts) - math.log(max(step, 1))) * i / max(points - 1, 1))
        n = max(step, round(n / step) * step)
        out.add(min(n, num_prompts))
    out.add(num_prompts)
    return sorted(out)


def stability_curve(prompt_votes: torch.Tensor, concepts: Sequence[str], points: int | Sequence[int] = 20,
                    top: int = 10, done: torch.Tensor | None = None, step: int = 1) -> list[dict]:
    """Rows ``{prompts, concept, spearman, top_overlap}``: each concept's HRV after n prompts vs the final one.

    ``spearman`` is 1.0 at the last point by construction; ``top_overlap`` is the share of the
    final top-``top`` heads already in the top-``top`` after n prompts.
    """
    pv = _done_rows(prompt_votes, done)
    total = pv.to(torch.int64).sum(dim=0)
    final = hrv_from_votes(total)
    final_sets = top_sets(final, top)
    ns = curve_points(pv.shape[0], points, step) if isinstance(points, int) else sorted({int(n) for n in points})
    rows = []
    running = torch.zeros_like(total)
    at = 0
    for n in ns:
        running += pv[at:n].to(torch.int64).sum(dim=0)
        at = n
        m = hrv_from_votes(running)
        sets = top_sets(m, top)
        for ci, name in enumerate(concepts):
            rows.append({"prompts": n, "concept": name, "spearman": spearman_or_nan(m[ci], final[ci]),
                         "top_overlap": len(set(sets[ci]) & set(final_sets[ci])) / len(final_sets[ci])})
    return rows


def plot_stability(rows: list[dict], path: str | Path, top: int = 10, title: str = "") -> Path:
    """Two-panel PNG: Spearman vs final and top-k overlap vs final, one line per concept + the median."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    concepts = list(dict.fromkeys(r["concept"] for r in rows))
    ns = sorted({r["prompts"] for r in rows})
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, key, label in ((axes[0], "spearman", "Spearman ρ vs final HRV"),
                           (axes[1], "top_overlap", f"top-{top} overlap with final")):
        for c in concepts:
            ys = [r[key] for r in rows if r["concept"] == c]
            ax.plot(ns, ys, lw=0.9, alpha=0.6, label=c if len(concepts) <= 12 else None)
        med = [float(torch.tensor([r[key] for r in rows if r["prompts"] == n]).nanmedian()) for n in ns]
        ax.plot(ns, med, color="black", lw=2.2, label="median over concepts")
        ax.set_xscale("log")
        ax.set_xlabel("prompts")
        ax.set_ylabel(label)
        ax.set_ylim(-0.05 if key == "top_overlap" else None, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right", fontsize=7, ncol=2)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    p = Path(path)
    fig.savefig(p, dpi=120)
    plt.close(fig)
    return p


def convergence_report(hrv_dir: str | Path, out: str | Path, *, num_boot: int = 1000, level: float = 0.95,
                       top: int = 10, window: int | None = None, points: int = 20, seed: int = 0) -> dict:
    """Write ``stability.csv``, ``stability.png``, ``intervals.csv`` and ``summary.json`` for an HRV folder."""
    from .distributed import read_prompt_votes
    from .hrv import HRV

    hrv = HRV.load(hrv_dir)
    pv, done, _meta = read_prompt_votes(hrv_dir)
    if tuple(pv.shape[1:]) != (len(hrv.heads), len(hrv.concepts)):
        raise ValueError(f"{hrv_dir}: per-prompt votes {tuple(pv.shape)} do not fit this HRV's heads × concepts")
    if int(pv[done].to(torch.int64).sum()) != int(hrv.votes.sum()):
        raise ValueError(f"{hrv_dir}: per-prompt votes do not add up to the HRV's counts (files from different runs?)")
    n = int(done.sum())
    step = int(hrv.metadata.get("batch_size", 1) or 1)
    top = min(top, len(hrv.heads))
    window = window or max(step, n // 4)
    o = Path(out)
    o.mkdir(parents=True, exist_ok=True)
    rows = stability_curve(pv, hrv.concepts, points, top, done, step)
    with open(o / "stability.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=["prompts", "concept", "spearman", "top_overlap"])
        w.writeheader()
        w.writerows(rows)
    model = str(hrv.metadata.get("model", ""))
    model = Path(model).name if "/" in model and Path(model).exists() else model
    plot_stability(rows, o / "stability.png", top, f"{model}: HRV rank stability ({n} prompts)")
    ci = bootstrap_ci(pv, num_boot, level, seed, done)
    with open(o / "intervals.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["concept", "head", "short_name", "hrv", "low", "high", "std"])
        for c, name in enumerate(hrv.concepts):
            for h in range(len(hrv.heads)):
                w.writerow([name, hrv.heads[h].name, hrv.heads[h].short_name, f"{float(ci.point[c, h]):.6g}",
                            f"{float(ci.low[c, h]):.6g}", f"{float(ci.high[c, h]):.6g}", f"{float(ci.std[c, h]):.6g}"])
    stable_at = prompts_until_stable(pv, top, window, step, done)
    last = [r for r in rows if r["prompts"] == rows[-1]["prompts"]]
    summary = {
        "hrv": str(hrv_dir), "prompts": n, "concepts": hrv.concepts, "heads": len(hrv.heads), "bootstrap": num_boot,
        "level": level, "mean_interval_width": {name: float(ci.width[c].mean()) for c, name in enumerate(hrv.concepts)},
        "interval_contains_point": float(ci.contains_point().float().mean()),
        "top": top, "window": window, "batch_size": step, "stable_after_prompts": stable_at,
        "spearman_at": {str(r["prompts"]): _median([x["spearman"] for x in rows if x["prompts"] == r["prompts"]])
                        for r in rows if r["concept"] == hrv.concepts[0]},
        "final_spearman_min": min(r["spearman"] for r in last),
    }
    (o / "summary.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
    return summary


def _median(xs: list[float]) -> float:
    t = torch.tensor(xs, dtype=torch.float64)
    return float(t.nanmedian()) if len(t) else math.nan
