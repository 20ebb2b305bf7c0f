"""Model families: what differs between a UNet, PixArt, SD3 and FLUX, behind one small interface.

A family knows

1. its **head layout** (the text-attention modules, their heads and query grids → :class:`HeadIndex`);
2. how to **read and edit the image→text block** of its attention: the processor installed on each
   text-attention module (cross-attention ``attn2``, or the joint attention of an MMDiT block);
3. where a **concept-word's keys** come from: a fixed projection of the word's text embedding
   (UNet, PixArt), or *probe tokens* riding along in the joint text stream (SD3, FLUX);
4. how a **prompt becomes the denoiser's text keys** (:class:`~headlens.textlayout.TextLayout`:
   tokenizer segments, padding mask);
5. image sizes, classifier-free-guidance layout and the features it cannot offer (one-line refusals).

Every feature of headlens (build, steer, weaken, head effects, maps, P2P, A&E) goes through this
interface; :func:`family_of` picks the family of a pipeline or denoiser.
"""

from __future__ import annotations

import inspect

import torch

from ..heads import Layer


class UnsupportedModelError(ValueError):
    """The model is not one of the supported families, or a feature does not apply to its family."""


class Family:
    """Base class: the UNet-like defaults (cross-attention ``attn2``, no probes, CFG batch [uncond, cond])."""

    name = "base"
    label = "model"
    joint = False  # image and text in one softmax: concept keys come from probe tokens
    refusals: dict[str, str] = {}  # feature -> why it does not apply (one line)

    # ------------------------------------------------------------------ identity
    def matches(self, denoiser) -> bool:
        """True if ``denoiser`` belongs to this family."""
        raise NotImplementedError

    @staticmethod
    def denoiser(model):
        """The denoiser of a pipeline (``unet`` or ``transformer``), or ``model`` itself."""
        for attr in ("unet", "transformer"):
            d = getattr(model, attr, None)
            if isinstance(d, torch.nn.Module):
                return d
        return model

    def layers(self, denoiser) -> list[Layer]:
        """The text-attention layers in canonical order."""
        raise NotImplementedError

    def check(self, denoiser) -> None:
        """Raise a one-line error if headlens cannot run on this denoiser as configured."""

    def require(self, feature: str) -> None:
        """Refuse a feature that does not apply to this family, with the reason."""
        if feature in self.refusals:
            raise UnsupportedModelError(f"{feature} is not available for {self.label} models: {self.refusals[feature]}")

    # ------------------------------------------------------------------ attention
    def processor(self, session, layer, original):
        """The headlens processor for one text-attention module."""
        from ..attention import HeadlensProcessor

        return HeadlensProcessor(session, layer, original)

    def self_layers(self, denoiser, heads) -> list:
        """Image self-attention modules paired with the text layers (for Prompt-to-Prompt)."""
        from ..attention import SelfLayer

        out = []
        for layer in heads.layers:
            name = layer.name[: -len("attn2")] + "attn1"
            module = denoiser.get_submodule(name)
            out.append(SelfLayer(len(out), name, int(module.heads), layer.downsample))
        return out

    def install(self, session) -> list:
        """Extra hooks the session needs on this family's pipeline (returned handles are removed on restore)."""
        return []

    def uses_cfg(self, guidance_scale: float) -> bool:
        """Whether the pipeline runs a [uncond, cond] batch at this guidance scale."""
        return guidance_scale > 1.0

    def detect_cfg(self, session) -> bool:
        """Whether the current denoiser batch is [unconditional…, conditional…]."""
        try:
            return bool(session.pipe.do_classifier_free_guidance)
        except (AttributeError, TypeError):
            return False

    # ------------------------------------------------------------------ text
    def text_layout(self, pipe):
        """The pipeline's text keys as tokenizer segments."""
        raise NotImplementedError

    def encode_text(self, pipe, text: str, device=None) -> torch.Tensor:
        """Prompt embeddings ``[keys, width]`` exactly as the pipeline's ``encode_prompt`` makes them."""
        raise NotImplementedError

    def key_inputs(self, pipe, table: torch.Tensor) -> torch.Tensor:
        """Map prompt embeddings ``[N, width]`` into the input space of the attention's ``to_k``."""
        return table

    # ------------------------------------------------------------------ sizes
    def default_size(self, pipe) -> tuple[int, int]:
        """(height, width) in pixels the pipeline generates at by default."""
        d = self.denoiser(pipe)
        size = d.config.sample_size
        h, w = (size, size) if isinstance(size, int) else tuple(size)
        f = int(getattr(pipe, "vae_scale_factor", 8) or 8)
        return int(h) * f, int(w) * f

    def generation_size(self, pipe, height: int | None, width: int | None) -> tuple[int, int]:
        """(height, width) the denoiser really works at for a requested size (PixArt bins sizes)."""
        dh, dw = self.default_size(pipe)
        return int(height or dh), int(width or dw)

    def latent_size(self, pipe, height: int, width: int) -> tuple[int, int]:
        """The latent grid that the layers' ``downsample`` divides, for an image of this size."""
        f = int(getattr(pipe, "vae_scale_factor", 8) or 8)
        if height % f or width % f:
            raise ValueError(f"image size {height}×{width} must be a multiple of {f} for this model")
        return height // f, width // f

    def call_defaults(self, pipe) -> dict:
        """Keyword defaults of the pipeline's ``__call__`` (e.g. ``max_sequence_length``)."""
        try:
            params = inspect.signature(type(pipe).__call__).parameters
        except (TypeError, ValueError):
            return {}
        return {k: p.default for k, p in params.items() if p.default is not inspect.Parameter.empty}


def _class_names(obj) -> set[str]:
    return {c.__name__ for c in type(obj).__mro__}


def _stack_layers(modules, down: int, head_dim=None) -> list[Layer]:
    """Layers from (module name, place, index in place, attention module) in order, heads numbered on.

    A head's width is ``to_q.out_features // heads``, or ``head_dim(attn)`` where given.
    """
    out, offset = [], 0
    for name, place, i, attn in modules:
        heads = int(attn.heads)
        dim = int(head_dim(attn)) if head_dim is not None else attn.to_q.out_features // heads
        out.append(Layer(len(out), name, place, i, heads, dim, offset, down))
        offset += heads
    return out


def families() -> list[Family]:
    """Every supported family, most specific first."""
    from .flux import FluxFamily
    from .pixart import PixArtFamily
    from .sd3 import SD3Family
    from .unet import UNetFamily

    return [UNetFamily(), PixArtFamily(), SD3Family(), FluxFamily()]


def family_of(model) -> Family:
    """The family of a pipeline or denoiser (one-line error for unsupported models)."""
    denoiser = Family.denoiser(model)
    for fam in families():
        if fam.matches(denoiser):
            return fam
    raise UnsupportedModelError(
        f"headlens does not support {type(denoiser).__name__} models; it supports SD1.x/2.x/XL UNets, "
        "PixArt-α/Σ, SD3/SD3.5 and FLUX.1 pipelines"
    )


def prompt_map(pipe, prompt: str):
    """The prompt tokenised as the pipeline's denoiser sees it (positions index its text keys)."""
    return family_of(pipe).text_layout(pipe).token_map(prompt)


def denoiser_of(model):
    """The denoiser (UNet or transformer) of a pipeline, or the model itself."""
    return Family.denoiser(model)


__all__ = ["Family", "UnsupportedModelError", "denoiser_of", "families", "family_of", "prompt_map"]
