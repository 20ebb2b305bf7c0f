"""The world's vocabulary, palettes, caption grammar (sampler and parser)."""
from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (230, 40, 40),
    "green": (40, 200, 60),
    "blue": (50, 100, 255),
    "yellow": (245, 225, 40),
    "purple": (170, 70, 230),
    "orange": (255, 140, 0),
    "white": (245, 245, 245),
    "pink": (255, 140, 200),
}
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "gray": (80, 80, 80),
    "black": (0, 0, 0),
    "navy": (10, 20, 80),
    "brown": (80, 45, 15),
}
SHAPES: list[str] = ["circle", "square", "triangle", "cross", "diamond", "orange"]
FRUIT = "orange"  # the polysemous word's object sense: an orange fruit (round, with a green leaf)
SIZES: list[str] = ["small", "large"]
POSITIONS: list[str] = ["left", "right", "top", "bottom", "center"]
PATTERNS: list[str] = ["plain", "striped", "dotted"]
DEFAULT_BACKGROUND = "gray"
DEFAULT_PATTERN = "plain"

VOCABULARY: dict[str, list[str]] = {
    "Color": list(COLORS),
    "Shape": list(SHAPES),
    "Size": list(SIZES),
    "Position": list(POSITIONS),
    "Pattern": list(PATTERNS),
    "Background": list(BACKGROUNDS),
}
OBJECT_CONCEPTS: list[str] = ["Color", "Shape", "Size", "Position", "Pattern"]
FUNCTION_WORDS: list[str] = ["a", "an", "and", "on", "the", "at", "in", "background"]

POLYSEMOUS: dict[str, dict[str, str]] = {
    "orange": {
        "Color": "the colour orange, RGB (255, 140, 0), e.g. 'an orange square'",
        "Shape": "the orange fruit: an orange disc with a green leaf, e.g. 'an orange on the left'",
    }
}
# Sense balance in training captions: the fruit sense is common, the colour sense rare.
COLOR_WEIGHTS: dict[str, float] = {c: (0.4 if c == "orange" else 1.0) for c in COLORS}
SHAPE_WEIGHTS: dict[str, float] = {s: 1.0 for s in SHAPES}

POSITION_PHRASES: dict[str, str] = {
    "left": "on the left", "right": "on the right", "top": "at the top",
    "bottom": "at the bottom", "center": "in the center",
}
OPPOSITE: dict[str, str] = {"left": "right", "right": "left", "top": "bottom", "bottom": "top"}


def all_words() -> list[str]:
    """Every word that may appear in a world caption."""
    words = list(FUNCTION_WORDS)
    for ws in VOCABULARY.values():
        words += [w for w in ws if w not in words]
    return words


def concept_words(exclude_polysemous: bool = True) -> dict[str, list[str]]:
    """Concept-word lists for HRV construction (polysemous words left out by default)."""
    return {c: [w for w in ws if not (exclude_polysemous and w in POLYSEMOUS)] for c, ws in VOCABULARY.items()}


@dataclass
class ObjectSpec:
    """One object as named by a caption; None means 'not said'."""

    shape: str
    color: str | None = None
    size: str | None = None
    position: str | None = None
    pattern: str | None = None


@dataclass
class SceneSpec:
    """A parsed caption: 0-2 objects and an optional background."""

    objects: list[ObjectSpec] = field(default_factory=list)
    background: str | None = None


def _unknown(word: str) -> ValueError:
    """A one-line error naming the word and the vocabulary."""
    return ValueError(f"unknown word {word!r} in caption; world vocabulary: {', '.join(all_words())}")


def _parse_object(words: list[str], caption: str) -> ObjectSpec:
    """Parse '[a] [size] [color] [pattern] shape [position phrase]'."""
    if words and words[0] in ("a", "an"):
        words = words[1:]
    position = None
    for pos, phrase in POSITION_PHRASES.items():
        p = phrase.split()
        if words[-len(p):] == p:
            position, words = pos, words[: -len(p)]
            break
    if not words or words[-1] not in SHAPES:
        raise ValueError(f"caption {caption!r}: each object needs a shape word ({', '.join(SHAPES)})")
    obj = ObjectSpec(shape=words[-1], position=position)
    for w in words[:-1]:
        if w in SIZES and obj.size is None:
            obj.size = w
        elif w in COLORS and obj.color is None:
            obj.color = w
        elif w in PATTERNS and obj.pattern is None:
            obj.pattern = w
        else:
            raise ValueError(f"caption {caption!r}: word {w!r} out of place (grammar: "
                             "'a [size] [color] [pattern] shape [on the left]' joined by 'and', "
                             "optional 'on a [background] background')")
    if obj.shape == FRUIT and (obj.color is not None or obj.pattern not in (None, "plain")):
        raise ValueError(f"caption {caption!r}: the fruit 'orange' takes no colour or pattern word")
    return obj


