"""The PixArt family: PixArt-α and PixArt-Σ (``PixArtTransformer2DModel``; T5 text with a padding mask).

Every block has a real text cross-attention ``attn2``, so the paper's method applies as written:
a concept-word's key is ``attn2.to_k`` of its T5 embedding after the transformer's caption
projection. The T5 prompt comes with an attention mask; masked (padding) positions get zero
probability, and headlens leaves them out of every token set, score, map and edit.
"""

from __future__ import annotations

import torch

from ..heads import Layer
from ..textlayout import Segment, TextLayout
from . import Family, _class_names, _stack_layers


class PixArtFamily(Family):
    """PixArt-α/Σ: cross-attention DiT blocks (``transformer_blocks.i.attn2``), T5 text, CFG batch [uncond, cond]."""

    name = "pixart"
    label = "PixArt"

    def matches(self, denoiser) -> bool:
        return "PixArtTransformer2DModel" in _class_names(denoiser)

    def layers(self, denoiser) -> list[Layer]:
        out = _stack_layers(((f"transformer_blocks.{i}.attn2", "block", i, block.attn2)
                             for i, block in enumerate(denoiser.transformer_blocks)
                             if getattr(block, "attn2", None) is not None),
                            int(denoiser.config.patch_size))
        if not out:
            raise ValueError("this PixArt transformer has no cross-attention (attn2); is it a text-to-image model?")
        return out

    # ------------------------------------------------------------------ CFG: the pipeline encodes the negative prompt only with CFG
    def install(self, session) -> list:
        enc = getattr(session.pipe, "text_encoder", None)
        session.family_state["encoder_calls"] = 0
        if not isinstance(enc, torch.nn.Module):
            return []

        def count(module, args):
            session.family_state["encoder_calls"] += 1

        return [enc.register_forward_pre_hook(count)]

    def detect_cfg(self, session) -> bool:
        """CFG when the pipeline encoded a negative prompt this run (PixArt pipelines expose no CFG flag).

        Without any text-encoder call (``prompt_embeds`` given, or a bare transformer) CFG is assumed, as
        at PixArt's default guidance 4.5; pass ``cfg=`` to the session (``steer(..., cfg=...)``) otherwise.
        """
        state = session.family_state
        if session.step == 0 or "cfg" not in state:
            calls = state.get("encoder_calls", 0)
            # prompt + negative prompt encoded → CFG; no call (embeddings given) → PixArt's default guidance (4.5) uses CFG
            state["cfg"] = calls >= 2 or calls == 0
            state["encoder_calls"] = 0
        return state["cfg"]

    # ------------------------------------------------------------------ text
    def max_length(self, pipe) -> int:
        """T5 length the pipeline pads to by default (α 120, Σ 300)."""
        return int(self.call_defaults(pipe).get("max_sequence_length", 120))

    def text_layout(self, pipe) -> TextLayout:
        return TextLayout((Segment("text_encoder", pipe.tokenizer, 0, self.max_length(pipe), masked=True),))

    @torch.no_grad()
    def encode_text(self, pipe, text: str, device=None) -> torch.Tensor:
        device = device or pipe.transformer.device
        out = pipe.encode_prompt(text, do_classifier_free_guidance=False, device=device, num_images_per_prompt=1,
                                 clean_caption=False, max_sequence_length=self.max_length(pipe))
        return out[0][0]

    @torch.no_grad()
    def key_inputs(self, pipe, table: torch.Tensor) -> torch.Tensor:
        proj = getattr(pipe.transformer, "caption_projection", None)
        if proj is None:
            return table
        p = next(proj.parameters())
        return proj(table.to(device=p.device, dtype=p.dtype)[None])[0]

    # ------------------------------------------------------------------ sizes
    def generation_size(self, pipe, height: int | None, width: int | None) -> tuple[int, int]:
        """Requested size → the aspect-ratio bin the pipeline snaps it to (``use_resolution_binning``)."""
        h, w = super().generation_size(pipe, height, width)
        bins = _bins(type(pipe).__name__, int(pipe.transformer.config.sample_size))
        if bins is None:
            return h, w
        return tuple(int(x) for x in pipe.image_processor.classify_height_width_bin(h, w, ratios=bins))


def _bins(pipeline: str, sample_size: int):
    from diffusers.pipelines.pixart_alpha.pipeline_pixart_alpha import (
        ASPECT_RATIO_256_BIN,
        ASPECT_RATIO_512_BIN,
        ASPECT_RATIO_1024_BIN,
    )

    table = {128: ASPECT_RATIO_1024_BIN, 64: ASPECT_RATIO_512_BIN, 32: ASPECT_RATIO_256_BIN}
    if "Sigma" in pipeline:
        from diffusers.pipelines.pixart_alpha.pipeline_pixart_sigma import ASPECT_RATIO_2048_BIN

        table[256] = ASPECT_RATIO_2048_BIN
    return table.get(sample_size)
