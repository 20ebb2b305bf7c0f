"""Concept sets (concept → concept-words) and prompt sets, with their file formats.

Concept files are TOML (``Color = ["red", "blue"]``) or plain text, one concept a line:
``Color: red, blue, green``. Prompt files hold one prompt a line; ``#`` starts a comment line.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Iterable, Mapping, Sequence

try:  # Python 3.11+
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

BUILTIN_PROMPT_SETS = {"default": "prompts.txt"}


@dataclass(frozen=True)
class ConceptSet:
    """Ordered concepts, each a non-empty list of concept-words."""

    names: tuple[str, ...]
    words: tuple[tuple[str, ...], ...]

    def __post_init__(self):
        if not self.names:
            raise ValueError("a concept set needs at least one concept")
        if len(set(self.names)) != len(self.names):
            raise ValueError(f"duplicate concept names in {list(self.names)}")
        for name, ws in zip(self.names, self.words):
            if not ws:
                raise ValueError(f"concept {name!r} has no words; give at least one concept-word")
            if any(not w.strip() for w in ws):
                raise ValueError(f"concept {name!r} has an empty word")

    # ------------------------------------------------------------------ constructors
    @classmethod
    def from_dict(cls, mapping: Mapping[str, Sequence[str]]) -> "ConceptSet":
        """Concepts from ``{"Color": ["red", "blue"], ...}`` (order kept)."""
        if isinstance(mapping, ConceptSet):
            return mapping
        names, words = [], []
        for name, ws in mapping.items():
            if isinstance(ws, str):
                ws = [w.strip() for w in ws.split(",")]
            names.append(str(name))
            words.append(tuple(str(w).strip() for w in ws if str(w).strip()))
        return cls(tuple(names), tuple(words))

    @classmethod
    def load(cls, path: str | Path) -> "ConceptSet":
        """Read a concept file (``.toml`` or text ``Name: word, word``); ``"default"`` gives the shipped set."""
        if str(path) == "default":
            return cls.default()
        if str(path) == "paper":
            return cls.paper()
        if str(path) == "world":
            from .world import concept_words

            return cls.from_dict(concept_words(exclude_polysemous=True))
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(
                f"concept file {str(path)!r} not found; give a .toml/.txt path, 'default', 'paper' or 'world'")
        text = p.read_text(encoding="utf-8")
        if p.suffix.lower() == ".toml":
            try:
                data = tomllib.loads(text)
            except tomllib.TOMLDecodeError as e:
                raise ValueError(f"concept file {p} is not valid TOML: {e}") from None
            data = data.get("concepts", data)
            return cls.from_dict({k: v for k, v in data.items() if isinstance(v, list)})
        if p.suffix.lower() == ".json":
            return cls.from_dict(json.loads(text))
        mapping = {}
        for n, line in enumerate(text.splitlines(), 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            if ":" not in line:
                raise ValueError(f"{p}:{n}: expected 'Concept: word, word, ...', got {line!r}")
            name, ws = line.split(":", 1)
            mapping[name.strip()] = [w.strip() for w in ws.split(",") if w.strip()]
        return cls.from_dict(mapping)

    @classmethod
    def default(cls) -> "ConceptSet":
        """The concept set shipped with headlens (``headlens/data/concepts.toml``)."""
        ref = resources.files("headlens") / "data" / "concepts.toml"
        with resources.as_file(ref) as p:
            return cls.load(p)

    @classmethod
    def paper(cls) -> "ConceptSet":
        """The HRV paper's 34 concepts × 10 words (released with its HRVs; ``headlens/data/paper-hrv``)."""
        from .paper import concepts

        return concepts()

    @classmethod
    def coerce(cls, concepts) -> "ConceptSet":
        """Accept a ConceptSet, a dict, a path or ``"default"``."""
        if isinstance(concepts, ConceptSet):
            return concepts
        if isinstance(concepts, Mapping):
            return cls.from_dict(concepts)
        return cls.load(concepts)

    # ------------------------------------------------------------------ access
    def __len__(self) -> int:
        return len(self.names)

    def __iter__(self):
        return iter(self.names)

    def __getitem__(self, name: str) -> tuple[str, ...]:
        return self.words[self.index(name)]

    def index(self, name: str) -> int:
        """Position of a concept; a clear error lists the known ones."""
        try:
            return self.names.index(name)
        except ValueError:
            lower = [n.lower() for n in self.names]
            if name.lower() in lower:
                return lower.index(name.lower())
            raise KeyError(f"concept {name!r} not in this concept set (have: {', '.join(self.names)})") from None

    def to_dict(self) -> dict[str, list[str]]:
        """Plain ``{concept: [words]}``."""
        return {n: list(w) for n, w in zip(self.names, self.words)}

    def to_toml(self) -> str:
        """The set as a TOML document."""
        return "".join(f"{json.dumps(n)} = {json.dumps(list(w))}\n" for n, w in zip(self.names, self.words))

    @property
    def fingerprint(self) -> str:
        """Short hash of names and words."""
        return hashlib.sha256(json.dumps(self.to_dict()).encode()).hexdigest()[:16]


def load_prompts(prompts: str | Path | Iterable[str]) -> list[str]:
    """Prompts from a list, a file (one a line, ``#`` comments) or a built-in name (``default``)."""
    if isinstance(prompts, (list, tuple)):
        out = [str(p) for p in prompts]
    elif isinstance(prompts, (str, Path)) and str(prompts) in BUILTIN_PROMPT_SETS:
        ref = resources.files("headlens") / "data" / BUILTIN_PROMPT_SETS[str(prompts)]
        out = _read_prompt_lines(ref.read_text(encoding="utf-8"))
    elif isinstance(prompts, (str, Path)) and str(prompts) == "world":
        out = world_prompts()
    elif isinstance(prompts, (str, Path)):
        p = Path(prompts)
        if not p.is_file():
            raise FileNotFoundError(
                f"prompt file {str(prompts)!r} not found; give a text file (one prompt a line) or one of "
                f"{', '.join(BUILTIN_PROMPT_SETS)}, world"
            )
        out = _read_prompt_lines(p.read_text(encoding="utf-8"))
    else:
        out = [str(p) for p in prompts]
    if not out:
        raise ValueError("the prompt set is empty; give at least one prompt")
    return out


def _read_prompt_lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def prompts_fingerprint(prompts: Sequence[str]) -> str:
    """Short hash of an ordered prompt list."""
    h = hashlib.sha256()
    for p in prompts:
        h.update(p.encode())
        h.update(b"\n")
    return h.hexdigest()[:16]


def world_prompts(n: int = 256, seed: int = 2024) -> list[str]:
    """Prompts for HRV construction on the bundled world model (its own set, or sampled from its grammar)."""
    from . import world

    if hasattr(world, "default_prompts"):
        return list(world.default_prompts())
    import numpy as np

    from .world.vocab import sample_caption

    rng = np.random.default_rng(seed)
    out: list[str] = []
    while len(out) < n:
        caption = sample_caption(rng).strip()
        if caption:
            out.append(caption)
    return out
