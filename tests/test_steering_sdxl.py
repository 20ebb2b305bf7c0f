"""Steering on an SDXL-style pipeline (two text encoders, 2048-wide joint embeddings in real models)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from headlens import HRV, HeadIndex
from headlens.attention import Plugin
from headlens.steering import steer
from headlens.testing import tiny_sdxl_pipeline
from headlens.tokens import TokenMap


class NegativeCells(Plugin):
    """Records (cond row, flat head, token) cells with negative probabilities."""

    needs_probs = True

    def __init__(self):
        self.cells = set()

    def on_probs(self, call, probs):
        rows, hs, _, toks = torch.nonzero(probs[call.cond] < 0, as_tuple=True)
        self.cells.update((int(r), call.layer.head_offset + int(h), int(t)) for r, h, t in zip(rows, hs, toks))
        assert not (probs[: call.cond.start] < 0).any()


def test_sdxl_noop_and_word_positions():
    pipe = tiny_sdxl_pipeline()
    heads = HeadIndex.from_unet(pipe.unet)
    kw = {"num_inference_steps": 2, "output_type": "np", "height": 16, "width": 16}
    plain = pipe("a red car", generator=torch.Generator().manual_seed(0), **kw).images
    ones = HRV.from_matrix(torch.ones(2, len(heads)), heads, ["Color", "Plants"])
    with steer(pipe, ones) as s:
        s.strengthen("red", "Color")
        same = pipe("a red car", generator=torch.Generator().manual_seed(0), **kw).images
    assert np.array_equal(same, plain)
    last = len(heads) - 1
    with steer(pipe) as s:
        s.weaken(heads=[0, last], words="red")
        rec = s.session.add(NegativeCells())
        out = pipe("a red car", generator=torch.Generator().manual_seed(0), **kw).images
    red = TokenMap.from_tokenizer(pipe.tokenizer, "a red car").find("red", pipe.tokenizer)
    assert rec.cells == {(0, h, t) for h in (0, last) for t in red}
    assert np.abs(out - plain).max() > 0
    assert not pipe.text_encoder._forward_pre_hooks


def test_sdxl_second_prompt_is_checked():
    pipe = tiny_sdxl_pipeline()
    kw = {"num_inference_steps": 2, "output_type": "latent", "height": 16, "width": 16}
    with steer(pipe) as s:
        s.weaken(heads=[0], words="red")
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # same text in both encoders: no warning
            pipe("a red car", generator=torch.Generator().manual_seed(0), **kw)
            pipe("a red car", prompt_2="a red car", generator=torch.Generator().manual_seed(0), **kw)
        with pytest.warns(UserWarning, match="prompt_2 differs from prompt"):
            pipe("a red car", prompt_2="an oil painting", generator=torch.Generator().manual_seed(0), **kw)
    assert not pipe.text_encoder._forward_pre_hooks and not pipe.text_encoder_2._forward_pre_hooks
