"""Per-head word attention maps (DAAM-style, but one map per text-attention head).

While the pipeline generates an image, :class:`HeadMapCapture` takes the post-softmax
probabilities of the conditional half of every cross-attention call (joint attention: the
image→text block of the joint softmax), keeps the word's token
columns (mean over the word's tokens), reshapes each head's column to its layer's grid, upsamples
it (bilinear) to one common size and adds it to a running ``[images, H, h, w]`` sum. Nothing is
stored per step. :func:`head_maps` runs that for one prompt; :func:`plot_head_maps` draws the
maps of chosen heads (e.g. a concept's top-k heads by HRV) over the generated image.

A map's value at a pixel is Σ over UNet evaluations of the head's attention probability on the
word there; its spatial mean is the head's average attention on the word (times the number of
evaluations — upsampling by whole factors keeps means exactly).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .attention import AttentionCall, Plugin, Session
from .heads import HeadIndex
from .hrv import HRV

AUTO_MAX_BYTES = 1 << 30  # "auto" accumulates at image size while the sum stays below 1 GiB


class HeadMapCapture(Plugin):
    """Accumulates each head's attention on some token positions, upsampled to ``map_size``."""

    needs_probs = True

    def __init__(self, heads: HeadIndex, positions: Sequence[int], latent_size: tuple[int, int],
                 map_size: tuple[int, int], mode: str = "bilinear"):
        if not positions:
            raise ValueError("no token positions to map")
        self.heads = heads
        self.positions = list(positions)
        self.latent_size = tuple(latent_size)
        self.map_size = tuple(map_size)
        self.mode = mode
        self.maps: torch.Tensor | None = None  # [B, H, h, w] float32
        self.evaluations: set[int] = set()

    def on_probs(self, call: AttentionCall, probs: torch.Tensor) -> None:
        """Add this call's word maps (conditional half) to the running sum."""
        layer = call.layer
        p = probs[call.cond][..., self.positions].float().mean(dim=-1)  # [B, n, pixels]
        b, n, pixels = p.shape
        gh, gw = layer.resolution(self.latent_size)
        if gh * gw != pixels:
            raise ValueError(f"layer {layer.name} has {pixels} query positions, expected {gh}×{gw} for a latent of "
                             f"{self.latent_size[0]}×{self.latent_size[1]}")
        grid = p.reshape(b * n, 1, gh, gw)
        if (gh, gw) != self.map_size:
            grid = F.interpolate(grid, size=self.map_size, mode=self.mode,
                                 align_corners=False if self.mode in ("bilinear", "bicubic") else None)
        grid = grid.reshape(b, n, *self.map_size)
        if self.maps is None:
            self.maps = torch.zeros((b, len(self.heads), *self.map_size), dtype=torch.float32, device=p.device)
        self.maps[:, layer.head_offset:layer.head_offset + n] += grid
        self.evaluations.add(call.step)


@dataclass
class HeadMaps:
    """One generated image and its word's attention map at every head."""

    image: object  # PIL.Image
    maps: torch.Tensor  # [H, h, w]: Σ over UNet evaluations of the head's attention on the word
    heads: HeadIndex
    prompt: str
    word: str
    positions: list[int]
    seed: int
    evaluations: int  # UNet evaluations summed into each map
    metadata: dict = field(default_factory=dict)

    @property
    def image_size(self) -> tuple[int, int]:
        """(height, width) of the generated image."""
        return (self.image.height, self.image.width)

    def average(self) -> torch.Tensor:
        """Mean of all heads' maps ``[h, w]`` (the DAAM-style all-head map)."""
        return self.maps.mean(dim=0)

    def weighted(self, weights: torch.Tensor) -> torch.Tensor:
        """HRV-weighted average ``Σ_h w_h · map_h / H`` (the A&E-HRV combination)."""
        w = torch.as_tensor(weights, dtype=self.maps.dtype)
        if w.shape != (len(self.heads),):
            raise ValueError(f"need one weight per head ({len(self.heads)}), got shape {tuple(w.shape)}")
        return torch.einsum("h,hxy->xy", w, self.maps) / len(self.heads)

    def mean_attention(self) -> torch.Tensor:
        """Per head: average attention probability on the word over pixels and evaluations ``[H]``."""
        return self.maps.mean(dim=(1, 2)) / max(self.evaluations, 1)

    def strongest_heads(self, k: int) -> list[int]:
        """The k heads that attend most to the word on average (ties by head order)."""
        m = self.mean_attention()
        return sorted(range(len(m)), key=lambda i: (-float(m[i]), i))[:k]

    def upsampled(self, heads: Sequence[int] | None = None) -> torch.Tensor:
        """Maps of the given heads (default all) at image size ``[k, H_img, W_img]``."""
        m = self.maps if heads is None else self.maps[list(heads)]
        if tuple(m.shape[-2:]) == self.image_size:
            return m
        return F.interpolate(m[:, None], size=self.image_size, mode="bilinear", align_corners=False)[:, 0]

    def save(self, directory: str | Path, *, tensors: bool = True) -> Path:
        """Write ``image.png``, ``run.json`` and (with ``tensors``) ``maps.safetensors`` into ``directory``."""
        from safetensors.torch import save_file

        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        self.image.save(d / "image.png")
        meta = {"prompt": self.prompt, "word": self.word, "token_positions": self.positions, "seed": self.seed,
                "unet_evaluations": self.evaluations, "map_size": list(self.maps.shape[-2:]),
                "num_heads": len(self.heads), "heads": self.heads.describe(), **self.metadata}
        (d / "run.json").write_text(json.dumps(meta, indent=2), encoding="utf-8")
        if tensors:
            save_file({"maps": self.maps.contiguous().cpu()}, str(d / "maps.safetensors"))
        return d


