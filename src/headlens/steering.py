"""Head-level steering: edit post-softmax cross-attention probabilities per head and token (spec §5).

One context manager around an unmodified pipeline::

    with headlens.steer(pipe, hrv) as s:
        s.adjust("lavender", toward="Color", away="Plants")       # × (2·HRV_d − HRV_u)
        s.strengthen("red", "Color", steps=(0.0, 0.5))              # × HRV_c
        s.weaken(heads=hrv.ranking("Color")[:10], words="all")     # × −2 at 10 heads
        image = pipe("A vase in lavender color").images[0]

Every intervention multiplies the attention columns of some prompt tokens at some heads by a
per-head factor, on the conditional half of the CFG batch only, for the denoising steps in its
fractional range ``steps=(start, end)``; interventions compose by multiplication. Heads and
layers whose factors are all exactly 1 are left on the original processor (bit-identical).

**Where words are found.** Word positions depend on the prompt, which the pipeline only sees
when it is called. The context registers a forward pre-hook on the pipeline's text encoder(s)
(public torch API) and records the token ids of the first text-encoder call before each
generation — that is the prompt batch (diffusers encodes the prompt before the negative prompt).
Positions index the denoiser's text keys (:mod:`headlens.textlayout`): SD3 words have their CLIP
and their T5 positions, PixArt and FLUX words their T5 positions; T5 padding that PixArt's
attention mask removes is never part of a token set. On SD3/FLUX the edits act on the image→text
block of the joint softmax only.
Each row of the conditional half is matched to its prompt (``num_images_per_prompt`` copies
follow each other), so batches of different prompts work. When the pipeline gets
``prompt_embeds`` instead of text, give the prompt(s) yourself: ``steer(pipe, hrv, prompt=...)``
or ``s.prompt = ...``; a fixed prompt also lets word errors surface at once.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import torch

from .attention import AttentionCall, Plugin, Session
from .heads import HeadIndex
from .textlayout import token_map_from_ids as _token_map_from_ids
from .tokens import TokenMap, WordNotFoundError
from .votes import adjust_factors

TOKEN_SETS = ("words", "words+end")
ALL_WORDS = "all"


# ---------------------------------------------------------------------------- plain helpers
def check_steps(steps: Sequence[float]) -> tuple[float, float]:
    """Validate a fractional step range ``(start, end)`` with 0 ≤ start < end ≤ 1."""
    try:
        lo, hi = (float(x) for x in steps)
    except (TypeError, ValueError):
        raise ValueError(f"steps={steps!r} must be a pair (start, end) of fractions of the run, e.g. (0.0, 0.5)") from None
    if not (0.0 <= lo < hi <= 1.0):
        raise ValueError(f"steps=({lo}, {hi}) must satisfy 0 ≤ start < end ≤ 1 (fractions of the run), e.g. (0.0, 0.5)")
    return lo, hi


def check_tokens(tokens: str) -> str:
    """Validate a token-set name."""
    if tokens not in TOKEN_SETS:
        raise ValueError(f"unknown token set {tokens!r}: use 'words' (prompt word tokens) or 'words+end' "
                         "(also end/padding tokens)")
    return tokens


def resolve_heads(heads: HeadIndex, selection) -> list[int]:
    """Flat head indices from indices, names, short names, reference labels, or ``"all"``."""
    if isinstance(selection, str) and selection.strip().lower() == "all":
        return list(range(len(heads)))
    if isinstance(selection, (str, int)) or (hasattr(selection, "__index__") and not hasattr(selection, "__len__")):
        selection = [selection]
    if torch.is_tensor(selection):
        selection = selection.flatten().tolist()
    out: list[int] = []
    for h in selection:
        i = heads.resolve(h)
        if i not in out:
            out.append(i)
    return out


def token_map_from_ids(tokenizer, ids: Sequence[int]) -> TokenMap:
    """A :class:`TokenMap` for an already tokenised (padded) prompt, as the text encoder saw it."""
    return _token_map_from_ids(tokenizer, ids)


def token_positions(tokmap: TokenMap, tokenizer, words, tokens: str = "words") -> list[int]:
    """Positions of ``words`` (a word, a list of words or ``"all"``) in a prompt, plus end tokens for ``words+end``."""
    if isinstance(words, str) and words == ALL_WORDS:
        pos = list(tokmap.word_positions)
    else:
        pos = []
        for w in [words] if isinstance(words, str) else list(words):
            for p in tokmap.find(w, tokenizer):
                if p not in pos:
                    pos.append(p)
    if tokens == "words+end":
        pos += [p for p in tokmap.end_positions if p not in pos]
    return sorted(pos)


def column_multiplier(head_factors: torch.Tensor, token_mask: torch.Tensor) -> torch.Tensor:
    """Multiplier ``[rows, heads, 1, tokens]``: factor of the head where the token is selected, else 1."""
    f = head_factors.to(torch.float32)[None, :, None, None]
    m = token_mask[:, None, None, :]
    return torch.where(m, f, torch.ones((), dtype=torch.float32))


# ---------------------------------------------------------------------------- interventions
@dataclass(eq=False)
class Intervention:
    """Columns ``words`` (token set ``tokens``) × ``head_factors[h]`` at every head, for steps in ``steps``."""

    kind: str  # "weaken" | "strengthen" | "adjust" | other labels
    head_factors: torch.Tensor  # [H] float32
    words: str | tuple[str, ...]  # "all" or words of the prompt
    tokens: str = "words"
    steps: tuple[float, float] = (0.0, 1.0)
    label: str = ""
    # per-run state: token masks [prompts, tokens]
    _masks: torch.Tensor | None = field(default=None, repr=False)

    def __post_init__(self):
        self.head_factors = torch.as_tensor(self.head_factors, dtype=torch.float32).flatten().cpu()
        self.steps = check_steps(self.steps)
        check_tokens(self.tokens)

    @property
    def noop(self) -> bool:
        """True when every factor is exactly 1 (the intervention changes nothing)."""
        return bool((self.head_factors == 1).all())

    def touches(self, heads: range) -> bool:
        """True if any head of ``heads`` gets a factor other than 1."""
        return bool((self.head_factors[heads.start:heads.stop] != 1).any())

    def resolve(self, token_maps: Sequence[TokenMap], tokenizer) -> None:
        """Find this intervention's token positions in each prompt (raises if a word is missing)."""
        width = max(len(t.ids) for t in token_maps)
        masks = torch.zeros(len(token_maps), width, dtype=torch.bool)
        for i, tm in enumerate(token_maps):
            masks[i, token_positions(tm, tokenizer, self.words, self.tokens)] = True
        self._masks = masks

    def rows_mask(self, rows: int, width: int) -> torch.Tensor:
        """Token mask ``[rows, width]`` for the conditional rows of the current generation."""
        masks = self._masks
        if masks is None:
            raise RuntimeError("intervention used before its prompt was resolved")
        prompts = masks.shape[0]
        if rows % prompts:
            raise ValueError(f"the conditional batch has {rows} rows for {prompts} prompt(s); give one prompt per "
                             "image or set s.prompt to the prompt list the pipeline encodes")
        if masks.shape[1] != width:
            if masks.shape[1] > width:
                masks = masks[:, :width]
            else:
                masks = torch.cat([masks, masks.new_zeros(prompts, width - masks.shape[1])], dim=1)
        return masks.repeat_interleave(rows // prompts, dim=0)

    def describe(self) -> str:
        """One line: kind, words, range."""
        words = self.words if isinstance(self.words, str) else ", ".join(self.words)
        n = int((self.head_factors != 1).sum())
        return f"{self.label or self.kind}: words={words} tokens={self.tokens} heads≠1={n} steps={self.steps}"


class PromptCapture:
    """Records the token ids of every call of a text encoder (forward pre-hook; removed by :meth:`remove`)."""

    def __init__(self, text_encoder: torch.nn.Module):
        self.pending: list[list[list[int]]] = []
        self._hook = text_encoder.register_forward_pre_hook(self._record, with_kwargs=True)

    def _record(self, module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        if torch.is_tensor(ids):
            self.pending.append(ids.detach().cpu().tolist())

    def take(self) -> list[list[int]] | None:
        """Token ids of the first encoder call since the last take (the prompt batch), or None."""
        first = self.pending[0] if self.pending else None
        self.pending.clear()
        return first

    def remove(self) -> None:
        """Remove the hook."""
        if self._hook is not None:
            self._hook.remove()
            self._hook = None


class SteeringPlugin(Plugin):
    """Attention plugin that applies a list of :class:`Intervention` to cross-attention probabilities."""

    needs_probs = True
    cross = True

    def __init__(self, heads: HeadIndex, tokenizer=None, capture: PromptCapture | None = None,
                 prompt: str | Sequence[str] | None = None, layout=None):
        self.heads = heads
        self.tokenizer = tokenizer
        self.capture = capture
        self.layout = layout  # TextLayout of the pipeline (None: one segment read by ``tokenizer``)
        self.captures: list[PromptCapture] | None = None  # one per layout segment (transformer families)
        self.interventions: list[Intervention] = []
        self._prompt: list[str] | None = None
        self.token_maps: list[TokenMap] | None = None
        self._cache: dict = {}
        self.second: tuple[PromptCapture, object] | None = None  # SDXL: (text_encoder_2 capture, tokenizer_2)
        self.prompt = prompt

    # ------------------------------------------------------------------ prompt
    @property
    def prompt(self) -> list[str] | None:
        """Fixed prompt list (overrides what the text-encoder hook sees), or None."""
        return self._prompt

    @prompt.setter
    def prompt(self, value: str | Sequence[str] | None) -> None:
        if value is None:
            self._prompt = None
            return
        self._prompt = [value] if isinstance(value, str) else [str(p) for p in value]
        if not self._prompt:
            raise ValueError("prompt list is empty; give at least one prompt")
        if self.layout is not None:
            self._set_token_maps([self.layout.token_map(p) for p in self._prompt])
        else:
            self._set_token_maps([TokenMap.from_tokenizer(self._need_tokenizer(), p) for p in self._prompt])

    def _need_tokenizer(self):
        if self.tokenizer is None:
            raise ValueError("this pipeline has no tokenizer to find words with; pass steer(..., tokenizer=...)")
        return self.tokenizer

    def _set_token_maps(self, token_maps: list[TokenMap]) -> None:
        self.token_maps = token_maps
        self._cache.clear()
        for iv in self.interventions:
            iv.resolve(token_maps, self.tokenizer)

    def add(self, intervention: Intervention) -> Intervention:
        """Add an intervention (resolved at once against a fixed prompt, else when generation starts)."""
        tokenizer = self._need_tokenizer()
        if intervention.noop:
            return intervention  # factors of exactly 1 change nothing: skipped (bit-identical)
        if self.token_maps is not None and self._prompt is not None:
            intervention.resolve(self.token_maps, tokenizer)
        self.interventions.append(intervention)
        self._cache.clear()
        return intervention

    # ------------------------------------------------------------------ plugin callbacks
    def _captured_maps(self) -> list | None:
        """Token maps of the prompt batch the text encoders just read (transformer families), or None."""
        rows = [c.take() for c in self.captures]
        if any(r is None for r in rows):
            return None
        return [self.layout.from_ids([r[i] for r in rows]) for i in range(len(rows[0]))]

    def on_step(self, session: Session) -> None:
        if session.step != 0:
            return
        if self.captures is not None:
            captured = self._captured_maps()
            self._use_maps(self.token_maps if self._prompt is not None or captured is None else captured)
            return
        ids = self.capture.take() if self.capture is not None else None
        if self.second is not None:
            ids_2 = self.second[0].take()
            if ids is not None and ids_2 is not None and self.interventions:
                _check_second_prompt(self.tokenizer, ids, self.second[1], ids_2)
        if self._prompt is not None:
            maps = self.token_maps
        elif ids is not None:
            maps = [token_map_from_ids(self.tokenizer, row) for row in ids]
        else:
            maps = self.token_maps  # same prompt as the previous run (e.g. prompt_embeds reused)
        self._use_maps(maps)

    def _use_maps(self, maps) -> None:
        """Install the prompt's token maps (or refuse when interventions need them and none are known)."""
        if maps is None:
            if self.interventions:
                raise ValueError("steering cannot see the prompt (the pipeline got prompt_embeds?); "
                                 "set it with steer(pipe, hrv, prompt=...) or s.prompt = ...")
            return
        if maps is not self.token_maps or any(iv._masks is None for iv in self.interventions):
            self._set_token_maps(list(maps) if maps is not self.token_maps else maps)

    def active(self, call: AttentionCall) -> bool:
        return any(call.in_range(iv.steps) and iv.touches(call.layer.heads) for iv in self.interventions)

    def on_probs(self, call: AttentionCall, probs: torch.Tensor) -> torch.Tensor | None:
        live = tuple(i for i, iv in enumerate(self.interventions)
                     if call.in_range(iv.steps) and iv.touches(call.layer.heads))
        if not live:
            return None
        cond = call.cond
        rows = len(range(*cond.indices(probs.shape[0])))
        width = probs.shape[-1]
        key = (call.layer.index, live, rows, width, probs.dtype, probs.device)
        mult = self._cache.get(key)
        if mult is None:
            heads = call.layer.heads
            mult = None
            for i in live:
                iv = self.interventions[i]
                if iv._masks is None:  # added during a run
                    if self.token_maps is None:
                        raise ValueError("steering cannot see the prompt; set it with s.prompt = ...")
                    iv.resolve(self.token_maps, self.tokenizer)
                m = column_multiplier(iv.head_factors[heads.start:heads.stop], iv.rows_mask(rows, width))
                mult = m if mult is None else mult * m
            mult = mult.to(device=probs.device, dtype=probs.dtype)
            self._cache[key] = mult
        out = probs.clone()
        out[cond] = probs[cond] * mult
        return out


# ---------------------------------------------------------------------------- the context
class Steering:
    """Context manager that installs a :class:`SteeringPlugin` on a pipeline; see :func:`steer`."""

    def __init__(self, pipe, hrv=None, prompt: str | Sequence[str] | None = None, cfg: bool | None = None,
                 tokenizer=None, plugins: Iterable[Plugin] = ()):
        from .families import family_of

        self.pipe = pipe
        self.hrv = hrv
        self.family = family_of(pipe)
        self.heads = HeadIndex.from_model(pipe)
        if hrv is not None:
            hrv.check_layout(self.heads)
        layout = None
        if self.family.name == "unet" or not hasattr(pipe, "encode_prompt"):
            self._encoder, tok = _text_encoder(pipe)
        else:
            layout = self.family.text_layout(pipe)
            self._encoder, tok = None, layout.tokenizer
        self.layout = layout
        self.tokenizer = tokenizer if tokenizer is not None else tok
        self.plugin = SteeringPlugin(self.heads, self.tokenizer, None, prompt, layout=layout)
        self.session = Session(pipe, [self.plugin, *plugins], cfg=cfg)

    # ------------------------------------------------------------------ context
    def __enter__(self) -> Steering:  # noqa: PYI034
        if self.layout is not None:
            self.plugin.captures = [PromptCapture(getattr(self.pipe, seg.encoder)) for seg in self.layout.segments]
        if self._encoder is not None:
            self.plugin.capture = PromptCapture(self._encoder)
            second = getattr(self.pipe, "text_encoder_2", None)
            tok_2 = getattr(self.pipe, "tokenizer_2", None)
            if second is not None and tok_2 is not None and second is not self._encoder:
                self.plugin.second = (PromptCapture(second), tok_2)
        try:
            self.session.install()
        except BaseException:
            self._remove_capture()
            raise
        return self

    def __exit__(self, *exc) -> None:
        try:
            self.session.restore()
        finally:
            self._remove_capture()

    def _remove_capture(self) -> None:
        for c in self.plugin.captures or []:
            c.remove()
        self.plugin.captures = None
        if self.plugin.capture is not None:
            self.plugin.capture.remove()
            self.plugin.capture = None
        if self.plugin.second is not None:
            self.plugin.second[0].remove()
            self.plugin.second = None

    # ------------------------------------------------------------------ prompt
    @property
    def prompt(self) -> list[str] | None:
        """Fixed prompt(s) for word look-up (None: read from the text encoder at generation time)."""
        return self.plugin.prompt

    @prompt.setter
    def prompt(self, value: str | Sequence[str] | None) -> None:
        self.plugin.prompt = value

    @property
    def interventions(self) -> list[Intervention]:
        """Interventions in effect (no-ops left out)."""
        return self.plugin.interventions

    def clear(self) -> None:
        """Remove every intervention."""
        self.plugin.interventions.clear()
        self.plugin._cache.clear()

    # ------------------------------------------------------------------ interventions
    def weaken(self, heads, words="all", factor: float = -2.0, steps: tuple[float, float] = (0.0, 1.0),
               tokens: str = "words") -> Intervention:
        """Multiply the columns of ``words`` (``"all"``: every word token) at ``heads`` by ``factor`` (reference −2)."""
        idx = resolve_heads(self.heads, heads)
        f = torch.ones(len(self.heads))
        f[idx] = float(factor)
        return self.plugin.add(Intervention("weaken", f, _words(words), check_tokens(tokens), check_steps(steps),
                                            f"weaken ×{factor:g} at {len(idx)} head(s)"))

    def strengthen(self, word, concept: str, steps: tuple[float, float] = (0.0, 1.0),
                   tokens: str = "words") -> Intervention:
        """Multiply the columns of ``word`` at every head h by HRV_concept[h]."""
        f = self._need_hrv("strengthen")[concept]
        return self.plugin.add(Intervention("strengthen", f, _words(word), check_tokens(tokens), check_steps(steps),
                                            f"strengthen {concept}"))

    def adjust(self, word, toward: str, away: str, clamp: float | None = None,
               steps: tuple[float, float] = (0.0, 1.0), tokens: str = "words") -> Intervention:
        """Multiply the columns of ``word`` at head h by 2·HRV_toward[h] − HRV_away[h] (each clamped at ``clamp``)."""
        hrv = self._need_hrv("adjust")
        if clamp is not None and not float(clamp) > 0:
            raise ValueError(f"clamp={clamp!r} must be a positive number (reference: 9 for SDXL) or None")
        f = adjust_factors(hrv[toward], hrv[away], clamp)
        return self.plugin.add(Intervention("adjust", f, _words(word), check_tokens(tokens), check_steps(steps),
                                            f"adjust {toward}−{away}"))

    def scale(self, word, factors, steps: tuple[float, float] = (0.0, 1.0), tokens: str = "words") -> Intervention:
        """Multiply the columns of ``word`` at head h by ``factors[h]`` (any per-head vector)."""
        f = torch.as_tensor(factors, dtype=torch.float32).flatten()
        if f.numel() != len(self.heads):
            raise ValueError(f"factors has {f.numel()} values; this model has {len(self.heads)} heads")
        return self.plugin.add(Intervention("scale", f, _words(word), check_tokens(tokens), check_steps(steps)))

    def _need_hrv(self, what: str):
        if self.hrv is None:
            raise ValueError(f"{what} needs Head Relevance Vectors: use steer(pipe, hrv) with an HRV "
                             "(HRV.load(folder) or headlens.build)")
        return self.hrv

    def __repr__(self) -> str:
        lines = "; ".join(iv.describe() for iv in self.interventions) or "no interventions"
        return f"Steering({lines})"


def steer(pipe, hrv=None, prompt: str | Sequence[str] | None = None, cfg: bool | None = None,
          tokenizer=None) -> Steering:
    """Steer a pipeline's cross-attention heads inside a ``with`` block (``hrv`` optional for weaken-only use)."""
    return Steering(pipe, hrv, prompt=prompt, cfg=cfg, tokenizer=tokenizer)


def _words(words) -> str | tuple[str, ...]:
    if isinstance(words, str):
        if not words.strip():
            raise WordNotFoundError("empty word: give a word of the prompt or 'all'")
        return ALL_WORDS if words.strip().lower() == ALL_WORDS else words
    words = tuple(str(w) for w in words)
    if not words:
        raise WordNotFoundError("no words given: give words of the prompt or 'all'")
    return words


def _prompt_text(tokenizer, row: Sequence[int]) -> str:
    """The text between the start token and the first end token of a tokenised prompt."""
    start = 1 if row and row[0] == tokenizer.bos_token_id else 0
    end = row.index(tokenizer.eos_token_id, start) if tokenizer.eos_token_id in row[start:] else len(row)
    return tokenizer.decode(list(row[start:end])).strip()


def _check_second_prompt(tokenizer, ids, tokenizer_2, ids_2) -> None:
    """Warn when SDXL's second prompt differs from the first (steering finds words in the first only)."""
    if len(ids) != len(ids_2):
        return
    for a, b in zip(ids, ids_2):
        if _prompt_text(tokenizer, a) != _prompt_text(tokenizer_2, b):
            warnings.warn("prompt_2 differs from prompt: SDXL joins both encoders' tokens position by position, "
                          "and steering finds words in `prompt` only, so it also scales the prompt_2 tokens at "
                          "those positions; give prompt_2=None (or the same text) when steering", stacklevel=2)
            return


def _text_encoder(pipe):
    """(text encoder whose input ids reveal the prompt, its tokenizer) — or (None, None)."""
    for enc, tok in (("text_encoder", "tokenizer"), ("text_encoder_2", "tokenizer_2")):
        e, t = getattr(pipe, enc, None), getattr(pipe, tok, None)
        if e is not None and t is not None:
            return e, t
    return None, getattr(pipe, "tokenizer", None)
