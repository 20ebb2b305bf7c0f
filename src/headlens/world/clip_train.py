"""Pre-train the world CLIP contrastively on (render, caption) pairs, before and apart from the denoiser.

python -m headlens.world.clip_train --out runs/world/clip --steps 3000 --minutes 25

The text tower is then frozen and shipped as the default pipeline's text encoder (SD's regime: a text
encoder pre-trained apart and never updated by the denoiser's loss). Retrieval accuracy on held-out pairs
is written to clip_info.json and docs/world.md.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from transformers import CLIPModel, CLIPTokenizer

from .model import make_clip
from .tokenizer import build_tokenizer, check_tokenizer
from .train import Log, lr_at, make_dataset, to_float

HELD_OUT_SEED = 777  # render/caption seed of the held-out pairs (training uses --seed)


def clip_loss(clip: CLIPModel, ids: torch.Tensor, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric InfoNCE of a batch of matching pairs; returns (loss, logits text x image)."""
    out = clip(input_ids=ids, pixel_values=pixels, return_loss=False)
    logits = out.logits_per_text
    # captions that are the same string (short captions repeat in a batch) are positives of each other
    same = (ids[:, None, :] == ids[None, :, :]).all(-1).float()
    target = same / same.sum(1, keepdim=True)
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target)) / 2, logits


