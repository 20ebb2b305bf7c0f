"""Image scorers for the weakening and causal-ranking analyses.

The protocol is one method::

    scorer.score(images, targets, prompts=None) -> list[float]

``images`` are PIL images (or ``H×W×3`` arrays), ``targets[i]`` is the word image *i* should show
(the concept-word of its prompt, e.g. ``"red"``) and ``prompts[i]`` its full prompt (optional;
some scorers use it). Higher means "shows the target more". Implementations:

* :class:`ClipScorer` — CLIP image–text cosine similarity with the target word (spec §6), through
  transformers' ``CLIPModel`` (hub id or local folder, or model objects);
* :class:`OpenClipScorer` — the same through ``open_clip`` (optional dependency, imported lazily);
* :class:`WorldScorer` — the bundled world's ground-truth reader: 1.0 if the image shows the
  target value of its concept, else 0.0;
* :class:`FunctionScorer` — any ``fn(image, target, prompt) -> float``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol, runtime_checkable

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

DEFAULT_CLIP = "openai/clip-vit-base-patch32"
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
DEFAULT_OPENCLIP = "ViT-B-32/openai"


@runtime_checkable
class Scorer(Protocol):
    """Anything with ``score(images, targets, prompts=None) -> list[float]``."""

    def score(self, images: Sequence, targets: Sequence[str], prompts: Sequence[str] | None = None) -> list[float]:
        """One score per image: how well image i shows targets[i]."""
        ...


def to_pil(image) -> Image.Image:
    """A PIL RGB image from a PIL image, an ``H×W×3`` array (0..1 floats or 0..255) or a ``3×H×W`` tensor."""
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    arr = image.detach().cpu().numpy() if torch.is_tensor(image) else np.asarray(image)
    if arr.ndim == 3 and arr.shape[0] in (1, 3) and arr.shape[-1] not in (1, 3):
        arr = arr.transpose(1, 2, 0)
    if arr.dtype != np.uint8:
        arr = (np.clip(arr, 0.0, 1.0) * 255).round().astype(np.uint8)
    return Image.fromarray(arr.squeeze(-1) if arr.shape[-1] == 1 else arr).convert("RGB")


# ---------------------------------------------------------------------------------------------- images
def to_tensor(image) -> torch.Tensor:
    """A PIL image, ``HxWx3`` uint8/float array or ``[3, H, W]`` tensor → float ``[3, H, W]`` in [0, 1]."""
    if torch.is_tensor(image):
        x = image.detach().float()
        if x.dim() == 4 and x.shape[0] == 1:
            x = x[0]
        if x.dim() == 3 and x.shape[0] not in (1, 3) and x.shape[-1] in (1, 3):
            x = x.permute(2, 0, 1)
        return x / 255.0 if x.max() > 1.5 else x
    arr = np.asarray(image.convert("RGB") if hasattr(image, "convert") else image)
    x = torch.from_numpy(np.array(arr, dtype=np.float32, copy=True))
    if x.dim() == 2:
        x = x.unsqueeze(-1).expand(*x.shape, 3)
    x = x.permute(2, 0, 1)
    return x / 255.0 if arr.dtype == np.uint8 or x.max() > 1.5 else x


def clip_preprocess(images, size: int, mean=CLIP_MEAN, std=CLIP_STD) -> torch.Tensor:
    """CLIP's preprocessing in torch: shortest side to ``size`` (bicubic, antialiased), centre crop, normalise."""
    out = []
    for image in images:
        x = to_tensor(image)[:3]
        h, w = x.shape[-2:]
        scale = size / min(h, w)
        nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
        x = F.interpolate(x[None], size=(nh, nw), mode="bicubic", align_corners=False, antialias=True)[0]
        top, left = (nh - size) // 2, (nw - size) // 2
        x = x[:, top:top + size, left:left + size].clamp(0, 1)
        out.append((x - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1))
    return torch.stack(out)


class TorchClipProcessor:
    """CLIP image preprocessing in torch (no torchvision): called like a transformers image processor."""

    def __init__(self, size: int, mean=CLIP_MEAN, std=CLIP_STD):
        self.size, self.mean, self.std = int(size), tuple(mean), tuple(std)

    def __call__(self, images, return_tensors: str = "pt") -> dict:
        """``{"pixel_values": [N, 3, size, size]}``."""
        return {"pixel_values": clip_preprocess(images, self.size, self.mean, self.std)}


def _check(images: Sequence, targets: Sequence[str]) -> None:
    if len(images) != len(targets):
        raise ValueError(f"{len(images)} images but {len(targets)} targets; give one target word per image")


