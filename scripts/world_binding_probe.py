"""Does the frozen world CLIP carry colour-shape binding? Two checks on held-out two-object captions.

1. Pooled (EOS) embeddings: does an image match its caption better than the colour-swapped caption
   ('a red circle and a blue square' vs 'a blue circle and a red square')?
2. Per-token states (what the UNet's cross-attention reads): linear probes from the text tower's hidden
   state at each shape token to its own colour and to the other object's colour.

    python scripts/world_binding_probe.py        # about 1 minute on one CPU thread
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch
from transformers import CLIPTokenizer

from headlens import world
from headlens.world.clip_train import embed
from headlens.world.quality import PLAIN_COLORS, Prompt, two_prompts
from headlens.world.render import render_array
from headlens.world.vocab import scene_caption


def swapped(p: Prompt) -> str:
    """The caption with the two objects' colours exchanged."""
    a, b = p.scene.objects
    objects = [replace(a, color=b.color), replace(b, color=a.color)]
    return scene_caption(replace(p.scene, objects=objects))


def probe(x: torch.Tensor, y: torch.Tensor, n_train: int) -> float:
    """Held-out accuracy of a multinomial logistic regression (L-BFGS, small L2) on standardised features."""
    return probe_hits(x, y, n_train).float().mean().item()


def probe_hits(x: torch.Tensor, y: torch.Tensor, n_train: int) -> torch.Tensor:
    """Held-out hits (bool per row after n_train) of the probe above, fit on the first n_train rows."""
    mu, sd = x[:n_train].mean(0), x[:n_train].std(0) + 1e-6
    x = (x - mu) / sd
    lin = torch.nn.Linear(x.shape[1], int(y.max()) + 1)
    opt = torch.optim.LBFGS(lin.parameters(), max_iter=300)

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(lin(x[:n_train]), y[:n_train]) + 1e-3 * lin.weight.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        return lin(x[n_train:]).argmax(-1) == y[n_train:]


def probe_each(x1: torch.Tensor, x2: torch.Tensor, y1: torch.Tensor, y2: torch.Tensor,
               n_train: int) -> tuple[float, float]:
    """One probe fit on the first n_train rows of both sets together; held-out accuracy on each set apart."""
    n = len(x1)
    x = torch.cat([x1[:n_train], x2[:n_train], x1[n_train:], x2[n_train:]])
    y = torch.cat([y1[:n_train], y2[:n_train], y1[n_train:], y2[n_train:]])
    hit = probe_hits(x, y, 2 * n_train)
    return hit[: n - n_train].float().mean().item(), hit[n - n_train:].float().mean().item()


def main() -> None:
    """Print both checks as Markdown."""
    torch.set_num_threads(1)
    torch.manual_seed(0)
    clip = world.load_clip()
    tok = CLIPTokenizer.from_pretrained(str(world.clip_path()))
    n_train = 1000
    prompts = two_prompts(1500, seed=9)  # other prompts than the quality script's (seed 1); fresh render seeds
    with torch.no_grad():
        first = prompts[:400]
        imgs = np.stack([render_array(p.text, 7_000 + i)[0] for i, p in enumerate(first)]).transpose(0, 3, 1, 2).copy()
        t_right, v = embed(clip, tok, [p.text for p in first], imgs)
        t_swap, _ = embed(clip, tok, [swapped(p) for p in first], imgs)
    pooled = ((v * t_right).sum(-1) > (v * t_swap).sum(-1)).float().mean().item()
    colour = {c: i for i, c in enumerate(PLAIN_COLORS)}
    states: dict[int, list] = {1: [], 2: []}
    own: dict[int, list] = {1: [], 2: []}
    other: dict[int, list] = {1: [], 2: []}
    with torch.no_grad():
        for p in prompts:
            a, b = p.scene.objects
            ids = tok(p.text, return_tensors="pt")
            h = clip.text_model(**ids).last_hidden_state[0]
            words = [w.replace("</w>", "") for w in tok.convert_ids_to_tokens(ids["input_ids"][0])]
            for k, o, q in ((1, a, b), (2, b, a)):
                states[k].append(h[words.index(o.shape)])
                own[k].append(colour[o.color])
                other[k].append(colour[q.color])
    print(f"{len(prompts)} captions 'a c1 s1 and a c2 s2' (two_prompts(1500, seed=9)), the shipped world CLIP; "
          f"probes fit on {n_train} captions and tested on the other {len(prompts) - n_train} "
          f"({len(colour)} colours, chance {100 / len(colour):.1f} %).\n")
    print(f"- Pooled embeddings: an image matches its own caption better than the colour-swapped one in "
          f"{100 * pooled:.1f} % of {len(first)} pairs (chance 50 %).")
    for k in (1, 2):
        x = torch.stack(states[k])
        print(f"- Hidden state at the shape token of object {k}: a linear probe reads its own colour "
              f"{100 * probe(x, torch.tensor(own[k]), n_train):.1f} % and the other object's colour "
              f"{100 * probe(x, torch.tensor(other[k]), n_train):.1f} %.")
    # one read for both tokens, as one value projection of a cross-attention head would be
    both = probe_each(torch.stack(states[1]), torch.stack(states[2]), torch.tensor(own[1]), torch.tensor(own[2]),
                      n_train)
    print(f"- One linear probe fit on both shape tokens at once reads each one's own colour: object 1 "
          f"{100 * both[0]:.1f} %, object 2 {100 * both[1]:.1f} %.")


if __name__ == "__main__":
    main()
