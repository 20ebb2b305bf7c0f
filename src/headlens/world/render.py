"""Ground-truth renderer: caption + seed -> 32x32 image and its attributes."""
from __future__ import annotations

import numpy as np
from PIL import Image

from .vocab import (
    BACKGROUNDS,
    COLOR_WEIGHTS,
    COLORS,
    DEFAULT_BACKGROUND,
    DEFAULT_PATTERN,
    FRUIT,
    OPPOSITE,
    POSITIONS,
    SIZES,
    ObjectSpec,
    SceneSpec,
    _pick,
    parse_caption,
)

RES = 32
ANCHORS: dict[str, tuple[float, float]] = {
    "left": (8.0, 16.0), "right": (24.0, 16.0), "top": (16.0, 8.0), "bottom": (16.0, 24.0), "center": (16.0, 16.0),
}
RADIUS: dict[str, float] = {"small": 4.0, "large": 6.0}
JITTER = 1.0
LEAF = np.array((40, 150, 40), dtype=np.float32)
_YY, _XX = np.mgrid[0:RES, 0:RES].astype(np.float32) + 0.5


def shade(color: str) -> np.ndarray:
    """The second tone of a patterned object: a pale tint (white objects get a grey one)."""
    c = np.array(COLORS[color], dtype=np.float32)
    return c * 0.55 if color == "white" else c + 0.6 * (255 - c)


def shape_mask(shape: str, cx: float, cy: float, r: float) -> np.ndarray:
    """Boolean mask of a shape centred at (cx, cy) with radius r."""
    dx, dy = _XX - cx, _YY - cy
    if shape in ("circle", FRUIT):
        return dx * dx + dy * dy <= r * r
    if shape == "square":
        return np.maximum(np.abs(dx), np.abs(dy)) <= r * 0.85
    if shape == "diamond":
        return np.abs(dx) + np.abs(dy) <= r * 1.1
    if shape == "triangle":
        t = (dy + r) / (2 * r)  # 0 at apex, 1 at base
        return (t >= 0) & (t <= 1) & (np.abs(dx) <= t * r * 1.05)
    if shape == "cross":
        w = max(r / 3, 1.3)
        return ((np.abs(dx) <= w) & (np.abs(dy) <= r)) | ((np.abs(dy) <= w) & (np.abs(dx) <= r))
    raise ValueError(f"unknown shape {shape!r}")


def pattern_mask(pattern: str, cx: float, cy: float) -> np.ndarray:
    """Pixels drawn in the second tone for a pattern."""
    ix, iy = np.floor(_XX - cx + 64).astype(int), np.floor(_YY - cy + 64).astype(int)
    if pattern == "striped":
        return (iy // 2) % 2 == 1
    if pattern == "dotted":
        return ((ix % 4) < 2) & ((iy % 4) < 2)
    return np.zeros((RES, RES), dtype=bool)


def draw_object(img: np.ndarray, obj: dict[str, str], cx: float, cy: float, r: float) -> np.ndarray:
    """Paint one fully specified object into a float image in place; returns the mask of its pixels."""
    mask = shape_mask(obj["Shape"], cx, cy, r)
    color = np.array(COLORS[obj["Color"]], dtype=np.float32)
    img[mask] = color
    if obj["Pattern"] != "plain":
        img[mask & pattern_mask(obj["Pattern"], cx, cy)] = shade(obj["Color"])
    if obj["Shape"] == FRUIT:
        dx, dy = _XX - (cx + r * 0.35), _YY - (cy - r * 0.95)
        leaf = (dx / max(r * 0.45, 1.6)) ** 2 + (dy / max(r * 0.28, 1.1)) ** 2 <= 1.0
        img[leaf & ~mask] = LEAF
        img[leaf & mask] = LEAF
        mask = mask | leaf
    return mask


def complete_scene(spec: SceneSpec, rng: np.random.Generator) -> dict:
    """Fill every unsaid attribute: defaults for background/pattern, random draws for the rest."""
    n = len(spec.objects)
    positions = [o.position for o in spec.objects]
    if n == 1 and positions[0] is None:
        positions[0] = POSITIONS[int(rng.integers(5))]
    elif n == 2:
        a, b = positions
        if a is None and b is None:
            a = ["left", "top"][int(rng.integers(2))]
            if rng.random() < 0.5:
                a = OPPOSITE[a]
            b = OPPOSITE[a]
        positions = [a if a is not None else OPPOSITE[b], b if b is not None else OPPOSITE[a]]
    objects = []
    for o, pos in zip(spec.objects, positions):
        color = "orange" if o.shape == FRUIT else (o.color or _pick(rng, COLOR_WEIGHTS))
        objects.append({
            "Color": color, "Shape": o.shape, "Size": o.size or SIZES[int(rng.integers(2))],
            "Position": pos, "Pattern": "plain" if o.shape == FRUIT else (o.pattern or DEFAULT_PATTERN),
        })
    return {"Background": spec.background or DEFAULT_BACKGROUND, "objects": objects}


def draw_scene(scene: dict, rng: np.random.Generator, masks: list | None = None) -> np.ndarray:
    """Draw a completed scene as a uint8 HxWx3 array (positions and sizes jittered); a ``masks`` list receives each
    object's pixel mask (HxW bool), in caption order."""
    img = np.empty((RES, RES, 3), dtype=np.float32)
    img[:] = np.array(BACKGROUNDS[scene["Background"]], dtype=np.float32)
    for obj in scene["objects"]:
        ax, ay = ANCHORS[obj["Position"]]
        cx, cy = ax + rng.uniform(-JITTER, JITTER), ay + rng.uniform(-JITTER, JITTER)
        r = RADIUS[obj["Size"]] + rng.uniform(-0.3, 0.3)
        mask = draw_object(img, obj, cx, cy, r)
        if masks is not None:
            masks.append(mask)
    return np.clip(img, 0, 255).astype(np.uint8)


def attributes(scene: dict) -> dict:
    """Ground truth: the first object's concepts at top level, plus Background and objects."""
    out: dict = {"Background": scene["Background"], "objects": scene["objects"], "n_objects": len(scene["objects"])}
    first = scene["objects"][0] if scene["objects"] else {}
    for c in ("Color", "Shape", "Size", "Position", "Pattern"):
        out[c] = first.get(c)
    return out


def render_array(caption: str, seed: int, masks: list | None = None) -> tuple[np.ndarray, dict]:
    """Render a caption to a uint8 array and its ground-truth attributes (``masks``: see draw_scene)."""
    spec = parse_caption(caption)
    rng = np.random.default_rng(seed)
    if not spec.objects:  # an empty caption or a bare background: one unspecified object
        spec = SceneSpec(objects=[ObjectSpec(shape=_pick(rng, {s: 1.0 for s in ("circle", "square", "triangle",
                                                                                   "cross", "diamond", FRUIT)}))],
                         background=spec.background)
    scene = complete_scene(spec, rng)
    return draw_scene(scene, rng, masks), attributes(scene)


def render(caption: str, seed: int = 0) -> tuple[Image.Image, dict]:
    """Render a world caption with a seed: (PIL image 32x32, ground-truth attributes)."""
    arr, attrs = render_array(caption, seed)
    return Image.fromarray(arr), attrs
