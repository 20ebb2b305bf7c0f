"""Prompt sets and measurements of the world model's prompt adherence (used by scripts/world_quality.py)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .probe import ColumnProbe, install
from .scorer import Scorer
from .vocab import (
    BACKGROUNDS,
    COLORS,
    FRUIT,
    PATTERNS,
    POSITIONS,
    SHAPES,
    SIZES,
    ObjectSpec,
    SceneSpec,
    scene_caption,
)

GEOMETRIC = [s for s in SHAPES if s != FRUIT]
PLAIN_COLORS = [c for c in COLORS if c != "orange"]
TOKEN_CLASSES = ["start", "words", "end", "pad"]


@dataclass
class Prompt:
    """A prompt, its seed and what it asks for (object specs as said)."""

    text: str
    seed: int
    scene: SceneSpec


def single_prompts(n: int, seed: int = 0) -> list[Prompt]:
    """Single-object prompts: colour (not the polysemous one) and geometric shape always, the rest half the time."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        o = ObjectSpec(shape=GEOMETRIC[rng.integers(len(GEOMETRIC))], color=PLAIN_COLORS[rng.integers(len(PLAIN_COLORS))])
        if rng.random() < 0.5:
            o.size = SIZES[rng.integers(2)]
        if rng.random() < 0.5:
            o.position = POSITIONS[rng.integers(len(POSITIONS))]
        if rng.random() < 0.5:
            o.pattern = PATTERNS[rng.integers(len(PATTERNS))]
        bg = list(BACKGROUNDS)[rng.integers(len(BACKGROUNDS))] if rng.random() < 0.5 else None
        sc = SceneSpec(objects=[o], background=bg)
        out.append(Prompt(scene_caption(sc), 10_000 + i, sc))
    return out


def two_prompts(n: int, seed: int = 1) -> list[Prompt]:
    """Two-object prompts with different colours and shapes; positions said half the time."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        c1, c2 = rng.choice(PLAIN_COLORS, 2, replace=False)
        s1, s2 = rng.choice(GEOMETRIC, 2, replace=False)
        a, b = ObjectSpec(shape=str(s1), color=str(c1)), ObjectSpec(shape=str(s2), color=str(c2))
        if rng.random() < 0.5:
            a.position = ["left", "right", "top", "bottom"][rng.integers(4)]
            b.position = {"left": "right", "right": "left", "top": "bottom", "bottom": "top"}[a.position]
        sc = SceneSpec(objects=[a, b])
        out.append(Prompt(scene_caption(sc), 20_000 + i, sc))
    return out


def poly_prompts(n: int, seed: int = 2) -> list[Prompt]:
    """'an orange {shape}' prompts: the colour sense of the polysemous word."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        sc = SceneSpec(objects=[ObjectSpec(shape=GEOMETRIC[rng.integers(len(GEOMETRIC))], color="orange")])
        out.append(Prompt(scene_caption(sc), 30_000 + i, sc))
    return out


def token_classes(tok, texts: list[str]) -> torch.Tensor:
    """Per prompt and position: 0 start, 1 word, 2 end (first EOS), 3 padding."""
    ids = tok(texts, padding="max_length", max_length=tok.model_max_length, truncation=True)["input_ids"]
    out = torch.full((len(texts), tok.model_max_length), 3, dtype=torch.long)
    for i, row in enumerate(ids):
        n = row.index(tok.eos_token_id)
        out[i, 0], out[i, 1:n], out[i, n] = 0, 1, 2
    return out


def measuring_scheduler(pipe):
    """Give ``pipe`` the scheduler the measuring scripts sample with: DDIM on the pipeline's own betas, no x0
    clipping (latents are not images). Returns the pipeline."""
    from diffusers import DDIMScheduler

    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config, clip_sample=False)
    return pipe


def load_measured(model: str = "world"):
    """``world.load_named(model)`` with the measuring scheduler (``measuring_scheduler``)."""
    from . import load_named

    return measuring_scheduler(load_named(model))


