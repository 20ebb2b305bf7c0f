"""Attend-and-Excite (A&E) and A&E-HRV, with our own denoising loop on the pipeline's components.

At the first ``max_iter_to_alter`` steps the latent is nudged so that every subject token gets a
strong peak in its attention map:

1. a UNet pass on the conditional prompt only (gradients on the latent), with a
   :class:`TokenMaps` plugin that collects the cross-attention maps;
2. per token, the map: plain A&E averages the heads of the layers at one resolution (the paper's
   16×16 for SD at 512 px); A&E-HRV takes ``Σ_h HRV_c[h]·map_h / H`` over every head, each layer's
   maps resized to one resolution (reference 8×8: bicubic up, or Gaussian blur then bicubic down),
   c being the token's concept. Both run the same code: plain A&E is the all-ones weighting;
3. the maps' text tokens (start token dropped) ×100 go through a softmax over tokens; each subject
   token's map is Gaussian-smoothed (3×3, σ 0.5) and its maximum taken;
   loss = max over tokens of (1 − max);
4. at steps in ``thresholds`` ({0: 0.05, 10: 0.5, 20: 0.8}) the latent is refined until
   loss ≤ 1 − threshold (at most ``max_refinement_steps`` updates); then one gradient step
   ``latent −= scale_factor·sqrt(scale)·∇loss`` with ``scale`` going linearly 1 → 0.5 over the steps;
5. the usual classifier-free-guidance pass and scheduler step.

:func:`excite` is the entry point, also exported as ``headlens.excite``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources

import torch
import torch.nn.functional as F

from .attention import AttentionCall, Plugin, Session
from .heads import HeadIndex, Layer
from .tokens import TokenMap

DEFAULT_THRESHOLDS = {0: 0.05, 10: 0.5, 20: 0.8}
LAYER_MODES = ("resolution", "all")


# ---------------------------------------------------------------------------------------------- maths
def gaussian_kernel(kernel_size: int, sigma: float, device=None, dtype=torch.float32) -> torch.Tensor:
    """Normalised 2-D Gaussian kernel ``[k, k]``."""
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"kernel_size must be a positive odd number, got {kernel_size}")
    half = (kernel_size - 1) / 2
    x = torch.linspace(-half, half, kernel_size, device=device, dtype=torch.float64)
    k1 = torch.exp(-0.5 * (x / float(sigma)) ** 2)
    k1 = k1 / k1.sum()
    return torch.outer(k1, k1).to(dtype)


def gaussian_blur(x: torch.Tensor, kernel_size: int, sigma: float) -> torch.Tensor:
    """Blur every channel of ``[N, C, h, w]`` with a Gaussian (reflect padding, same size)."""
    k = gaussian_kernel(kernel_size, sigma, device=x.device, dtype=x.dtype)
    c = x.shape[1]
    pad = kernel_size // 2
    if pad:
        mode = "reflect" if pad < min(x.shape[-2:]) else "replicate"
        x = F.pad(x, [pad, pad, pad, pad], mode=mode)
    return F.conv2d(x, k.expand(c, 1, kernel_size, kernel_size), groups=c)


def resize_maps(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Resize maps ``[N, C, h, w]`` to ``size``: bicubic up, or Gaussian blur (anti-aliasing) then bicubic down.

    The blur uses kernel ``h // size + 1`` (made odd) and σ = 0.3·((k − 1)/2 − 1) + 0.8, as the reference.
    """
    h, w = maps.shape[-2:]
    th, tw = size
    if (h, w) == (th, tw):
        return maps
    if h > th:
        k = h // th + 1
        k += 1 - k % 2
        sigma = 0.3 * ((k - 1) * 0.5 - 1) + 0.8
        maps = gaussian_blur(maps, k, sigma)
    return F.interpolate(maps, size=(th, tw), mode="bicubic", align_corners=False)


