"""The processor framework every headlens feature plugs into.

A :class:`Session` installs one headlens processor per text-attention module through diffusers'
public ``set_attn_processor`` API (text cross-attention ``attn2`` of a UNet or PixArt, the joint
attention of SD3/FLUX blocks — see :mod:`headlens.families`; self-attention ``attn1`` on request),
tracks the denoising step with a forward pre-hook on the denoiser, and restores exactly the
processors that were there before — also when generation raises. For joint-attention models the
same pre-hook appends the concept-word probe tokens a plugin asks for (``plugin.probes``).

Features are *plugins* with up to two callbacks:

* ``on_query(call, attn, query)`` — sees the image queries ``[batch, heads, pixels, head_dim]``;
* ``on_probs(call, probs)`` — sees (and may return an edited copy of) the post-softmax
  probabilities ``[batch, heads, pixels, tokens]`` (joint attention: the image→text block).

When no plugin is active in a call the original processor runs untouched, so generation is
bit-identical to the plain pipeline. When plugins only read queries, the output is computed with
the same operations as diffusers' default SDPA processor (still bit-identical); probabilities are
materialised (with the module's own scale, mask and upcast rules) only when a plugin asks for them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Sequence

import torch
import torch.nn.functional as F

from .heads import HeadIndex, Layer


@dataclass(frozen=True)
class SelfLayer:
    """A self-attention module (``attn1``) — for plugins such as Prompt-to-Prompt."""

    index: int
    name: str
    num_heads: int
    downsample: int = 1


@dataclass
class AttentionCall:
    """What a plugin knows about one attention call."""

    layer: Layer | SelfLayer
    step: int  # index of the UNet evaluation inside the current generation
    num_steps: int  # UNet evaluations in the generation (0 if unknown)
    timestep: float | None
    cfg: bool  # batch is [unconditional…, conditional…]
    batch: int
    scale: float | None = None  # softmax scale of the layer (set by the processor)
    concept_keys: torch.Tensor | None = None  # joint attention: probe keys [batch, heads, probes, d] at this layer

    @property
    def is_cross(self) -> bool:
        """True for text cross-attention (attn2)."""
        return isinstance(self.layer, Layer)

    @property
    def cond(self) -> slice:
        """Rows of the conditional (text) half of the batch."""
        return slice(self.batch // 2, self.batch) if self.cfg else slice(0, self.batch)

    @property
    def fraction(self) -> float:
        """Position of this step in the run, in [0, 1)."""
        return self.step / self.num_steps if self.num_steps else 0.0

    def in_range(self, steps: tuple[float, float]) -> bool:
        """True if this step lies in a fractional step range [start, end)."""
        if not self.num_steps:
            return True
        lo, hi = steps
        return lo * self.num_steps <= self.step < hi * self.num_steps


class Plugin:
    """Base class of things that run inside attention calls; override what you need."""

    needs_probs: bool = False  # True if on_probs must be called
    needs_query: bool = False  # True if on_query must be called
    cross: bool = True  # runs on text cross-attention (attn2)
    self_attention: bool = False  # runs on self-attention (attn1)

    def active(self, call: AttentionCall) -> bool:
        """Whether to run in this call (default: always)."""
        return True

    def on_query(self, call: AttentionCall, attn, query: torch.Tensor) -> None:
        """Observe the image queries ``[batch, heads, pixels, head_dim]``."""

    def on_probs(self, call: AttentionCall, probs: torch.Tensor) -> torch.Tensor | None:
        """Observe or edit probabilities ``[batch, heads, pixels, tokens]``; return the new ones or None."""
        return None

    def on_step(self, session: "Session") -> None:
        """Called once at the start of every UNet evaluation."""


def _is_default_sdpa(processor) -> bool:
    from diffusers.models.attention_processor import AttnProcessor2_0

    return type(processor) is AttnProcessor2_0


class HeadlensProcessor:
    """Attention processor that runs a session's plugins around the usual attention maths."""

    def __init__(self, session: "Session", layer: Layer | SelfLayer, original):
        self.session = session
        self.layer = layer
        self.original = original

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None,
                 *args, **kwargs):
        session = self.session
        call = session.call_info(self.layer, hidden_states.shape[0])
        call.scale = attn.scale
        plugins = [] if session.negative_pass else [p for p in session.plugins if _runs_here(p, call) and p.active(call)]
        if not plugins:
            return self.original(attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kwargs)
        want_probs = any(p.needs_probs for p in plugins)
        if not want_probs and not _is_default_sdpa(self.original):
            out = self.original(attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kwargs)
            query = _queries_only(attn, hidden_states, temb)
            for p in plugins:
                if p.needs_query:
                    p.on_query(call, attn, query)
            return out
        return _attention(attn, hidden_states, encoder_hidden_states, attention_mask, temb, call, plugins, want_probs)


