"""The bundled world: a tiny text-to-image model trained on a procedural world with known ground truth."""
from __future__ import annotations

from pathlib import Path

from .render import render
from .vocab import POLYSEMOUS, VOCABULARY, concept_words, parse_caption

__all__ = [
    "POLYSEMOUS",
    "VOCABULARY",
    "Scorer",
    "concept_words",
    "default_prompts",
    "load_pipeline",
    "model_path",
    "parse_caption",
    "render",
]


def default_prompts(n: int = 256, seed: int = 2024) -> list[str]:
    """Non-empty captions sampled from the world grammar (HRV construction prompts)."""
    import numpy as np

    from .vocab import sample_caption

    rng = np.random.default_rng(seed)
    return [sample_caption(rng) for _ in range(n)]


def model_path() -> Path:
    """Folder of the shipped pipeline inside the package."""
    return Path(__file__).parent / "model"


def load_pipeline(torch_dtype=None, device: str | None = None, folder: str | Path | None = None):
    """Load the bundled StableDiffusionPipeline offline (no safety checker)."""
    from diffusers import StableDiffusionPipeline

    path = Path(folder) if folder is not None else model_path()
    if not (path / "model_index.json").exists():
        raise FileNotFoundError(f"no world pipeline at {path}; train one with `python -m headlens.world.train`")
    kw = {"torch_dtype": torch_dtype} if torch_dtype is not None else {}
    pipe = StableDiffusionPipeline.from_pretrained(str(path), safety_checker=None, requires_safety_checker=False,
                                                   local_files_only=True, **kw)
    pipe.set_progress_bar_config(disable=True)
    if device is not None:
        pipe = pipe.to(device)
    return pipe


def __getattr__(name: str):
    """Lazy import of the scorer (keeps `import headlens.world` light)."""
    if name == "Scorer":
        from .scorer import Scorer

        return Scorer
    raise AttributeError(name)
