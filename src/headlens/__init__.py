"""headlens: find and steer the cross-attention heads of text-to-image diffusion models.

Quick start::

    import headlens
    pipe = headlens.world.load_pipeline()                 # or any SD1.x/2.x/XL diffusers pipeline
    hrv = headlens.build(pipe, "world", "world", num_inference_steps=20)
    hrv.top_heads("Color", k=5)
    with headlens.steer(pipe, hrv) as s:
        s.adjust("orange", toward="Color", away="Shape")
        image = pipe("an orange square").images[0]
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

from .concepts import ConceptSet, load_prompts  # noqa: E402
from .heads import HeadIndex  # noqa: E402
from .hrv import HRV, HeadlensNote, LayoutMismatchError  # noqa: E402

_LAZY = {
    "build": ("headlens.building", "build"),
    "steer": ("headlens.steering", "steer"),
    "excite": ("headlens.attend_excite", "excite"),
    "edit": ("headlens.edit", None),
    "analysis": ("headlens.analysis", None),
    "world": ("headlens.world", None),
    "plots": ("headlens.plots", None),
}

__all__ = ["ConceptSet", "HeadIndex", "HeadlensNote", "HRV", "LayoutMismatchError", "load_prompts", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        module, attr = _LAZY[name]
        mod = importlib.import_module(module)
        return getattr(mod, attr) if attr else mod
    raise AttributeError(f"module 'headlens' has no attribute {name!r}")