def _pipeline_sizes(pipe, height: int | None, width: int | None) -> tuple[tuple[int, int], tuple[int, int]]:
    """(image size, latent size) a pipeline will generate at (PixArt: the size bin it snaps to)."""
    from .families import family_of

    family = family_of(pipe)
    h, w = family.generation_size(pipe, height, width)
    return (h, w), family.latent_size(pipe, h, w)


def resolve_map_size(map_size, num_heads: int, image_size: tuple[int, int], latent_size: tuple[int, int]) -> tuple[int, int]:
    """Accumulation size from ``"auto"``, ``"image"``, ``"latent"``, an int or (h, w)."""
    if map_size == "auto":
        fits = num_heads * image_size[0] * image_size[1] * 4 <= AUTO_MAX_BYTES
        return image_size if fits else latent_size
    if map_size == "image":
        return image_size
    if map_size == "latent":
        return latent_size
    if isinstance(map_size, int):
        if map_size < 1:
            raise ValueError(f"map size must be ≥ 1 (got {map_size})")
        return (map_size, map_size)
    if isinstance(map_size, (tuple, list)) and len(map_size) == 2:
        return (int(map_size[0]), int(map_size[1]))
    raise ValueError(f"bad map size {map_size!r}: use 'auto', 'image', 'latent', an int or (height, width)")


def head_maps(pipe, prompt: str, word: str, *, seed: int = 0, num_inference_steps: int = 20,
              guidance_scale: float = 7.5, height: int | None = None, width: int | None = None,
              occurrence: int | None = None, map_size="auto", negative_prompt: str | None = None) -> HeadMaps:
    """Generate ``prompt`` and return the image with ``word``'s attention map at every head.

    Maps are summed over UNet evaluations, averaged over the word's tokens (all occurrences unless
    ``occurrence`` picks one) and accumulated at ``map_size`` (``"auto"``: image size unless that
    needs more than 1 GiB, then latent size).
    """
    from .families import family_of

    family = family_of(pipe)
    positions = family.text_layout(pipe).token_map(prompt).find(word, occurrence=occurrence)
    heads = HeadIndex.from_model(pipe)
    image_size, latent_size = _pipeline_sizes(pipe, height, width)
    size = resolve_map_size(map_size, len(heads), image_size, latent_size)
    capture = HeadMapCapture(heads, positions, latent_size, size)
    kwargs = {"prompt": prompt, "num_inference_steps": num_inference_steps, "guidance_scale": guidance_scale,
              "height": image_size[0], "width": image_size[1],
              "generator": torch.Generator(device="cpu").manual_seed(int(seed))}
    if negative_prompt:
        kwargs["negative_prompt"] = negative_prompt
    with torch.no_grad(), Session(pipe, [capture], cfg=family.uses_cfg(guidance_scale)):
        image = pipe(**kwargs).images[0]
    if capture.maps is None:
        raise RuntimeError("no cross-attention call was seen during generation")
    from .building import model_name

    meta = {"model": model_name(pipe), "num_inference_steps": num_inference_steps, "guidance_scale": guidance_scale,
            "image_size": list(image_size), "latent_size": list(latent_size)}
    return HeadMaps(image, capture.maps[0].cpu(), heads, prompt, word, positions, int(seed),
                    len(capture.evaluations), meta)


def _normalise(m: np.ndarray) -> np.ndarray:
    """Stretch a map to [0, 1] between its own minimum and maximum (DAAM's display scaling)."""
    lo, hi = float(m.min()), float(m.max())
    return (m - lo) / (hi - lo) if hi > lo else np.zeros_like(m)


def select_heads(result: HeadMaps, *, hrv: HRV | None = None, concept: str | None = None, k: int = 6,
                 heads: Sequence[int | str] | None = None) -> list[int]:
    """Heads to draw: given ones, else the concept's top-k by HRV, else the k strongest on the word."""
    if heads is not None:
        return [result.heads.resolve(h) for h in heads]
    if concept is not None:
        if hrv is None:
            raise ValueError(f"concept {concept!r} needs an HRV to rank heads; pass hrv=HRV.load(...)")
        hrv.check_layout(result.heads)
        return hrv.ranking(concept)[:k]
    return result.strongest_heads(k)


