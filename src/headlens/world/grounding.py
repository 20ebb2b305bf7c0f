"""Token grounding for training the world UNet: each object's words should be attended to from its own pixels.

TokenCompose's token loss (Wang et al., CVPR 2024), with the renderer's object masks as the segmentation: for every
attribute word of an object (size, colour, pattern, shape) and every cross-attention layer, the share of that word's
head-mean attention (summed over the image) that falls inside the object's mask, pooled to the layer's resolution;
the loss is the mean of (1 - share)². It only moves where a word is attended from, not how much, so the attention the
padding and end tokens get is left to the denoising loss. Sampling is unchanged (plain classifier-free guidance).

The binding loss works per pixel instead: in a two-object image, each latent cell of one object (and not the other)
should give its own object's words more of its attention than the other object's words; the loss is the mean of
-log(own / (own + other)) over those cells. It is what the shipped UNet gets wrong (a shape drawn in the other
object's colour attends more to the other colour word, `scripts/world_binding_attention.py`).
"""
from __future__ import annotations

import re

import torch
import torch.nn.functional as F

from .probe import attention_output, attention_probs
from .vocab import COLORS, PATTERNS, SHAPES, SIZES

ATTRIBUTE_WORDS = frozenset(COLORS) | frozenset(SHAPES) | frozenset(PATTERNS) | frozenset(SIZES)
_BACKGROUND = re.compile(r"\s*on an? \w+ background$")


def object_word_groups(captions: list[str], length: int) -> torch.Tensor:
    """(N, 2, length) 0/1: which token positions hold an attribute word of object 1 / object 2 of each caption.

    World words are one token each (check_tokenizer), so word i of a caption is token i + 1 (after the start token);
    the background phrase ('on a navy background') belongs to no object.
    """
    out = torch.zeros(len(captions), 2, length)
    for n, caption in enumerate(captions):
        words = caption.split()
        body = _BACKGROUND.sub("", caption).split()
        obj = 0
        for i, w in enumerate(words[:len(body)]):
            if w == "and":
                obj = 1
            elif w in ATTRIBUTE_WORDS and i + 1 < length:
                out[n, obj, i + 1] = 1.0
    return out


class AttentionRecorder:
    """attn2 processor: standard attention that keeps each layer's head-mean probabilities (B, HW, K), with their
    gradient, in ``maps`` (cleared by the caller before each forward)."""

    def __init__(self) -> None:
        self.maps: list[torch.Tensor] = []

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kw):
        """q·k softmax, the map kept, then the value read and the output projection (as AttnProcessor)."""
        probs, v = attention_probs(attn, hidden_states, encoder_hidden_states, attention_mask)
        self.maps.append(probs.view(hidden_states.shape[0], attn.heads, *probs.shape[1:]).mean(1))
        return attention_output(attn, probs, v)


def install_recorder(unet) -> AttentionRecorder:
    """Put one AttentionRecorder on every cross-attention (attn2) module of a UNet; self-attention keeps its
    processor."""
    rec = AttentionRecorder()
    unet.set_attn_processor({name: rec if ".attn2." in name else proc for name, proc in unet.attn_processors.items()})
    return rec


def grounding_loss(maps: list[torch.Tensor], masks: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
    """Mean over layers of the token loss. maps: per layer (B, HW, K) attention; masks: (B, 2, R, R) object pixel
    masks (any resolution that the layers' divides); groups: (B, 2, K) from object_word_groups (rows of zeros for
    absent objects or dropped captions). A batch without a grouped word gives 0."""
    n = groups.sum()
    if n == 0 or not maps:
        return maps[0].new_zeros(()) if maps else torch.zeros(())
    total = 0.0
    for amap in maps:
        r = int(round(amap.shape[1] ** 0.5))
        m = F.adaptive_max_pool2d(masks.float(), r).flatten(2)  # (B, 2, HW): a cell counts if any pixel is the object's
        inside = torch.einsum("bjp,bpk->bjk", m, amap)  # each word's attention inside each object
        share = inside / amap.sum(1, keepdim=True).clamp_min(1e-8)
        total = total + ((1 - share).pow(2) * groups).sum() / n
    return total / len(maps)


def binding_loss(maps: list[torch.Tensor], masks: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
    """Mean over layers of -log(own / (own + other)) over the cells of each object that the other does not cover:
    own = the cell's attention to its object's words, other = to the other object's. Only samples whose two objects
    both have grouped words count (masks and groups as in grounding_loss); none gives 0."""
    both = (groups.sum(2) > 0).all(1)  # (B,) two-object samples with their captions kept
    if not maps:
        return torch.zeros(())
    if not both.any():
        return maps[0].new_zeros(())
    total = 0.0
    g = groups[both]
    for amap in maps:
        r = int(round(amap.shape[1] ** 0.5))
        m = F.adaptive_max_pool2d(masks[both].float(), r).flatten(2)  # (b, 2, HW)
        only = m * (1 - m.flip(1))  # cells of one object and not the other
        per_obj = torch.einsum("bpk,bjk->bjp", amap[both], g)  # attention of every cell to each object's words
        own, other = per_obj, per_obj.flip(1)
        nll = -torch.log(own / (own + other).clamp_min(1e-8) + 1e-6)
        total = total + (nll * only).sum() / only.sum().clamp_min(1.0)
    return total / len(maps)
