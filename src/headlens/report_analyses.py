"""Analyses of an HRV for the HTML report: found beside (or inside) its folder, shown with their headline numbers.

An analysis folder *names* an HRV when one of its run files (``summary.json``, ``run.json``) records the
HRV's :attr:`~headlens.hrv.HRV.fingerprint` as ``hrv_id`` — `headlens weaken`, `validate`, `generate`,
`edit`, `excite` and `maps` write it. Each kind gets a short section: ordered weakening (both areas
with 95% CIs and the verdict), causal head effects (Spearman with CI and permutation p, the heads with
the largest effect), steering (share of seeds whose reading changed), edits and A&E (success rates per
method), attention maps; then its main picture. Anything else found inside the HRV folder is still
listed file by file.
"""

from __future__ import annotations

import csv
import html
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .analysis.verdict import (
    LERHF_MORHF,
    LERHF_RANDOM,
    RANDOM_MORHF,
    format_ci,
    ranking_verdict,
    weakening_verdict,
)

RUN_FILES = ("summary.json", "run.json")


@dataclass
class Analysis:
    """One analysis folder: its kind, a title, the headline HTML and the files it accounts for."""

    folder: Path
    kind: str
    title: str
    body: str = ""
    files: list[Path] = field(default_factory=list)


def _e(x) -> str:
    return html.escape(str(x), quote=True)


