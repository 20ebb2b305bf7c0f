"""Pictures of Head Relevance Vectors (matplotlib, no pyplot state: every function returns a Figure).

The head axis is always drawn in canonical head order and labelled by *layer*, never by head, so
the same code serves 22, 128 and 1300 heads: thin lines mark layer boundaries, thick lines place
boundaries, and a band above the plot names the place (down/mid/up) and the layer resolution
(``32×32`` when the latent size is known, else relative to the latent, ``/2``).

:func:`save_all` writes the whole set (what ``headlens show`` does); the ``plot_*`` functions draw
one picture each; :func:`concept_similarity` and :func:`average_linkage` are the plain maths
behind the clustered similarity map.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .heads import PLACES, HeadIndex, Layer
from .hrv import HRV

PLACE_COLORS = {"down": "#4C72B0", "mid": "#DD8452", "up": "#55A868", "block": "#8172B3", "single": "#937860"}
PLACE_BAND_COLORS = {"down": "#C9D6EA", "mid": "#F4D4BD", "up": "#CDE6D2", "block": "#D9D4EA", "single": "#E4D9CF"}
HEAT_CMAP = "magma"
DPI = 100

# File names written by save_all (the report looks for these).
HEATMAP_FILE = "heatmap.png"
SIMILARITY_FILE = "similarity.png"
SIMILARITY_CSV = "similarity.csv"
TOP_HEADS_PNG = "top_heads.png"
TOP_HEADS_CSV = "top_heads.csv"
TOP_HEADS_MD = "top_heads.md"
TIMESTEP_SUMMARY_FILE = "timesteps.png"
BARS_DIR = "bars"
TIMESTEPS_DIR = "timesteps"


# ---------------------------------------------------------------------------------------------- head axis
@dataclass(frozen=True)
class Span:
    """A run of consecutive heads ``[start, stop)`` with a label (a layer, place or resolution)."""

    start: int
    stop: int
    label: str

    @property
    def centre(self) -> float:
        """Centre of the span in head coordinates (head i occupies [i − ½, i + ½])."""
        return (self.start + self.stop - 1) / 2


def latent_size_from_metadata(metadata: dict) -> tuple[int, int] | None:
    """The latent (height, width) a model ran at, if the HRV metadata says so; else None."""
    ls = metadata.get("latent_size")
    if ls:
        return (int(ls), int(ls)) if isinstance(ls, (int, float)) else (int(ls[0]), int(ls[1]))
    scale = metadata.get("vae_scale_factor")  # not assumed: small models (world, tiny) do not use 8
    h, w = metadata.get("height"), metadata.get("width")
    if scale and h and w:
        return (int(h) // int(scale), int(w) // int(scale))
    ss = metadata.get("sample_size")
    if ss:
        return (int(ss), int(ss)) if isinstance(ss, (int, float)) else (int(ss[0]), int(ss[1]))
    return None


def resolution_label(layer: Layer, latent_size: int | tuple[int, int] | None = None) -> str:
    """``"32×32"`` for a known latent size, else the downsampling relative to the latent (``"/2"``)."""
    if latent_size is None:
        return f"/{layer.downsample}"
    h, w = layer.resolution(latent_size)
    return f"{h}×{w}"


def layer_label(layer: Layer) -> str:
    """Compact layer label used on head axes, e.g. ``down1`` (place + layer inside the place)."""
    return f"{layer.place}{layer.place_layer}"


def layer_spans(heads: HeadIndex) -> list[Span]:
    """One span per cross-attention layer."""
    return [Span(l.head_offset, l.head_offset + l.num_heads, layer_label(l)) for l in heads.layers]


def place_spans(heads: HeadIndex) -> list[Span]:
    """One span per place (down, mid, up) that has heads."""
    out = []
    for place in PLACES:
        ls = [l for l in heads.layers if l.place == place]
        if ls:
            out.append(Span(ls[0].head_offset, ls[-1].head_offset + ls[-1].num_heads, place))
    return out


def resolution_spans(heads: HeadIndex, latent_size=None) -> list[Span]:
    """Runs of consecutive layers in the same place with the same resolution."""
    out: list[Span] = []
    prev = None
    for l in heads.layers:
        key = (l.place, l.downsample)
        if out and key == prev:
            out[-1] = Span(out[-1].start, l.head_offset + l.num_heads, out[-1].label)
        else:
            out.append(Span(l.head_offset, l.head_offset + l.num_heads, resolution_label(l, latent_size)))
        prev = key
    return out


def _fig_width(num_heads: int) -> float:
    """Figure width in inches: grows with the head count, capped so 1300 heads stay printable."""
    return float(min(max(6.0 + 0.055 * num_heads, 8.0), 22.0))


def _dpi_for(num_heads: int, axes_width_in: float) -> int:
    """Enough dots for ≥ 1.5 pixels per head, between 100 and 150 dpi."""
    return int(min(max(DPI, math.ceil(1.5 * num_heads / max(axes_width_in, 1e-6))), 150))


def _figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=DPI, layout=None)


def _thin(spans: Sequence[Span], px_per_head: float, need_px: float) -> list[Span]:
    """Keep span labels that are at least ``need_px`` apart (greedy, left to right)."""
    kept, last = [], -1e9
    for s in spans:
        x = s.centre * px_per_head
        if x - last >= need_px:
            kept.append(s)
            last = x
    return kept


def decorate_head_axis(ax, heads: HeadIndex, *, band_ax=None, latent_size=None, label_axis: bool = True,
                       line_color: str = "#9A9A9A", place_color: str = "white", fontsize: float = 7.0) -> None:
    """Layer boundaries, layer tick labels (thinned to fit) and the place/resolution band on a head axis."""
    n = len(heads)
    ax.set_xlim(-0.5, n - 0.5)
    fig = ax.figure
    width_px = ax.get_position().width * fig.get_figwidth() * fig.dpi
    px_per_head = width_px / max(n, 1)
    places = place_spans(heads)
    place_edges = {s.start for s in places[1:]}
    for l in heads.layers[1:]:
        x = l.head_offset - 0.5
        if l.head_offset in place_edges:
            ax.axvline(x, color=place_color, lw=1.6, zorder=5)
        else:
            ax.axvline(x, color=line_color, lw=0.5 if px_per_head * l.num_heads > 6 else 0.25, alpha=0.8, zorder=4)
    if label_axis:
        spans = layer_spans(heads)
        char_px = fontsize * fig.dpi / 72 * 0.62
        widest = max(len(s.label) for s in spans) * char_px
        narrowest = min((s.stop - s.start) for s in spans) * px_per_head
        rotate = narrowest < widest + 4
        need = fontsize * fig.dpi / 72 * 1.25 if rotate else widest + 6
        shown = _thin(spans, px_per_head, need)
        ax.set_xticks([s.centre for s in shown])
        ax.set_xticklabels([s.label for s in shown], rotation=90 if rotate else 0, fontsize=fontsize)
        ax.tick_params(axis="x", length=2)
        every = "" if len(shown) == len(spans) else f", {len(shown)} of {len(spans)} labelled"
        ax.set_xlabel(f"cross-attention layer ({n} heads in head order{every})", fontsize=8)
    else:
        ax.set_xticks([])
    if band_ax is not None:
        _draw_band(band_ax, heads, latent_size, px_per_head, fontsize)


def _draw_band(band_ax, heads: HeadIndex, latent_size, px_per_head: float, fontsize: float) -> None:
    from matplotlib.patches import Rectangle

    n = len(heads)
    band_ax.set_xlim(-0.5, n - 0.5)
    band_ax.set_ylim(0, 2)
    band_ax.axis("off")
    char_px = fontsize * band_ax.figure.dpi / 72 * 0.62
    for s in place_spans(heads):
        band_ax.add_patch(Rectangle((s.start - 0.5, 1.04), s.stop - s.start, 0.92,
                                    facecolor=PLACE_BAND_COLORS[s.label], edgecolor="black", lw=0.6))
        text = f"{s.label} ({s.stop - s.start} heads)"
        if len(text) * char_px > (s.stop - s.start) * px_per_head - 4:
            text = s.label
        if len(text) * char_px <= (s.stop - s.start) * px_per_head + 2:
            band_ax.text(s.centre, 1.5, text, ha="center", va="center", fontsize=fontsize + 0.5, fontweight="bold")
    for s in resolution_spans(heads, latent_size):
        band_ax.add_patch(Rectangle((s.start - 0.5, 0.04), s.stop - s.start, 0.92,
                                    facecolor="#F2F2F2", edgecolor="#777777", lw=0.4))
        if len(s.label) * char_px <= (s.stop - s.start) * px_per_head - 2:
            band_ax.text(s.centre, 0.5, s.label, ha="center", va="center", fontsize=fontsize, color="#333333")
    band_ax.text(-0.5, 0.5, "resolution ", ha="right", va="center", fontsize=fontsize, color="#333333")
    band_ax.text(-0.5, 1.5, "place ", ha="right", va="center", fontsize=fontsize, color="#333333")


def display_model_name(name) -> str:
    """A model name short enough for a title: hub ids as they are, local folders by their last two parts."""
    s = str(name or "unknown model")
    if not s.startswith(("/", ".", "~")) and "\\" not in s:
        return s
    p = Path(s).expanduser()
    try:
        from .world import VARIANTS, model_path

        for variant in VARIANTS:
            if p.resolve() == model_path(variant).resolve():
                return "headlens world model" if variant == "default" else f"headlens world-{variant} model"
    except (ImportError, OSError):
        pass
    return "/".join(p.parts[-2:]) if len(p.parts) > 1 else s


def _model_name(hrv: HRV) -> str:
    return display_model_name(hrv.metadata.get("model"))


def _robust_vmax(values: np.ndarray) -> float:
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return 1.0
    return float(max(np.quantile(finite, 0.995), 2.0))


def _select(hrv: HRV, concepts: Sequence[str] | None) -> list[str]:
    if concepts is None:
        return list(hrv.concepts)
    return [hrv.concepts[hrv.concept_index(c)] for c in concepts]


def slug(name: str) -> str:
    """File-name form of a concept name (``"Image style"`` → ``image-style``)."""
    s = re.sub(r"[^a-z0-9]+", "-", str(name).lower()).strip("-")
    return s or "concept"


# ---------------------------------------------------------------------------------------------- heatmap
def plot_heatmap(hrv: HRV, concepts: Sequence[str] | None = None, *, latent_size=None, vmax: float | None = None):
    """Concepts × heads heatmap of the HRVs, grouped by place, layer and resolution."""
    names = _select(hrv, concepts)
    heads = hrv.heads
    m = hrv.matrix.numpy()[[hrv.concept_index(c) for c in names]]
    latent_size = latent_size if latent_size is not None else latent_size_from_metadata(hrv.metadata)
    n, c = len(heads), len(names)
    width = _fig_width(n)
    row_in = 0.28 if c <= 12 else (0.2 if c <= 60 else max(0.08, 12.0 / c))
    height = 1.9 + c * row_in
    fig = _figure(width, height)
    left, right = 1.9 / width, 1 - 1.1 / width
    top_in, bottom_in, band_in = 0.55, 0.85, 0.36
    ax_h = (height - top_in - bottom_in - band_in) / height
    ax = fig.add_axes((left, bottom_in / height, right - left, ax_h))
    band = fig.add_axes((left, (bottom_in + 0.02) / height + ax_h, right - left, (band_in - 0.04) / height), sharex=ax)
    cax = fig.add_axes((right + 0.15 / width, bottom_in / height, 0.18 / width, ax_h))
    fig.set_dpi(_dpi_for(n, (right - left) * width))
    vmax = vmax if vmax is not None else _robust_vmax(m)
    im = ax.imshow(m, aspect="auto", cmap=HEAT_CMAP, vmin=0.0, vmax=vmax, interpolation="nearest")
    ax.set_yticks(range(c))
    ax.set_yticklabels(names, fontsize=min(8.0, max(4.0, row_in * 72 * 0.75)))
    ax.set_ylabel("concept", fontsize=8)
    decorate_head_axis(ax, heads, band_ax=band, latent_size=latent_size)
    cb = fig.colorbar(im, cax=cax, extend="max" if float(np.nanmax(m)) > vmax else "neither")
    cb.set_label("HRV (mean 1)", fontsize=8)
    cb.ax.tick_params(labelsize=7)
    fig.suptitle(f"Head Relevance Vectors — {_model_name(hrv)} ({n} heads, {c} concepts)", fontsize=11,
                 y=1 - 0.12 / height, va="top")
    return fig


# ---------------------------------------------------------------------------------------------- bars
def _head_panel(fig, rect, heads: HeadIndex, values: np.ndarray, *, latent_size, title: str, top: int = 3,
                label_axis: bool = True, band: bool = True):
    """One bar chart of per-head values (with band and layer boundaries) inside ``rect``."""
    x0, y0, w, h = rect
    band_h = 0.36 / fig.get_figheight() if band else 0.0
    ax = fig.add_axes((x0, y0, w, h - band_h))
    band_ax = fig.add_axes((x0, y0 + h - band_h + 0.004, w, band_h - 0.008), sharex=ax) if band else None
    n = len(heads)
    place_of = np.array([PLACES.index(hd.layer.place) for hd in heads])
    if n <= 256:
        ax.bar(np.arange(n), values, width=0.85, color=[PLACE_COLORS[PLACES[p]] for p in place_of], lw=0)
    else:
        for pi, place in enumerate(PLACES):
            idx = np.flatnonzero(place_of == pi)
            if idx.size:
                lo, hi = int(idx[0]), int(idx[-1]) + 1
                ax.stairs(values[lo:hi], np.arange(lo, hi + 1) - 0.5, fill=True, color=PLACE_COLORS[place], lw=0)
    ax.axhline(1.0, color="#555555", lw=0.8, ls="--", zorder=6)
    ymax = float(np.nanmax(values)) if values.size else 1.0
    ax.set_ylim(0, max(ymax * 1.3, 1.5))
    # name the top heads; a label that would cover an earlier one moves up a line (and the axis grows to fit)
    order = [int(i) for i in np.argsort(-values, kind="stable")[:top]]
    pt_x = w * fig.get_figwidth() * 72 / max(n, 1)  # points per head
    ax_pt = ax.get_position().height * fig.get_figheight() * 72
    for attempt in range(5):
        pt_y = ax_pt / ax.get_ylim()[1]  # points per HRV unit
        boxes: list[tuple[float, float, float]] = []  # (centre x, half width, bottom y) in points
        for i in order:
            x, half, y0 = i * pt_x, len(heads[i].short_name) * 6.5 * 0.31 + 1.5, float(values[i]) * pt_y + 2
            lift = 0.0
            while any(abs(x - cx) < half + ch and abs(y0 + lift - cy) < 8.5 for cx, ch, cy in boxes):
                lift += 9
            boxes.append((x, half, y0 + lift))
        top_pt = max((b[2] + 10 for b in boxes), default=0.0)
        if top_pt <= ax_pt or attempt == 4:
            break
        ax.set_ylim(0, ax.get_ylim()[1] * top_pt / ax_pt * 1.03)
    for i, (_, _, y) in zip(order, boxes):
        lift = y - float(values[i]) * pt_y - 2
        ax.annotate(heads[i].short_name, (i, float(values[i])), xytext=(0, 2 + lift), textcoords="offset points",
                    ha="center", va="bottom", fontsize=6.5, zorder=7,
                    bbox={"boxstyle": "round,pad=0.1", "fc": "white", "ec": "none", "alpha": 0.7})
    ax.set_ylabel("HRV", fontsize=8)
    ax.tick_params(axis="y", labelsize=7)
    decorate_head_axis(ax, heads, band_ax=band_ax, latent_size=latent_size, label_axis=label_axis,
                       line_color="#BBBBBB", place_color="black")
    (band_ax or ax).set_title(title, fontsize=9, loc="left")
    return ax


def plot_concept_bars(hrv: HRV, concept: str, *, latent_size=None, top: int = 3):
    """Bar chart of one concept's HRV in head order (bars coloured by place, dashed line = mean 1)."""
    name = hrv.concepts[hrv.concept_index(concept)]
    latent_size = latent_size if latent_size is not None else latent_size_from_metadata(hrv.metadata)
    width = _fig_width(len(hrv.heads))
    fig = _figure(width, 3.6)
    fig.set_dpi(_dpi_for(len(hrv.heads), width * 0.86))
    _head_panel(fig, (0.9 / width, 0.2, 1 - 1.2 / width, 0.68), hrv.heads, hrv[name].numpy(),
                latent_size=latent_size, title=f"{name} — HRV per head ({_model_name(hrv)})", top=top)
    return fig


