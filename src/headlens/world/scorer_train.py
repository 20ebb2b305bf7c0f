"""Train and evaluate the world scorer's crop classifier on renders and VAE reconstructions."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .render import ANCHORS, render_array
from .scorer import HEADS, CropNet, Scorer, background, blobs, crop
from .vocab import sample_caption


def render_set(n: int, seed: int) -> tuple[np.ndarray, list[dict]]:
    """n renders (uint8 NxHxWx3) of sampled captions and their attributes."""
    rng = np.random.default_rng(seed)
    arrs, attrs = [], []
    for i in range(n):
        a, at = render_array(sample_caption(rng), seed * 1_000_003 + i)
        arrs.append(a)
        attrs.append(at)
    return np.stack(arrs), attrs


@torch.no_grad()
def reconstruct(vae, arrs: np.ndarray, noise: float = 0.0, seed: int = 0, bs: int = 500) -> np.ndarray:
    """Encode/decode through the VAE (optionally with latent noise); uint8 out."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for i in range(0, len(arrs), bs):
        x = torch.from_numpy(arrs[i:i + bs]).permute(0, 3, 1, 2).float() / 127.5 - 1
        z = vae.encode(x).latent_dist.mode()
        if noise:
            z = z + noise * z.std() * torch.randn(z.shape, generator=gen)
        y = vae.decode(z).sample.clamp(-1, 1)
        out.append(((y + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy())
    return np.concatenate(out)


def match(found: list, objects: list[dict]) -> list[tuple[int, int]] | None:
    """Pair blobs with ground-truth objects by nearest anchor; None if counts differ."""
    if len(found) != len(objects):
        return None
    pairs = []
    for j, o in enumerate(objects):
        ax, ay = ANCHORS[o["Position"]]
        i = min(range(len(found)), key=lambda k: (found[k].cx - ax) ** 2 + (found[k].cy - ay) ** 2)
        pairs.append((i, j))
    return pairs if len({i for i, _ in pairs}) == len(pairs) else None


def make_crops(arrs: np.ndarray, attrs: list[dict]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Network inputs and labels for every object found in the images."""
    xs, ys = [], {k: [] for k in HEADS}
    for arr, at in zip(arrs.astype(np.float32), attrs):
        _, bg = background(arr)
        found = blobs(arr, bg)
        pairs = match(found, at["objects"])
        if pairs is None:
            continue
        for i, j in pairs:
            xs.append(crop(arr, found[i], bg))
            for k in HEADS:
                ys[k].append(HEADS[k].index(at["objects"][j][k]))
    return np.stack(xs), {k: np.array(v) for k, v in ys.items()}


def train_net(x: np.ndarray, y: dict[str, np.ndarray], epochs: int = 8, seed: int = 0, log=print) -> CropNet:
    """Fit the crop classifier with pixel-noise augmentation."""
    torch.manual_seed(seed)
    net = CropNet()
    xt = torch.from_numpy(x).float()
    yt = {k: torch.from_numpy(v).long() for k, v in y.items()}
    opt = torch.optim.AdamW(net.parameters(), lr=2e-3, weight_decay=1e-4)
    steps = epochs * (len(xt) // 256)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=steps)
    gen = torch.Generator().manual_seed(seed)
    for step in range(steps):
        idx = torch.randint(0, len(xt), (256,), generator=gen)
        xb = xt[idx].clone()
        xb[:, :3] += 0.06 * torch.rand(256, 1, 1, 1, generator=gen) * torch.randn(xb[:, :3].shape, generator=gen)
        logits = net(xb)
        loss = sum(F.cross_entropy(logits[k], yt[k][idx]) for k in HEADS)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if step % 200 == 0:
            log(f"scorer step {step}/{steps} loss {loss.item():.4f}")
    return net.eval()


def accuracy(scorer: Scorer, arrs: np.ndarray, attrs: list[dict]) -> dict[str, float]:
    """Per-concept accuracy of the scorer (objects matched by position), plus object count."""
    hits = {k: [] for k in ("Background", "Color", "Shape", "Size", "Position", "Pattern", "Count")}
    for arr, at in zip(arrs, attrs):
        objs = scorer.score_objects(arr)
        hits["Background"].append(scorer.score(arr)["Background"] == at["Background"])
        hits["Count"].append(len(objs) == len(at["objects"]))
        n = len(at["objects"])
        for o in at["objects"]:
            want = o["Position"]
            cand = [p for p in objs if p["Position"] == want]
            for k in ("Color", "Shape", "Size", "Pattern"):
                hits[k].append(bool(cand) and cand[0][k] == o[k])
            hits["Position"].append(bool(cand) and n == len(objs))
    return {k: float(np.mean(v)) for k, v in hits.items()}





def main(argv: list[str] | None = None) -> None:
    """CLI: train the crop classifier (renders + VAE reconstructions) and save safetensors."""
    import argparse
    from pathlib import Path

    from diffusers import AutoencoderKL
    from safetensors.torch import save_file

    from .scorer import scorer_path

    ap = argparse.ArgumentParser(description="train the world scorer")
    ap.add_argument("--vae", help="folder of a trained AutoencoderKL (e.g. <pipeline>/vae); none: renders only")
    ap.add_argument("--out", default=str(scorer_path()))
    ap.add_argument("--n", type=int, default=15_000)
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    arrs, attrs = render_set(a.n, a.seed)
    sets = [(arrs, attrs)]
    if a.vae:
        vae = AutoencoderKL.from_pretrained(a.vae).eval()
        sets.append((reconstruct(vae, arrs), attrs))
        k = a.n // 2
        sets.append((reconstruct(vae, arrs[:k], noise=0.3, seed=a.seed), attrs[:k]))
    parts = [make_crops(x, at) for x, at in sets]
    x = np.concatenate([p[0] for p in parts])
    y = {k: np.concatenate([p[1][k] for p in parts]) for k in HEADS}
    print(f"{len(x)} crops")
    net = train_net(x, y, epochs=a.epochs, seed=a.seed)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, a.out)
    print(f"saved {a.out}")


if __name__ == "__main__":
    main()
