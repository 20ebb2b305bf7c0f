"""Scores for edited and multi-concept images: CLIP similarities, image distance, pluggable scorers.

Any scorer works if it offers one of two duck-typed interfaces:

* **text–image scorer** — ``similarity(images, texts) -> Tensor[N]``: cosine similarity of
  ``images[i]`` with ``texts[i]`` (paired). :class:`CLIPScorer` is one.
* **attribute scorer** — ``score(image) -> {concept: value}``, where a value is the detected word
  (``str`` or ``None``), a number, or a ``{word: probability}`` mapping; optionally
  ``score_objects(image) -> [{concept: word, ...}, ...]`` for multi-object images. The bundled world
  model's ground-truth reader ``headlens.world.Scorer()`` is one.

Editing (:func:`edit_scores`): similarity of the edited image with the target prompt and with the
attribute word (or, with an attribute scorer, whether the attribute was read as the word), and the
distance of the edited image from the source (:class:`ImageDistance`: LPIPS when the ``lpips``
package and its weights are available, otherwise 1 − SSIM computed in torch).
Multi-concept (:func:`multi_concept_scores`): similarity with the full prompt and the minimum over
the objects (sub-prompts split at "and", as in the Attend-and-Excite paper).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F

from .scorers import CLIP_MEAN, CLIP_STD, ClipScorer, TorchClipProcessor, clip_preprocess, to_tensor

DISTANCES = ("auto", "lpips", "ssim", "mse")


# ---------------------------------------------------------------------------------------------- CLIP
class CLIPScorer(ClipScorer):
    """CLIP image–text cosine similarity (a text–image scorer): :class:`~headlens.scorers.ClipScorer` built from objects."""

    def __init__(self, model, tokenizer, *, processor=None, image_size: int | None = None,
                 mean: Sequence[float] = CLIP_MEAN, std: Sequence[float] = CLIP_STD, device=None,
                 batch_size: int = 16):
        if processor is None:
            processor = TorchClipProcessor(int(image_size or model.config.vision_config.image_size), mean, std)
        device = device if device is not None else next(model.parameters()).device
        super().__init__(model, tokenizer=tokenizer, image_processor=processor, device=device, batch_size=batch_size)

    @classmethod
    def from_pretrained(cls, name: str = "openai/clip-vit-large-patch14", device=None, **kwargs) -> CLIPScorer:
        """Load a CLIP model and tokenizer by hub id or folder (the reference evaluates with ViT-L/14)."""
        from transformers import CLIPModel, CLIPTokenizer

        try:
            model = CLIPModel.from_pretrained(name)
            tokenizer = CLIPTokenizer.from_pretrained(name)
        except OSError as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ValueError(f"cannot load CLIP model {name!r} ({first}); give a local folder or a reachable hub id") from None
        if device is not None:
            model = model.to(device)
        return cls(model, tokenizer, device=device, **kwargs)


# ---------------------------------------------------------------------------------------------- distance
def ssim(a: torch.Tensor, b: torch.Tensor, window: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Mean structural similarity of two ``[3, H, W]`` images in [0, 1] (Gaussian window, valid region)."""
    from .attend_excite import gaussian_kernel

    a, b = a.double(), b.double()
    h, w = a.shape[-2:]
    k = min(window, h, w)
    k -= 1 - k % 2
    ker = gaussian_kernel(k, sigma, dtype=torch.float64).to(a).expand(a.shape[0], 1, k, k)

    def filt(x):
        return F.conv2d(x[None], ker, groups=a.shape[0])[0]

    c1, c2 = 0.01**2, 0.03**2
    mu_a, mu_b = filt(a), filt(b)
    var_a = filt(a * a) - mu_a**2
    var_b = filt(b * b) - mu_b**2
    cov = filt(a * b) - mu_a * mu_b
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return s.mean().float()


class ImageDistance:
    """Perceptual distance between two images: LPIPS if available, else 1 − SSIM (or MSE on request).

    ``metric``: ``auto`` (LPIPS when the ``lpips`` package loads with its weights, otherwise ``ssim``),
    ``lpips``, ``ssim`` (1 − SSIM, 0 for identical images) or ``mse`` (mean squared error in [0, 1]).
    """

    def __init__(self, metric: str = "auto", net: str = "alex"):
        if metric not in DISTANCES:
            raise ValueError(f"unknown distance {metric!r}: use one of {', '.join(DISTANCES)}")
        self._lpips = None
        if metric in ("auto", "lpips"):
            try:
                import lpips

                self._lpips = lpips.LPIPS(net=net, verbose=False).eval()
                metric = "lpips"
            except (ImportError, OSError, RuntimeError, ValueError) as e:  # not installed, or no weights offline
                if metric == "lpips":
                    raise ValueError(f"LPIPS is unavailable ({type(e).__name__}: {e}); use metric='ssim'") from None
                metric = "ssim"
        self.name = metric if metric != "ssim" else "1-ssim"
        self.metric = metric

    @torch.no_grad()
    def __call__(self, a, b) -> float:
        x, y = to_tensor(a)[:3], to_tensor(b)[:3]
        if x.shape != y.shape:
            y = F.interpolate(y[None], size=x.shape[-2:], mode="bicubic", align_corners=False, antialias=True)[0]
        if self.metric == "lpips":
            return float(self._lpips(x[None] * 2 - 1, y[None] * 2 - 1).flatten()[0])
        if self.metric == "mse":
            return float(((x - y) ** 2).mean())
        return float(1.0 - ssim(x, y))