def plot_bars_sheet(hrv: HRV, concepts: Sequence[str] | None = None, *, latent_size=None, top: int = 3):
    """Several concepts' bar charts stacked in one figure (layer labels on the bottom panel only)."""
    names = _select(hrv, concepts)
    latent_size = latent_size if latent_size is not None else latent_size_from_metadata(hrv.metadata)
    width = _fig_width(len(hrv.heads))
    panel_in, top_in, bottom_in = 1.75, 0.5, 0.8
    height = top_in + bottom_in + panel_in * len(names)
    fig = _figure(width, height)
    fig.set_dpi(_dpi_for(len(hrv.heads), width * 0.86))
    for k, name in enumerate(names):
        y0 = (bottom_in + panel_in * (len(names) - 1 - k)) / height
        _head_panel(fig, (0.9 / width, y0, 1 - 1.2 / width, (panel_in - 0.3) / height), hrv.heads,
                    hrv[name].numpy(), latent_size=latent_size, title=name, top=top,
                    label_axis=k == len(names) - 1, band=k == 0)
    fig.suptitle(f"HRV per head — {_model_name(hrv)}", fontsize=11, y=1 - 0.1 / height, va="top")
    return fig


# ---------------------------------------------------------------------------------------------- top heads
def top_heads_table(hrv: HRV, k: int = 10, concepts: Sequence[str] | None = None, latent_size=None):
    """Long-form table (pandas DataFrame): concept, rank, head names, place, layer, resolution, HRV."""
    import pandas as pd

    latent_size = latent_size if latent_size is not None else latent_size_from_metadata(hrv.metadata)
    rows = []
    for name in _select(hrv, concepts):
        values = hrv[name]
        for rank, i in enumerate(hrv.ranking(name)[:k], start=1):
            h = hrv.heads[i]
            rows.append({"concept": name, "rank": rank, "head": h.short_name, "index": i, "place": h.layer.place,
                         "layer": h.layer.place_layer, "head_in_layer": h.head,
                         "resolution": resolution_label(h.layer, latent_size), "hrv": round(float(values[i]), 4),
                         "name": h.name})
    return pd.DataFrame(rows)