def token_maxima(maps: torch.Tensor, positions: Sequence[int], groups: Sequence[int], *, last: int | None = None,
                 smooth: bool = True, sigma: float = 0.5, kernel_size: int = 3, first: int = 1) -> torch.Tensor:
    """Maximum attention of each subject token ``[K]`` from weighted maps ``[G, tokens, R_h, R_w]``.

    Tokens ``first:last`` (the start token dropped: ``first=1``; T5 has none: ``first=0``; masked
    padding left out by ``last``) ×100 are softmaxed over tokens; token k reads group
    ``groups[k]``'s map at ``positions[k]``, optionally Gaussian-smoothed, and takes its maximum.
    """
    text = torch.softmax(maps[:, first:last] * 100, dim=1)
    g = torch.as_tensor(list(groups), device=maps.device)
    p = torch.as_tensor(list(positions), device=maps.device) - first
    images = text[g, p]  # [K, R_h, R_w]
    if smooth:
        images = gaussian_blur(images.unsqueeze(1), kernel_size, sigma).squeeze(1)
    return images.flatten(1).amax(dim=1)


def excite_loss(maxima: torch.Tensor) -> torch.Tensor:
    """Attend-and-Excite loss: the largest ``max(0, 1 − max attention)`` over the subject tokens."""
    return (1.0 - maxima).clamp_min(0.0).max()


# ---------------------------------------------------------------------------------------------- plugin
class TokenMaps(Plugin):
    """Collects head-weighted cross-attention maps ``[G, tokens, R_h, R_w]`` of one conditional UNet pass."""

    needs_probs = True
    cross = True

    def __init__(self, layers: Sequence[Layer], weights: torch.Tensor, size: tuple[int, int],
                 latent_hw: tuple[int, int]):
        self.layers = {layer.index: layer for layer in layers}
        self.weights = weights  # [G, H]
        self.size = tuple(size)
        self.latent_hw = tuple(latent_hw)
        self.recording = False
        self._sum: torch.Tensor | None = None
        self._heads = 0

    def start(self) -> None:
        """Start collecting (forget earlier maps)."""
        self.recording, self._sum, self._heads = True, None, 0

    def finish(self) -> torch.Tensor:
        """Stop collecting; the weighted mean ``Σ_h w[g, h]·map_h / (number of heads)``."""
        self.recording = False
        if self._sum is None:
            raise RuntimeError("no cross-attention map was collected: did the UNet run inside the session?")
        return self._sum / self._heads

    def active(self, call: AttentionCall) -> bool:
        return self.recording and call.layer.index in self.layers

    def on_probs(self, call: AttentionCall, probs: torch.Tensor) -> None:
        p = probs[call.cond]
        if p.shape[0] != 1:
            raise RuntimeError(f"TokenMaps expects one conditional image per pass, got {p.shape[0]}")
        layer = call.layer
        rh, rw = layer.resolution(self.latent_hw)
        heads, pixels, tokens = p.shape[1:]
        if rh * rw != pixels:
            raise RuntimeError(f"layer {layer.name}: {pixels} queries do not form a {rh}x{rw} grid")
        maps = p[0].float().reshape(heads, rh, rw, tokens).permute(0, 3, 1, 2)  # [h, T, rh, rw]
        maps = resize_maps(maps, self.size)
        w = self.weights[:, layer.head_offset: layer.head_offset + layer.num_heads].to(maps.device)
        part = (w[:, :, None, None, None] * maps.unsqueeze(0)).sum(dim=1)  # [G, T, R_h, R_w]
        self._sum = part if self._sum is None else self._sum + part
        self._heads += heads


# ---------------------------------------------------------------------------------------------- inputs
@dataclass(frozen=True)
class Subject:
    """One subject token: the word it belongs to, its concept and its position in the prompt."""

    word: str
    concept: str | None
    position: int


def parse_tokens(tokens) -> list[tuple[str, str | None]]:
    """Normalise ``{"cat": "Animals"}``, ``[("cat", "Animals")]``, ``["cat:Animals"]`` or ``["cat"]`` to pairs."""
    if isinstance(tokens, str):
        tokens = [tokens]
    if isinstance(tokens, Mapping):
        pairs = [(str(w), None if c is None else str(c)) for w, c in tokens.items()]
    else:
        pairs = []
        for item in tokens:
            if isinstance(item, str):
                word, _, concept = item.partition(":")
                pairs.append((word.strip(), concept.strip() or None))
            else:
                item = list(item)
                if len(item) != 2:
                    raise ValueError(f"token {item!r}: give (word, concept) pairs, e.g. ('cat', 'Animals')")
                pairs.append((str(item[0]), None if item[1] is None else str(item[1])))
    if not pairs:
        raise ValueError("give at least one subject token, e.g. tokens={'cat': 'Animals'}")
    for word, _ in pairs:
        if not word.strip():
            raise ValueError("a subject token is empty; give words as they appear in the prompt")
    return pairs


