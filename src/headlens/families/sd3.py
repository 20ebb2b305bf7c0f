"""The SD3 family: Stable Diffusion 3 / 3.5 (``SD3Transformer2DModel``, MMDiT ``JointTransformerBlock``).

There is no cross-attention: each block runs one softmax over [image tokens, text tokens], text =
77 CLIP positions (CLIP-L and CLIP-G side by side in the feature dimension) + the T5 positions.
A head's cross-attention is the image-query × text-key block of that softmax. SD3.5-medium's extra
image-only attention (``attn2`` of its first blocks) holds no text heads and is left alone; the last
block is ``context_pre_only`` (its text output is dropped) but its image queries still read text.
A concept-word's keys come from probe tokens (:mod:`headlens.families.joint`); its tokens are its
CLIP positions and its T5 positions; the CLIP start token is the reference's start token.
"""

from __future__ import annotations

import torch

from ..heads import Layer
from ..textlayout import Segment, TextLayout
from . import Family, _class_names, _stack_layers


class SD3Family(Family):
    """SD3/SD3.5: joint attention ``transformer_blocks.i.attn``, image first, CFG batch [uncond, cond]."""

    name = "sd3"
    label = "SD3"
    joint = True
    refusals = {
        "Prompt-to-Prompt": "its image→text and image→image maps are one joint softmax, so P2P's separate cross- and "
                            "self-attention windows would splice rows of two different softmaxes, and its text "
                            "tokens are rewritten together with the image in every block; use a UNet or PixArt model",
    }

    def matches(self, denoiser) -> bool:
        return "SD3Transformer2DModel" in _class_names(denoiser)

    def layers(self, denoiser) -> list[Layer]:
        return _stack_layers(((f"transformer_blocks.{i}.attn", "block", i, block.attn)
                              for i, block in enumerate(denoiser.transformer_blocks)
                              if getattr(block.attn, "add_k_proj", None) is not None),
                             int(denoiser.config.patch_size))

    def processor(self, session, layer, original):
        from .joint import JointProcessor

        return JointProcessor(session, layer, original, "sd3")

    def self_layers(self, denoiser, heads) -> list:
        self.require("Prompt-to-Prompt")
        return []

    def check(self, denoiser) -> None:
        if getattr(denoiser, "_parallel_config", None) is not None:
            raise ValueError("headlens cannot read attention heads under context/tensor parallelism (each process "
                             "holds part of the sequence or of the heads); load the model without parallelism")

    # ------------------------------------------------------------------ probes
    def add_probes(self, session, args, kwargs, probe) -> tuple[tuple, dict]:
        """Append the probe tokens to the prompt embeddings the transformer gets (before ``context_embedder``)."""
        kwargs = as_kwargs(session.denoiser, args, kwargs)
        args, enc = (), kwargs["encoder_hidden_states"]
        session.text_len = int(enc.shape[1])
        if probe is not None:
            table = probe.table.to(device=enc.device, dtype=enc.dtype)
            kwargs["encoder_hidden_states"] = torch.cat([enc, table[None].expand(enc.shape[0], -1, -1)], dim=1)
        else:
            kwargs["encoder_hidden_states"] = enc
        return args, kwargs

    # ------------------------------------------------------------------ text
    def max_length(self, pipe) -> int:
        """T5 length the pipeline pads to by default (256)."""
        return int(self.call_defaults(pipe).get("max_sequence_length", 256))

    def text_layout(self, pipe) -> TextLayout:
        if getattr(pipe, "text_encoder_3", None) is None or getattr(pipe, "tokenizer_3", None) is None:
            raise ValueError("headlens needs the SD3 pipeline's T5 encoder (text_encoder_3); load the pipeline with it")
        clip = pipe.tokenizer
        n = int(getattr(pipe, "tokenizer_max_length", clip.model_max_length))
        return TextLayout((Segment("text_encoder", clip, 0, n),
                           Segment("text_encoder_3", pipe.tokenizer_3, n, self.max_length(pipe))), start_position=0)

    @torch.no_grad()
    def encode_text(self, pipe, text: str, device=None) -> torch.Tensor:
        device = device or pipe.transformer.device
        out = pipe.encode_prompt(prompt=text, prompt_2=None, prompt_3=None, device=device, num_images_per_prompt=1,
                                 do_classifier_free_guidance=False, max_sequence_length=self.max_length(pipe))
        return out[0][0]

    def default_size(self, pipe) -> tuple[int, int]:
        s = int(getattr(pipe, "default_sample_size", pipe.transformer.config.sample_size))
        f = int(pipe.vae_scale_factor)
        return s * f, s * f


def as_kwargs(module, args: tuple, kwargs: dict) -> dict:
    """A forward call's arguments as keywords (positional ones named by the forward signature)."""
    if not args:
        return dict(kwargs)
    import inspect

    bound = inspect.signature(module.forward).bind_partial(*args, **kwargs)
    return dict(bound.arguments)
