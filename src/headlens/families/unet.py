"""The UNet family: SD1.x, SD2.x, SDXL (``UNet2DConditionModel`` with text cross-attention ``attn2``)."""

from __future__ import annotations

import torch

from ..heads import HeadIndex, Layer
from ..textlayout import Segment, TextLayout
from . import Family, _class_names


class UNetFamily(Family):
    """Cross-attention UNets: a concept-word's key is ``to_k`` of its CLIP embedding."""

    name = "unet"
    label = "Stable Diffusion UNet"

    def matches(self, denoiser) -> bool:
        return "UNet2DConditionModel" in _class_names(denoiser) or (
            hasattr(denoiser, "down_blocks") and hasattr(denoiser, "up_blocks"))

    def layers(self, denoiser) -> list[Layer]:
        return list(HeadIndex.from_unet(denoiser).layers)

    def text_layout(self, pipe) -> TextLayout:
        tok = getattr(pipe, "tokenizer", None) or getattr(pipe, "tokenizer_2", None)
        enc = "text_encoder" if getattr(pipe, "tokenizer", None) is not None else "text_encoder_2"
        if tok is None:
            raise ValueError("this pipeline has no tokenizer; headlens needs a text-to-image pipeline")
        return TextLayout((Segment(enc, tok, 0, int(tok.model_max_length)),), start_position=0)

    @torch.no_grad()
    def encode_text(self, pipe, text: str, device=None) -> torch.Tensor:
        device = device or pipe.unet.device
        out = pipe.encode_prompt(prompt=text, device=device, num_images_per_prompt=1, do_classifier_free_guidance=False)
        return out[0][0]