def parse_caption(caption: str) -> SceneSpec:
    """Parse a world caption into a SceneSpec; unknown words raise a one-line ValueError."""
    words = re.findall(r"[a-z]+", caption.lower())
    known = set(all_words())
    for w in words:
        if w not in known:
            raise _unknown(w)
    scene = SceneSpec()
    if not words:
        return scene
    if words[-1] == "background":
        if len(words) < 4 or words[-4:-2] != ["on", "a"] or words[-2] not in BACKGROUNDS:
            raise ValueError(f"caption {caption!r}: write the background as 'on a {{{'|'.join(BACKGROUNDS)}}} background'")
        scene.background, words = words[-2], words[:-4]
    if not words:
        return scene
    parts: list[list[str]] = [[]]
    for w in words:
        if w == "and":
            parts.append([])
        else:
            parts[-1].append(w)
    if len(parts) > 2:
        raise ValueError(f"caption {caption!r}: at most two objects")
    scene.objects = [_parse_object(p, caption) for p in parts]
    if len(scene.objects) == 2:
        a, b = (o.position for o in scene.objects)
        if "center" in (a, b):
            raise ValueError(f"caption {caption!r}: 'center' is for one object only")
        if a is not None and b is not None and OPPOSITE[a] != b:
            raise ValueError(f"caption {caption!r}: two objects need opposite positions (left/right, top/bottom)")
    return scene


def object_phrase(o: ObjectSpec) -> str:
    """The caption phrase of one object."""
    words = [w for w in (o.size, o.color, o.pattern) if w] + [o.shape]
    words.insert(0, "an" if words[0][0] in "aeiou" else "a")
    if o.position:
        words.append(POSITION_PHRASES[o.position])
    return " ".join(words)


def scene_caption(scene: SceneSpec) -> str:
    """The caption of a SceneSpec (inverse of parse_caption)."""
    text = " and ".join(object_phrase(o) for o in scene.objects)
    if scene.background:
        text = f"{text} on a {scene.background} background".strip()
    return text


def _pick(rng: np.random.Generator, weights: dict[str, float]) -> str:
    """Draw a key with probability proportional to its weight."""
    keys = list(weights)
    p = np.array([weights[k] for k in keys], dtype=float)
    return keys[int(rng.choice(len(keys), p=p / p.sum()))]


def sample_caption(rng: np.random.Generator, p_two: float = 0.4, p_pattern: float = 0.4,
                   orange_weight: float | None = None, fruit_weight: float | None = None,
                   p_color: float = 0.75) -> str:
    """Sample a training caption from the grammar (attributes sometimes left out).

    The caption mix: ``p_two`` is the share of two-object captions, ``p_pattern`` the chance that an object's
    caption says 'striped' or 'dotted' (half each; 'plain' is said 10 % of the time, the rest leaves the pattern
    unsaid), ``orange_weight`` the weight of the colour sense of 'orange' among the colours (the others weigh
    1; default ``COLOR_WEIGHTS``), ``fruit_weight`` the weight of the fruit sense (the word 'orange' as a shape) among
    the shapes (the others weigh 1; default ``SHAPE_WEIGHTS``), ``p_color`` the chance that an object's caption says
    its colour (unsaid colours are drawn at random by the renderer). The defaults are the mix of the shipped CLIP and the
    first UNet stages.
    """
    if not (0 <= p_two <= 1 and 0 <= p_pattern <= 0.9 and 0 <= p_color <= 1):
        raise ValueError(f"caption mix: p_two {p_two} and p_color {p_color} must be in [0, 1] and p_pattern "
                         f"{p_pattern} in [0, 0.9]")
    colors = COLOR_WEIGHTS if orange_weight is None else {**COLOR_WEIGHTS, "orange": orange_weight}
    shapes = SHAPE_WEIGHTS if fruit_weight is None else {**SHAPE_WEIGHTS, FRUIT: fruit_weight}
    n = 2 if rng.random() < p_two else 1
    objects = []
    for _ in range(n):
        shape = _pick(rng, shapes)
        o = ObjectSpec(shape=shape)
        if shape != FRUIT:
            if rng.random() < p_color:
                o.color = _pick(rng, colors)
            r = rng.random()
            half = p_pattern / 2
            o.pattern = ("striped" if r < half else "dotted" if r < p_pattern
                         else ("plain" if r < p_pattern + 0.1 else None))
        if rng.random() < 0.6:
            o.size = SIZES[int(rng.integers(2))]
        objects.append(o)
    if rng.random() < 0.65:
        if n == 1:
            objects[0].position = POSITIONS[int(rng.integers(5))]
        else:
            first = POSITIONS[int(rng.integers(4))]
            objects[0].position, objects[1].position = first, OPPOSITE[first]
            if rng.random() < 0.15:  # sometimes only one position is said
                objects[int(rng.integers(2))].position = None
    r = rng.random()
    bg = None
    if r < 0.45:
        bg = ["black", "navy", "brown"][int(rng.integers(3))]
    elif r < 0.55:
        bg = "gray"
    return scene_caption(SceneSpec(objects=objects, background=bg))
