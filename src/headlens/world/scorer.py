"""Ground-truth scorer: reads the world's concepts back from pixels.

Background and objects are found analytically (border colour, connected components); each
object's Color/Shape/Pattern/Size come from a tiny CNN on a 16x16 crop trained on renders and on
their VAE reconstructions; Position is the nearest anchor of the object's centroid.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from .render import ANCHORS, RES
from .vocab import BACKGROUNDS, COLORS, PATTERNS, SHAPES, SIZES

CROP = 16
FG_THRESHOLD = 45.0
MIN_AREA = 6
HEADS: dict[str, list[str]] = {"Color": list(COLORS), "Shape": list(SHAPES), "Pattern": list(PATTERNS),
                               "Size": list(SIZES)}
_BG = np.array(list(BACKGROUNDS.values()), dtype=np.float32)


def scorer_path() -> Path:
    """Where the scorer weights ship (it reads images, so it serves every world model)."""
    return Path(__file__).parent / "scorer" / "scorer.safetensors"


class CropNet(nn.Module):
    """A ~100k-parameter CNN: (RGB + mask) 16x16 crop -> concept logits."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(4, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 32, 3, padding=1, stride=2), nn.ReLU(),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.Conv2d(64, 64, 3, padding=1, stride=2), nn.ReLU(),
            nn.Flatten(), nn.Linear(64 * 16, 96), nn.ReLU(),
        )
        self.heads = nn.ModuleDict({k: nn.Linear(96, len(v)) for k, v in HEADS.items()})

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Logits per concept."""
        h = self.body(x)
        return {k: m(h) for k, m in self.heads.items()}


@dataclass
class Blob:
    """One connected foreground component."""

    mask: np.ndarray
    cx: float
    cy: float
    area: int


def to_array(image: Image.Image | np.ndarray) -> np.ndarray:
    """A 32x32x3 float32 array in 0..255."""
    if isinstance(image, Image.Image):
        image = np.asarray(image.convert("RGB"))
    arr = np.asarray(image, dtype=np.float32)
    if arr.shape != (RES, RES, 3):
        raise ValueError(f"expected a {RES}x{RES} RGB image, got shape {arr.shape}")
    return arr


def background(arr: np.ndarray) -> tuple[str, np.ndarray]:
    """Background name (nearest palette colour) and measured colour from the border ring."""
    ring = np.concatenate([arr[0], arr[-1], arr[1:-1, 0], arr[1:-1, -1]])
    rgb = np.median(ring, axis=0)
    return list(BACKGROUNDS)[int(np.argmin(((_BG - rgb) ** 2).sum(1)))], rgb


def _components(mask: np.ndarray) -> list[np.ndarray]:
    """8-connected components of a boolean mask."""
    seen = np.zeros_like(mask)
    out = []
    h, w = mask.shape
    for y0, x0 in zip(*np.nonzero(mask)):
        if seen[y0, x0]:
            continue
        comp = np.zeros_like(mask)
        q = deque([(y0, x0)])
        seen[y0, x0] = True
        while q:
            y, x = q.popleft()
            comp[y, x] = True
            for dy in (-1, 0, 1):
                for dx in (-1, 0, 1):
                    yy, xx = y + dy, x + dx
                    if 0 <= yy < h and 0 <= xx < w and mask[yy, xx] and not seen[yy, xx]:
                        seen[yy, xx] = True
                        q.append((yy, xx))
        out.append(comp)
    return out


def blobs(arr: np.ndarray, bg_rgb: np.ndarray) -> list[Blob]:
    """Foreground components (largest first) of an image given its background colour."""
    fg = np.sqrt(((arr - bg_rgb) ** 2).sum(-1)) > FG_THRESHOLD
    out = []
    for comp in _components(fg):
        area = int(comp.sum())
        if area >= MIN_AREA:
            ys, xs = np.nonzero(comp)
            out.append(Blob(comp, float(xs.mean() + 0.5), float(ys.mean() + 0.5), area))
    return sorted(out, key=lambda b: -b.area)


def crop(arr: np.ndarray, blob: Blob, bg_rgb: np.ndarray) -> np.ndarray:
    """A 4x16x16 network input: the blob's pixels (others set to background) and its mask."""
    keep = blob.mask.copy()
    keep[:-1] |= blob.mask[1:]
    keep[1:] |= blob.mask[:-1]
    keep[:, :-1] |= keep[:, 1:].copy()
    keep[:, 1:] |= keep[:, :-1].copy()
    img = np.where(keep[..., None], arr, bg_rgb)
    pad = CROP
    big = np.empty((RES + 2 * pad, RES + 2 * pad, 3), dtype=np.float32)
    big[:] = bg_rgb
    big[pad:-pad, pad:-pad] = img
    m = np.zeros((RES + 2 * pad, RES + 2 * pad), dtype=np.float32)
    m[pad:-pad, pad:-pad] = blob.mask
    x0, y0 = round(blob.cx) - CROP // 2 + pad, round(blob.cy) - CROP // 2 + pad
    rgb = big[y0:y0 + CROP, x0:x0 + CROP] / 127.5 - 1.0
    return np.concatenate([rgb.transpose(2, 0, 1), m[None, y0:y0 + CROP, x0:x0 + CROP]], 0)


