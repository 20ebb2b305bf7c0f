"""Joint attention (SD3, FLUX): one softmax over image and text tokens; its image→text block is a head's cross-attention.

:class:`JointProcessor` replaces ``JointAttnProcessor2_0`` (SD3) and ``FluxAttnProcessor`` (FLUX
double- and single-stream blocks) while a headlens session runs. It computes the same projections
and the same attention as the original, and

* hands plugins the **image queries** (after q-norm and, in FLUX, RoPE) and, when they ask for
  them, the **image→text block** ``[batch, heads, image tokens, text tokens]`` of the joint
  softmax — rows do not sum to one, the rest of each row is the image→image block. An edited block
  goes back into the softmax rows before they multiply the values; text-query rows are untouched;
* runs the **probe tokens** of concept-words (:class:`ProbeSet`) when a session adds them: they sit
  after the prompt's text tokens in the text stream; each word's tokens attend to the image tokens
  and to themselves (``mode="image"``), or to themselves only (``mode="text-only"``); no image or
  prompt token attends to them. The image and prompt streams therefore compute exactly what plain
  generation computes (the main attention runs on [image, prompt] alone); the probes' keys at
  this layer are handed to plugins as ``call.concept_keys``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

PROBE_MODES = ("image", "text-only")


@dataclass
class ProbeSet:
    """Concept-word tokens that ride along in the text stream (prompt-embedding space)."""

    table: torch.Tensor  # [P, width]: every probe token's prompt embedding
    groups: torch.Tensor  # [P] long: tokens of one word share a group (they attend to each other)
    mode: str = "image"

    def __post_init__(self):
        if self.mode not in PROBE_MODES:
            raise ValueError(f"unknown concept_keys mode {self.mode!r}: use 'probes' (with the image) or 'text-only'")
        self.slots = group_slots(self.groups)

    def __len__(self) -> int:
        return int(self.table.shape[0])


def group_slots(groups: torch.Tensor) -> torch.Tensor:
    """``[G, S]`` probe indices per group (word), ``-1`` padded: the block structure of the probe-probe mask."""
    ids = torch.unique(groups)
    members = [torch.nonzero(groups == g).flatten() for g in ids]
    width = max(len(m) for m in members)
    slots = torch.full((len(members), width), -1, dtype=torch.long)
    for i, m in enumerate(members):
        slots[i, : len(m)] = m
    return slots


def probe_attention(q: torch.Tensor, k_img: torch.Tensor, v_img: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                    groups: torch.Tensor, mode: str, scale: float, slots: torch.Tensor | None = None) -> torch.Tensor:
    """Probe outputs ``[B, h, P, d]``: each probe attends to the image (``mode="image"``) and to its own word.

    Computed word by word (``[G, S]`` slots), so the cost is P·(N_img + S), not P².
    """
    slots = group_slots(groups) if slots is None else slots
    slots = slots.to(q.device)
    valid = slots >= 0  # [G, S]
    idx = slots.clamp_min(0)
    qg, kg, vg = q[:, :, idx].float(), k[:, :, idx].float(), v[:, :, idx]  # [B, h, G, S, d]
    own = torch.matmul(qg, kg.transpose(-1, -2)) * scale  # [B, h, G, S, S]
    own = own.masked_fill(~valid[None, None, :, None, :], float("-inf"))
    if mode == "image":
        img = torch.matmul(qg, k_img.float()[:, :, None].transpose(-1, -2)) * scale  # [B, h, G, S, N]
        w = torch.cat([img, own], dim=-1).softmax(dim=-1)
        n = k_img.shape[2]
        out = torch.matmul(w[..., :n].to(v_img.dtype), v_img[:, :, None]) + torch.matmul(w[..., n:].to(vg.dtype), vg)
    else:
        out = torch.matmul(own.softmax(dim=-1).to(vg.dtype), vg)  # [B, h, G, S, d]
    result = q.new_zeros((*q.shape[:2], q.shape[2], v.shape[-1]), dtype=v.dtype)
    result[:, :, slots[valid]] = out[:, :, valid]
    return result


def image_rows_probs(q_img: torch.Tensor, keys: torch.Tensor, scale: float, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Softmax rows of the image queries over all joint keys ``[B, h, N_img, keys]`` (float32 maths, input dtype out)."""
    scores = torch.matmul(q_img.float(), keys.float().transpose(-1, -2)) * scale
    if mask is not None:
        scores = scores + mask.float() if mask.dtype != torch.bool else scores.masked_fill(~mask, float("-inf"))
    return scores.softmax(dim=-1).to(q_img.dtype)


def _split(x: torch.Tensor, sizes: list[int], dim: int = 2) -> list[torch.Tensor]:
    return list(torch.split(x, sizes, dim=dim))


