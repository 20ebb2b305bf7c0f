"""Figures of the analyses: labelled image grids (PIL) and curve plots (matplotlib, no display needed)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from ..scorers import to_pil


def font(size: int):
    """A TrueType font with arrows and accents (matplotlib's DejaVu Sans), else Pillow's default."""
    try:
        from matplotlib import font_manager

        return ImageFont.truetype(font_manager.findfont("DejaVu Sans"), size)
    except (ImportError, OSError, ValueError):
        pass
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


_font = font


def image_grid(rows: Sequence[Sequence], row_labels: Sequence[str] = (), col_labels: Sequence[str] = (),
               cell: int = 128, title: str | None = None, gap: int = 6) -> Image.Image:
    """A labelled grid of images with ``gap`` px between cells (``None`` cells stay gray).

    Images are scaled to ``cell`` px (nearest for small ones); labels and the title may hold several lines
    and any character DejaVu Sans has (→, ×, −).
    """
    n_rows, n_cols = len(rows), max((len(r) for r in rows), default=0)
    f = font(max(12, min(16, cell // 9)))
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))

    def extent(text: str) -> tuple[int, int]:
        box = probe.multiline_textbbox((0, 0), text, font=f, spacing=3)
        return box[2] - box[0], box[3] - box[1]

    pad = 6
    left = (max((extent(str(t))[0] for t in row_labels), default=0) + 2 * pad) if row_labels else pad
    col_h = max((extent(str(t))[1] for t in col_labels), default=0) + 2 * pad if col_labels else 0
    title_h = extent(title)[1] + 2 * pad if title else 0
    top = title_h + col_h
    step = cell + gap
    width = max(left + n_cols * step + pad, (extent(title)[0] + 2 * pad) if title else 0)
    canvas = Image.new("RGB", (width, top + n_rows * step + pad), "white")
    draw = ImageDraw.Draw(canvas)
    if title:
        draw.multiline_text((pad, pad), title, fill="black", font=f, spacing=3)
    for j, label in enumerate(col_labels):
        w, h = extent(str(label))
        draw.multiline_text((left + j * step + max(0, (cell - w) // 2), title_h + pad), str(label), fill="black",
                            font=f, spacing=3, align="center")
    for i, row in enumerate(rows):
        if i < len(row_labels):
            h = extent(str(row_labels[i]))[1]
            draw.multiline_text((pad, top + i * step + (cell - h) // 2), str(row_labels[i]), fill="black", font=f,
                                spacing=3)
        for j in range(n_cols):
            im = row[j] if j < len(row) else None
            x, y = left + j * step, top + i * step
            if im is None:
                draw.rectangle([x, y, x + cell - 1, y + cell - 1], fill=(200, 200, 200))
                continue
            im = to_pil(im)
            resample = Image.NEAREST if max(im.size) < cell else Image.BICUBIC
            canvas.paste(im.convert("RGB").resize((cell, cell), resample), (x, y))
    return canvas


def plot_curves(path: str | Path, curves: Sequence, title: str = "", ylabel: str = "score",
                random_draws: int | None = None) -> Path:
    """Line plot of weakening curves (mean with a shaded band) against k; writes a PNG.

    Bands: the 95% bootstrap CI over items for MoRHF and LeRHF; ± 1 s.d. over the random draws for the
    random control (the legend says which).
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    colors = {"morhf": "tab:red", "lerhf": "tab:blue", "random": "tab:gray"}
    draws = f"mean of {random_draws} draws" if random_draws else "mean over draws"
    names = {"morhf": "MoRHF: top-k heads weakened (band: 95% CI)",
             "lerhf": "LeRHF: bottom-k heads weakened (band: 95% CI)",
             "random": f"random k heads, {draws} (band: ±1 s.d. over draws)"}
    n_title = title.count("\n") + 1 if title else 0
    fig, ax = plt.subplots(figsize=(7.2, 4.4 + 0.22 * n_title), dpi=120)
    for c in curves:
        style = "-" if c.tokens == "words" else "--"
        label = names.get(c.order, c.order) + ("" if c.tokens == "words" else f" [{c.tokens}]")
        color = colors.get(c.order, None)
        ax.plot(c.ks, c.mean, style, marker="o", ms=3, color=color, label=label)
        lo, hi = c.band()
        ax.fill_between(c.ks, lo, hi, color=color, alpha=0.15, linewidth=0)
    ax.set_xlabel("k (heads weakened)")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10, loc="left")
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
