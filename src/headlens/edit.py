"""Prompt-to-Prompt editing (Replace / Refine / Reweight, local blending) and P2P-HRV.

Source and edited image come from one batched generation that shares its initial latent: the
pipeline runs the prompts ``[source, target]``, so with classifier-free guidance the UNet batch is
``[uncond_src, uncond_edit, cond_src, cond_edit]``. As in the reference implementation only the
*conditional* half is edited:

* **cross-attention** (inside the ``cross_replace`` window): the edited branch takes the source's
  maps (``replace``: token for token; ``refine``: through a token alignment, new words keep their
  own maps), optionally re-weighted per word (``reweight``);
* **self-attention** (inside the ``self_replace`` window, on layers of at most
  ``self_replace_max_pixels`` query positions): the edited branch takes the source's maps;
* **P2P-HRV** (``hrv`` and ``concept`` given): inside the cross window the edited word's columns
  keep the edited branch's *own* map, multiplied at head h by ``HRV_concept[h]``
  (concept strengthening). With an all-ones HRV this is P2P with token restoration
  (``restore_word=True``).

Windows are fractions of the denoising steps, counted in UNet evaluations like the reference:
cross-attention is edited for steps ``int(a·(N+1)) <= step < int(b·(N+1))`` and self-attention for
``int(a·N) <= step < int(b·N)``, where ``(a, b)`` is the window (a bare number b means ``(0, b)``).

The maths lives in plain tensor functions (:func:`align_tokens`, :func:`cross_alpha`,
:func:`self_window`, :func:`edit_cross`, :func:`blend_mask`); :class:`PromptToPrompt` is the
attention plugin and :func:`p2p` the one-call entry point.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources

import torch
import torch.nn.functional as F

from .attention import AttentionCall, Plugin, Session
from .heads import HeadIndex, Layer
from .tokens import TokenMap

EDITS = ("replace", "refine", "reweight")
REFERENCE_SELF_PIXELS = 16 * 16  # the reference replaces self-attention on layers of <= 16x16 queries
P2P_DEFAULTS = {"cross_replace": 0.8, "self_replace": 0.4}
P2P_HRV_DEFAULTS = {"cross_replace": 0.8, "self_replace": 0.9}

Window = float | tuple[float, float]


# ---------------------------------------------------------------------------------------------- maths
def _bounds(window: Window, name: str) -> tuple[float, float]:
    if isinstance(window, (int, float)):
        lo, hi = 0.0, float(window)
    else:
        try:
            lo, hi = (float(x) for x in window)
        except (TypeError, ValueError):
            raise ValueError(f"{name} must be a fraction or a (start, end) pair of fractions, got {window!r}") from None
    if not (0.0 <= lo <= hi <= 1.0):
        raise ValueError(f"{name} window {window!r} must satisfy 0 <= start <= end <= 1")
    return lo, hi


def self_window(self_replace: Window, num_steps: int) -> tuple[int, int]:
    """Steps [lo, hi) in which self-attention is replaced (the reference's ``int(N·fraction)``)."""
    lo, hi = _bounds(self_replace, "self_replace")
    return int(num_steps * lo), int(num_steps * hi)


def cross_alpha(cross_replace: Window | Mapping[str, Window], num_steps: int, num_tokens: int,
                word_positions: Mapping[str, Sequence[int]] | None = None) -> torch.Tensor:
    """Per-step, per-token replacement weights ``[N + 1, tokens]`` (1 inside the cross window).

    ``cross_replace`` is a window, or ``{"default_": window, word: window, ...}`` for per-word
    windows (positions of each word in ``word_positions``).
    """
    rows = num_steps + 1
    alpha = torch.zeros(rows, num_tokens)

    def fill(window, cols):
        lo, hi = _bounds(window, "cross_replace")
        a, b = int(lo * rows), int(hi * rows)
        alpha[:, cols] = 0.0
        alpha[a:b, cols] = 1.0

    if isinstance(cross_replace, Mapping):
        fill(cross_replace.get("default_", (0.0, 1.0)), slice(None))
        for word, window in cross_replace.items():
            if word == "default_":
                continue
            if word_positions is None or word not in word_positions:
                raise ValueError(f"cross_replace names word {word!r}, which is not in the target prompt")
            fill(window, list(word_positions[word]))
    else:
        fill(cross_replace, slice(None))
    return alpha


def align_tokens(source: Sequence[int], target: Sequence[int]) -> list[int]:
    """Global alignment of two token sequences: for each target token the aligned source index, or -1.

    Scores as the reference aligner (match +1, mismatch -1, gap 0), so only equal tokens align and
    the alignment is a longest common subsequence; ties prefer the earliest pairing.
    """
    n, m = len(source), len(target)
    score = [[0] * (m + 1) for _ in range(n + 1)]
    for i in range(1, n + 1):
        for j in range(1, m + 1):
            diag = score[i - 1][j - 1] + (1 if source[i - 1] == target[j - 1] else -1)
            score[i][j] = max(score[i - 1][j], score[i][j - 1], diag)
    out = [-1] * m
    i, j = n, m
    while i > 0 and j > 0:
        if source[i - 1] == target[j - 1] and score[i][j] == score[i - 1][j - 1] + 1:
            out[j - 1] = i - 1
            i, j = i - 1, j - 1
        elif score[i][j] == score[i][j - 1]:
            j -= 1
        else:
            i -= 1
    return out


def refine_mapper(source: TokenMap, target: TokenMap) -> tuple[torch.Tensor, torch.Tensor]:
    """(mapper, alphas) for a Refine edit over the padded sequences (``[T]`` each).

    ``mapper[j]`` is the source position whose map target position j takes; ``alphas[j]`` is 1
    where the target token is aligned to a source token, 0 for new tokens (they keep their own
    map). The start token maps to the start token, end/padding tokens to end/padding tokens in order.
    """
    total = len(target.ids)
    sw, tw = source.word_positions, target.word_positions
    aligned = align_tokens([source.ids[p] for p in sw], [target.ids[p] for p in tw])
    mapper = torch.arange(total)
    alphas = torch.ones(total)
    for j, a in zip(tw, aligned):
        if a < 0:
            mapper[j], alphas[j] = j, 0.0
        else:
            mapper[j] = sw[a]
    s_end = source.end_positions[0] if source.end_positions else len(source.ids)
    t_end = target.end_positions[0] if target.end_positions else total
    for j in range(t_end, total):
        mapper[j] = min(s_end + (j - t_end), len(source.ids) - 1)
    return mapper, alphas


def edit_cross(base: torch.Tensor, own: torch.Tensor, *, mapper: torch.Tensor | None = None,
               alphas: torch.Tensor | None = None, restore: Sequence[int] = (),
               weights: torch.Tensor | None = None, equalizer: torch.Tensor | None = None,
               alpha: torch.Tensor | None = None) -> torch.Tensor:
    """The edited branch's cross-attention ``[heads, pixels, tokens]`` from the source's (``base``) and its own.

    1. replace (``mapper`` None: the source map token for token) or refine (source columns through
       ``mapper``, blended by ``alphas``: new tokens keep ``own``);
    2. ``restore`` columns take ``own``, times ``weights[h]`` per head if given (P2P-HRV);
    3. times ``equalizer[token]`` (reweight);
    4. blended with ``own`` by the per-token window weight ``alpha`` (1 = edited, 0 = own).
    """
    if mapper is None:
        new = base.clone()
    else:
        a = alphas.to(base.dtype)
        new = base[..., mapper] * a + own * (1 - a)
    if len(restore):
        idx = torch.as_tensor(list(restore), device=base.device)
        cols = own[..., idx]
        if weights is not None:
            cols = cols * weights.to(own.dtype).view(-1, *([1] * (own.dim() - 1)))
        new[..., idx] = cols
    if equalizer is not None:
        new = new * equalizer.to(new.dtype)
    if alpha is not None and not bool((alpha == 1).all()):
        a = alpha.to(new.dtype)
        new = new * a + own * (1 - a)
    return new


def blend_mask(maps: torch.Tensor, latent_hw: tuple[int, int], threshold: float = 0.3, dilation: int = 1) -> torch.Tensor:
    """Local-blend mask ``[1, 1, h, w]`` from word maps ``[branches, r_h, r_w]`` (the reference's recipe).

    Dilate by a max-pool of radius ``dilation``, resize to the latent, normalise each branch by its
    maximum, threshold, and take the union over branches.
    """
    k = dilation
    m = F.max_pool2d(maps.unsqueeze(1).float(), (2 * k + 1, 2 * k + 1), (1, 1), padding=(k, k))
    m = F.interpolate(m, size=tuple(latent_hw))
    peak = m.amax(dim=(2, 3), keepdim=True).clamp_min(torch.finfo(m.dtype).tiny)
    m = (m / peak).gt(threshold)
    return m.any(dim=0, keepdim=True).float()


# ---------------------------------------------------------------------------------------------- plugin
@dataclass
class LocalBlend:
    """Keeps the edited latent equal to the source's outside the region of the given words.

    ``positions`` holds, per branch (source, edited), the token positions of the blend words;
    word maps are summed over the heads of the cross-attention layers at ``resolution`` and over
    the steps so far; after every scheduler step the edited latent becomes
    ``x_src + mask · (x_edit − x_src)``.
    """

    positions: tuple[list[int], list[int]]
    layers: frozenset[int]
    resolution: tuple[int, int]
    threshold: float = 0.3
    dilation: int = 1
    maps: torch.Tensor | None = None

    def wants(self, layer) -> bool:
        """True for the cross-attention layers whose maps feed the mask."""
        return isinstance(layer, Layer) and layer.index in self.layers

    def record(self, cond: torch.Tensor) -> None:
        """Add one call's conditional probabilities ``[2, heads, pixels, tokens]``."""
        rh, rw = self.resolution
        parts = [cond[b][..., self.positions[b]].sum(-1).sum(0).reshape(rh, rw) for b in range(2)]
        step = torch.stack(parts).detach().float()
        self.maps = step if self.maps is None else self.maps + step

    def __call__(self, pipe, step: int, timestep, kwargs: dict) -> dict:
        """``callback_on_step_end`` hook: blend the edited latent into the source latent."""
        latents = kwargs["latents"]
        if self.maps is None:
            return {}
        mask = blend_mask(self.maps, latents.shape[-2:], self.threshold, self.dilation).to(latents.dtype)
        src = latents[:1]
        return {"latents": src + mask * (latents - src)}

    def reset(self) -> None:
        """Forget the accumulated maps."""
        self.maps = None


@dataclass
class EditPlan:
    """Everything the attention plugin needs for one edit, resolved against a pipeline."""

    num_steps: int
    cross_alpha: torch.Tensor  # [N + 1, tokens]
    self_steps: tuple[int, int]
    self_max_pixels: int
    latent_hw: tuple[int, int]
    mapper: torch.Tensor | None = None  # refine only
    alphas: torch.Tensor | None = None
    restore: list[int] = field(default_factory=list)  # edited-word positions that keep their own map
    weights: torch.Tensor | None = None  # [H] HRV of the edited concept (P2P-HRV)
    equalizer: torch.Tensor | None = None  # [tokens] reweight factors
    blend: LocalBlend | None = None


class PromptToPrompt(Plugin):
    """Attention plugin that edits the conditional edited branch of a [source, edited] batch."""

    needs_probs = True
    cross = True
    self_attention = True

    def __init__(self, plan: EditPlan, heads: HeadIndex):
        self.plan = plan
        self.heads = heads
        self._cache: dict = {}

    # -------------------------------------------------------------- windows
    def _step(self, call: AttentionCall) -> int:
        """The call's step in the reference's counting (UNet evaluations; rescaled for multi-evaluation schedulers)."""
        n = self.plan.num_steps
        if call.num_steps > n + 1:
            return call.step * n // call.num_steps
        return call.step

    def cross_on(self, step: int) -> bool:
        """True if some token is edited in this step."""
        alpha = self.plan.cross_alpha
        return step < alpha.shape[0] and bool(alpha[step].any())

    def self_on(self, step: int, layer) -> bool:
        """True if this self-attention layer is replaced in this step."""
        lo, hi = self.plan.self_steps
        if not lo <= step < hi:
            return False
        h, w = self.plan.latent_hw
        d = layer.downsample
        return (-(-h // d)) * (-(-w // d)) <= self.plan.self_max_pixels

    def active(self, call: AttentionCall) -> bool:
        step = self._step(call)
        if call.is_cross:
            return self.cross_on(step) or (self.plan.blend is not None and self.plan.blend.wants(call.layer))
        return self.self_on(step, call.layer)

    # -------------------------------------------------------------- edits
    def on_probs(self, call: AttentionCall, probs: torch.Tensor) -> torch.Tensor | None:
        rows = list(range(call.batch))[call.cond]
        if len(rows) != 2:
            raise RuntimeError(
                f"Prompt-to-Prompt expects a [source, edited] batch, got {len(rows)} conditional rows; "
                "use num_images_per_prompt=1"
            )
        src, dst = rows
        step = self._step(call)
        plan = self.plan
        out = None
        if call.is_cross:
            if self.cross_on(step):
                out = probs.clone()
                out[dst] = edit_cross(probs[src], probs[dst], mapper=self._on(plan.mapper, probs),
                                      alphas=self._on(plan.alphas, probs), restore=plan.restore,
                                      weights=self._layer_weights(call.layer, probs),
                                      equalizer=self._on(plan.equalizer, probs),
                                      alpha=self._on(plan.cross_alpha[step], probs))
            if plan.blend is not None and plan.blend.wants(call.layer):
                cur = out if out is not None else probs
                plan.blend.record(cur[[src, dst]])
        else:
            out = probs.clone()
            out[dst] = probs[src]
        return out

    def _on(self, t: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor | None:
        if t is None:
            return None
        return t if t.device == like.device else t.to(like.device)

    def _layer_weights(self, layer: Layer, like: torch.Tensor) -> torch.Tensor | None:
        if self.plan.weights is None:
            return None
        key = (layer.index, like.device, like.dtype)
        if key not in self._cache:
            w = self.plan.weights[layer.head_offset: layer.head_offset + layer.num_heads]
            self._cache[key] = w.to(device=like.device, dtype=like.dtype)
        return self._cache[key]


# ---------------------------------------------------------------------------------------------- planning
def _tokenizer(pipe):
    from .families import family_of

    return family_of(pipe).text_layout(pipe).tokenizer


def default_size(pipe) -> tuple[int, int]:
    """The pipeline's default (height, width) in pixels (PixArt: its size bin)."""
    from .families import family_of

    return family_of(pipe).generation_size(pipe, None, None)


def closest_resolution(heads: HeadIndex, latent_hw: tuple[int, int], wanted: int) -> int:
    """The cross-attention query-grid height closest to ``wanted`` (ties: the larger)."""
    have = sorted({layer.resolution(latent_hw)[0] for layer in heads.layers})
    return min(have, key=lambda r: (abs(r - wanted), -r))


def _edited_positions(edit: str, src: TokenMap, tgt: TokenMap, mapper_alphas) -> list[int]:
    if edit == "refine" or len(src.word_positions) != len(tgt.word_positions):
        _, alphas = mapper_alphas
        return [j for j in tgt.word_positions if float(alphas[j]) == 0.0]
    return [j for j in tgt.word_positions if src.ids[j] != tgt.ids[j]]


def plan_edit(pipe, source: str, target: str, *, cross_replace: Window | Mapping[str, Window] = 0.8,
              self_replace: Window = 0.4, num_inference_steps: int = 50, edit: str = "replace",
              word: str | None = None, hrv=None, concept: str | None = None, restore_word: bool = False,
              reweight: Mapping[str, float] | None = None, local_blend=None, blend_threshold: float = 0.3,
              blend_resolution: int | None = None, self_replace_max_pixels: int | None = None,
              height: int | None = None, width: int | None = None) -> EditPlan:
    """Resolve an edit's words, token maps, windows and HRV weights against a pipeline."""
    if edit not in EDITS:
        raise ValueError(f"unknown edit {edit!r}: use one of {', '.join(EDITS)}")
    if num_inference_steps < 1:
        raise ValueError(f"num_inference_steps must be >= 1, got {num_inference_steps}")
    if (hrv is None) != (concept is None):
        raise ValueError("P2P-HRV needs both hrv= and concept= (give both, or neither for plain P2P)")
    if edit == "reweight" and not reweight:
        raise ValueError("edit='reweight' needs reweight={word: factor, ...}")
    from .families import family_of

    family = family_of(pipe)
    family.require("Prompt-to-Prompt")
    layout = family.text_layout(pipe)
    tok = layout.tokenizer
    src, tgt = layout.token_map(source), layout.token_map(target)
    same_length = len(src.word_positions) == len(tgt.word_positions)
    if edit == "replace" and not same_length:
        raise ValueError(
            f"a replace edit needs prompts with the same number of tokens, but {source!r} has "
            f"{len(src.word_positions)} and {target!r} has {len(tgt.word_positions)}; use edit='refine'"
        )
    mapper = alphas = None
    if edit == "refine" or (edit == "reweight" and not same_length):
        mapper, alphas = refine_mapper(src, tgt)

    heads = HeadIndex.from_model(pipe)
    h, w = family.generation_size(pipe, height, width)
    latent_hw = family.latent_size(pipe, h, w)

    restore: list[int] = []
    weights = None
    if hrv is not None or restore_word:
        if word is not None:
            restore = tgt.find(word, tok)
        else:
            restore = _edited_positions(edit, src, tgt, (mapper, alphas))
            if not restore:
                raise ValueError(
                    f"source and target prompts do not differ in any word ({source!r} → {target!r}); "
                    "name the edited word with word="
                )
    if hrv is not None:
        hrv.check_layout(heads)
        weights = hrv[concept].detach().float().cpu()

    equalizer = None
    if reweight:
        equalizer = torch.ones(len(tgt.ids))
        for w_, factor in reweight.items():
            equalizer[tgt.find(w_, tok)] = float(factor)

    positions = {}
    if isinstance(cross_replace, Mapping):
        positions = {k: tgt.find(k, tok) for k in cross_replace if k != "default_"}
    alpha = cross_alpha(cross_replace, num_inference_steps, len(tgt.ids), positions)
    steps = self_window(self_replace, num_inference_steps)
    if self_replace_max_pixels is None:
        if family.name == "unet":
            quarter = (latent_hw[0] // 4) * (latent_hw[1] // 4)
            self_replace_max_pixels = max(REFERENCE_SELF_PIXELS, quarter)
        else:  # a DiT works at one resolution: every block's self-attention is replaced
            self_replace_max_pixels = latent_hw[0] * latent_hw[1]

    blend = None
    if local_blend is not None:
        import inspect

        if "callback_on_step_end" not in inspect.signature(type(pipe).__call__).parameters:
            raise ValueError(f"local_blend needs a pipeline with callback_on_step_end; {type(pipe).__name__} has "
                             "none, so edit without local_blend")
        blend = _plan_blend(local_blend, src, tgt, tok, heads, latent_hw, blend_threshold, blend_resolution)
    return EditPlan(num_inference_steps, alpha, steps, int(self_replace_max_pixels), latent_hw, mapper, alphas,
                    restore, weights, equalizer, blend)


def _plan_blend(words, src: TokenMap, tgt: TokenMap, tok, heads: HeadIndex, latent_hw, threshold, resolution):
    if isinstance(words, str):
        words = [words]
    words = list(words)
    if len(words) == 2 and all(not isinstance(w, str) for w in words):
        per_branch = [list(words[0]), list(words[1])]
    else:
        per_branch = [words, words]
    positions: list[list[int]] = []
    for tm, ws in zip((src, tgt), per_branch):
        pos = []
        for w_ in ws:
            found = tm.find_all(w_, tok)
            pos += [p for run in found for p in run]
        positions.append(pos)
    if not positions[0] and not positions[1]:
        raise ValueError(f"local_blend words {words!r} occur in neither prompt ({src.prompt!r}, {tgt.prompt!r})")
    r = resolution if resolution is not None else closest_resolution(heads, latent_hw, latent_hw[0] // 4)
    layers = frozenset(layer.index for layer in heads.layers if layer.resolution(latent_hw)[0] == r)
    if not layers:
        have = sorted({layer.resolution(latent_hw)[0] for layer in heads.layers})
        raise ValueError(f"no cross-attention layer works at resolution {r} (have: {have})")
    rw = next(layer.resolution(latent_hw) for layer in heads.layers if layer.index in layers)
    return LocalBlend((positions[0], positions[1]), layers, rw, threshold)


# ---------------------------------------------------------------------------------------------- entry point
def initial_latent(pipe, seed: int, height: int, width: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """One initial latent ``[1, C, h, w]`` drawn exactly as the pipeline draws it for this seed."""
    from diffusers.utils.torch_utils import randn_tensor

    from .families import denoiser_of

    g = generator if generator is not None else torch.Generator(device="cpu").manual_seed(int(seed))
    denoiser = denoiser_of(pipe)
    shape = (1, denoiser.config.in_channels, height // pipe.vae_scale_factor, width // pipe.vae_scale_factor)
    return randn_tensor(shape, generator=g, device=denoiser.device, dtype=denoiser.dtype)


def p2p(pipe, source: str, target: str, *, cross_replace: Window | Mapping[str, Window] = 0.8,
        self_replace: Window | None = None, hrv=None, concept: str | None = None, seed: int = 0,
        num_inference_steps: int = 50, guidance_scale: float = 7.5, edit: str = "replace",
        word: str | None = None, reweight: Mapping[str, float] | None = None, local_blend=None,
        blend_threshold: float = 0.3, blend_resolution: int | None = None, restore_word: bool = False,
        self_replace_max_pixels: int | None = None, height: int | None = None, width: int | None = None,
        negative_prompt: str | None = None, output_type: str = "pil", latents: torch.Tensor | None = None,
        plugins: Sequence[Plugin] = ()):
    """Prompt-to-Prompt edit: (source image, edited image); with ``hrv`` and ``concept`` it is P2P-HRV.

    ``self_replace`` defaults to 0.4 for plain P2P and 0.9 for P2P-HRV (the reference's settings).
    ``edit``: ``replace`` (same token count), ``refine`` (token alignment) or ``reweight``
    (``reweight={"word": 2.0}``; also combinable with the other two). ``word`` names the edited
    word of the target (default: the words that differ). ``local_blend``: words (or a pair of word
    lists, source and target) whose region may change. ``restore_word``: the edited word keeps its
    own map (P2P-HRV with an all-ones HRV). Extra ``plugins`` run after the edit (e.g. recorders).
    """
    from .families import family_of

    family_of(pipe).require("Prompt-to-Prompt")
    if self_replace is None:
        self_replace = (P2P_HRV_DEFAULTS if hrv is not None else P2P_DEFAULTS)["self_replace"]
    height, width = family_of(pipe).generation_size(pipe, height, width)
    plan = plan_edit(pipe, source, target, cross_replace=cross_replace, self_replace=self_replace,
                     num_inference_steps=num_inference_steps, edit=edit, word=word, hrv=hrv, concept=concept,
                     restore_word=restore_word, reweight=reweight, local_blend=local_blend,
                     blend_threshold=blend_threshold, blend_resolution=blend_resolution,
                     self_replace_max_pixels=self_replace_max_pixels, height=height, width=width)
    if latents is None:
        latents = initial_latent(pipe, seed, height, width)
    if latents.shape[0] == 1:
        latents = latents.repeat(2, 1, 1, 1)
    plugin = PromptToPrompt(plan, HeadIndex.from_model(pipe))
    kwargs = {}
    if plan.blend is not None:
        kwargs = {"callback_on_step_end": plan.blend, "callback_on_step_end_tensor_inputs": ["latents"]}
    if negative_prompt is not None:
        kwargs["negative_prompt"] = [negative_prompt, negative_prompt]
    with Session(pipe, [plugin, *plugins], self_attention=True, cfg=guidance_scale > 1.0):
        out = pipe(prompt=[source, target], latents=latents, height=height, width=width,
                   num_inference_steps=num_inference_steps, guidance_scale=guidance_scale,
                   output_type=output_type, **kwargs)
    images = out.images
    return images[0], images[1]


# ---------------------------------------------------------------------------------------------- benchmark
@dataclass(frozen=True)
class EditCase:
    """One benchmark edit: source → target, the edited word and its concept."""

    source: str
    target: str
    word: str
    concept: str


def load_edits(concept: str | None = None, path=None) -> list[EditCase]:
    """Edits from ``data/edits.toml`` (or ``path``), optionally only one concept (case-insensitive)."""
    try:
        import tomllib
    except ModuleNotFoundError:  # pragma: no cover - Python 3.10
        import tomli as tomllib  # type: ignore[no-redef]
    if path is None:
        text = (resources.files("headlens") / "data" / "edits.toml").read_text(encoding="utf-8")
    else:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    data = tomllib.loads(text)
    rows = data.get("edit", data.get("edits", []))
    cases = [EditCase(r["source"], r["target"], r["word"], r["concept"]) for r in rows]
    if concept is None:
        return cases
    have = sorted({c.concept for c in cases})
    want = concept.strip().lower().replace("_", " ").replace("-", " ")
    chosen = [c for c in cases if c.concept.lower() == want]
    if not chosen:
        raise ValueError(f"no edit benchmark for concept {concept!r} (have: {', '.join(have)})")
    return chosen


__all__ = [
    "EDITS", "EditCase", "EditPlan", "LocalBlend", "PromptToPrompt", "align_tokens", "blend_mask",
    "cross_alpha", "edit_cross", "initial_latent", "load_edits", "p2p", "plan_edit", "refine_mapper",
    "self_window",
]
