"""Polysemous words (SD-HRV, spec §7): the same prompt and seeds with and without concept adjusting.

``compare(pipe, hrv, "A vase in lavender color", seeds, adjust=[("lavender", "Color", "Plants")])``
returns the plain and the steered images of each seed; :func:`comparison_grid` lays them side
by side with labels. :func:`load_cases` reads the shipped benchmark (``polysemous.toml``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .common import GenerationSettings, Item, generate, read_toml
from .figures import image_grid


@dataclass(frozen=True)
class PolysemousCase:
    """A prompt whose ``word`` should be read as concept ``toward``, not ``away``."""

    prompt: str
    word: str
    toward: str
    away: str


def load_cases(path: str | Path | None = None) -> list[PolysemousCase]:
    """Benchmark cases from a TOML file of ``[[prompt]]`` tables (default: the shipped ``polysemous.toml``)."""
    data, where = read_toml(path, "polysemous.toml", "benchmark")
    cases = []
    for i, t in enumerate(data.get("prompt", [])):
        missing = [k for k in ("prompt", "word", "toward", "away") if k not in t]
        if missing:
            raise ValueError(f"{where}: [[prompt]] number {i + 1} lacks {', '.join(missing)}")
        cases.append(PolysemousCase(str(t["prompt"]), str(t["word"]), str(t["toward"]), str(t["away"])))
    if not cases:
        raise ValueError(f"{where} has no [[prompt]] tables")
    return cases


def world_cases() -> list[PolysemousCase]:
    """Cases for the bundled world model: 'orange' as a colour, not the fruit shape."""
    return [PolysemousCase(p, "orange", "Color", "Shape") for p in
            ("an orange square", "a large orange circle", "an orange triangle on the left", "a small orange diamond")]


def compare(pipe, hrv, prompt: str, seeds: Sequence[int], adjust: Sequence[tuple[str, str, str]] = (),
            strengthen: Sequence[tuple[str, str]] = (), clamp: float | None = None,
            steps: tuple[float, float] = (0.0, 1.0), settings: GenerationSettings | None = None):
    """(plain images, steered images) of ``prompt`` for each seed; ``adjust`` (word, toward, away), ``strengthen`` (word, concept)."""
    if not adjust and not strengthen:
        raise ValueError("nothing to compare: give at least one adjust (word:Toward:Away) or strengthen (word:Concept)")
    settings = settings or GenerationSettings()
    items = [Item(prompt, "", int(s)) for s in seeds]

    def setup(s):
        for word, toward, away in adjust:
            s.adjust(word, toward=toward, away=away, clamp=clamp, steps=steps)
        for word, concept in strengthen:
            s.strengthen(word, concept, steps=steps)

    # check words and concepts before generating anything
    from ..steering import Steering

    setup(Steering(pipe, hrv, prompt=prompt))
    plain = [im for _, ims in generate(pipe, items, settings) for im in ims]
    steered = [im for _, ims in generate(pipe, items, settings, setup, hrv) for im in ims]
    return plain, steered


def comparison_grid(plain, steered, seeds: Sequence[int], label: str, prompt: str, cell: int = 160):
    """Two labelled rows (plain, steered), one column per seed."""
    return image_grid([plain, steered], ["plain", label], [f"seed {s}" for s in seeds], cell=cell, title=prompt)