SCALES = ("both", "each", "shared")


def plot_head_maps(result: HeadMaps, *, hrv: HRV | None = None, concept: str | None = None, k: int = 6,
                   heads: Sequence[int | str] | None = None, alpha: float = 0.55, cmap: str = "jet",
                   ncols: int | None = None, scale: str = "both"):
    """Image, all-head average (and HRV-weighted map) and the chosen heads' maps over the image.

    ``scale``: ``"each"`` stretches every map between its own min and max (DAAM's display: shapes,
    but noise looks like signal), ``"shared"`` draws every map's attention on one colour scale (which
    heads attend to the word at all), ``"both"`` (default) draws the two views one above the other.
    """
    from matplotlib.figure import Figure

    if scale not in SCALES:
        raise ValueError(f"unknown scale {scale!r}: use {', '.join(SCALES)}")
    chosen = select_heads(result, hrv=hrv, concept=concept, k=k, heads=heads)
    values = hrv[concept].numpy() if (hrv is not None and concept is not None) else None
    img = np.asarray(result.image.convert("RGB"))
    H, W = img.shape[:2]
    mean_att = result.mean_attention().numpy()
    panels: list[tuple[str, np.ndarray | None]] = [("generated image", None)]
    panels.append((f"all {len(result.heads)} heads (mean)", result.upsampled(None).mean(0).numpy()))
    if values is not None:
        w = torch.as_tensor(values, dtype=torch.float32)
        weighted = torch.einsum("h,hxy->xy", w, result.upsampled(None)) / len(result.heads)
        panels.append((f"HRV-weighted ({hrv.concepts[hrv.concept_index(concept)]})", weighted.numpy()))
    up = result.upsampled(chosen).numpy()
    for j, i in enumerate(chosen):
        title = result.heads[i].short_name
        if values is not None:
            title += f" · HRV {values[i]:.2f}"
        title += f"\nmean attn {mean_att[i]:.3f}"
        panels.append((title, up[j]))
    views = ["each", "shared"] if scale == "both" else [scale]
    n = len(panels)
    ncols = ncols or min(n, 5)
    nrows = -(-n // ncols)
    cell, bar, head = 2.6, 1.25, 1.0
    band = 0.35  # height of a view's heading
    fig_w = cell * ncols + bar
    fig_h = head + len(views) * (band + cell * nrows)
    fig = Figure(figsize=(fig_w, fig_h), dpi=100)
    per_step = 1.0 / max(result.evaluations, 1)  # maps are sums over the UNet evaluations: show the mean
    vmax = max(float(m.max()) for _, m in panels if m is not None) * per_step
    y0 = fig_h - head
    for view in views:
        heading = ("each map stretched between its own min and max (shapes; weak maps look as strong as strong ones)"
                   if view == "each" else "one shared scale: attention on the word, comparable across maps")
        fig.text(0.1 / fig_w, (y0 - band * 0.55) / fig_h, heading, fontsize=10, va="center", weight="bold")
        y0 -= band
        im = None
        for p_, (title, m) in enumerate(panels):
            r, c = divmod(p_, ncols)
            ax = fig.add_axes(((c * cell + 0.1) / fig_w, (y0 - (r + 1) * cell + 0.05) / fig_h,
                               (cell - 0.2) / fig_w, (cell - 0.5) / fig_h))
            ax.imshow(img, extent=(0, W, H, 0))
            if m is not None:
                shown, lo, hi = (_normalise(m), 0, 1) if view == "each" else (m * per_step, 0, vmax)
                im = ax.imshow(shown, extent=(0, W, H, 0), cmap=cmap, alpha=alpha, vmin=lo, vmax=hi,
                               interpolation="bilinear")
            ax.set_title(title, fontsize=9)
            ax.set_xticks([])
            ax.set_yticks([])
        if im is not None:
            cax = fig.add_axes(((fig_w - bar + 0.15) / fig_w, (y0 - nrows * cell + 0.3) / fig_h, 0.16 / fig_w,
                                (nrows * cell - 0.6) / fig_h))
            cb = fig.colorbar(im, cax=cax)
            cb.set_label("min … max of each map" if view == "each" else
                         "attention probability on the word\n(mean over steps)", fontsize=10)
            cb.ax.tick_params(labelsize=9)
            if view == "each":
                cb.set_ticks([0, 1])
                cb.set_ticklabels(["min", "max"])
        y0 -= nrows * cell
    which = (f"top {len(chosen)} heads for {hrv.concepts[hrv.concept_index(concept)]}" if values is not None
             else "chosen heads" if heads is not None else f"{len(chosen)} heads most attentive to the word")
    from .plots import display_model_name

    model = display_model_name(result.metadata.get("model"))
    fig.suptitle(f"\u201c{result.word}\u201d in \u201c{result.prompt}\u201d — {which}\n{model}, seed {result.seed}, "
                 f"{result.evaluations} UNet evaluations", fontsize=11, y=1 - 0.1 / fig_h, va="top")
    return fig
