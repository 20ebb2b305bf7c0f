"""The HRV value object: vote counts, Head Relevance Vectors, heads, concepts and metadata.

Saved as a folder: ``hrv.safetensors`` (votes ``[T, H, C]`` int64 and the derived ``matrix``
``[C, H]``) plus ``hrv.json`` (concepts with words, head layout, run settings). No pickles.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch

from . import __version__
from .heads import HeadIndex
from .votes import hrv_from_votes, hrv_per_timestep

TENSORS_FILE = "hrv.safetensors"
META_FILE = "hrv.json"
FORMAT = "headlens-hrv/1"


class LayoutMismatchError(ValueError):
    """An HRV was used with a model whose head layout differs."""


class HeadlensNote(UserWarning):
    """A one-line note for the user (the CLI prints it as ``note: ...``); not an error."""


@dataclass
class HRV:
    """Head Relevance Vectors of a set of concepts for one model.

    ``votes`` holds integer counts ``[timesteps, heads, concepts]``; ``matrix`` and
    ``per_timestep`` are derived from it (spec §4). HRVs imported from other sources carry a
    ``matrix`` only (``votes`` is then None).
    """

    heads: HeadIndex
    concepts: list[str]
    votes: torch.Tensor | None
    words: dict[str, list[str]] = field(default_factory=dict)
    metadata: dict = field(default_factory=dict)
    _matrix: torch.Tensor | None = None
    _per_timestep: torch.Tensor | None = None  # imported per-timestep HRVs [T, C, H] (no votes)

    def __post_init__(self):
        self.concepts = list(self.concepts)
        if self.votes is not None:
            self.votes = self.votes.detach().to("cpu", torch.int64)
            t, h, c = self.votes.shape
            if h != len(self.heads) or c != len(self.concepts):
                raise ValueError(
                    f"votes of shape {tuple(self.votes.shape)} do not fit {len(self.heads)} heads × "
                    f"{len(self.concepts)} concepts"
                )
        elif self._matrix is None:
            raise ValueError("an HRV needs vote counts or a matrix")

    # ------------------------------------------------------------------ derived values
    @property
    def matrix(self) -> torch.Tensor:
        """HRVs ``[concepts, heads]``, each row of mean 1."""
        if self._matrix is None:
            self._matrix = hrv_from_votes(self.votes.sum(dim=0))
        return self._matrix

    @property
    def per_timestep(self) -> torch.Tensor:
        """Per-timestep HRVs ``[timesteps, concepts, heads]``."""
        if self.votes is None:
            if self._per_timestep is not None:
                return self._per_timestep
            raise ValueError("this HRV has no per-timestep votes (it was imported from a matrix)")
        return hrv_per_timestep(self.votes)

    @property
    def has_per_timestep(self) -> bool:
        """True if per-timestep HRVs exist (votes with timesteps, or an imported per-timestep matrix)."""
        if self.votes is not None:
            return self.votes.shape[0] > 0
        return self._per_timestep is not None

    @property
    def num_heads(self) -> int:
        """H, the number of heads."""
        return len(self.heads)

    def __getitem__(self, concept: str) -> torch.Tensor:
        """HRV of one concept, ``[heads]``."""
        return self.matrix[self.concept_index(concept)]

    def concept_index(self, concept: str) -> int:
        """Row of a concept; a clear error lists the known ones."""
        if concept in self.concepts:
            return self.concepts.index(concept)
        lower = [c.lower() for c in self.concepts]
        if str(concept).lower() in lower:
            return lower.index(str(concept).lower())
        raise KeyError(f"concept {concept!r} not in this HRV (have: {', '.join(self.concepts)})")

    def ranking(self, concept: str) -> list[int]:
        """Flat head indices, most relevant first (MoRHF order; ties broken by head order)."""
        values = self[concept]
        return sorted(range(len(values)), key=lambda i: (-float(values[i]), i))

    def top_heads(self, concept: str, k: int = 10, names: str = "full") -> list[tuple[str, float]]:
        """The k most relevant heads as (name, HRV value); ``names``: full, short (as the CLI prints) or label."""
        values = self[concept]
        name = _head_namer(names)
        return [(name(self.heads[i]), float(values[i])) for i in self.ranking(concept)[:k]]

    def bottom_heads(self, concept: str, k: int = 10, names: str = "full") -> list[tuple[str, float]]:
        """The k least relevant heads as (name, HRV value), least first (LeRHF order); ``names`` as in top_heads."""
        values = self[concept]
        name = _head_namer(names)
        order = list(reversed(self.ranking(concept)))
        return [(name(self.heads[i]), float(values[i])) for i in order[:k]]

    def to_pandas(self):
        """A tidy DataFrame: one row per head, a column per concept, plus layer columns."""
        import pandas as pd

        m = self.matrix.numpy()
        df = pd.DataFrame(m.T, columns=self.concepts)
        df.insert(0, "head", self.heads.names)
        df.insert(1, "short_name", self.heads.short_names)
        df.insert(2, "place", [h.layer.place for h in self.heads])
        df.insert(3, "layer", [h.layer.index for h in self.heads])
        df.insert(4, "head_in_layer", [h.head for h in self.heads])
        return df

    @property
    def fingerprint(self) -> str:
        """Short content hash (concept names and HRV values): analysis files name the HRV they used by it."""
        import hashlib

        h = hashlib.sha256(json.dumps(list(self.concepts)).encode("utf-8"))
        h.update(self.heads.fingerprint.encode("utf-8"))
        h.update(self.matrix.detach().to(torch.float32).contiguous().numpy().tobytes())
        return h.hexdigest()[:16]

    def check_layout(self, heads_or_model) -> None:
        """Raise :class:`LayoutMismatchError` unless the model has this HRV's head layout."""
        other = heads_or_model
        if not isinstance(other, HeadIndex):
            other = HeadIndex.from_model(other)
        if other.fingerprint != self.heads.fingerprint:
            raise LayoutMismatchError(
                f"this HRV was built for a model with {len(self.heads)} heads in {len(self.heads.layers)} layers "
                f"({self.metadata.get('model', 'unknown model')}), but the model has {len(other)} heads in "
                f"{len(other.layers)} layers; build an HRV for this model with `headlens build`"
            )

    # ------------------------------------------------------------------ files
    def save(self, directory: str | Path) -> Path:
        """Write ``hrv.safetensors`` + ``hrv.json`` into ``directory`` (created; files replaced atomically)."""
        from safetensors.torch import save_file

        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        tensors = {"matrix": self.matrix.contiguous()}
        if self.votes is not None:
            tensors["votes"] = self.votes.contiguous()
        elif self._per_timestep is not None:
            tensors["per_timestep"] = self._per_timestep.contiguous()
        meta = {
            "format": FORMAT,
            "headlens_version": __version__,
            "concepts": [{"name": c, "words": list(self.words.get(c, []))} for c in self.concepts],
            "heads": {"fingerprint": self.heads.fingerprint, "layers": self.heads.describe(),
                      "names": self.heads.names},
            "metadata": self.metadata,
        }
        _atomic_write(d / TENSORS_FILE, lambda p: save_file(tensors, str(p), metadata={"format": FORMAT}))
        _atomic_write(d / META_FILE, lambda p: Path(p).write_text(json.dumps(meta, indent=2), encoding="utf-8"))
        return d

    def push_to_hub(self, repo_id: str, *, token: str | None = None, private: bool = False,
                    commit_message: str | None = None, revision: str | None = None):
        """Upload to the Hugging Face Hub as ``repo_id``: HRV files + generated model card + heatmap.png."""
        from .hub import push_to_hub

        return push_to_hub(self, repo_id, token=token, private=private, commit_message=commit_message,
                           revision=revision)

    @classmethod
    def load(cls, directory: str | Path, model=None) -> "HRV":
        """Read an HRV folder, ``paper:NAME`` (a shipped release) or ``hf://OWNER/REPO[@REVISION]`` (the Hub).

        With ``model`` (pipeline, UNet or HeadIndex) the head layout is checked too.
        """
        from safetensors.torch import load_file

        spec = str(directory)
        if spec.startswith("paper:"):
            from . import paper

            return paper.load(spec, model)
        if spec.startswith("hf:/"):
            from . import hub

            directory = hub.download(spec)
        d = Path(directory)
        if not (d / META_FILE).is_file() or not (d / TENSORS_FILE).is_file():
            raise FileNotFoundError(
                f"{d} is not an HRV folder (needs {META_FILE} and {TENSORS_FILE}); create one with `headlens build`"
            )
        meta = json.loads((d / META_FILE).read_text(encoding="utf-8"))
        if meta.get("format") != FORMAT:
            raise ValueError(f"{d / META_FILE}: unknown format {meta.get('format')!r} (expected {FORMAT})")
        tensors = load_file(str(d / TENSORS_FILE))
        heads = HeadIndex.from_description(meta["heads"]["layers"])
        concepts = [c["name"] for c in meta["concepts"]]
        words = {c["name"]: list(c.get("words", [])) for c in meta["concepts"]}
        votes = tensors.get("votes")
        hrv = cls(heads, concepts, votes, words, meta.get("metadata", {}),
                  _matrix=None if votes is not None else tensors["matrix"].float(),
                  _per_timestep=tensors["per_timestep"].float() if votes is None and "per_timestep" in tensors else None)
        if model is not None:
            hrv.check_layout(model)
        return hrv

    @classmethod
    def from_matrix(cls, matrix: torch.Tensor, heads: HeadIndex, concepts: Sequence[str],
                    words: dict | None = None, metadata: dict | None = None) -> "HRV":
        """An HRV from a ``[concepts, heads]`` matrix (no votes)."""
        matrix = torch.as_tensor(matrix, dtype=torch.float32)
        if matrix.shape != (len(concepts), len(heads)):
            raise ValueError(f"matrix shape {tuple(matrix.shape)} != ({len(concepts)} concepts, {len(heads)} heads)")
        return cls(heads, list(concepts), None, dict(words or {}), dict(metadata or {}), _matrix=matrix)

    @classmethod
    def from_reference(cls, matrix_npy: str | Path, labels_npy: str | Path | None, heads: HeadIndex,
                       concepts: Sequence[str] | None = None) -> "HRV":
        """Import the research code's ``.npy`` files (concept × head matrix + head labels), pickle disabled.

        Heads are re-ordered by their labels into ``heads``' canonical order.
        """
        import numpy as np

        try:
            m = np.load(matrix_npy, allow_pickle=False)
            labels = np.load(labels_npy, allow_pickle=False) if labels_npy is not None else None
        except ValueError as e:
            raise ValueError(f"cannot read reference .npy files without pickle ({e}); convert them to plain arrays") from None
        m = np.asarray(m, dtype=np.float32)
        if m.ndim != 2:
            raise ValueError(f"{matrix_npy}: expected a 2-D concept × head matrix, got shape {m.shape}")
        if m.shape[1] != len(heads) and m.shape[0] == len(heads):
            m = m.T
        if m.shape[1] != len(heads):
            raise LayoutMismatchError(f"{matrix_npy} has {m.shape[1]} heads, the model has {len(heads)}")
        out = np.empty_like(m)
        if labels is not None:
            labels = [str(x) for x in np.asarray(labels).reshape(-1)]
            if len(labels) != len(heads):
                raise LayoutMismatchError(f"{labels_npy} has {len(labels)} labels, the model has {len(heads)} heads")
            for col, label in enumerate(labels):
                out[:, heads.from_reference_label(label)] = m[:, col]
        else:
            out = m
        names = list(concepts) if concepts is not None else [f"concept_{i}" for i in range(m.shape[0])]
        if len(names) != m.shape[0]:
            raise ValueError(f"{len(names)} concept names for a matrix of {m.shape[0]} concepts")
        return cls.from_matrix(torch.from_numpy(out), heads, names, metadata={"source": str(matrix_npy)})

    def __repr__(self) -> str:
        t = f"{self.votes.shape[0]} timesteps, " if self.votes is not None else ""
        return f"HRV({len(self.concepts)} concepts × {len(self.heads)} heads, {t}model={self.metadata.get('model')!r})"


HEAD_NAMES = ("full", "short", "label")


def _head_namer(names: str):
    """Head → name: ``full`` (module path + head), ``short`` (``up2.h0``) or ``label`` (``up, layer: 2, head: 0``)."""
    if names == "full":
        return lambda h: h.name
    if names == "short":
        return lambda h: h.short_name
    if names == "label":
        return lambda h: h.reference_label
    raise ValueError(f"unknown names={names!r}: use one of {', '.join(HEAD_NAMES)}")


def _atomic_write(path: Path, write) -> None:
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)
