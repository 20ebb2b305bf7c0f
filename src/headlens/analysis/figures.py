"""Figures of the analyses: labelled image grids (PIL) and curve plots (matplotlib, no display needed)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from ..scorers import to_pil


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def image_grid(rows: Sequence[Sequence], row_labels: Sequence[str] = (), col_labels: Sequence[str] = (),
               cell: int = 128, title: str | None = None) -> Image.Image:
    """A labelled grid of images (``None`` cells stay gray); images are scaled to ``cell`` px (nearest for small ones)."""
    n_rows, n_cols = len(rows), max((len(r) for r in rows), default=0)
    font = _font(max(10, cell // 10))
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))

    def extent(text: str) -> tuple[int, int]:
        box = probe.multiline_textbbox((0, 0), text, font=font)
        return box[2] - box[0], box[3] - box[1]

    left = (max((extent(str(t))[0] for t in row_labels), default=0) + 12) if row_labels else 0
    line = font.size + 6 if hasattr(font, "size") else 16
    top = (line if col_labels else 0) + (line if title else 0)
    canvas = Image.new("RGB", (left + n_cols * cell + 2, top + n_rows * cell + 2), "white")
    draw = ImageDraw.Draw(canvas)
    if title:
        draw.text((4, 2), title, fill="black", font=font)
    for j, label in enumerate(col_labels):
        draw.text((left + j * cell + 4, top - line + 2), str(label), fill="black", font=font)
    for i, row in enumerate(rows):
        if i < len(row_labels):
            h = extent(str(row_labels[i]))[1]
            draw.multiline_text((4, top + i * cell + (cell - h) // 2), str(row_labels[i]), fill="black", font=font)
        for j in range(n_cols):
            im = row[j] if j < len(row) else None
            x, y = left + j * cell + 1, top + i * cell + 1
            if im is None:
                draw.rectangle([x, y, x + cell - 2, y + cell - 2], fill=(200, 200, 200))
                continue
            im = to_pil(im)
            resample = Image.NEAREST if max(im.size) < cell else Image.BICUBIC
            canvas.paste(im.resize((cell - 2, cell - 2), resample), (x, y))
    return canvas


def plot_curves(path: str | Path, curves: Sequence, title: str = "", ylabel: str = "score") -> Path:
    """Line plot of weakening curves (mean with a shaded band) against k; writes a PNG."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    colors = {"morhf": "tab:red", "lerhf": "tab:blue", "random": "tab:gray"}
    names = {"morhf": "MoRHF (top-k weakened)", "lerhf": "LeRHF (bottom-k weakened)", "random": "random k heads"}
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    for c in curves:
        style = "-" if c.tokens == "words" else "--"
        label = names.get(c.order, c.order) + ("" if c.tokens == "words" else f" [{c.tokens}]")
        color = colors.get(c.order, None)
        ax.plot(c.ks, c.mean, style, marker="o", ms=3, color=color, label=label)
        lo, hi = c.band()
        ax.fill_between(c.ks, lo, hi, color=color, alpha=0.15, linewidth=0)
    ax.set_xlabel("k (heads weakened)")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)


def plot_effects(path: str | Path, hrv_values, effects, low, high, title: str = "") -> Path:
    """Scatter of each head's HRV value against its causal effect (with CI bars); writes a PNG."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    import numpy as np

    e = np.asarray(effects)
    fig, ax = plt.subplots(figsize=(5.6, 4.2), dpi=120)
    ax.errorbar(hrv_values, e, yerr=[e - np.asarray(low), np.asarray(high) - e], fmt="o", ms=4, alpha=0.8,
                elinewidth=0.8)
    ax.axhline(0, color="black", lw=0.6)
    ax.set_xlabel("HRV value")
    ax.set_ylabel("score drop when the head alone is weakened")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)
