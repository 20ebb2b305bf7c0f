"""The bundled world: a tiny text-to-image model trained on a procedural world with known ground truth."""
from __future__ import annotations

from pathlib import Path

from .render import render
from .vocab import POLYSEMOUS, VOCABULARY, concept_words, parse_caption

__all__ = [
    "GENERATION",
    "MODEL_NAMES",
    "POLYSEMOUS",
    "VOCABULARY",
    "Scorer",
    "concept_words",
    "clip_path",
    "default_prompts",
    "load_clip",
    "load_named",
    "load_pipeline",
    "model_path",
    "parse_caption",
    "render",
    "variant_of",
]

# the shipped models: 'default' (frozen, separately pre-trained world CLIP text encoder; SD's regime) and
# 'joint' (the first model, whose text encoder trained jointly with the UNet)
VARIANTS: dict[str, str] = {"default": "model", "joint": "model-joint"}
# their names on the command line (`--model world`, `--model world-joint`)
MODEL_NAMES: dict[str, str] = {"world": "default", "default": "default", "world-joint": "joint"}


def variant_of(model: str | None) -> str | None:
    """The shipped variant a CLI model name means ('world' -> 'default', 'world-joint' -> 'joint'), else None."""
    return MODEL_NAMES.get(str(model)) if model is not None else None

# The shipped models' own good generation setting with their shipped DDIM scheduler: the default of
# every CLI command on `--model world` / `world-joint` (measured in docs/world.md, "Steps and guidance":
# DDIM at 25 steps reads back as PNDM at 40-50, in half the UNet calls).
GENERATION = {"num_inference_steps": 25, "guidance_scale": 5.0}


def default_prompts(n: int = 256, seed: int = 2024) -> list[str]:
    """Non-empty captions sampled from the world grammar (HRV construction prompts)."""
    import numpy as np

    from .vocab import sample_caption

    rng = np.random.default_rng(seed)
    return [sample_caption(rng) for _ in range(n)]


def model_path(variant: str = "default") -> Path:
    """Folder of a shipped pipeline inside the package ('default' or 'joint')."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown world variant {variant!r}; use one of {', '.join(VARIANTS)}")
    return Path(__file__).parent / VARIANTS[variant]


def clip_path() -> Path:
    """Folder of the world CLIP (a transformers CLIPModel with its tokenizer)."""
    return Path(__file__).parent / "clip"


def load_clip():
    """The world CLIP as a `transformers.CLIPModel` (eval mode): its text tower is the default pipeline's
    text encoder, pre-trained contrastively on (render, caption) pairs before the UNet and frozen since."""
    from transformers import CLIPModel

    path = clip_path()
    if not (path / "config.json").exists():
        raise FileNotFoundError(f"no world CLIP at {path}; train one with `python -m headlens.world.clip_train`")
    return CLIPModel.from_pretrained(str(path), local_files_only=True).eval()


def load_pipeline(torch_dtype=None, device: str | None = None, folder: str | Path | None = None,
                  variant: str = "default"):
    """Load a bundled StableDiffusionPipeline offline (no safety checker): variant 'default' or 'joint'."""
    from diffusers import StableDiffusionPipeline

    path = Path(folder) if folder is not None else model_path(variant)
    if not (path / "model_index.json").exists():
        raise FileNotFoundError(f"no world pipeline at {path}; train one with `python -m headlens.world.train`")
    kw = {"torch_dtype": torch_dtype} if torch_dtype is not None else {}
    pipe = StableDiffusionPipeline.from_pretrained(str(path), safety_checker=None, requires_safety_checker=False,
                                                   local_files_only=True, **kw)
    pipe.set_progress_bar_config(disable=True)
    if device is not None:
        pipe = pipe.to(device)
    return pipe


def load_named(model: str = "world", **kw):
    """A world pipeline by its command-line name ('world', 'world-joint') or a pipeline folder (scripts' --model)."""
    variant = variant_of(model)
    return load_pipeline(folder=None if variant else model, variant=variant or "default", **kw)


def __getattr__(name: str):
    """Lazy import of the scorer (keeps `import headlens.world` light)."""
    if name == "Scorer":
        from .scorer import Scorer

        return Scorer
    raise AttributeError(name)
