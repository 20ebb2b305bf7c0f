"""The HRV paper's released results, shipped with headlens (Apache-2.0, see ``data/paper-hrv/NOTICE``).

``HRV.load("paper:sd-v1-4")`` / ``"paper:sdxl-base-1.0"`` give the authors' HRV matrices (34
concepts × 128 / 1300 heads) in headlens' canonical head order; ``ConceptSet.paper()`` their 34
concepts × 10 words; :func:`released_weakening_curve` the paper's Image Style ordered-weakening
curve on SD v1.4. The ``.npy`` files are read with pickle disabled.
"""

from __future__ import annotations

import csv
import json
import warnings
from dataclasses import dataclass
from importlib import resources

import torch

from .concepts import ConceptSet
from .heads import HeadIndex
from .hrv import HeadlensNote

PREFIX = "paper:"
CITATION = ("Park, Ko, Byun, Suh, Rhee: Cross-Attention Head Position Patterns Can Align with Human Visual "
            "Concepts in Text-to-Image Generative Models, ICLR 2025")
SOURCE = "https://github.com/SNU-DRL/HRV"


@dataclass(frozen=True)
class Release:
    """One released HRV: its files, the model it was measured on, and how that model's name looks."""

    name: str
    model: str  # hub id of the model the HRV was measured on
    title: str
    matrix: str
    labels: str
    per_timestep: tuple[str, str] | None = None
    name_keys: tuple[str, ...] = ()  # substrings of a model name that mean "this very model"
    settings: tuple[tuple[str, object], ...] = ()  # the construction settings the paper states


RELEASES: dict[str, Release] = {
    "sd-v1-4": Release(
        "sd-v1-4", "CompVis/stable-diffusion-v1-4", "Stable Diffusion v1.4", "sd-v1-4.hrv.npy", "sd-v1-4.heads.npy",
        ("sd-v1-4.per-timestep.hrv.npy", "sd-v1-4.per-timestep.heads.npy"), ("v1-4", "v1_4", "v14", "1.4"),
        (("num_prompts", 2100), ("num_inference_steps", 50), ("unet_evaluations", 51), ("guidance_scale", 7.5),
         ("scheduler", "PNDMScheduler"), ("seed", 22), ("variant", "reference"), ("height", 512), ("width", 512))),
    "sdxl-base-1.0": Release(
        "sdxl-base-1.0", "stabilityai/stable-diffusion-xl-base-1.0", "SDXL base 1.0", "sdxl-base-1.0.hrv.npy",
        "sdxl-base-1.0.heads.npy", None, ("xl-base-1.0", "xl-base-1_0", "sdxl-base")),
}
WEAKENING_CURVE = "ordered-weakening-sd-v1-4-image-style.csv"


def data_dir():
    """The folder of the shipped release files (an importlib resource)."""
    return resources.files("headlens") / "data" / "paper-hrv"


def release(name: str) -> Release:
    """A release by name (``sd-v1-4``, ``sdxl-base-1.0``; the ``paper:`` prefix is optional)."""
    key = str(name).strip()
    key = key[len(PREFIX):] if key.startswith(PREFIX) else key
    if key not in RELEASES:
        raise ValueError(f"unknown paper HRV {name!r}: use " + " or ".join(PREFIX + k for k in RELEASES))
    return RELEASES[key]


def layout(name: str) -> HeadIndex:
    """The head layout of the model a release was measured on (from the shipped ``layouts.json``)."""
    rel = release(name)
    data = json.loads((data_dir() / "layouts.json").read_text(encoding="utf-8"))[rel.name]
    heads = HeadIndex.from_description(data["layers"])
    if heads.fingerprint != data["fingerprint"]:  # the file and this headlens disagree on layouts
        raise ValueError(f"layouts.json of {rel.name} is inconsistent (fingerprint {heads.fingerprint} != {data['fingerprint']})")
    return heads


def concepts() -> ConceptSet:
    """The paper's 34 concepts × 10 words, in the row order of the released matrices."""
    text = (data_dir() / "concepts-34x10.txt").read_text(encoding="utf-8-sig")
    mapping: dict[str, list[str]] = {}
    current = None
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        head, dot, rest = line.partition(". ")
        if dot and head.isdigit():
            if current is None:
                raise ValueError(f"concepts-34x10.txt: word {rest!r} before any concept name")
            mapping[current].append(rest.strip())
        else:
            current = line
            mapping[current] = []
    return ConceptSet.from_dict(mapping)


