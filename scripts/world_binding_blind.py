"""Does the second object lose its colour because its words see the first object's through CLIP's causal mask?

In 'a red circle and a blue square' the frozen text tower's states at 'a blue square' have attended to 'a red
circle' (causal attention), so they carry both colours (`scripts/world_binding_probe.py`), while the first object's
states see only themselves. Here the same 200 two-object prompts are drawn twice with the same seeds: with the text
states as trained, and with the second object's word states computed blind to the first object's words and to 'and'
(which has seen them): an extra attention mask inside the text tower, so those states are what the tower gives the
second object's phrase after the start token alone; the start token, the first object, 'and', the end and padding
tokens as usual. If the leak
through the causal mask made the second object wear the first object's colour, the blind states should draw the
second object right more often. Writes the `world-binding-blind` block of docs/world.md.

    python scripts/world_binding_blind.py [--model world|FOLDER] [--doc docs/world.md]   # about 5 min, one thread
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import torch

from headlens import world
from headlens.world.quality import Prompt, generate, load_measured, two_metrics, two_prompts
from headlens.world.report import fmt_ci, write_section


def blind_mask(texts: list[str], length: int, blind: bool = True) -> torch.Tensor:
    """(N, 1, L, L) additive attention mask: causal, and (``blind``) for two-object captions the second object's
    word tokens kept from the first object's and from 'and' (word i of a caption is token i + 1; the objects split
    at 'and')."""
    allowed = torch.tril(torch.ones(length, length, dtype=torch.bool)).repeat(len(texts), 1, 1)
    for b, words in enumerate(t.split() for t in texts):
        if blind and "and" in words:
            k = words.index("and")
            allowed[b, k + 2:len(words) + 1, 1:k + 2] = False
    return torch.zeros(len(texts), 1, length, length).masked_fill(~allowed[:, None], float("-inf"))


@torch.no_grad()
def encode(text_encoder, tokenizer, texts: list[str], blind: bool) -> torch.Tensor:
    """The text tower's last states (what the UNet reads), with the causal mask as trained or `blind_mask`."""
    ids = tokenizer(texts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                    return_tensors="pt").input_ids
    tower = getattr(text_encoder, "text_model", text_encoder)
    h = tower.encoder(inputs_embeds=tower.embeddings(input_ids=ids), attention_mask=blind_mask(texts, ids.shape[1], blind),
                      is_causal=False).last_hidden_state
    return tower.final_layer_norm(h)


def text_states(pipe, blind: bool):
    """For `quality.generate`: texts -> (their states, the empty prompt's), as trained or blind."""
    def states(texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        return (encode(pipe.text_encoder, pipe.tokenizer, texts, blind),
                encode(pipe.text_encoder, pipe.tokenizer, [""] * len(texts), False))
    return states


def object_hits(scorer: world.Scorer, prompts: list[Prompt], images: list[np.ndarray]) -> dict[str, list[bool]]:
    """Per prompt: the first-named and the second-named object drawn right (its colour and shape on one blob)."""
    out: dict[str, list[bool]] = {"first named drawn right": [], "second named drawn right": []}
    for p, img in zip(prompts, images):
        found = {(o["Color"], o["Shape"]) for o in scorer.score_objects(img)}
        for key, obj in zip(out, p.scene.objects):
            out[key].append((obj.color, obj.shape) in found)
    return out


def main() -> None:
    """Draw both ways, read back, print and write the table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="world", help="world or a pipeline folder with a frozen world CLIP")
    ap.add_argument("--doc", default="docs/world.md")
    a = ap.parse_args()
    torch.set_num_threads(1)
    t0 = time.time()
    pipe = load_measured(a.model)
    scorer, prompts = world.Scorer(), two_prompts(200)
    cols = ("an object missing (colour+shape)", "first named drawn right", "second named drawn right",
            "both colours present", "both shapes present")
    rows = ["| second object's text states | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
    for blind in (False, True):
        images = generate(pipe, prompts, 25, 5.0, text_states=text_states(pipe, blind))
        m = {**two_metrics(scorer, prompts, images), **object_hits(scorer, prompts, images)}
        name = "blind to the first object" if blind else "as trained (causal)"
        rows.append(f"| {name} | " + " | ".join(fmt_ci(m[c]) for c in cols) + " |")
        print(rows[-1], file=sys.stderr, flush=True)
    md = "\n".join([f"`scripts/world_binding_blind.py`, model `{a.model}`: the 200 two-object prompts of "
                    "`two_prompts(200)`, the same seed per prompt both ways, DDIM 25 steps, guidance 5, read by "
                    "`headlens.world.Scorer`; 95 % bootstrap intervals.", "", *rows, "",
                    f"_{time.time() - t0:.0f} s on CPU, 1 thread._"])
    print(md)
    write_section(a.doc, "world-binding-blind", md)


if __name__ == "__main__":
    main()