def _runs_here(plugin: Plugin, call: AttentionCall) -> bool:
    return plugin.cross if call.is_cross else plugin.self_attention


def _queries_only(attn, hidden_states, temb):
    """Image queries split into heads, computed as the default processor computes them."""
    if attn.spatial_norm is not None:
        hidden_states = attn.spatial_norm(hidden_states, temb)
    if hidden_states.ndim == 4:
        b, c, h, w = hidden_states.shape
        hidden_states = hidden_states.view(b, c, h * w).transpose(1, 2)
    if attn.group_norm is not None:
        hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
    query = attn.to_q(hidden_states)
    b = query.shape[0]
    query = query.view(b, -1, attn.heads, query.shape[-1] // attn.heads).transpose(1, 2)
    if attn.norm_q is not None:
        query = attn.norm_q(query)
    return query


def _attention(attn, hidden_states, encoder_hidden_states, attention_mask, temb, call, plugins, want_probs):
    """Diffusers' default attention (same operations as ``AttnProcessor2_0``) with plugin callbacks."""
    residual = hidden_states
    if attn.spatial_norm is not None:
        hidden_states = attn.spatial_norm(hidden_states, temb)
    input_ndim = hidden_states.ndim
    if input_ndim == 4:
        batch_size, channel, height, width = hidden_states.shape
        hidden_states = hidden_states.view(batch_size, channel, height * width).transpose(1, 2)
    batch_size, sequence_length, _ = (
        hidden_states.shape if encoder_hidden_states is None else encoder_hidden_states.shape
    )
    if attention_mask is not None:
        attention_mask = attn.prepare_attention_mask(attention_mask, sequence_length, batch_size)
        attention_mask = attention_mask.view(batch_size, attn.heads, -1, attention_mask.shape[-1])
    if attn.group_norm is not None:
        hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)

    query = attn.to_q(hidden_states)
    if encoder_hidden_states is None:
        encoder_hidden_states = hidden_states
    elif attn.norm_cross:
        encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
    key = attn.to_k(encoder_hidden_states)
    value = attn.to_v(encoder_hidden_states)
    inner_dim = key.shape[-1]
    head_dim = inner_dim // attn.heads
    query = query.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
    key = key.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
    value = value.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
    if attn.norm_q is not None:
        query = attn.norm_q(query)
    if attn.norm_k is not None:
        key = attn.norm_k(key)

    for p in plugins:
        if p.needs_query:
            p.on_query(call, attn, query)

    if want_probs:
        probs = attention_probs(attn, query, key, attention_mask)
        for p in plugins:
            if p.needs_probs:
                edited = p.on_probs(call, probs)
                if edited is not None:
                    probs = edited
        hidden_states = torch.matmul(probs.to(value.dtype), value)
    else:
        hidden_states = F.scaled_dot_product_attention(
            query, key, value, attn_mask=attention_mask, dropout_p=0.0, is_causal=False
        )
    hidden_states = hidden_states.transpose(1, 2).reshape(batch_size, -1, attn.heads * head_dim)
    hidden_states = hidden_states.to(query.dtype)
    hidden_states = attn.to_out[0](hidden_states)
    hidden_states = attn.to_out[1](hidden_states)
    if input_ndim == 4:
        hidden_states = hidden_states.transpose(-1, -2).reshape(batch_size, channel, height, width)
    if attn.residual_connection:
        hidden_states = hidden_states + residual
    return hidden_states / attn.rescale_output_factor