# ---------------------------------------------------------------------------------------------- scores
def attribute_value(scores: Mapping, concept: str, word: str) -> float:
    """How much an attribute scorer's output says ``concept`` is ``word`` (1/0 for words, else the number)."""
    if concept not in scores:
        lower = {str(k).lower(): k for k in scores}
        if str(concept).lower() not in lower:
            raise ValueError(f"the scorer reports no concept {concept!r} (has: {', '.join(map(str, scores))})")
        concept = lower[str(concept).lower()]
    value = scores[concept]
    if value is None:
        return 0.0
    if isinstance(value, str):
        return float(value.strip().lower() == word.strip().lower())
    if isinstance(value, Mapping):
        return float(value.get(word, 0.0))
    return float(value)


def _kind(scorer) -> str:
    if hasattr(scorer, "similarity"):
        return "text"
    if hasattr(scorer, "score"):
        return "attribute"
    raise TypeError(
        f"{type(scorer).__name__} is not a scorer: give an object with similarity(images, texts) "
        "(e.g. CLIPScorer) or score(image) -> {concept: value} (e.g. headlens.world.Scorer())"
    )


def edit_scores(source, edited, target: str, word: str, scorer, *, concept: str | None = None,
                distance: ImageDistance | None = None) -> dict:
    """Scores of one edit: ``clip_target``/``clip_word`` (or ``attribute``), ``distance`` and its metric."""
    out: dict = {}
    if _kind(scorer) == "text":
        sims = scorer.similarity([edited, edited], [target, word])
        out["clip_target"], out["clip_word"] = float(sims[0]), float(sims[1])
    else:
        if concept is None:
            raise ValueError("an attribute scorer needs concept= (the edited attribute, e.g. 'Color')")
        out["attribute"] = attribute_value(scorer.score(edited), concept, word)
    distance = distance or ImageDistance()
    out["distance"] = distance(source, edited)
    out["distance_metric"] = distance.name
    return out


def object_prompts(prompt: str, words: Sequence[str]) -> list[str]:
    """One sub-prompt per object word: the part of the prompt (split at "and" / commas) holding it."""
    import re

    parts = [p.strip() for p in re.split(r"\band\b|,", prompt) if p.strip()]
    out = []
    for w in words:
        hit = next((p for p in parts if re.search(rf"\b{re.escape(w)}\b", p, flags=re.IGNORECASE)), None)
        out.append(hit or f"a photo of a {w}")
    return out


def multi_concept_scores(image, prompt: str, tokens, scorer, *, objects: Sequence[str] | None = None) -> dict:
    """Full-prompt similarity and per-object scores with their minimum (text scorer), or per-object presence."""
    from .attend_excite import parse_tokens

    pairs = parse_tokens(tokens)
    words = [w for w, _ in pairs]
    out: dict = {}
    if _kind(scorer) == "text":
        texts = list(objects) if objects is not None else object_prompts(prompt, words)
        sims = scorer.similarity([image] * (1 + len(texts)), [prompt, *texts])
        out["clip_full"] = float(sims[0])
        out["per_object"] = {t: float(s) for t, s in zip(texts, sims[1:])}
        out["clip_min_object"] = float(sims[1:].min())
        return out
    present = {}
    objs = scorer.score_objects(image) if hasattr(scorer, "score_objects") else None
    for word, concept in pairs:
        if concept is None:
            raise ValueError(f"token {word!r} has no concept; an attribute scorer needs word:Concept pairs")
        if objs is not None:
            present[word] = float(any(attribute_value(o, concept, word) for o in objs if concept in o))
        else:
            present[word] = attribute_value(scorer.score(image), concept, word)
    out["per_object"] = present
    out["min_object"] = min(present.values())
    out["mean_object"] = sum(present.values()) / len(present)
    return out


def summarize(rows: Sequence[Mapping]) -> dict:
    """Mean of every numeric field over rows (NaN-free), plus the count."""
    keys = sorted({k for r in rows for k, v in r.items() if isinstance(v, (int, float)) and not isinstance(v, bool)})
    out = {"n": len(rows)}
    for k in keys:
        vals = [float(r[k]) for r in rows if k in r and not math.isnan(float(r[k]))]
        if vals:
            out[k] = sum(vals) / len(vals)
    return out


__all__ = [
    "CLIPScorer", "ImageDistance", "attribute_value", "clip_preprocess", "edit_scores", "multi_concept_scores",
    "object_prompts", "ssim", "summarize", "to_tensor",
]