def markdown_table(df, float_format: str = "{:.2f}") -> str:
    """A DataFrame as a GitHub-flavoured Markdown table (no extra dependency)."""
    def cell(v) -> str:
        if isinstance(v, float):
            return float_format.format(v)
        return str(v).replace("|", "\\|")

    cols = [str(c) for c in df.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for row in df.itertuples(index=False):
        lines.append("| " + " | ".join(cell(v) for v in row) + " |")
    return "\n".join(lines) + "\n"


def top_heads_markdown(hrv: HRV, k: int = 10, concepts: Sequence[str] | None = None, latent_size=None) -> str:
    """Markdown: one row per concept, its top-k heads as ``short name (HRV)``."""
    import pandas as pd

    df = top_heads_table(hrv, k, concepts, latent_size)
    wide = []
    for name, g in df.groupby("concept", sort=False):
        wide.append({"concept": name, **{f"#{r.rank}": f"{r.head} ({r.hrv:.2f})" for r in g.itertuples()}})
    title = f"Top {k} heads per concept — {_model_name(hrv)} ({len(hrv.heads)} heads)\n\n"
    return title + markdown_table(pd.DataFrame(wide))


def plot_top_heads(hrv: HRV, k: int = 10, concepts: Sequence[str] | None = None, *, latent_size=None):
    """Table picture: a row per concept, its top-k heads (short name and HRV), cells shaded by HRV."""
    from matplotlib import colormaps

    names = _select(hrv, concepts)
    k = min(k, len(hrv.heads))
    vals = np.zeros((len(names), k))
    labels = []
    for r, name in enumerate(names):
        idx = hrv.ranking(name)[:k]
        vals[r] = hrv[name].numpy()[idx]
        labels.append([hrv.heads[i].short_name for i in idx])
    cell_pt = 8.0  # cell text: 8 pt = 11 px at 100 dpi
    width = 2.2 + 1.15 * k + 1.2
    height = 1.3 + 0.46 * len(names)
    fig = _figure(width, height)
    ax = fig.add_axes((2.0 / width, 0.35 / height, 1 - 3.3 / width, 1 - 1.05 / height))
    cax = fig.add_axes((1 - 1.0 / width, 0.35 / height, 0.18 / width, 1 - 1.05 / height))
    vmax = max(float(vals.max()) if vals.size else 1.0, 2.0)
    cmap = colormaps["YlOrRd"]
    im = ax.imshow(vals, aspect="auto", cmap=cmap, vmin=0.0, vmax=vmax, interpolation="nearest")
    for r in range(len(names)):
        for j in range(k):
            dark = vals[r, j] / vmax > 0.6
            ax.text(j, r, f"{labels[r][j]}\n{vals[r, j]:.2f}", ha="center", va="center", fontsize=cell_pt,
                    color="white" if dark else "black", linespacing=1.1)
    ax.set_xticks(range(k))
    ax.set_xticklabels([f"#{j + 1}" for j in range(k)], fontsize=9)
    ax.xaxis.tick_top()
    ax.set_yticks(range(len(names)))
    ax.set_yticklabels(names, fontsize=9)
    ax.set_xticks(np.arange(-0.5, k), minor=True)
    ax.set_yticks(np.arange(-0.5, len(names)), minor=True)
    ax.grid(which="minor", color="white", lw=1.0)
    ax.tick_params(which="minor", length=0)
    cb = fig.colorbar(im, cax=cax)
    cb.set_label("HRV (mean over heads = 1)", fontsize=9)
    cb.ax.tick_params(labelsize=8)
    fig.suptitle(f"Top {k} heads per concept (head: HRV) — {_model_name(hrv)}", fontsize=11,
                 y=1 - 0.08 / height, va="top")
    return fig


def step_ticks(num_steps: int, max_ticks: int = 8) -> list[int]:
    """Regular tick positions 0, s, 2s, … on a step axis of ``num_steps`` steps (s from 1, 2, 5, 10, 20, 25, 50, …)."""
    last = max(int(num_steps) - 1, 0)
    for base in (1, 10, 100, 1000, 10_000):
        for m in (1, 2, 5) if base == 1 else (1, 2, 2.5, 5):
            step = int(m * base)
            if last // step + 1 <= max_ticks:
                return list(range(0, last + 1, step))
    return [0, last]


# ---------------------------------------------------------------------------------------------- timesteps
def _per_timestep(hrv: HRV) -> np.ndarray:
    if not hrv.has_per_timestep:
        raise ValueError("this HRV has no per-timestep votes (it was imported from a matrix); "
                         "build it with `headlens build` to see timesteps")
    return hrv.per_timestep.numpy()  # [T, C, H]


def _pearson_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pearson correlation of each row of ``a`` with vector ``b`` (0 where a row is constant)."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    a = a - a.mean(axis=-1, keepdims=True)
    b = b - b.mean()
    den = np.linalg.norm(a, axis=-1) * np.linalg.norm(b)
    with np.errstate(invalid="ignore", divide="ignore"):
        r = (a @ b) / den
    return np.where(den > 0, r, 0.0)


def plot_timesteps(hrv: HRV, concept: str, *, k: int = 5, latent_size=None):
    """One concept over the denoising steps: per-step HRV heatmap, top heads' curves, relevance by resolution."""
    name = hrv.concepts[hrv.concept_index(concept)]
    ci = hrv.concept_index(name)
    pt = _per_timestep(hrv)[:, ci, :]  # [T, H]
    latent_size = latent_size if latent_size is not None else latent_size_from_metadata(hrv.metadata)
    heads, T, n = hrv.heads, pt.shape[0], len(hrv.heads)
    width = _fig_width(n)
    heat_in = min(0.09 * T, 3.2) + 0.3
    low_in, gap_in, top_in, band_in = 2.0, 0.95, 0.5, 0.36
    height = 0.5 + low_in + gap_in + heat_in + band_in + top_in
    fig = _figure(width, height)
    fig.set_dpi(_dpi_for(n, width * 0.8))
    left, right = 0.9 / width, 1 - 1.1 / width
    y_heat = (0.5 + low_in + gap_in) / height
    ax = fig.add_axes((left, y_heat, right - left, heat_in / height))
    band = fig.add_axes((left, y_heat + (heat_in + 0.02) / height, right - left, (band_in - 0.04) / height),
                        sharex=ax)
    cax = fig.add_axes((right + 0.15 / width, y_heat, 0.18 / width, heat_in / height))
    vmax = _robust_vmax(pt)
    im = ax.imshow(pt, aspect="auto", cmap=HEAT_CMAP, vmin=0, vmax=vmax, interpolation="nearest")
    decorate_head_axis(ax, heads, band_ax=band, latent_size=latent_size)
    ax.set_ylabel("step\n(0 = noisiest)", fontsize=8)
    ax.set_yticks(step_ticks(T, 6))
    ax.tick_params(axis="y", labelsize=7)
    cb = fig.colorbar(im, cax=cax, extend="max" if float(pt.max()) > vmax else "neither")
    cb.set_label("per-step HRV", fontsize=8)
    cb.ax.tick_params(labelsize=7)
    # lower row: top heads' curves (legend to their right) and relevance share by resolution group
    span = right - left
    ax1 = fig.add_axes((left, 0.5 / height, span * 0.55, low_in / height))
    ax2 = fig.add_axes((left + span * 0.68, 0.5 / height, span * 0.32, low_in / height))
    steps = np.arange(T)
    for i in hrv.ranking(name)[:k]:
        ax1.plot(steps, pt[:, i], marker="o" if T <= 30 else None, ms=3, lw=1.3,
                 label=f"{heads[i].short_name} ({float(hrv[name][i]):.2f})")
    ax1.axhline(1.0, color="#777777", lw=0.8, ls="--")
    ax1.set_xlabel("step", fontsize=8)
    ax1.set_ylabel("per-step HRV", fontsize=8)
    ax1.set_title(f"top {k} heads (overall HRV in brackets)", fontsize=9, loc="left")
    ax1.legend(fontsize=6.5, ncol=1 if k <= 6 else 2, loc="best", framealpha=0.8)
    ax1.tick_params(labelsize=7)
    ax1.set_xticks(step_ticks(T, 8))
    ax1.set_xlim(-0.5, max(T - 0.5, 0.5))
    groups = resolution_spans(heads, latent_size)
    share = np.stack([pt[:, s.start:s.stop].sum(axis=1) for s in groups], axis=1) / max(n, 1)  # [T, G]
    labels = [f"{place} {s.label}" for s, place in zip(groups, (heads[s.start].layer.place for s in groups))]
    colors = _group_colors(heads, groups)
    ax2.stackplot(steps, share.T, labels=labels, colors=colors, lw=0.3, edgecolor="white")
    ax2.set_xlim(0, max(T - 1, 1))
    ax2.set_ylim(0, 1)
    ax2.set_xlabel("step", fontsize=8)
    ax2.set_ylabel("share of relevance", fontsize=8)
    ax2.set_title("by place and resolution", fontsize=9, loc="left")
    ax2.tick_params(labelsize=7)
    ax2.set_xticks(step_ticks(T, 6))
    if len(groups) <= 12:
        ax2.legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
    fig.suptitle(f"{name} over the denoising steps — {_model_name(hrv)} ({T} UNet evaluations)", fontsize=11,
                 y=1 - 0.1 / height, va="top")
    return fig


def _group_colors(heads: HeadIndex, groups: Sequence[Span]) -> list:
    from matplotlib.colors import to_rgb

    out = []
    for place in PLACES:
        mine = [s for s in groups if heads[s.start].layer.place == place]
        base = np.array(to_rgb(PLACE_COLORS[place]))
        for j, _ in enumerate(mine):
            f = 0.0 if len(mine) == 1 else j / (len(mine) - 1)
            out.append(tuple(base + (1 - base) * 0.55 * f))
    # groups are in head order, which is place order
    return out


def timestep_agreement(hrv: HRV) -> np.ndarray:
    """``[C, T]``: Pearson correlation between each step's HRV and the overall HRV of the concept."""
    pt = _per_timestep(hrv)  # [T, C, H]
    m = hrv.matrix.numpy()
    return np.stack([_pearson_rows(pt[:, c, :], m[c]) for c in range(len(hrv.concepts))])


def plot_timestep_summary(hrv: HRV, concepts: Sequence[str] | None = None):
    """Concepts × steps: how well each step's HRV agrees with the overall one (when the heads settle)."""
    names = _select(hrv, concepts)
    agree = timestep_agreement(hrv)[[hrv.concept_index(c) for c in names]]
    T = agree.shape[1]
    width = min(max(4.5 + 0.22 * T, 7.0), 16.0)
    height = 2.0 + 0.2 * len(names)
    fig = _figure(width, height)
    ax = fig.add_axes((1.9 / width, 0.6 / height, 1 - 3.0 / width, 1 - 1.3 / height))
    cax = fig.add_axes((1 - 0.9 / width, 0.6 / height, 0.18 / width, 1 - 1.3 / height))
    im = ax.imshow(agree, aspect="auto", cmap="RdBu_r", vmin=-1, vmax=1, interpolation="nearest")
    ax.set_yticks(range(len(names)))
    ax.set_yticklabels(names, fontsize=7)
    ticks = step_ticks(T, 12)
    ax.set_xticks(ticks)
    ax.set_xticklabels([str(s) for s in ticks], fontsize=7)
    ax.set_xlabel("step (0 = noisiest)", fontsize=8)
    cb = fig.colorbar(im, cax=cax)
    cb.set_label("Pearson r", fontsize=8)
    cb.ax.tick_params(labelsize=7)
    fig.suptitle(f"When do the relevant heads settle? — {_model_name(hrv)}\n"
                 "correlation of each step's HRV with the overall HRV", fontsize=9, y=1 - 0.06 / height, va="top")
    return fig


# ---------------------------------------------------------------------------------------------- similarity
def concept_similarity(matrix, method: str = "pearson") -> np.ndarray:
    """``[C, C]`` similarity of HRV rows: ``cosine`` or ``pearson`` (constant rows get 0 off the diagonal)."""
    m = np.asarray(matrix, dtype=np.float64)
    if method == "pearson":
        m = m - m.mean(axis=1, keepdims=True)
    elif method != "cosine":
        raise ValueError(f"unknown similarity {method!r}: use 'cosine' or 'pearson'")
    norm = np.linalg.norm(m, axis=1)
    safe = np.where(norm > 0, norm, 1.0)
    u = m / safe[:, None]
    sim = u @ u.T
    sim[norm == 0, :] = 0.0
    sim[:, norm == 0] = 0.0
    np.fill_diagonal(sim, 1.0)
    return np.clip(sim, -1.0, 1.0)


def average_linkage(distance) -> tuple[np.ndarray, list[int]]:
    """Average-linkage (UPGMA) clustering of a symmetric distance matrix.

    Returns ``(Z, order)``: ``Z`` is ``[n-1, 4]`` like SciPy's linkage (cluster a, cluster b,
    distance, size; new clusters numbered n, n+1, …), ``order`` the dendrogram's leaf order.
    Ties merge the pair with the smallest indices first.
    """
    d = np.array(distance, dtype=np.float64)
    n = d.shape[0]
    if d.shape != (n, n):
        raise ValueError(f"distance matrix must be square, got shape {d.shape}")
    if n == 0:
        return np.zeros((0, 4)), []
    active = list(range(n))
    ids = list(range(n))
    sizes = [1] * n
    big = np.inf
    work = d.copy()
    np.fill_diagonal(work, big)
    Z = []
    for step in range(n - 1):
        sub = work[np.ix_(active, active)]
        flat = int(np.argmin(sub))
        i, j = divmod(flat, len(active))
        a, b = sorted((active[i], active[j]))
        dist = float(work[a, b])
        na, nb = sizes[a], sizes[b]
        # merged cluster stored at slot a; average distance to every other active cluster
        for o in active:
            if o not in (a, b):
                v = (na * work[a, o] + nb * work[b, o]) / (na + nb)
                work[a, o] = work[o, a] = v
        work[b, :] = big
        work[:, b] = big
        new_id = n + step
        ia, ib = ids[a], ids[b]
        Z.append((min(ia, ib), max(ia, ib), dist, na + nb))
        ids[a] = new_id
        sizes[a] = na + nb
        active.remove(b)
    Z = np.array(Z, dtype=np.float64)
    return Z, _leaf_order(Z, n)


def _leaf_order(Z: np.ndarray, n: int) -> list[int]:
    if n == 1:
        return [0]
    order, stack = [], [n + len(Z) - 1]
    while stack:
        node = stack.pop()
        if node < n:
            order.append(node)
        else:
            a, b = int(Z[node - n, 0]), int(Z[node - n, 1])
            stack.extend([b, a])
    return order


def _dendrogram_segments(Z: np.ndarray, order: list[int]) -> list[tuple[list[float], list[float]]]:
    """Line segments (x = height, y = leaf position) of a left-facing dendrogram."""
    n = len(order)
    pos = {leaf: float(p) for p, leaf in enumerate(order)}
    height = {leaf: 0.0 for leaf in order}
    segs = []
    for k, (a, b, dist, _) in enumerate(Z):
        a, b = int(a), int(b)
        ya, yb = pos[a], pos[b]
        segs.append(([height[a], dist, dist, height[b]], [ya, ya, yb, yb]))
        pos[n + k] = (ya + yb) / 2
        height[n + k] = float(dist)
    return segs


def plot_similarity(hrv: HRV, concepts: Sequence[str] | None = None, *, method: str = "pearson",
                    cluster: bool = True):
    """Concept × concept similarity of HRVs, rows/columns in average-linkage order with a dendrogram."""
    names = _select(hrv, concepts)
    m = hrv.matrix.numpy()[[hrv.concept_index(c) for c in names]]
    sim = concept_similarity(m, method)
    c = len(names)
    if cluster and c > 2:
        Z, order = average_linkage(1.0 - sim)
    else:
        Z, order = None, list(range(c))
    s = sim[np.ix_(order, order)]
    side = min(max(3.5 + 0.22 * c, 6.0), 16.0)
    dendro_in = 1.2 if Z is not None else 0.0
    label_in = 0.3 + 0.075 * max(len(n) for n in names)
    bottom = max(label_in, 0.8)
    width, height = side + dendro_in + label_in + 1.2, side + bottom + 0.5
    fig = _figure(width, height)
    x0 = (dendro_in + label_in) / width
    ax = fig.add_axes((x0, bottom / height, side / width, side / height))
    cax = fig.add_axes((x0 + (side + 0.2) / width, bottom / height, 0.18 / width, side / height))
    lo = -1.0 if method == "pearson" else float(min(0.0, s.min()))
    im = ax.imshow(s, cmap="RdBu_r" if method == "pearson" else "viridis", vmin=lo, vmax=1.0,
                   interpolation="nearest")
    fs = min(8.0, max(4.0, side / c * 72 * 0.6))
    ax.set_xticks(range(c))
    ax.set_xticklabels([names[i] for i in order], rotation=90, fontsize=fs)
    ax.set_yticks(range(c))
    ax.set_yticklabels([names[i] for i in order], fontsize=fs)
    if Z is not None:
        dax = fig.add_axes((0.1 / width, bottom / height, (dendro_in - 0.1) / width, side / height), sharey=ax)
        for xs, ys in _dendrogram_segments(Z, order):
            dax.plot(xs, ys, color="#444444", lw=0.8)
        dax.set_xlim(float(Z[:, 2].max()) * 1.05 if len(Z) else 1.0, 0)
        dax.axis("off")
    cb = fig.colorbar(im, cax=cax)
    cb.set_label(f"{method} similarity of HRVs", fontsize=8)
    cb.ax.tick_params(labelsize=7)
    how = "average-linkage order" if Z is not None else "concept order"
    fig.suptitle(f"Concept similarity ({method}, {how}) — {_model_name(hrv)}", fontsize=10,
                 y=1 - 0.1 / height, va="top")
    return fig


# ---------------------------------------------------------------------------------------------- all
def save_figure(fig, path: str | Path) -> Path:
    """Save a figure as PNG (parent folders created) and free it."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(p, dpi=fig.dpi, facecolor="white")
    fig.clear()
    return p


def save_all(hrv: HRV, out: str | Path, *, concepts: Sequence[str] | None = None, k: int = 10,
             latent_size=None, similarity: str = "pearson", cluster: bool = True,
             sheet_size: int = 12) -> dict[str, list[Path]]:
    """Write every picture of ``headlens show`` into ``out``; returns the files by kind."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    names = _select(hrv, concepts)
    if similarity not in ("pearson", "cosine"):
        raise ValueError(f"unknown similarity {similarity!r}: use 'cosine' or 'pearson'")
    ls = latent_size if latent_size is not None else latent_size_from_metadata(hrv.metadata)
    files: dict[str, list[Path]] = {}
    files["heatmap"] = [save_figure(plot_heatmap(hrv, names, latent_size=ls), out / HEATMAP_FILE)]
    if len(names) >= 2:
        files["similarity"] = [save_figure(plot_similarity(hrv, names, method=similarity, cluster=cluster),
                                           out / SIMILARITY_FILE)]
        sim = concept_similarity(hrv.matrix.numpy()[[hrv.concept_index(c) for c in names]], similarity)
        import pandas as pd

        pd.DataFrame(sim, index=names, columns=names).round(4).to_csv(out / SIMILARITY_CSV)
        files["similarity"].append(out / SIMILARITY_CSV)
    files["top_heads"] = [save_figure(plot_top_heads(hrv, k, names, latent_size=ls), out / TOP_HEADS_PNG)]
    top_heads_table(hrv, k, names, ls).to_csv(out / TOP_HEADS_CSV, index=False)
    (out / TOP_HEADS_MD).write_text(top_heads_markdown(hrv, k, names, ls), encoding="utf-8")
    files["top_heads"] += [out / TOP_HEADS_CSV, out / TOP_HEADS_MD]
    files["bars"] = [save_figure(plot_concept_bars(hrv, c, latent_size=ls), out / BARS_DIR / f"{slug(c)}.png")
                     for c in names]
    sheets = [names[i:i + sheet_size] for i in range(0, len(names), sheet_size)]
    files["bars_sheets"] = [save_figure(plot_bars_sheet(hrv, chunk, latent_size=ls),
                                        out / f"bars_sheet_{j + 1:02d}.png") for j, chunk in enumerate(sheets)]
    if hrv.has_per_timestep:
        files["timesteps"] = [save_figure(plot_timestep_summary(hrv, names), out / TIMESTEP_SUMMARY_FILE)]
        files["timesteps"] += [save_figure(plot_timesteps(hrv, c, latent_size=ls), out / TIMESTEPS_DIR / f"{slug(c)}.png")
                               for c in names]
    return files