def _read_json(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def run_info(folder: Path) -> dict | None:
    """The folder's summary.json or run.json (first found), or None."""
    for name in RUN_FILES:
        data = _read_json(folder / name)
        if data is not None:
            return data
    return None


def names_hrv(folder: Path, hrv_id: str) -> bool:
    """Whether the folder's run files record this HRV (``hrv_id``)."""
    for name in RUN_FILES:
        data = _read_json(folder / name)
        if data is not None and data.get("hrv_id") == hrv_id:
            return True
    index = _read_json(folder / "index.json") if (folder / "index.json").is_file() else None
    if isinstance(index, dict) and index.get("hrv_id") == hrv_id:
        return True
    return False


def find_analyses(hrv_dir: Path, hrv_id: str, exclude: tuple[Path, ...] = ()) -> list[Path]:
    """Analysis folders inside ``hrv_dir`` and beside it (siblings, one level deep) that name this HRV."""
    hrv_dir = Path(hrv_dir).resolve()
    skip = {Path(p).resolve() for p in exclude}
    found: list[Path] = []
    candidates = [p for p in sorted(hrv_dir.rglob("*")) if p.is_dir()]
    if hrv_dir.parent != hrv_dir:
        siblings = [p for p in sorted(hrv_dir.parent.iterdir()) if p.is_dir() and p != hrv_dir]
        for p in siblings:
            candidates.append(p)
            candidates += [q for q in sorted(p.iterdir()) if q.is_dir()]
    for d in candidates:
        if d in skip or any(s in d.parents for s in skip) or any(f in d.parents for f in found):
            continue
        if names_hrv(d, hrv_id):
            found.append(d)
    return found


# ---------------------------------------------------------------------------------------------- kinds
def _table(header: list[str], rows: list[list]) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_e(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _ci(d: dict | None, digits: int = 2) -> str:
    if not d or d.get("value") is None:
        return "—"
    return format_ci(d["value"], d["low"], d["high"], digits)


def _weakening(folder: Path, s: dict) -> Analysis:
    rows = []
    for tok, a in s.get("area", {}).items():
        r = s.get("area_vs_random", {}).get(tok)
        lr = s.get("area_lerhf_random", {}).get(tok)
        cis = {tok: {k: v for k, v in ((LERHF_MORHF, a), (RANDOM_MORHF, r), (LERHF_RANDOM, lr)) if v is not None}}
        rows.append([tok, _ci(a), _ci(r), weakening_verdict(cis)])
    body = (f"<p>{_e(s.get('items', '?'))} prompt×seed items, k = {_e(', '.join(map(str, s.get('ks', []))))} of "
            f"{_e(s.get('num_heads', '?'))} heads. Areas are normalised areas between the curves with 95% bootstrap "
            "CIs; positive means weakening the HRV's top heads (MoRHF) hurts the concept more.</p>")
    body += _table(["tokens", "LeRHF − MoRHF", "random − MoRHF", "verdict"], rows)
    return Analysis(folder, "weakening", f"Ordered weakening — {s.get('concept', '?')}", body,
                    [folder / "curves.png"])


def _effects(folder: Path, s: dict) -> Analysis:
    rho, ci, p = s.get("spearman"), s.get("spearman_ci") or [None, None], s.get("spearman_p")
    parts = [f"{_e(s.get('items', '?'))} prompt×seed items, {_e(len(s.get('heads', [])))} heads weakened one at a "
             "time."]
    if rho is not None and ci[0] is not None:
        line = f"Spearman(causal effect, HRV) {format_ci(rho, ci[0], ci[1])}"
        if p is not None:
            line += f", permutation p {p:.2f} — {ranking_verdict(rho, p)}"
        parts.append(line + ".")
    if s.get("no_effect_heads"):
        parts.append(f"{s['no_effect_heads']} of {len(s.get('heads', []))} heads had no measurable effect.")
    body = "<p>" + " ".join(_e(x) if i else x for i, x in enumerate(parts)) + "</p>"
    rows = []
    path = folder / "head_effects.csv"
    if path.is_file():
        with open(path, newline="", encoding="utf-8") as f:
            table = sorted(csv.DictReader(f), key=lambda r: int(r["causal_rank"]))
        for r in table[:5]:
            rows.append([r["causal_rank"], r["name"].split(".attn2.")[-1] if "." in r["name"] else r["name"],
                         format_ci(float(r["effect"]), float(r["ci_low"]), float(r["ci_high"]), 3),
                         f"{float(r['hrv']):.2f}", r["hrv_rank"]])
    if rows:
        body += "<h4>Largest causal effects</h4>" + _table(["rank", "head", "effect [95% CI]", "HRV", "HRV rank"], rows)
    return Analysis(folder, "effects", f"Causal head effects — {s.get('concept', '?')}", body, [folder / "effects.png"])


def _steering(folder: Path, runs: list[tuple[Path, dict]]) -> Analysis:
    rows, pics = [], []
    for sub, run in runs:
        steer = "; ".join([f"adjust '{w}' toward {t}, away from {a}" for w, t, a in run.get("adjust", [])]
                          + [f"strengthen '{w}' as {c}" for w, c in run.get("strengthen", [])])
        rd = run.get("readings")
        changed = (f"{sum(rd['changed'])} of {len(rd['changed'])} seeds ({100 * rd['changed_share']:.0f} %)"
                   if rd else "— (no scorer)")
        rows.append([run.get("prompt", ""), steer, rd.get("scorer", "") if rd else "", changed])
        pics.append(sub / "grid.png")
    body = ("<p>Plain and steered images of the same seeds; a seed <em>changed</em> when the scorer reads "
            "something different in the steered image.</p>")
    body += _table(["prompt", "steering", "scorer", "reading changed"], rows)
    return Analysis(folder, "steering", "Steering (plain vs steered)", body, pics)


def _rates(path: Path, value: str, group: str = "method") -> list[list]:
    from .analysis.stats import mean_ci

    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    by: dict[str, list[float]] = {}
    for r in rows:
        if r.get(value) not in (None, ""):
            by.setdefault(r[group], []).append(float(r[value]))
    out = []
    for name, vals in by.items():
        m, lo, hi = mean_ci(vals)
        out.append([name, len(vals), f"{100 * m:.1f} % [{100 * lo:.1f}, {100 * hi:.1f}]"])
    return out


def _edits(folder: Path, run: dict) -> Analysis:
    body = "<p>Prompt-to-Prompt edits (source | P2P | P2P-HRV).</p>"
    scores = folder / "scores.csv"
    if scores.is_file():
        header = scores.read_text(encoding="utf-8").splitlines()[0].split(",")
        if "attribute" in header:
            body += "<h4>Edit success: the edited attribute reads as the target word</h4>"
            body += _table(["method", "n", "success rate [95% CI]"], _rates(scores, "attribute"))
        elif "clip_word" in header:
            body += "<h4>CLIP similarity to the target word (mean)</h4>" + _table(
                ["method", "n", "mean"], [[m, n, v.replace(" %", "").split(" [")[0]] for m, n, v in
                                          _rates(scores, "clip_word")])
    pics = sorted(folder.glob("*/grid.png"))[:4]
    return Analysis(folder, "edit", "Edits (P2P vs P2P-HRV)", body, pics)


def _excite(folder: Path, run: dict) -> Analysis:
    body = "<p>Attend-and-Excite (SD | A&amp;E | A&amp;E-HRV) on prompts with several subjects.</p>"
    scores = folder / "scores.csv"
    if scores.is_file():
        header = scores.read_text(encoding="utf-8").splitlines()[0].split(",")
        if "min_object" in header:
            body += "<h4>Every subject present</h4>" + _table(["method", "n", "rate [95% CI]"],
                                                               _rates(scores, "min_object"))
    pics = sorted(folder.glob("*/grid.png"))[:4]
    return Analysis(folder, "excite", "Attend-and-Excite", body, pics)


def _maps(folder: Path, run: dict) -> Analysis:
    body = (f"<p>Per-head attention maps of “{_e(run.get('word', '?'))}” in “{_e(run.get('prompt', '?'))}”"
            f"{' (top heads of ' + _e(run['concept']) + ')' if run.get('concept') else ''}.</p>")
    return Analysis(folder, "maps", f"Attention maps — {run.get('word', '?')}", body, [folder / "maps.png"])


def describe(folder: Path) -> Analysis | None:
    """The analysis in ``folder`` with its headline numbers, or None when it is no known kind."""
    folder = Path(folder)
    s = _read_json(folder / "summary.json")
    if s is not None:
        if s.get("analysis") == "ordered_weakening" or ("area" in s and "curves" in s):
            return _weakening(folder, s)
        if s.get("analysis") == "head_effects" or "spearman" in s:
            return _effects(folder, s)
    index = folder / "index.json"
    if index.is_file():
        entries = _read_json_list(index)
        runs = [(Path(e["folder"]), _read_json(Path(e["folder"]) / "run.json")) for e in entries if "folder" in e]
        runs = [(folder / p.name if not p.is_dir() else p, r) for p, r in runs if r is not None]
        if runs:
            return _steering(folder, runs)
    run = _read_json(folder / "run.json")
    if run is not None:
        if "adjust" in run or "strengthen" in run:
            return _steering(folder, [(folder, run)])
        if "p2p" in run:
            return _edits(folder, run)
        if "max_iter" in run:
            return _excite(folder, run)
        if "word" in run and (folder / "maps.png").is_file():
            return _maps(folder, run)
    return None


def _read_json_list(path: Path) -> list:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    if isinstance(data, dict):
        data = data.get("runs", [])
    return data if isinstance(data, list) else []


def analysis_html(a: Analysis, image_tag: Callable[..., str], root: Path) -> str:
    """A section body: the headline numbers, then the analysis' pictures."""
    pics = []
    for p in a.files:
        if p.is_file():
            rel = p.relative_to(root).as_posix() if p.is_relative_to(root) else p.name
            pics.append(image_tag(p, rel, rel))
    where = f'<p class="note">folder: {_e(a.folder)}</p>'
    return a.body + "".join(pics) + where


__all__ = ["Analysis", "analysis_html", "describe", "find_analyses", "names_hrv", "run_info"]
