"""Pieces of the slow, by-hand vote computation shared by test_build, test_joint and test_pixart.

Written from the method spec with plain loops (no headlens internals beyond the seed derivation the builder
documents), so the fast builder is checked against them.
"""

import math

import torch

from headlens.capture import derived_seed


def word_draws(seed: int, idx: list[int], evals: int, num_layers: int, num_concepts: int) -> dict:
    """Each image's uniforms [evaluation, layer, concept] for the reference word draw, seeded as the builder does."""
    return {i: torch.rand(evals, num_layers, num_concepts,
                          generator=torch.Generator().manual_seed(derived_seed(seed, i, "words"))) for i in idx}


def chosen_words(variant: str, u, names: list[str], words: dict) -> list[tuple]:
    """[(concept index, word, weight)]: per concept the word floor(u[c]·n) (reference), or every word at 1/n."""
    if variant != "reference":
        return [(c, e, 1.0 / len(words[name])) for c, name in enumerate(names) for e in words[name]]
    chosen = []
    for c, name in enumerate(names):
        k = min(int(math.floor(float(u[c]) * len(words[name]))), len(words[name]) - 1)
        chosen.append((c, words[name][k], 1.0))
    return chosen


def winner(p, owner: list[tuple[int, float]], num_concepts: int) -> int:
    """The concept whose tokens get the most weighted attention p (owner: (concept or -1 for none, weight) per token)."""
    score = [0.0] * num_concepts
    for m, (c, w) in enumerate(owner):
        if c >= 0:
            score[c] += w * float(p[m])
    return max(range(num_concepts), key=lambda c: score[c])