class ClipScorer:
    """CLIP image–text cosine similarity between each image and its target word (``template`` formats the text)."""

    def __init__(self, model: str | torch.nn.Module = DEFAULT_CLIP, tokenizer=None, image_processor=None,
                 device: str | torch.device = "cpu", batch_size: int = 32, template: str = "{}"):
        from transformers import AutoImageProcessor, AutoTokenizer, CLIPModel

        self.name = model if isinstance(model, str) else type(model).__name__
        if isinstance(model, str):
            try:
                self.model = CLIPModel.from_pretrained(model)
                tokenizer = tokenizer or AutoTokenizer.from_pretrained(model)
                image_processor = image_processor or AutoImageProcessor.from_pretrained(model)
            except OSError as e:
                first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                raise ValueError(f"cannot load CLIP model {model!r} ({first}); give a local CLIP folder "
                                 "(CLIPModel + tokenizer + image processor) or a reachable hub id") from None
        else:
            self.model = model
        if tokenizer is None:
            raise ValueError("ClipScorer with a model object also needs tokenizer=")
        if image_processor is None:  # CLIP's own preprocessing, done in torch
            image_processor = TorchClipProcessor(self.model.config.vision_config.image_size)
        self.model = self.model.to(device).eval()
        self.tokenizer, self.image_processor = tokenizer, image_processor
        self.device, self.batch_size, self.template = torch.device(device), int(batch_size), template

    @torch.no_grad()
    def text_embeddings(self, texts: Sequence[str]) -> torch.Tensor:
        """Unit-norm projected text embeddings ``[n, d]``."""
        enc = self.tokenizer([self.template.format(t) for t in texts], padding=True, truncation=True,
                             return_tensors="pt").to(self.device)
        out = self.model.text_model(input_ids=enc["input_ids"], attention_mask=enc.get("attention_mask"))
        emb = self.model.text_projection(out.pooler_output)
        return torch.nn.functional.normalize(emb.float(), dim=-1)

    @torch.no_grad()
    def image_embeddings(self, images: Sequence) -> torch.Tensor:
        """Unit-norm projected image embeddings ``[n, d]``."""
        chunks = []
        for i in range(0, len(images), self.batch_size):
            batch = [to_pil(im) for im in images[i:i + self.batch_size]]
            pixels = self.image_processor(images=batch, return_tensors="pt")["pixel_values"]
            dtype = next(self.model.parameters()).dtype
            out = self.model.vision_model(pixel_values=pixels.to(self.device, dtype))
            chunks.append(self.model.visual_projection(out.pooler_output).float())
        return torch.nn.functional.normalize(torch.cat(chunks), dim=-1)

    def similarity(self, images: Sequence, texts: Sequence[str]) -> torch.Tensor:
        """Cosine similarity of each image with its text ``[N]`` (paired one to one)."""
        if len(images) != len(texts):
            raise ValueError(f"{len(images)} images but {len(texts)} texts; similarity pairs them one to one")
        return (self.image_embeddings(images) * self.text_embeddings(texts)).sum(-1).cpu()

    def matrix(self, images: Sequence, texts: Sequence[str]) -> torch.Tensor:
        """Cosine similarity of every image with every text ``[N, M]``."""
        return (self.image_embeddings(images) @ self.text_embeddings(texts).T).cpu()

    def score(self, images: Sequence, targets: Sequence[str], prompts: Sequence[str] | None = None) -> list[float]:
        """Cosine similarity of image i and the text of targets[i]."""
        _check(images, targets)
        if not len(images):
            return []
        unique = sorted(set(targets))
        text = self.text_embeddings(unique)
        rows = torch.tensor([unique.index(t) for t in targets])
        img = self.image_embeddings(images)
        return (img * text[rows].to(img.device)).sum(-1).cpu().tolist()


class WorldPixels:
    """The world CLIP's image preprocessing: 32x32 RGB in [-1, 1], as in its contrastive training."""

    def __call__(self, images, return_tensors: str = "pt") -> dict:
        """``{"pixel_values": [N, 3, 32, 32]}``."""
        arr = np.stack([np.asarray(to_pil(im).convert("RGB").resize((32, 32))) for im in images])
        return {"pixel_values": torch.from_numpy(arr).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)}


