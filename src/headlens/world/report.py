"""Small helpers for world reports: bootstrap CIs and markdown sections in docs/world.md."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np


def bootstrap_ci(values, n_boot: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """Mean and 95 % percentile-bootstrap interval of a 0/1 (or real) vector."""
    v = np.asarray(values, dtype=float)
    if len(v) == 0:
        return float("nan"), float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = v[rng.integers(0, len(v), (n_boot, len(v)))].mean(1)
    return float(v.mean()), float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def fmt_ci(values) -> str:
    """'93.0 % [90.1, 95.6] (n=300)'."""
    m, lo, hi = bootstrap_ci(values)
    return f"{100 * m:.1f} % [{100 * lo:.1f}, {100 * hi:.1f}] (n={len(values)})"


def write_section(path: str | Path, key: str, markdown: str) -> None:
    """Replace (or append) the block between <!-- key:begin --> and <!-- key:end --> in a markdown file."""
    path = Path(path)
    text = path.read_text() if path.exists() else ""
    begin, end = f"<!-- {key}:begin -->", f"<!-- {key}:end -->"
    block = f"{begin}\n{markdown.strip()}\n{end}"
    if begin in text and end in text:
        text = re.sub(re.escape(begin) + r".*?" + re.escape(end), lambda _: block, text, flags=re.DOTALL)
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    path.write_text(text)