def position(cx: float, cy: float, n_objects: int) -> str:
    """Nearest anchor; with two objects the center anchor is not used."""
    names = [k for k in ANCHORS if n_objects == 1 or k != "center"]
    return min(names, key=lambda k: (ANCHORS[k][0] - cx) ** 2 + (ANCHORS[k][1] - cy) ** 2)


class Scorer:
    """Reads concepts from world images: score(image) -> {concept: word or None}."""

    def __init__(self, weights: str | Path | None = None) -> None:
        from safetensors.torch import load_file

        self.net = CropNet()
        path = Path(weights) if weights is not None else scorer_path()
        if not path.exists():
            raise FileNotFoundError(f"scorer weights missing at {path}; train with scripts/world_scorer_train.py")
        self.net.load_state_dict(load_file(str(path)))
        self.net.eval()

    @torch.no_grad()
    def read_blobs(self, image: Image.Image | np.ndarray) -> list[tuple[Blob, dict[str, str]]]:
        """The (at most two) largest objects, largest first, each with its pixel mask and its concepts."""
        arr = to_array(image)
        _, bg_rgb = background(arr)
        found = blobs(arr, bg_rgb)[:2]
        if not found:
            return []
        x = torch.from_numpy(np.stack([crop(arr, b, bg_rgb) for b in found])).float()
        logits = self.net(x)
        out = []
        for i, b in enumerate(found):
            o = {k: HEADS[k][int(logits[k][i].argmax())] for k in HEADS}
            o["Position"] = position(b.cx, b.cy, len(found))
            o["area"] = b.area
            out.append((b, o))
        return out

    def score_objects(self, image: Image.Image | np.ndarray) -> list[dict[str, str]]:
        """Per-object concepts (left-to-right, top-to-bottom); empty list when no object is seen."""
        objs = [o for _, o in self.read_blobs(image)]
        return sorted(objs, key=lambda o: (ANCHORS[o["Position"]][0], ANCHORS[o["Position"]][1]))

    def score(self, image: Image.Image | np.ndarray) -> dict[str, str | None]:
        """Concepts of the largest object plus Background; object concepts None when no object."""
        arr = to_array(image)
        out: dict[str, str | None] = {k: None for k in ("Color", "Shape", "Size", "Position", "Pattern")}
        objs = self.score_objects(arr)
        if objs:
            main = max(objs, key=lambda o: o["area"])
            out.update({k: main[k] for k in out})
        out["Background"] = background(arr)[0]
        return out
