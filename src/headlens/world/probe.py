"""A minimal cross-attention probe for world measurements: scale token columns, record attention mass.

Self-contained on purpose (the world's quality numbers must not depend on the steering code).
"""
from __future__ import annotations

import torch


class ColumnProbe:
    """attn2 processor: multiply post-softmax columns of the conditional half by per-sample factors.

    factors: (B_cond, K) tensor or None; classes: (B_cond, K) int tensor of token classes for mass stats.
    map_steps: when > 0, `maps[layer]` sums the head-mean attention maps (B_cond, HW, K) of the conditional half
    (the second half of a CFG batch, before any column edit) over each layer's first map_steps calls (one call per
    denoising step); `reset_maps()` starts a new batch.
    """

    def __init__(self, n_classes: int = 3, map_steps: int = 0) -> None:
        self.factors: torch.Tensor | None = None
        self.classes: torch.Tensor | None = None
        self.mass: dict[str, torch.Tensor] = {}
        self.n_classes = n_classes
        self.map_steps = map_steps
        self.maps: dict[str, torch.Tensor] = {}
        self.calls: dict[str, int] = {}
        self.name = ""

    def reset_maps(self) -> None:
        """Forget the recorded maps and the step count (before each new batch)."""
        self.maps.clear()
        self.calls.clear()

    def bind(self, name: str) -> ColumnProbe:
        """A copy sharing state, labelled with its layer name."""
        p = ColumnProbe.__new__(ColumnProbe)
        p.__dict__ = self.__dict__.copy()
        p.name = name
        p._root = self  # type: ignore[attr-defined]
        return p

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kw):
        """Standard attention with the column edit and the mass record."""
        root: ColumnProbe = getattr(self, "_root", self)
        probs, v = attention_probs(attn, hidden_states, encoder_hidden_states, attention_mask)
        b = hidden_states.shape[0]
        p4 = probs.view(b, attn.heads, probs.shape[1], probs.shape[2])
        if root.map_steps:
            step = root.calls.get(self.name, 0)
            root.calls[self.name] = step + 1
            if step < root.map_steps:
                root.maps[self.name] = root.maps.get(self.name, 0) + p4[b // 2:].mean(1)
        bc = root.factors.shape[0] if root.factors is not None else (root.classes.shape[0] if root.classes is not None else 0)
        if bc:
            cond = p4[b - bc:]
            if root.classes is not None:
                per_tok = cond.mean(2)  # (bc, heads, K)
                onehot = torch.nn.functional.one_hot(root.classes.long(), root.n_classes).float()  # (bc, K, C)
                m = torch.einsum("bhk,bkc->hc", per_tok, onehot)
                root.mass[self.name] = root.mass.get(self.name, 0) + m
            if root.factors is not None:
                p4 = torch.cat([p4[: b - bc], cond * root.factors[:, None, None, :]], 0)
                probs = p4.reshape(probs.shape)
        return attention_output(attn, probs, v)


def attention_probs(attn, hidden_states, encoder_hidden_states=None, attention_mask=None):
    """The post-softmax attention probabilities (B*heads, HW, K) and the values (B*heads, K, d) of a diffusers
    Attention module, computed explicitly (as diffusers' AttnProcessor) so that a processor can read or edit them."""
    ehs = hidden_states if encoder_hidden_states is None else encoder_hidden_states
    q = attn.head_to_batch_dim(attn.to_q(hidden_states))
    k = attn.head_to_batch_dim(attn.to_k(ehs))
    v = attn.head_to_batch_dim(attn.to_v(ehs))
    return attn.get_attention_scores(q, k, attention_mask), v


def attention_output(attn, probs, v):
    """The rest of AttnProcessor after the softmax: read the values, project out."""
    out = attn.batch_to_head_dim(torch.bmm(probs, v))
    out = attn.to_out[1](attn.to_out[0](out))
    return out / attn.rescale_output_factor


def install(unet, probe: ColumnProbe) -> None:
    """Put the probe on every attn2 (cross-attention) module of a UNet."""
    procs = {}
    for name, proc in unet.attn_processors.items():
        procs[name] = probe.bind(name) if ".attn2." in name else proc
    unet.set_attn_processor(dict(procs))