class JointProcessor:
    """Headlens processor for one joint-attention module (``kind``: ``sd3``, ``flux`` or ``flux-single``)."""

    def __init__(self, session, layer, original, kind: str):
        self.session = session
        self.layer = layer
        self.original = original
        self.kind = kind

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, image_rotary_emb=None,
                 *args, **kwargs):
        session = self.session
        call = session.call_info(self.layer, hidden_states.shape[0])
        plugins = [] if session.negative_pass else [p for p in session.plugins if p.cross and p.active(call)]
        probe = session.probe_set
        if not plugins and probe is None:
            if self.kind == "sd3":
                return self.original(attn, hidden_states, encoder_hidden_states, attention_mask, *args, **kwargs)
            return self.original(attn, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb,
                                 *args, **kwargs)
        if attention_mask is not None:
            raise ValueError("headlens cannot combine its attention edits with an attention mask passed to this "
                             "joint-attention model; call the pipeline without an attention mask")
        if self.kind == "sd3":
            return self._sd3(attn, hidden_states, encoder_hidden_states, call, plugins, probe)
        return self._flux(attn, hidden_states, encoder_hidden_states, image_rotary_emb, call, plugins, probe)

    # ------------------------------------------------------------------ shared maths
    def _attend(self, call, plugins, attn, q_img, q_txt, k, v, text_first: bool, main, sdpa):
        """Main attention over [image, prompt] in model order: (image out, text out) ``[B, h, n, d]``.

        ``k``/``v``: the main keys and values ``[B, h, N_img + T, d]`` in model order; ``main()`` runs the
        model's own attention on them (used when no plugin needs probabilities: same operations as
        the original processor); ``sdpa(q, k, v)`` runs it for a subset of queries.
        """
        want_probs = any(p.needs_probs for p in plugins)
        for p in plugins:
            if p.needs_query:
                p.on_query(call, attn, q_img)
        n_img, n_txt = q_img.shape[2], q_txt.shape[2]
        sizes = [n_txt, n_img] if text_first else [n_img, n_txt]
        if not want_probs:
            a, b = _split(main(), sizes)
            return (b, a) if text_first else (a, b)
        probs = image_rows_probs(q_img, k, call.scale)  # [B, h, N_img, N_img + T]
        text = slice(0, n_txt) if text_first else slice(n_img, n_img + n_txt)
        block = probs[..., text]
        for p in plugins:
            if p.needs_probs:
                edited = p.on_probs(call, block)
                if edited is not None:
                    block = edited
        probs = probs.clone()
        probs[..., text] = block
        out_img = torch.matmul(probs.to(v.dtype), v)
        out_txt = sdpa(q_txt, k, v)
        return out_img, out_txt

    # ------------------------------------------------------------------ SD3 (JointAttnProcessor2_0: [image, text])
    def _sd3(self, attn, hidden_states, encoder_hidden_states, call, plugins, probe):
        if encoder_hidden_states is None:
            return self.original(attn, hidden_states, None, None)
        b = hidden_states.shape[0]
        query, key, value = attn.to_q(hidden_states), attn.to_k(hidden_states), attn.to_v(hidden_states)
        head_dim = key.shape[-1] // attn.heads

        def heads(x):
            return x.view(b, -1, attn.heads, head_dim).transpose(1, 2)

        query, key, value = heads(query), heads(key), heads(value)
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)
        eq = heads(attn.add_q_proj(encoder_hidden_states))
        ek = heads(attn.add_k_proj(encoder_hidden_states))
        ev = heads(attn.add_v_proj(encoder_hidden_states))
        if attn.norm_added_q is not None:
            eq = attn.norm_added_q(eq)
        if attn.norm_added_k is not None:
            ek = attn.norm_added_k(ek)
        t = self.session.text_len if probe is not None else eq.shape[2]
        p = eq.shape[2] - t
        call.scale = head_dim ** -0.5
        q_txt, q_pr = _split(eq, [t, p])
        k_txt, k_pr = _split(ek, [t, p])
        v_txt, v_pr = _split(ev, [t, p])
        call.concept_keys = k_pr if probe is not None else None

        def sdpa(q, k, v):
            return F.scaled_dot_product_attention(q, k, v, dropout_p=0.0, is_causal=False)

        k_main, v_main = torch.cat([key, k_txt], dim=2), torch.cat([value, v_txt], dim=2)

        def main():
            return sdpa(torch.cat([query, q_txt], dim=2), k_main, v_main)

        out_img, out_txt = self._attend(call, plugins, attn, query, q_txt, k_main, v_main, False, main, sdpa)
        call.concept_keys = None
        text_out = out_txt
        if probe is not None:
            out_pr = probe_attention(q_pr, key, value, k_pr, v_pr, probe.groups, probe.mode, call.scale, probe.slots)
            text_out = torch.cat([out_txt, out_pr], dim=2)

        def merge(x):
            return x.transpose(1, 2).reshape(b, -1, attn.heads * head_dim).to(query.dtype)

        hidden, enc = merge(out_img), merge(text_out)
        if not attn.context_pre_only:
            enc = attn.to_add_out(enc)
        hidden = attn.to_out[0](hidden)
        hidden = attn.to_out[1](hidden)
        return hidden, enc

    # ------------------------------------------------------------------ FLUX (FluxAttnProcessor: [text, image], RoPE)
    def _flux(self, attn, hidden_states, encoder_hidden_states, image_rotary_emb, call, plugins, probe):
        from diffusers.models.attention_dispatch import dispatch_attention_fn
        from diffusers.models.embeddings import apply_rotary_emb
        from diffusers.models.transformers.transformer_flux import _get_qkv_projections

        query, key, value, eq, ek, ev = _get_qkv_projections(attn, hidden_states, encoder_hidden_states)
        query = attn.norm_q(query.unflatten(-1, (-1, attn.head_dim)))
        key = attn.norm_k(key.unflatten(-1, (-1, attn.head_dim)))
        value = value.unflatten(-1, (-1, attn.head_dim))
        double = attn.added_kv_proj_dim is not None and encoder_hidden_states is not None
        if double:
            eq = attn.norm_added_q(eq.unflatten(-1, (-1, attn.head_dim)))
            ek = attn.norm_added_k(ek.unflatten(-1, (-1, attn.head_dim)))
            ev = ev.unflatten(-1, (-1, attn.head_dim))
            query, key, value = torch.cat([eq, query], 1), torch.cat([ek, key], 1), torch.cat([ev, value], 1)
            n_text_stream = encoder_hidden_states.shape[1]
        else:
            n_text_stream = self.session.text_len + (len(probe) if probe is not None else 0)
        if image_rotary_emb is not None:
            query = apply_rotary_emb(query, image_rotary_emb, sequence_dim=1)
            key = apply_rotary_emb(key, image_rotary_emb, sequence_dim=1)
        t = self.session.text_len if (probe is not None or not double) else n_text_stream
        p = n_text_stream - t
        n = query.shape[1] - n_text_stream
        call.scale = attn.head_dim ** -0.5
        # [B, S, h, d] → [B, h, S, d]
        q_txt, q_pr, q_img = (x.transpose(1, 2) for x in torch.split(query, [t, p, n], dim=1))
        k_txt, k_pr, k_img = (x.transpose(1, 2) for x in torch.split(key, [t, p, n], dim=1))
        v_txt, v_pr, v_img = (x.transpose(1, 2) for x in torch.split(value, [t, p, n], dim=1))
        call.concept_keys = k_pr if probe is not None else None
        backend = getattr(self.original, "_attention_backend", None)
        parallel = getattr(self.original, "_parallel_config", None)

        def dispatch(q, k, v):  # [B, S, h, d] in and out, as the original processor
            return dispatch_attention_fn(q, k, v, attn_mask=None, backend=backend, parallel_config=parallel)

        def sdpa(q, k, v):
            return dispatch(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)).transpose(1, 2)

        k_main, v_main = torch.cat([k_txt, k_img], dim=2), torch.cat([v_txt, v_img], dim=2)

        def main():
            if p == 0:  # no probes: the very tensors the original processor attends with
                return dispatch(query, key, value).transpose(1, 2)
            keep = torch.cat([torch.arange(t), torch.arange(t + p, t + p + n)]).to(query.device)
            return dispatch(query[:, keep], key[:, keep], value[:, keep]).transpose(1, 2)

        out_img, out_txt = self._attend(call, plugins, attn, q_img, q_txt, k_main, v_main, True, main, sdpa)
        call.concept_keys = None
        pieces = [out_txt]
        if probe is not None:
            pieces.append(probe_attention(q_pr, k_img, v_img, k_pr, v_pr, probe.groups, probe.mode, call.scale,
                                          probe.slots))
        pieces.append(out_img)
        out = torch.cat(pieces, dim=2).transpose(1, 2).flatten(2, 3).to(query.dtype)  # [B, S, h·d]
        if not double:
            return out
        enc, hidden = out.split_with_sizes([n_text_stream, out.shape[1] - n_text_stream], dim=1)
        hidden = attn.to_out[0](hidden.contiguous())
        hidden = attn.to_out[1](hidden)
        enc = attn.to_add_out(enc.contiguous())
        return hidden, enc
