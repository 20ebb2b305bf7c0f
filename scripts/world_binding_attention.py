"""Which object loses its colour in two-object images, and where do its pixels look for one?

For the 200 two-object prompts of `scripts/world_quality.py` ('a c1 s1 [pos] and a c2 s2 [pos]'), each object read
apart: is it drawn (colour + shape), and when its shape is drawn, in whose colour? Then the cross-attention of the
pixels of each drawn shape (its mask in the final image, pooled to each layer's resolution): the share of the
conditional attention, averaged over heads, layers of one resolution and the noisiest DDIM steps, that lands on its
own colour word, the other object's colour word, its own and the other shape word, and the end + padding tokens —
for shapes drawn in their own colour beside shapes drawn in another. Writes the `world-binding-attention` block of
docs/world.md.

    python scripts/world_binding_attention.py [--model world|FOLDER] [--doc docs/world.md]   # about 3 min, one thread
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import defaultdict

import numpy as np
import torch
import torch.nn.functional as F

from headlens import world
from headlens.world.probe import ColumnProbe, install
from headlens.world.quality import Prompt, load_measured, two_prompts
from headlens.world.report import fmt_ci, write_section

STEPS, GUIDANCE, EARLY = 25, 5.0, 10  # DDIM steps, guidance, the first EARLY steps are "the noisiest"
SHARES = ("own colour word", "other colour word", "own shape word", "other shape word", "end + padding")


def token_positions(tok, prompt: Prompt) -> dict[str, int]:
    """Positions of the colour and shape words of objects 1 and 2, and of the end token."""
    ids = tok(prompt.text, padding="max_length", max_length=tok.model_max_length)["input_ids"]
    words = [w.replace("</w>", "") for w in tok.convert_ids_to_tokens(ids)]
    a, b = prompt.scene.objects
    cut = words.index("and")
    return {"c1": words.index(a.color), "s1": words.index(a.shape), "c2": cut + words[cut:].index(b.color),
            "s2": cut + words[cut:].index(b.shape), "end": words.index("<|endoftext|>")}


def object_reads(scorer: world.Scorer, prompt: Prompt, image: np.ndarray) -> list[tuple[int, np.ndarray, str]]:
    """Each asked object whose shape is drawn: (1 or 2, the pixel mask, its colour: 'own', 'other' or 'else'); of
    two drawn blobs of one asked shape the one in the best colour (own, then the other object's) counts."""
    a, b = prompt.scene.objects
    blobs = scorer.read_blobs(image)
    out = []
    for k, me, you in ((1, a, b), (2, b, a)):
        found = [(0 if got["Color"] == me.color else 1 if got["Color"] == you.color else 2, blob.mask)
                 for blob, got in blobs if got["Shape"] == me.shape]
        if found:
            rank, mask = min(found, key=lambda f: f[0])
            out.append((k, mask, ("own", "other", "else")[rank]))
    return out


def shares(amap: torch.Tensor, mask: np.ndarray, pos: dict[str, int], k: int) -> dict[str, float]:
    """Attention shares of one object's pixels: amap (HW, K) rows summing to 1, mask (32, 32) bool."""
    r = int(amap.shape[0] ** 0.5)
    w = F.adaptive_avg_pool2d(torch.tensor(mask, dtype=torch.float32)[None, None], r).flatten()
    tok = (amap * (w / w.sum())[:, None]).sum(0) / amap.sum(1).mean()
    me, you = (1, 2) if k == 1 else (2, 1)
    return {"own colour word": tok[pos[f"c{me}"]].item(), "other colour word": tok[pos[f"c{you}"]].item(),
            "own shape word": tok[pos[f"s{me}"]].item(), "other shape word": tok[pos[f"s{you}"]].item(),
            "end + padding": tok[pos["end"]:].sum().item()}


def main() -> None:
    """Generate, read back, print and write the two tables."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="world", help="world, world-joint or a pipeline folder")
    ap.add_argument("--n", type=int, default=200, help="prompts (the first n of two_prompts(200))")
    ap.add_argument("--doc", default="docs/world.md")
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    if a.n < 1:
        sys.exit(f"error: --n {a.n} must be at least 1")
    torch.set_num_threads(a.threads)
    t0 = time.time()
    pipe = load_measured(a.model)
    probe = ColumnProbe(map_steps=EARLY)  # plain attention; records the maps of the noisiest steps
    install(pipe.unet, probe)
    res_of = {}
    scorer = world.Scorer()
    prompts = two_prompts(200)[:a.n]
    drawn: dict[int, dict[str, list[bool]]] = {k: defaultdict(list) for k in (1, 2)}
    att: dict[tuple[int, bool], dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for i in range(0, len(prompts), 50):
        part = prompts[i:i + 50]
        probe.reset_maps()
        gens = [torch.Generator().manual_seed(p.seed) for p in part]
        out = pipe([p.text for p in part], num_inference_steps=STEPS, guidance_scale=GUIDANCE, generator=gens,
                   output_type="np").images
        for j, (p, img) in enumerate(zip(part, (out * 255).round().astype(np.uint8))):
            reads = {k: (mask, kind) for k, mask, kind in object_reads(scorer, p, img)}
            for k in (1, 2):
                kind = reads[k][1] if k in reads else None
                drawn[k]["drawn (colour + shape)"].append(kind == "own")
                drawn[k]["shape drawn"].append(kind is not None)
                drawn[k]["shape drawn, other object's colour"].append(kind == "other")
                drawn[k]["shape drawn, a colour not asked"].append(kind == "else")
            pos = token_positions(pipe.tokenizer, p)
            for k, (mask, kind) in reads.items():
                per_res: dict[int, list[dict[str, float]]] = defaultdict(list)
                for name, s in probe.maps.items():
                    res_of[name] = int(s.shape[1] ** 0.5)
                    per_res[res_of[name]].append(shares(s[j], mask, pos, k))
                for r, rows in per_res.items():
                    for key in SHARES:
                        att[(r, kind == "own")][key].append(float(np.mean([row[key] for row in rows])))
    lines = [f"`scripts/world_binding_attention.py`, model `{a.model}`: the {len(prompts)} two-object prompts of "
             f"`two_prompts(200)`, one seed each, DDIM {STEPS} steps, guidance {GUIDANCE:g}, read object by object by "
             "`headlens.world.Scorer`; 95 % bootstrap intervals.", "",
             "| object | " + " | ".join(drawn[1]) + " |", "|---|" + "---|" * len(drawn[1])]
    for k in (1, 2):
        lines.append(f"| {'first' if k == 1 else 'second'} named | " + " | ".join(fmt_ci(v) for v in drawn[k].values()) + " |")
    lines += ["", f"Cross-attention of each drawn asked shape's pixels, DDIM steps 1-{EARLY} (the noisiest), mean over "
              "heads and over the layers of a resolution; share of the conditional attention on each token (the mean "
              "over objects; 24 tokens, so 1/24 = 4.2 % is uniform):", "",
              "| resolution | the shape's colour | objects | " + " | ".join(SHARES) + " |",
              "|---|---|---|" + "---|" * len(SHARES)]
    for r in sorted({r for r, _ in att}, reverse=True):
        for own in (True, False):
            d = att.get((r, own))
            if d:
                lines.append(f"| {r}² | {'its own' if own else 'another'} | {len(d[SHARES[0]])} | "
                             + " | ".join(f"{100 * np.mean(d[key]):.1f} %" for key in SHARES) + " |")
    lines += ["", f"_{time.time() - t0:.0f} s on CPU, {a.threads} thread(s)._"]
    md = "\n".join(lines)
    print(md)
    write_section(a.doc, "world-binding-attention", md)


if __name__ == "__main__":
    main()