def world_clip_scorer(device: str = "cpu", template: str = "{}") -> ClipScorer:
    """The world CLIP (``headlens.world.load_clip()``) as a ClipScorer: an alternative reader to the ground truth."""
    from transformers import CLIPTokenizer

    from .world import clip_path, load_clip

    scorer = ClipScorer(load_clip(), tokenizer=CLIPTokenizer.from_pretrained(str(clip_path())),
                        image_processor=WorldPixels(), device=device, template=template)
    scorer.name = "clip:world"
    return scorer


class OpenClipScorer:
    """CLIP cosine similarity through ``open_clip`` (``model="ARCH/PRETRAINED"``, e.g. ``ViT-B-32/openai``)."""

    def __init__(self, model: str = DEFAULT_OPENCLIP, device: str = "cpu", template: str = "{}"):
        try:
            import open_clip
        except ImportError:
            raise ImportError(
                "OpenClipScorer needs the optional package open_clip: `pip install open_clip_torch` "
                "(install CPU torch first, or it pulls a CUDA build), or use ClipScorer"
            ) from None
        arch, _, pretrained = model.partition("/")
        self.name = model
        self.model, _, self.preprocess = open_clip.create_model_and_transforms(arch, pretrained=pretrained or None)
        self.model = self.model.to(device).eval()
        self.tokenize = open_clip.get_tokenizer(arch)
        self.device, self.template = device, template

    @torch.no_grad()
    def score(self, images: Sequence, targets: Sequence[str], prompts: Sequence[str] | None = None) -> list[float]:
        """Cosine similarity of image i and the text of targets[i]."""
        _check(images, targets)
        if not len(images):
            return []
        unique = sorted(set(targets))
        text = self.model.encode_text(self.tokenize([self.template.format(t) for t in unique]).to(self.device))
        text = torch.nn.functional.normalize(text.float(), dim=-1)
        pixels = torch.stack([self.preprocess(to_pil(im)) for im in images]).to(self.device)
        img = torch.nn.functional.normalize(self.model.encode_image(pixels).float(), dim=-1)
        rows = torch.tensor([unique.index(t) for t in targets])
        return (img * text[rows]).sum(-1).cpu().tolist()


class WorldScorer:
    """Ground truth for the bundled world model: 1.0 if the image's ``concept`` reads as the target word, else 0.0."""

    def __init__(self, concept: str, reader=None):
        self.concept = concept
        self.name = f"world:{concept}"
        if reader is None:
            from .world import Scorer as WorldReader

            reader = WorldReader()
        self.reader = reader

    def score(self, images: Sequence, targets: Sequence[str], prompts: Sequence[str] | None = None) -> list[float]:
        """1.0 where ``reader.score(image)[concept] == target`` (case-insensitive), else 0.0."""
        _check(images, targets)
        out = []
        for im, target in zip(images, targets):
            result = self.reader.score(to_pil(im))
            if self.concept not in result:
                raise KeyError(f"the world scorer has no concept {self.concept!r} (have: {', '.join(result)})")
            seen = result[self.concept]
            out.append(1.0 if seen is not None and str(seen).lower() == str(target).lower() else 0.0)
        return out


class FunctionScorer:
    """Wrap ``fn(image, target, prompt) -> float`` as a scorer."""

    def __init__(self, fn: Callable[[Image.Image, str, str | None], float], name: str | None = None):
        self.fn = fn
        self.name = name or getattr(fn, "__name__", "function")

    def score(self, images: Sequence, targets: Sequence[str], prompts: Sequence[str] | None = None) -> list[float]:
        """``fn`` applied to each (image, target, prompt)."""
        _check(images, targets)
        prompts = list(prompts) if prompts is not None else [None] * len(images)
        return [float(self.fn(to_pil(im), t, p)) for im, t, p in zip(images, targets, prompts)]


def make_scorer(spec: str, concept: str | None = None, device: str = "cpu") -> Scorer:
    """A scorer from a short spec: ``clip``, ``clip:MODEL``, ``openclip``, ``openclip:ARCH/PRETRAINED``, ``world``."""
    kind, _, arg = spec.partition(":")
    kind = kind.strip().lower()
    if kind == "clip" and arg.strip().lower() == "world":
        return world_clip_scorer(device=device)
    if kind == "clip":
        return ClipScorer(arg or DEFAULT_CLIP, device=device)
    if kind == "openclip":
        return OpenClipScorer(arg or DEFAULT_OPENCLIP, device=device)
    if kind == "world":
        if not concept:
            raise ValueError("the world scorer needs a concept (e.g. Color)")
        return WorldScorer(concept)
    raise ValueError(f"unknown scorer {spec!r}: use clip[:MODEL], clip:world, openclip[:ARCH/PRETRAINED] or world")