def resolve_subjects(tokenizer, prompt: str, tokens, hrv=None, token_map: TokenMap | None = None
                     ) -> tuple[list[Subject], TokenMap]:
    """Subject tokens of a prompt (every token of each word's first occurrence), checked against the HRV."""
    tm = token_map if token_map is not None else TokenMap.from_tokenizer(tokenizer, prompt)
    subjects = []
    for word, concept in parse_tokens(tokens):
        if hrv is not None:
            if concept is None:
                raise ValueError(f"token {word!r} has no concept; A&E-HRV needs one, e.g. {word}:Animals")
            concept = hrv.concepts[hrv.concept_index(concept)]
        for pos in tm.find(word, tokenizer, occurrence=0):
            subjects.append(Subject(word, concept, pos))
    return subjects, tm


def _available(heads: HeadIndex, latent_hw) -> list[int]:
    return sorted({layer.resolution(latent_hw)[0] for layer in heads.layers})


def select_layers(heads: HeadIndex, latent_hw: tuple[int, int], resolution: int | None, layers: str | None,
                  hrv_mode: bool) -> tuple[list[Layer], tuple[int, int]]:
    """Layers whose maps are used and the common map size.

    Defaults: plain A&E uses the layers at the resolution closest to latent/4 (16×16 for SD at
    512 px); A&E-HRV resizes every layer's maps to latent/8 (8×8 at 512 px; at least the coarsest
    layer's resolution).
    """
    have = _available(heads, latent_hw)
    mode = layers or ("all" if hrv_mode else "resolution")
    if mode not in LAYER_MODES:
        raise ValueError(f"unknown layers={mode!r}: use 'resolution' (layers at that resolution) or 'all'")
    if resolution is None:
        if hrv_mode:
            resolution = max(latent_hw[0] // 8, have[0])
        else:
            resolution = min(have, key=lambda r: (abs(r - latent_hw[0] // 4), -r))
    resolution = int(resolution)
    if resolution < 1:
        raise ValueError(f"resolution must be >= 1, got {resolution}")
    if mode == "resolution":
        chosen = [layer for layer in heads.layers if layer.resolution(latent_hw)[0] == resolution]
        if not chosen:
            raise ValueError(
                f"no cross-attention layer works at resolution {resolution} for this image size "
                f"(have: {', '.join(map(str, have))}); pick one of those or layers='all'"
            )
        size = chosen[0].resolution(latent_hw)
    else:
        chosen = list(heads.layers)
        size = (resolution, max(1, round(resolution * latent_hw[1] / latent_hw[0])))
    return chosen, size


def head_weights(subjects: Sequence[Subject], heads: HeadIndex, hrv=None) -> tuple[torch.Tensor, list[int]]:
    """Per-group head weights ``[G, H]`` and each subject's group: all ones (plain), or one HRV per concept."""
    if hrv is None:
        return torch.ones(1, len(heads)), [0] * len(subjects)
    hrv.check_layout(heads)
    concepts: list[str] = []
    for s in subjects:
        if s.concept not in concepts:
            concepts.append(s.concept)
    weights = torch.stack([hrv[c].detach().float().cpu() for c in concepts])
    return weights, [concepts.index(s.concept) for s in subjects]


# ---------------------------------------------------------------------------------------------- UNet driving
class _Driver:
    """How the A&E loop prepares latents and timesteps, scales inputs and decodes (the SD pipelines' way)."""

    def setup(self, num_inference_steps: int, device, generator, latents, height: int, width: int):
        """(timesteps, initial latent, extra scheduler-step kwargs)."""
        pipe, scheduler = self.pipe, self.pipe.scheduler
        scheduler.set_timesteps(num_inference_steps, device=device)
        denoiser = getattr(pipe, "unet", None) or pipe.transformer
        lat = pipe.prepare_latents(1, denoiser.config.in_channels, height, width, self.dtype, device, generator,
                                   latents)
        return scheduler.timesteps, lat, pipe.prepare_extra_step_kwargs(generator, 0.0)

    def scale(self, x: torch.Tensor, t) -> torch.Tensor:
        """The scheduler's input scaling."""
        return self.pipe.scheduler.scale_model_input(x, t)

    def decode(self, latents: torch.Tensor, output_type: str):
        """Latents → image."""
        return decode(self.pipe, latents, output_type)


class _Conditioning(_Driver):
    """Prompt embeddings (and SDXL's extra conditioning) for conditional and guided UNet passes."""

    def __init__(self, pipe, prompt: str, negative_prompt: str | None, cfg: bool, height: int, width: int, device,
                 guidance_scale: float = 7.5):
        self.pipe = pipe
        self.cfg = cfg
        enc = pipe.encode_prompt(prompt=prompt, device=device, num_images_per_prompt=1,
                                 do_classifier_free_guidance=cfg, negative_prompt=negative_prompt)
        self.added_cond = self.added_uncond = None
        if getattr(pipe.unet.config, "addition_embed_type", None) == "text_time":
            pe, ne, pooled, neg_pooled = enc
            te2 = getattr(pipe, "text_encoder_2", None)
            proj = te2.config.projection_dim if te2 is not None else int(pooled.shape[-1])
            ids = pipe._get_add_time_ids((height, width), (0, 0), (height, width), dtype=pe.dtype,
                                         text_encoder_projection_dim=proj).to(device)
            self.added_cond = {"text_embeds": pooled, "time_ids": ids}
            if cfg:
                self.added_uncond = {"text_embeds": neg_pooled, "time_ids": ids}
        else:
            pe, ne = enc[0], enc[1]
        self.cond, self.uncond = pe, ne
        self.dtype = pe.dtype

    def conditional(self, latents: torch.Tensor, t) -> torch.Tensor:
        """Noise prediction for the prompt alone (the pass whose maps A&E reads)."""
        kw = {"added_cond_kwargs": self.added_cond} if self.added_cond is not None else {}
        return self.pipe.unet(latents, t, encoder_hidden_states=self.cond, **kw).sample

    def guided(self, latents: torch.Tensor, t, guidance_scale: float) -> torch.Tensor:
        """Classifier-free-guided noise prediction (batch [uncond, cond])."""
        if not self.cfg:
            return self.conditional(latents, t)
        kw = {}
        if self.added_cond is not None:
            kw["added_cond_kwargs"] = {k: torch.cat([self.added_uncond[k], self.added_cond[k]])
                                       for k in self.added_cond}
        noise = self.pipe.unet(torch.cat([latents] * 2), t, encoder_hidden_states=torch.cat([self.uncond, self.cond]),
                               **kw).sample
        uncond, cond = noise.chunk(2)
        return uncond + guidance_scale * (cond - uncond)


class _PixArtConditioning(_Driver):
    """T5 prompt embeddings and their attention masks for PixArt's transformer (learned-sigma output split off)."""

    def __init__(self, pipe, prompt: str, negative_prompt: str | None, cfg: bool, height: int, width: int, device,
                 guidance_scale: float = 4.5):
        from .families import family_of

        self.pipe = pipe
        self.cfg = cfg
        pe, pm, ne, nm = pipe.encode_prompt(prompt, do_classifier_free_guidance=cfg, negative_prompt=negative_prompt or "",
                                            device=device, num_images_per_prompt=1, clean_caption=False,
                                            max_sequence_length=family_of(pipe).max_length(pipe))
        self.cond, self.cond_mask, self.uncond, self.uncond_mask = pe, pm, ne, nm
        self.dtype = pe.dtype
        self.added = {"resolution": None, "aspect_ratio": None}
        if pipe.transformer.config.sample_size == 128:  # PixArt-α 1024: size and aspect-ratio conditioning
            self.added = {"resolution": torch.tensor([[height, width]], dtype=pe.dtype, device=device),
                          "aspect_ratio": torch.tensor([[height / width]], dtype=pe.dtype, device=device)}

    def _run(self, latents, t, emb, mask, added):
        out = self.pipe.transformer(latents, encoder_hidden_states=emb, encoder_attention_mask=mask,
                                    timestep=t.reshape(-1)[:1].expand(latents.shape[0]) if torch.is_tensor(t) else
                                    torch.full((latents.shape[0],), float(t), device=latents.device),
                                    added_cond_kwargs=added, return_dict=False)[0]
        if self.pipe.transformer.config.out_channels // 2 == latents.shape[1]:
            out = out.chunk(2, dim=1)[0]
        return out

    def conditional(self, latents: torch.Tensor, t) -> torch.Tensor:
        """Noise prediction for the prompt alone (the pass whose maps A&E reads)."""
        return self._run(latents, t, self.cond, self.cond_mask, self.added)

    def guided(self, latents: torch.Tensor, t, guidance_scale: float) -> torch.Tensor:
        """Classifier-free-guided noise prediction (batch [uncond, cond])."""
        if not self.cfg:
            return self.conditional(latents, t)
        added = {k: (None if v is None else torch.cat([v, v])) for k, v in self.added.items()}
        noise = self._run(torch.cat([latents] * 2), t, torch.cat([self.uncond, self.cond]),
                          torch.cat([self.uncond_mask, self.cond_mask]), added)
        uncond, cond = noise.chunk(2)
        return uncond + guidance_scale * (cond - uncond)


class _SD3Conditioning(_Driver):
    """SD3: joint CLIP + T5 prompt embeddings and pooled CLIP embeddings; flow-matching timesteps, no input scaling."""

    def __init__(self, pipe, prompt: str, negative_prompt: str | None, cfg: bool, height: int, width: int, device,
                 guidance_scale: float = 7.0):
        from .families import family_of

        self.pipe = pipe
        self.cfg = cfg
        pe, ne, pooled, neg_pooled = pipe.encode_prompt(
            prompt=prompt, prompt_2=None, prompt_3=None, device=device, num_images_per_prompt=1,
            do_classifier_free_guidance=cfg, negative_prompt=negative_prompt,
            max_sequence_length=family_of(pipe).max_length(pipe))
        self.cond, self.uncond, self.pooled, self.neg_pooled = pe, ne, pooled, neg_pooled
        self.dtype = pe.dtype

    def setup(self, num_inference_steps: int, device, generator, latents, height: int, width: int):
        from diffusers.pipelines.stable_diffusion_3.pipeline_stable_diffusion_3 import calculate_shift, retrieve_timesteps

        pipe, sched = self.pipe, self.pipe.scheduler
        lat = pipe.prepare_latents(1, pipe.transformer.config.in_channels, height, width, self.dtype, device,
                                   generator, latents)
        kw = {}
        if sched.config.get("use_dynamic_shifting", None):
            p = pipe.transformer.config.patch_size
            seq = (lat.shape[-2] // p) * (lat.shape[-1] // p)
            kw["mu"] = calculate_shift(seq, sched.config.get("base_image_seq_len", 256),
                                       sched.config.get("max_image_seq_len", 4096),
                                       sched.config.get("base_shift", 0.5), sched.config.get("max_shift", 1.16))
        timesteps, _ = retrieve_timesteps(sched, num_inference_steps, device, **kw)
        return timesteps, lat, {}

    def scale(self, x: torch.Tensor, t) -> torch.Tensor:
        return x

    def _run(self, latents, t, emb, pooled):
        return self.pipe.transformer(hidden_states=latents, timestep=t.reshape(-1)[:1].expand(latents.shape[0]),
                                     encoder_hidden_states=emb, pooled_projections=pooled, return_dict=False)[0]

    def conditional(self, latents: torch.Tensor, t) -> torch.Tensor:
        """Velocity prediction for the prompt alone (the pass whose maps A&E reads)."""
        return self._run(latents, t, self.cond, self.pooled)

    def guided(self, latents: torch.Tensor, t, guidance_scale: float) -> torch.Tensor:
        """Classifier-free-guided prediction (batch [uncond, cond])."""
        if not self.cfg:
            return self.conditional(latents, t)
        out = self._run(torch.cat([latents] * 2), t, torch.cat([self.uncond, self.cond]),
                        torch.cat([self.neg_pooled, self.pooled]))
        uncond, cond = out.chunk(2)
        return uncond + guidance_scale * (cond - uncond)

    def decode(self, latents: torch.Tensor, output_type: str):
        if output_type == "latent":
            return latents
        vae = self.pipe.vae
        lat = latents.to(vae.dtype) / vae.config.scaling_factor + vae.config.shift_factor
        with torch.no_grad():
            image = vae.decode(lat, return_dict=False)[0]
        return self.pipe.image_processor.postprocess(image, output_type=output_type)[0]


class _FluxConditioning(_SD3Conditioning):
    """FLUX: T5 prompt embeddings, pooled CLIP, text/image position ids, distilled guidance; packed latents."""

    def __init__(self, pipe, prompt: str, negative_prompt: str | None, cfg: bool, height: int, width: int, device,
                 guidance_scale: float = 3.5):
        from .families import family_of

        self.pipe = pipe
        self.cfg = False  # guidance-distilled: no [uncond, cond] batch
        pe, pooled, text_ids = pipe.encode_prompt(prompt=prompt, prompt_2=None, device=device, num_images_per_prompt=1,
                                                  max_sequence_length=family_of(pipe).max_length(pipe))
        self.cond, self.pooled, self.text_ids = pe, pooled, text_ids
        self.dtype = pe.dtype
        self.guidance = None
        if pipe.transformer.config.guidance_embeds:
            self.guidance = torch.full([1], float(guidance_scale), device=device, dtype=torch.float32)
        self.height, self.width = height, width

    def setup(self, num_inference_steps: int, device, generator, latents, height: int, width: int):
        import numpy as np
        from diffusers.pipelines.flux.pipeline_flux import calculate_shift, retrieve_timesteps

        pipe, sched = self.pipe, self.pipe.scheduler
        lat, self.image_ids = pipe.prepare_latents(1, pipe.transformer.config.in_channels // 4, height, width,
                                                   self.dtype, device, generator, latents)
        sigmas = np.linspace(1.0, 1 / num_inference_steps, num_inference_steps)
        if getattr(sched.config, "use_flow_sigmas", False):
            sigmas = None
        mu = calculate_shift(lat.shape[1], sched.config.get("base_image_seq_len", 256),
                             sched.config.get("max_image_seq_len", 4096), sched.config.get("base_shift", 0.5),
                             sched.config.get("max_shift", 1.15))
        timesteps, _ = retrieve_timesteps(sched, num_inference_steps, device, sigmas=sigmas, mu=mu)
        return timesteps, lat, {}

    def conditional(self, latents: torch.Tensor, t) -> torch.Tensor:
        b = latents.shape[0]
        guidance = None if self.guidance is None else self.guidance.expand(b)
        timestep = t.reshape(-1)[:1].expand(b).to(latents.dtype)
        return self.pipe.transformer(hidden_states=latents, timestep=timestep / 1000, guidance=guidance,
                                     pooled_projections=self.pooled, encoder_hidden_states=self.cond,
                                     txt_ids=self.text_ids, img_ids=self.image_ids, return_dict=False)[0]

    def guided(self, latents: torch.Tensor, t, guidance_scale: float) -> torch.Tensor:
        return self.conditional(latents, t)

    def decode(self, latents: torch.Tensor, output_type: str):
        if output_type == "latent":
            return latents
        lat = self.pipe._unpack_latents(latents, self.height, self.width, self.pipe.vae_scale_factor)
        return super().decode(lat, output_type)


@torch.no_grad()
def decode(pipe, latents: torch.Tensor, output_type: str = "pil"):
    """Latents → image through the VAE and the pipeline's image processor (first image)."""
    if output_type == "latent":
        return latents
    vae = pipe.vae
    lat = latents.to(vae.dtype)
    mean, std = getattr(vae.config, "latents_mean", None), getattr(vae.config, "latents_std", None)
    if mean is not None and std is not None:
        mean = torch.tensor(mean).view(1, -1, 1, 1).to(lat)
        std = torch.tensor(std).view(1, -1, 1, 1).to(lat)
        lat = lat * std / vae.config.scaling_factor + mean
    else:
        lat = lat / vae.config.scaling_factor
    image = vae.decode(lat, return_dict=False)[0]
    return pipe.image_processor.postprocess(image, output_type=output_type)[0]


# ---------------------------------------------------------------------------------------------- entry point
def excite(pipe, prompt: str, tokens, *, hrv=None, seed: int = 0, num_inference_steps: int = 50,
           guidance_scale: float = 7.5, resolution: int | None = None, layers: str | None = None,
           max_iter_to_alter: int = 25, thresholds: Mapping[int, float] | None = None,
           scale_factor: float = 20.0, scale_range: tuple[float, float] = (1.0, 0.5),
           max_refinement_steps: int = 20, smooth: bool = True, sigma: float = 0.5, kernel_size: int = 3,
           normalize_eot: bool = False, optimize: bool = True, height: int | None = None,
           width: int | None = None, negative_prompt: str | None = None, output_type: str = "pil",
           latents: torch.Tensor | None = None, trace: list | None = None):
    """Attend-and-Excite generation → PIL image; with ``hrv`` it is A&E-HRV.

    ``tokens``: subject words with their concepts (``{"cat": "Animals", "dog": "Animals"}``; the
    concepts are only needed with ``hrv``). ``resolution``/``layers``: see :func:`select_layers`.
    ``normalize_eot``: softmax only over the prompt's words (default: every token after the start
    token, as the reference). ``optimize=False`` gives the plain pipeline result for the same seed.
    ``trace``: a list that receives one dict per loss evaluation
    (``step``, ``phase`` = check / refine / refined / update, ``iteration``, ``loss``, ``maxima``).
    """
    from .families import family_of

    family = family_of(pipe)
    family.require("Attend-and-Excite")
    thresholds = DEFAULT_THRESHOLDS if thresholds is None else {int(k): float(v) for k, v in thresholds.items()}
    layout = family.text_layout(pipe)
    tokenizer = layout.tokenizer
    subjects, tm = resolve_subjects(tokenizer, prompt, tokens, hrv, token_map=layout.token_map(prompt))
    heads = HeadIndex.from_model(pipe)
    denoiser = family.denoiser(pipe)
    height, width = family.generation_size(pipe, height, width)
    latent_hw = family.latent_size(pipe, height, width)
    chosen, map_size = select_layers(heads, latent_hw, resolution, layers, hrv is not None)
    weights, groups = head_weights(subjects, heads, hrv)
    positions = [s.position for s in subjects]
    first = 1 if tm.bos_id is not None and tm.ids and tm.ids[0] == tm.bos_id else 0
    if normalize_eot and not hasattr(tm, "tokenizer"):
        raise ValueError("normalize_eot needs the tokens of one tokenizer, but this model joins CLIP and T5 tokens; "
                         "leave normalize_eot off")
    last = tm.length - 1 if normalize_eot else (tm.length if tm.masked_padding else None)

    device = denoiser.device
    cfg = family.uses_cfg(guidance_scale)
    generator = torch.Generator(device="cpu").manual_seed(int(seed))
    recorder = TokenMaps(chosen, weights.to(device), map_size, latent_hw)
    scheduler = pipe.scheduler

    def log(step, phase, iteration, loss, maxima):
        if trace is not None:
            trace.append({"step": step, "phase": phase, "iteration": iteration, "loss": float(loss.detach()),
                          "maxima": maxima.detach().tolist()})

    conditioning = {"pixart": _PixArtConditioning, "sd3": _SD3Conditioning,
                    "flux": _FluxConditioning}.get(family.name, _Conditioning)
    with Session(pipe, [recorder], cfg=False) as session, torch.no_grad():
        cond = conditioning(pipe, prompt, negative_prompt, cfg, height, width, device, guidance_scale=guidance_scale)
        timesteps, lat, extra = cond.setup(num_inference_steps, device, generator, latents, height, width)
        n = len(timesteps)
        if n > 1:
            scales = [scale_range[0] + (scale_range[1] - scale_range[0]) * i / (n - 1) for i in range(n)]
        else:
            scales = [scale_range[0]]

        def measure(x, t, i):
            session.set_step(i, n, cfg=False)
            recorder.start()
            try:
                cond.conditional(cond.scale(x, t), t)
            finally:
                recorder.recording = False
            return token_maxima(recorder.finish(), positions, groups, last=last, smooth=smooth, sigma=sigma,
                                kernel_size=kernel_size, first=first)

        def descend(x, loss, step_size):
            grad = torch.autograd.grad(loss, [x])[0]
            return x - step_size * grad

        for i, t in enumerate(timesteps):
            wants_check = i in thresholds or i < max_iter_to_alter
            if optimize and wants_check:
                step_size = scale_factor * math.sqrt(scales[i])
                with torch.enable_grad():
                    lat = lat.detach().requires_grad_(True)
                    maxima = measure(lat, t, i)
                    loss = excite_loss(maxima)
                    log(i, "check", 0, loss, maxima)
                    if i in thresholds and loss > 1.0 - thresholds[i]:
                        target = max(0.0, 1.0 - thresholds[i])
                        iteration = 0
                        while loss > target:
                            iteration += 1
                            lat = lat.detach().requires_grad_(True)
                            maxima = measure(lat, t, i)
                            loss = excite_loss(maxima)
                            log(i, "refine", iteration, loss, maxima)
                            if loss != 0:
                                lat = descend(lat, loss, step_size)
                            if iteration >= max_refinement_steps:
                                break
                        lat = lat.detach().requires_grad_(True)
                        maxima = measure(lat, t, i)
                        loss = excite_loss(maxima)
                        log(i, "refined", iteration, loss, maxima)
                    if i < max_iter_to_alter:
                        if loss != 0:
                            lat = descend(lat, loss, step_size)
                        log(i, "update", 0, loss, maxima)
            lat = lat.detach()
            session.set_step(i, n, cfg=cfg)
            noise = cond.guided(cond.scale(lat, t), t, guidance_scale)
            lat = scheduler.step(noise, t, lat, **extra, return_dict=False)[0]
        return cond.decode(lat, output_type)


# ---------------------------------------------------------------------------------------------- benchmark
@dataclass(frozen=True)
class MultiConceptCase:
    """One multi-concept benchmark prompt with its subject tokens (and modifiers, if any)."""

    group: str
    prompt: str
    tokens: tuple[tuple[str, str], ...]
    modifiers: tuple[tuple[str, str], ...] = ()


def load_multi_concept(group: str | None = None, path=None) -> list[MultiConceptCase]:
    """Prompts from ``data/multi_concept.toml`` (or ``path``); ``group`` like ``animal-animal`` picks one group."""
    try:
        import tomllib
    except ModuleNotFoundError:  # pragma: no cover - Python 3.10
        import tomli as tomllib  # type: ignore[no-redef]
    if path is None:
        text = (resources.files("headlens") / "data" / "multi_concept.toml").read_text(encoding="utf-8")
    else:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    data = tomllib.loads(text)
    cases = []
    for name, rows in data.items():
        if not isinstance(rows, list):
            continue
        for r in rows:
            cases.append(MultiConceptCase(name, r["prompt"], tuple(tuple(x) for x in r.get("tokens", [])),
                                          tuple(tuple(x) for x in r.get("modifiers", []))))
    if group is None:
        return cases
    key = group.strip().lower().replace("-", "_")
    chosen = [c for c in cases if c.group.lower() == key]
    if not chosen:
        names = sorted({c.group.replace("_", "-") for c in cases})
        raise ValueError(f"no multi-concept benchmark {group!r} (have: {', '.join(names)})")
    return chosen


__all__ = [
    "DEFAULT_THRESHOLDS", "MultiConceptCase", "Subject", "TokenMaps", "decode", "excite", "excite_loss",
    "gaussian_blur", "gaussian_kernel", "head_weights", "load_multi_concept", "parse_tokens", "resize_maps",
    "resolve_subjects", "select_layers", "token_maxima",
]