def attention_probs(attn, query: torch.Tensor, key: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Post-softmax probabilities ``[batch, heads, pixels, tokens]`` with the module's scale and upcast rules."""
    dtype = query.dtype
    if attn.upcast_attention:
        query, key = query.float(), key.float()
    scores = torch.matmul(query, key.transpose(-1, -2)) * attn.scale
    if mask is not None:
        scores = scores + mask
    if attn.upcast_softmax:
        scores = scores.float()
    return scores.softmax(dim=-1).to(dtype)


@dataclass
class Session:
    """Installs headlens processors on a pipeline (or bare denoiser) and tracks denoising steps.

    Use as a context manager; plugins may be added before or inside the ``with`` block.
    ``cfg`` overrides classifier-free-guidance detection (default: read from the pipeline).
    """

    pipe: object
    plugins: list[Plugin] = field(default_factory=list)
    cfg: bool | None = None
    self_attention: bool = False  # also install on attn1 (needed by self-attention plugins)

    def __post_init__(self):
        from .families import family_of

        self.family = family_of(self.pipe)
        self.denoiser = self.family.denoiser(self.pipe)
        self.unet = self.denoiser  # the name older code uses
        self.heads = HeadIndex(self.family.layers(self.denoiser))
        self.text_len = 0  # text tokens of the prompt in the current denoiser call (joint attention)
        self.probe_set = None  # probe tokens riding along in the current call (joint attention)
        self.negative_pass = False  # FLUX true CFG: the negative prompt's call (plugins skip it)
        self.family_state: dict = {}
        self._extra_hooks: list = []
        self.step = -1
        self.num_steps = 0
        self.timestep: float | None = None
        self.batch_cfg = False
        self.manual_steps = False
        self._last_t: float | None = None
        self._timesteps_cpu: tuple | None = None  # (timesteps tensor, its version, values) — see _timestep_value
        self._saved = None
        self._hook = None

    # ------------------------------------------------------------------ install / restore
    def __enter__(self) -> "Session":
        self.install()
        return self

    def __exit__(self, *exc) -> None:
        self.restore()

    def install(self) -> None:
        """Install processors and the step hook (idempotent errors: installing twice is refused)."""
        if self._saved is not None:
            raise RuntimeError("this headlens session is already installed")
        self.family.check(self.denoiser)
        original = dict(self.denoiser.attn_processors)
        new = dict(original)
        for layer in self.heads.layers:
            key = layer.name + ".processor"
            new[key] = self.family.processor(self, layer, original[key])
        if self.self_attention:
            for layer in self.family.self_layers(self.denoiser, self.heads):
                key = layer.name + ".processor"
                new[key] = HeadlensProcessor(self, layer, original[key])
        self._saved = original
        self.denoiser.set_attn_processor(dict(new))  # diffusers pops from the dict it is given: pass a copy
        try:
            self._hook = self.denoiser.register_forward_pre_hook(self._pre_forward, with_kwargs=True)
            self._extra_hooks = list(self.family.install(self))
        except BaseException:
            self.restore()
            raise
        self.reset_steps()

    def restore(self) -> None:
        """Put back exactly the processors that were installed before."""
        for h in self._extra_hooks:
            h.remove()
        self._extra_hooks = []
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
        if self._saved is not None:
            self.denoiser.set_attn_processor(dict(self._saved))
            self._saved = None
        self.probe_set = None

    # ------------------------------------------------------------------ steps
    def reset_steps(self) -> None:
        """Forget the step position (the next UNet call is step 0)."""
        self.step, self._last_t = -1, None

    def set_step(self, step: int, num_steps: int, cfg: bool | None = None) -> None:
        """Drive the step counter by hand (for loops that call the UNet several times per step)."""
        self.manual_steps = True
        self.step, self.num_steps = int(step), int(num_steps)
        if cfg is not None:
            self.batch_cfg = cfg

    def _pre_forward(self, module, args, kwargs):
        if self.manual_steps:
            for p in self.plugins:
                p.on_step(self)
            return self._joint_inputs(args, kwargs)
        scheduler = getattr(self.pipe, "scheduler", None)
        timesteps = getattr(scheduler, "timesteps", None)
        raw_t = kwargs.get("timestep", args[1] if len(args) > 1 and not self.family.joint else None)
        t = self._timestep_value(raw_t, timesteps)
        self.num_steps = len(timesteps) if timesteps is not None else 0
        self.negative_pass = bool(getattr(self.family, "repeated_timestep_is_negative", False)
                                  and t is not None and self._last_t is not None and t == self._last_t)
        if self.negative_pass:  # FLUX true CFG: the negative prompt's call at the same step
            return self._joint_inputs(args, kwargs)
        new_run = self._last_t is None or (t is not None and t > self._last_t) or (
            self.num_steps and self.step + 1 >= self.num_steps)
        self.step = 0 if new_run else self.step + 1
        self._last_t, self.timestep = t, t
        self.batch_cfg = self._detect_cfg()
        for p in self.plugins:
            p.on_step(self)
        return self._joint_inputs(args, kwargs)

    def _joint_inputs(self, args, kwargs):
        """Joint attention: note the prompt length and append the probe tokens a plugin asks for."""
        if not self.family.joint:
            return None
        probe = None
        if not self.negative_pass:
            probe = next((p.probes for p in self.plugins if getattr(p, "probes", None) is not None), None)
        self.probe_set = probe
        return self.family.add_probes(self, args, kwargs, probe)

    def _timestep_value(self, t, timesteps) -> float | None:
        """The UNet call's timestep as a float, without a device sync when possible.

        Pipelines pass an element of ``scheduler.timesteps`` (or an ``expand`` of it): a view into
        the same storage. Its value is then read from a CPU copy of ``timesteps`` made once per
        schedule, so a GPU run does not wait on the device at every UNet evaluation.
        """
        if t is None:
            return None
        if not torch.is_tensor(t):
            return float(t)
        if torch.is_tensor(timesteps) and t.numel() and timesteps.numel() and t.device == timesteps.device \
                and t.untyped_storage().data_ptr() == timesteps.untyped_storage().data_ptr() \
                and t.dtype == timesteps.dtype and timesteps.is_contiguous():
            offset = (t.data_ptr() - timesteps.data_ptr()) // timesteps.element_size()
            if 0 <= offset < timesteps.numel():
                cache = self._timesteps_cpu
                if cache is None or cache[0] is not timesteps or cache[1] != timesteps._version:
                    cache = self._timesteps_cpu = (timesteps, timesteps._version,
                                                   timesteps.detach().flatten().cpu().tolist())
                return float(cache[2][offset])
        return float(t.flatten()[0])

    def _detect_cfg(self) -> bool:
        if self.cfg is not None:
            return self.cfg
        return self.family.detect_cfg(self)

    def call_info(self, layer, batch: int) -> AttentionCall:
        """The :class:`AttentionCall` for an attention call happening now."""
        return AttentionCall(layer, max(self.step, 0), self.num_steps, self.timestep, self.batch_cfg, batch)

    def add(self, plugin: Plugin) -> Plugin:
        """Add a plugin (active from the next attention call)."""
        self.plugins.append(plugin)
        return plugin


def self_attention_layers(model) -> list[SelfLayer]:
    """Self-attention modules (``attn1``) paired with the text layers, in canonical order."""
    from .families import family_of

    family = family_of(model)
    denoiser = family.denoiser(model)
    return family.self_layers(denoiser, HeadIndex.from_model(denoiser))


def cross_attention_modules(model, heads: HeadIndex | None = None) -> Sequence[tuple[Layer, torch.nn.Module]]:
    """(layer, module) pairs of every text-attention module."""
    from .families import denoiser_of

    denoiser = denoiser_of(model)
    heads = heads or HeadIndex.from_model(denoiser)
    return [(layer, denoiser.get_submodule(layer.name)) for layer in heads.layers]


def installed(pipe, plugins: Iterable[Plugin] = (), **kwargs) -> Session:
    """Shortcut: a :class:`Session` with the given plugins (use it with ``with``)."""
    return Session(pipe, list(plugins), **kwargs)