def generate(pipe, prompts: list[Prompt], steps: int = 25, cfg: float = 5.0, batch: int = 50,
             probe: ColumnProbe | None = None, zero: tuple[int, ...] = (),
             text_states=None) -> list[np.ndarray]:
    """uint8 images for prompts (per-prompt seeds); zero: token classes whose columns are set to 0; text_states:
    optional ``texts -> (prompt_embeds, negative_prompt_embeds)`` to sample from other text states than the text
    encoder's own."""
    imgs: list[np.ndarray] = []
    for i in range(0, len(prompts), batch):
        part = prompts[i:i + batch]
        texts = [p.text for p in part]
        if probe is not None:
            cls = token_classes(pipe.tokenizer, texts)
            probe.classes = cls
            f = torch.ones(cls.shape)
            for c in zero:
                f[cls == c] = 0.0
            probe.factors = f if zero else None
        gens = [torch.Generator().manual_seed(p.seed) for p in part]
        text = {"prompt": texts} if text_states is None else dict(
            zip(("prompt_embeds", "negative_prompt_embeds"), text_states(texts)))
        out = pipe(**text, num_inference_steps=steps, guidance_scale=cfg, generator=gens, output_type="np").images
        imgs += list((out * 255).round().astype(np.uint8))
    return imgs


def single_metrics(scorer: Scorer, prompts: list[Prompt], imgs: list[np.ndarray]) -> dict[str, list[bool]]:
    """Per concept: hits on prompts that name it; plus 'all named' and 'object found'."""
    hits: dict[str, list[bool]] = {k: [] for k in ("Color", "Shape", "Size", "Position", "Pattern", "Background",
                                                   "all named", "object found")}
    for p, img in zip(prompts, imgs):
        got = scorer.score(img)
        o = p.scene.objects[0]
        want = {"Color": o.color, "Shape": o.shape, "Size": o.size, "Position": o.position, "Pattern": o.pattern,
                "Background": p.scene.background}
        ok = []
        for k, w in want.items():
            if w is not None:
                hits[k].append(got[k] == w)
                ok.append(got[k] == w)
        hits["all named"].append(all(ok))
        hits["object found"].append(got["Shape"] is not None)
    return hits


def two_metrics(scorer: Scorer, prompts: list[Prompt], imgs: list[np.ndarray]) -> dict[str, list[bool]]:
    """Two-object prompts: object count, per-object presence (colour+shape), which half of the binding is lost
    (both asked colours / both asked shapes seen anywhere), positions when said."""
    hits: dict[str, list[bool]] = {k: [] for k in ("two objects seen", "one object missing (count)",
                                                   "both objects right (colour+shape)",
                                                   "an object missing (colour+shape)", "colours swapped",
                                                   "both colours present", "both shapes present",
                                                   "positions right (when said)")}
    for p, img in zip(prompts, imgs):
        objs = scorer.score_objects(img)
        hits["two objects seen"].append(len(objs) >= 2)
        hits["one object missing (count)"].append(len(objs) < 2)
        found = [(o["Color"], o["Shape"]) for o in objs]
        a, b = p.scene.objects
        present = [(w.color, w.shape) in found for w in (a, b)]
        hits["both objects right (colour+shape)"].append(all(present))
        hits["an object missing (colour+shape)"].append(not all(present))
        hits["colours swapped"].append(len(objs) >= 2 and (a.color, b.shape) in found and (b.color, a.shape) in found)
        hits["both colours present"].append({a.color, b.color} <= {c for c, _ in found})
        hits["both shapes present"].append({a.shape, b.shape} <= {s for _, s in found})
        if a.position is not None:
            pos = {(o["Color"], o["Shape"]): o["Position"] for o in objs}
            hits["positions right (when said)"].append(all(pos.get((w.color, w.shape)) == w.position for w in (a, b)))
    return hits


def attention_mass(probe: ColumnProbe) -> dict[str, list[float]]:
    """Per cross-attention layer: share of the conditional attention on start/words/end/pad."""
    out = {}
    for name, m in probe.mass.items():
        tot = m.sum(0)
        out[name.replace(".processor", "")] = (tot / tot.sum()).tolist()
    return out


__all__ = ["GEOMETRIC", "TOKEN_CLASSES", "Prompt", "attention_mass", "generate", "install", "load_measured",
           "measuring_scheduler", "poly_prompts", "single_metrics", "single_prompts", "two_metrics", "two_prompts"]