@torch.no_grad()
def embed(clip: CLIPModel, tok: CLIPTokenizer, captions: list[str], images: np.ndarray,
          bs: int = 500) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised text and image embeddings."""
    t, v = [], []
    for i in range(0, len(captions), bs):
        ids = tok(captions[i:i + bs], padding="max_length", max_length=tok.model_max_length, truncation=True,
                  return_tensors="pt")["input_ids"]
        t.append(F.normalize(_features(clip.get_text_features(input_ids=ids)), dim=-1))
        v.append(F.normalize(_features(clip.get_image_features(pixel_values=to_float(images[i:i + bs]))), dim=-1))
    return torch.cat(t), torch.cat(v)


def _features(x):
    """transformers 5 returns a model output from get_*_features in some versions; take the tensor."""
    return x if isinstance(x, torch.Tensor) else x.pooler_output


@torch.no_grad()
def retrieval(clip: CLIPModel, tok: CLIPTokenizer, captions: list[str], images: np.ndarray,
              group: int = 100) -> dict[str, float]:
    """Top-1 caption->image and image->caption accuracy within groups of `group` held-out pairs.

    A retrieval counts as right when the retrieved item's caption is the same string as the query's
    (identical captions are indistinguishable by construction)."""
    clip.eval()
    t2i, i2t, n = 0, 0, 0
    for g in range(0, len(captions) - group + 1, group):
        caps = captions[g:g + group]
        te, ie = embed(clip, tok, caps, images[g:g + group])
        sim = te @ ie.t()
        same = torch.tensor([[a == b for b in caps] for a in caps])
        t2i += int(same[torch.arange(group), sim.argmax(1)].sum())
        i2t += int(same[sim.argmax(0), torch.arange(group)].sum())
        n += group
    if n == 0:
        return {"caption_to_image_top1": None, "image_to_caption_top1": None, "n": 0, "group": group,
                "chance": 1.0 / group}
    return {"caption_to_image_top1": t2i / n, "image_to_caption_top1": i2t / n, "n": n, "group": group,
            "chance": 1.0 / group}


@torch.no_grad()
def attribute_accuracy(clip: CLIPModel, tok: CLIPTokenizer, n: int = 300, seed: int = HELD_OUT_SEED) -> dict:
    """Zero-shot reading of each attribute: for a render of a full single-object caption, is the caption with
    the right value the most similar among the captions that differ from it in that attribute alone?"""
    from .render import render_array
    from .vocab import BACKGROUNDS, COLORS, PATTERNS, POSITIONS, SHAPES, SIZES, ObjectSpec, SceneSpec, scene_caption

    values = {"size": SIZES, "color": list(COLORS), "pattern": PATTERNS,
              "shape": [s for s in SHAPES if s != "orange"], "position": POSITIONS, "background": list(BACKGROUNDS)}
    rng = np.random.default_rng(seed)
    hits: dict[str, list[bool]] = {k: [] for k in values}
    clip.eval()
    for i in range(n):
        pick = {k: v[int(rng.integers(len(v)))] for k, v in values.items()}

        def caption(d: dict) -> str:
            o = ObjectSpec(shape=d["shape"], color=d["color"], size=d["size"], position=d["position"],
                           pattern=d["pattern"])
            return scene_caption(SceneSpec(objects=[o], background=d["background"]))

        img = render_array(caption(pick), seed * 1000 + i)[0].transpose(2, 0, 1)[None].copy()
        iemb = F.normalize(_features(clip.get_image_features(pixel_values=to_float(img))), dim=-1)
        for k, vals in values.items():
            caps = [caption({**pick, k: v}) for v in vals]
            ids = tok(caps, padding="max_length", max_length=tok.model_max_length, truncation=True,
                      return_tensors="pt")["input_ids"]
            temb = F.normalize(_features(clip.get_text_features(input_ids=ids)), dim=-1)
            hits[k].append(vals[int((temb @ iemb[0]).argmax())] == pick[k])
    return {k: {"accuracy": float(np.mean(v)), "chance": 1.0 / len(values[k]), "n": len(v)} for k, v in hits.items()}


def save_clip(clip: CLIPModel, tok: CLIPTokenizer, folder: Path) -> None:
    """Save the CLIPModel (safetensors) with its tokenizer beside it."""
    folder.mkdir(parents=True, exist_ok=True)
    clip.save_pretrained(str(folder), safe_serialization=True)
    tok.save_pretrained(str(folder))


def main(argv: list[str] | None = None) -> Path:
    """Train, evaluate retrieval on held-out pairs, save; returns the CLIP folder."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--n-images", type=int, default=60_000)
    ap.add_argument("--n-held-out", type=int, default=2_000)
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--minutes", type=float, default=30.0, help="wall-clock budget (cosine follows time too)")
    ap.add_argument("--no-time-schedule", action="store_true", help="schedule by steps only (exact repeats)")
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args(argv)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    log = Log(out / "train.log")
    log(f"args {vars(a)}")
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    gen = torch.Generator().manual_seed(a.seed)
    t_start = time.time()

    tok = build_tokenizer(out / "tokenizer_build")
    check_tokenizer(tok)
    captions, images = make_dataset(a.n_images, a.seed)
    held_caps, held_imgs = make_dataset(a.n_held_out, HELD_OUT_SEED)
    log(f"rendered {len(images)} training and {len(held_imgs)} held-out pairs")
    ids = tok(captions, padding="max_length", max_length=tok.model_max_length, truncation=True,
              return_tensors="pt")["input_ids"]
    clip = make_clip(tok)
    log(f"clip: {sum(p.numel() for p in clip.parameters()) / 1e6:.2f} M parameters")
    opt = torch.optim.AdamW(clip.parameters(), lr=a.lr, weight_decay=0.1)
    budget = a.minutes * 60 - 120
    t_train = time.time()
    losses: list[float] = []
    step = 0
    while step < a.steps:
        t_frac = 0.0 if a.no_time_schedule else (time.time() - t_train) / budget
        if t_frac >= 1.0:
            log(f"time budget reached at step {step}/{a.steps}")
            break
        for g in opt.param_groups:
            g["lr"] = lr_at(step, a.steps, a.lr, 200, max(step / a.steps, t_frac))
        clip.train()
        idx = torch.randint(0, len(images), (a.batch,), generator=gen)
        cap_ids = ids[idx]
        loss, _ = clip_loss(clip, cap_ids, to_float(images[idx.numpy()]))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(clip.parameters(), 1.0)
        opt.step()
        with torch.no_grad():
            clip.logit_scale.clamp_(0, 4.6052)  # at most 100, as CLIP
        losses.append(loss.item())
        step += 1
        if step % 100 == 0:
            log(f"clip step {step}/{a.steps} loss {np.mean(losses[-100:]):.4f} "
                f"scale {clip.logit_scale.exp().item():.1f} lr {opt.param_groups[0]['lr']:.2e}")
        if step % 1000 == 0:
            log(f"held-out retrieval at step {step}: {retrieval(clip, tok, held_caps, held_imgs)}")
    clip.eval()
    ret = retrieval(clip, tok, held_caps, held_imgs)
    train_ret = retrieval(clip, tok, captions[:a.n_held_out], images[:a.n_held_out])
    attrs = attribute_accuracy(clip, tok, n=min(300, a.n_held_out))
    log(f"zero-shot attribute reading on held-out renders: {attrs}")
    save_clip(clip, tok, out / "clip")
    info = {"args": vars(a), "steps_done": step, "minutes": (time.time() - t_start) / 60,
            "final_loss": float(np.mean(losses[-100:])) if losses else None,
            "held_out_retrieval": ret, "train_retrieval": train_ret, "held_out_seed": HELD_OUT_SEED,
            "attribute_accuracy": attrs}
    (out / "clip_info.json").write_text(json.dumps(info, indent=1))
    log(f"done {info}")
    return out / "clip"


if __name__ == "__main__":
    main()
