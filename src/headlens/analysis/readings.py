"""What a scorer reads in plain and steered images of the same seeds, and how often steering changed it.

A *reading* is a small dict ``{concept: value}`` per image: the bundled world's ground-truth reader
gives the attributes it sees (``{"Color": "orange", "Shape": "circle"}``); a CLIP model gives, for
the concepts involved, the concept whose word matches the image best and that word
(``{"concept": "Plants", "word": "flower"}``). :func:`compare_readings` pairs the plain and steered
readings seed by seed and reports the share of seeds whose reading changed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field


class WorldReading:
    """Readings by the bundled world's ground-truth reader, restricted to ``concepts`` (all when empty)."""

    name = "world"

    def __init__(self, concepts: Sequence[str] = (), reader=None):
        if reader is None:
            from ..world import Scorer as WorldReader

            reader = WorldReader()
        self.reader = reader
        self.concepts = list(concepts)

    def read(self, images: Sequence) -> list[dict[str, str | None]]:
        """One ``{concept: value}`` per image (None where the reader sees nothing)."""
        from ..scorers import to_pil

        out = []
        for im in images:
            got = self.reader.score(to_pil(im))
            keys = [c for c in self.concepts if c in got] or list(got)
            out.append({k: got[k] for k in keys})
        return out


class ClipReading:
    """Zero-shot readings by CLIP: the best-matching word among the HRV words of ``concepts``, and its concept."""

    def __init__(self, scorer, words: dict[str, Sequence[str]], template: str = "a photo of {}"):
        if not words or not any(words.values()):
            raise ValueError("CLIP readings need concept words; give concepts whose HRV lists its words")
        self.scorer = scorer
        self.name = getattr(scorer, "name", "clip")
        self.labels = [(c, w) for c, ws in words.items() for w in ws]
        self.texts = [template.format(w) for _, w in self.labels]

    def read(self, images: Sequence) -> list[dict[str, str | None]]:
        """One ``{"concept": C, "word": w}`` per image: the label with the highest CLIP similarity."""
        sims = self.scorer.matrix(list(images), self.texts)  # [images, texts]
        out = []
        for row in sims:
            c, w = self.labels[int(row.argmax())]
            out.append({"concept": c, "word": w})
        return out


@dataclass
class ReadingComparison:
    """Per-seed readings of the plain and steered images and the share of seeds whose reading changed."""

    seeds: list[int]
    plain: list[dict]
    steered: list[dict]
    changed: list[bool] = field(default_factory=list)

    @property
    def changed_share(self) -> float:
        """Fraction of seeds whose steered reading differs from the plain one."""
        return sum(self.changed) / len(self.changed) if self.changed else 0.0

    def rows(self) -> list[dict]:
        """CSV rows: seed, row (plain/steered), the reading's fields, changed."""
        out = []
        for s, p, q, ch in zip(self.seeds, self.plain, self.steered, self.changed):
            out.append({"seed": s, "row": "plain", **p, "changed": ch})
            out.append({"seed": s, "row": "steered", **q, "changed": ch})
        return out

    def to_dict(self) -> dict:
        """JSON-ready summary."""
        return {"seeds": self.seeds, "plain": self.plain, "steered": self.steered, "changed": self.changed,
                "changed_share": self.changed_share}


def compare_readings(seeds: Sequence[int], plain: Sequence[dict], steered: Sequence[dict]) -> ReadingComparison:
    """Pair plain and steered readings seed by seed; a seed *changed* when any read value differs."""
    if not (len(seeds) == len(plain) == len(steered)):
        raise ValueError(f"{len(seeds)} seeds, {len(plain)} plain and {len(steered)} steered readings; give one each")
    changed = [dict(p) != dict(q) for p, q in zip(plain, steered)]
    return ReadingComparison(list(seeds), [dict(p) for p in plain], [dict(q) for q in steered], changed)


def reading_text(reading: dict) -> str:
    """'Color=orange, Shape=circle' (None shown as '-')."""
    return ", ".join(f"{k}={'-' if v is None else v}" for k, v in reading.items())


__all__ = ["ClipReading", "ReadingComparison", "WorldReading", "compare_readings", "reading_text"]