def _read_npy(name: str):
    import numpy as np

    with resources.as_file(data_dir() / name) as p:
        return np.load(p, allow_pickle=False)


def _reorder(matrix, labels, heads: HeadIndex):
    """Columns of ``matrix`` (``[..., H]`` in label order) moved into ``heads``' canonical order."""
    import numpy as np

    labels = [str(x) for x in np.asarray(labels).reshape(-1)]
    if len(labels) != len(heads):
        raise ValueError(f"{len(labels)} head labels for a layout of {len(heads)} heads")
    order = [heads.from_reference_label(label) for label in labels]
    out = np.empty_like(matrix)
    out[..., order] = matrix
    return out


def load(name: str, model=None):
    """A released HRV as an :class:`~headlens.HRV`; with ``model`` its head layout is checked.

    A model with the same layout but another name (e.g. SD v1.5 for ``paper:sd-v1-4``) is accepted
    with a :class:`HeadlensNote` saying where the HRV was measured.
    """
    import numpy as np

    from .hrv import HRV

    rel = release(name)
    heads = layout(rel.name)
    cs = concepts()
    matrix = np.asarray(_read_npy(rel.matrix), dtype=np.float32)
    if matrix.shape != (len(cs), len(heads)):
        raise ValueError(f"{rel.matrix}: shape {matrix.shape}, expected ({len(cs)}, {len(heads)})")
    matrix = _reorder(matrix, _read_npy(rel.labels), heads)
    per_t = None
    if rel.per_timestep is not None:
        raw = np.asarray(_read_npy(rel.per_timestep[0]), dtype=np.float32)  # [T, C, H]
        labels = np.asarray(_read_npy(rel.per_timestep[1])).reshape(raw.shape[0], -1)
        if any((labels[t] != labels[0]).any() for t in range(len(labels))):
            raise ValueError(f"{rel.per_timestep[1]}: head labels differ between timesteps")
        per_t = torch.from_numpy(_reorder(raw, labels[0], heads))
    metadata = {
        "model": rel.model, "source": PREFIX + rel.name, "release": f"{SOURCE} (final_result/)",
        "citation": CITATION, "license": "Apache-2.0", "num_heads": len(heads), "head_layout": heads.fingerprint,
        **dict(rel.settings),
    }
    hrv = HRV.from_matrix(torch.from_numpy(matrix), heads, list(cs.names), words=cs.to_dict(), metadata=metadata)
    hrv._per_timestep = per_t
    if model is not None:
        hrv.check_layout(model)
        note = same_layout_note(rel, model)
        if note:
            warnings.warn(note, HeadlensNote, stacklevel=3)
    return hrv


def _name_of(model) -> str:
    """A model's name (hub id or folder), '' when it has none."""
    if isinstance(model, HeadIndex):
        return ""
    for obj in (model, getattr(model, "unet", None)):
        cfg = getattr(obj, "config", None)
        name = cfg.get("_name_or_path") if hasattr(cfg, "get") else getattr(cfg, "_name_or_path", None)
        if name:
            return str(name)
    return ""


def same_layout_note(rel: Release, model) -> str | None:
    """The note for a model that shares the release's layout but is not the model it was measured on."""
    if isinstance(model, HeadIndex):
        return None
    name = _name_of(model)
    if name and any(k in name.lower() for k in rel.name_keys):
        return None
    who = repr(name) if name else "this model"
    return (f"{PREFIX}{rel.name} was measured on {rel.title} ({rel.model}); {who} has the same head layout, "
            "so the HRV is used as is")


def release_for(heads: HeadIndex) -> str | None:
    """The name of the release whose head layout equals ``heads`` (None if there is none)."""
    for name in RELEASES:
        if layout(name).fingerprint == heads.fingerprint:
            return name
    return None


def released_weakening_curve() -> dict[str, list[tuple[int, float]]]:
    """The paper's Image Style ordered-weakening curve on SD v1.4: ``{"morhf": [(k, score)], "lerhf": [...]}``."""
    text = (data_dir() / WEAKENING_CURVE).read_text(encoding="utf-8")
    out: dict[str, list[tuple[int, float]]] = {"morhf": [], "lerhf": []}
    for row in csv.DictReader(text.splitlines()):
        key, _, k = row["Key"].rpartition("_")
        order = {"top": "morhf", "bottom": "lerhf"}[key]
        out[order].append((int(k), float(row["Value"])))
    for v in out.values():
        v.sort()
    return out
