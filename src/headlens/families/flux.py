"""The FLUX family: FLUX.1 (``FluxTransformer2DModel``): 19 double-stream + 38 single-stream blocks.

Text comes *first* in the joint sequence; RoPE acts on both streams (text positions are all
zero); the model is guidance-distilled, so the whole batch is conditional (no CFG batch). With the
pipeline's optional true CFG (``true_cfg_scale > 1``) the negative prompt runs as a second
transformer call at the same timestep: headlens recognises it and leaves it alone. Single-stream
blocks see one sequence [text, image]; the text length is read from the transformer's input.
A concept-word's keys come from probe tokens; its tokens are its T5 positions (CLIP is pooled
only); T5 has no start token. Attention is computed through diffusers' dispatch backend; when a
plugin needs probabilities they are computed on the plain math path. Context or tensor
parallelism is refused: each process would see only part of the sequence or of the heads.
"""

from __future__ import annotations

import torch

from ..heads import Layer
from ..textlayout import Segment, TextLayout
from . import _class_names, _stack_layers
from .sd3 import SD3Family, as_kwargs


class FluxFamily(SD3Family):
    """FLUX.1: joint attention ``transformer_blocks.i.attn`` then ``single_transformer_blocks.j.attn``, text first."""

    name = "flux"
    label = "FLUX"
    repeated_timestep_is_negative = True
    # refusals: SD3's (the same joint softmax)

    def matches(self, denoiser) -> bool:
        return "FluxTransformer2DModel" in _class_names(denoiser)

    def layers(self, denoiser) -> list[Layer]:
        down = 2 * int(denoiser.config.patch_size)  # the pipeline packs 2×2 latent patches into one token
        groups = (("block", "transformer_blocks", denoiser.transformer_blocks),
                  ("single", "single_transformer_blocks", denoiser.single_transformer_blocks))
        return _stack_layers(((f"{prefix}.{i}.attn", place, i, block.attn)
                              for place, prefix, blocks in groups for i, block in enumerate(blocks)),
                             down, head_dim=lambda attn: attn.head_dim)

    def processor(self, session, layer, original):
        from .joint import JointProcessor

        return JointProcessor(session, layer, original, "flux")

    def detect_cfg(self, session) -> bool:
        return False

    def uses_cfg(self, guidance_scale: float) -> bool:
        return False  # guidance-distilled: the guidance scale is an input of the model, not a second batch half

    def add_probes(self, session, args, kwargs, probe) -> tuple[tuple, dict]:
        """Append probe tokens to the prompt embeddings and zero text ids for them (text RoPE positions are 0)."""
        kwargs = as_kwargs(session.denoiser, args, kwargs)
        enc = kwargs["encoder_hidden_states"]
        session.text_len = int(enc.shape[1])
        if probe is not None:
            table = probe.table.to(device=enc.device, dtype=enc.dtype)
            kwargs["encoder_hidden_states"] = torch.cat([enc, table[None].expand(enc.shape[0], -1, -1)], dim=1)
            ids = kwargs.get("txt_ids")
            if ids is not None:
                extra = ids.new_zeros((*ids.shape[:-2], len(probe), ids.shape[-1]))
                kwargs["txt_ids"] = torch.cat([ids, extra], dim=-2)
        return (), kwargs

    # ------------------------------------------------------------------ text
    def max_length(self, pipe) -> int:
        """T5 length the pipeline pads to by default (512)."""
        return int(self.call_defaults(pipe).get("max_sequence_length", 512))

    def text_layout(self, pipe) -> TextLayout:
        return TextLayout((Segment("text_encoder_2", pipe.tokenizer_2, 0, self.max_length(pipe)),))

    @torch.no_grad()
    def encode_text(self, pipe, text: str, device=None) -> torch.Tensor:
        device = device or pipe.transformer.device
        out = pipe.encode_prompt(prompt=text, prompt_2=None, device=device, num_images_per_prompt=1,
                                 max_sequence_length=self.max_length(pipe))
        return out[0][0]

    def default_size(self, pipe) -> tuple[int, int]:
        s = int(getattr(pipe, "default_sample_size", 128))
        f = int(pipe.vae_scale_factor)
        return s * f, s * f

    def latent_size(self, pipe, height: int, width: int) -> tuple[int, int]:
        f = int(pipe.vae_scale_factor) * 2
        if height % f or width % f:
            raise ValueError(f"image size {height}×{width} must be a multiple of {f} for this FLUX model")
        return height // int(pipe.vae_scale_factor), width // int(pipe.vae_scale_factor)
