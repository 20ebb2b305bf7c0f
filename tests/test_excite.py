"""Attend-and-Excite and A&E-HRV: map maths against slow loops, loss descent, exact equivalences, errors."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

import headlens
from headlens.attend_excite import (
    TokenMaps,
    excite,
    excite_loss,
    gaussian_blur,
    gaussian_kernel,
    load_multi_concept,
    parse_tokens,
    resize_maps,
    select_layers,
    token_maxima,
)
from headlens.attention import Plugin, Session
from headlens.heads import HeadIndex
from headlens.hrv import HRV

PROMPT = "a cat and a dog"
TOKENS = {"cat": "Animals", "dog": "Animals"}
FAST = {"num_inference_steps": 2, "max_refinement_steps": 2, "output_type": "latent"}


def hrv_of(pipe, values=None, concepts=("Animals", "Objects")):
    heads = HeadIndex.from_unet(pipe.unet)
    m = torch.ones(len(concepts), len(heads)) if values is None else values
    return HRV.from_matrix(m, heads, list(concepts))


def slow_blur(x: torch.Tensor, k: int, sigma: float) -> torch.Tensor:
    """Gaussian blur with reflect borders, one pixel at a time."""
    half = k // 2
    ker = [[math.exp(-((i - half) ** 2 + (j - half) ** 2) / (2 * sigma**2)) for j in range(k)] for i in range(k)]
    total = sum(map(sum, ker))
    h, w = x.shape[-2:]

    def reflect(i, n):
        return -i if i < 0 else (2 * (n - 1) - i if i >= n else i)

    out = torch.zeros_like(x)
    for y in range(h):
        for xx in range(w):
            acc = 0
            for i in range(k):
                for j in range(k):
                    acc = acc + x[..., reflect(y + i - half, h), reflect(xx + j - half, w)] * ker[i][j] / total
            out[..., y, xx] = acc
    return out


# ------------------------------------------------------------------------------------------ maths
def test_gaussian_blur_matches_a_slow_loop():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 5, 6, generator=g)
    assert torch.allclose(gaussian_blur(x, 3, 0.5), slow_blur(x, 3, 0.5), atol=1e-6)
    assert torch.allclose(gaussian_blur(x, 5, 1.1), slow_blur(x, 5, 1.1), atol=1e-6)
    assert torch.isclose(gaussian_kernel(3, 0.5).sum(), torch.tensor(1.0))
    with pytest.raises(ValueError, match="odd"):
        gaussian_kernel(4, 1.0)


def test_resize_maps_follows_the_reference_recipe():
    g = torch.Generator().manual_seed(1)
    x = torch.rand(2, 3, 8, 8, generator=g)
    assert resize_maps(x, (8, 8)) is x
    up = resize_maps(x[..., :4, :4], (8, 8))
    assert torch.equal(up, F.interpolate(x[..., :4, :4], size=(8, 8), mode="bicubic", align_corners=False))
    # 8 -> 4: kernel 8 // 4 + 1 = 3, sigma 0.3 * ((3 - 1) / 2 - 1) + 0.8 = 0.8, then bicubic down
    down = resize_maps(x, (4, 4))
    expected = F.interpolate(slow_blur(x, 3, 0.8), size=(4, 4), mode="bicubic", align_corners=False)
    assert torch.allclose(down, expected, atol=1e-6)


def test_token_maxima_and_loss_against_a_slow_loop():
    g = torch.Generator().manual_seed(2)
    maps = torch.rand(2, 10, 4, 4, generator=g) * 0.05
    positions, groups = [2, 5], [0, 1]
    got = token_maxima(maps, positions, groups, smooth=True)
    for k, (p, gi) in enumerate(zip(positions, groups)):
        img = torch.zeros(4, 4)
        for y in range(4):
            for x in range(4):
                img[y, x] = torch.softmax(maps[gi, 1:, y, x] * 100, dim=0)[p - 1]
        assert torch.isclose(got[k], slow_blur(img, 3, 0.5).max(), atol=1e-6)
    last = token_maxima(maps, positions, groups, last=6, smooth=False)
    assert torch.isclose(last[0], torch.softmax(maps[0, 1:6] * 100, dim=0)[1].max())
    assert excite_loss(torch.tensor([0.3, 0.9])) == pytest.approx(0.7)
    assert excite_loss(torch.tensor([1.2, 1.0])) == 0


class Raw(Plugin):
    """Records raw conditional cross-attention probabilities per layer."""

    needs_probs = True

    def __init__(self):
        self.probs = {}

    def on_probs(self, call, probs):
        self.probs[call.layer.index] = probs[call.cond].detach().clone()


def test_token_maps_weighted_average_against_hand_computation(sd_pipe):
    heads = HeadIndex.from_unet(sd_pipe.unet)
    g = torch.Generator().manual_seed(3)
    weights = torch.rand(2, len(heads), generator=g) * 2
    maps_plugin, raw = TokenMaps(heads.layers, weights, (4, 4), (8, 8)), Raw()
    emb = sd_pipe.encode_prompt(PROMPT, "cpu", 1, False)[0]
    latents = torch.randn(1, 4, 8, 8, generator=g)
    with Session(sd_pipe, [raw, maps_plugin], cfg=False) as s, torch.no_grad():
        s.set_step(0, 1, cfg=False)
        maps_plugin.start()
        sd_pipe.unet(latents, 500, encoder_hidden_states=emb)
        got = maps_plugin.finish()
    expected = torch.zeros(2, 77, 4, 4)
    for layer in heads.layers:
        r = layer.resolution(8)[0]
        for j in range(layer.num_heads):
            m = raw.probs[layer.index][0, j].reshape(r, r, 77).permute(2, 0, 1)[None]
            m = resize_maps(m, (4, 4))[0]
            for gi in range(2):
                expected[gi] += weights[gi, layer.head_offset + j] * m
    expected /= len(heads)
    assert torch.allclose(got, expected, atol=1e-6)


def test_select_layers(sd_pipe):
    heads = HeadIndex.from_unet(sd_pipe.unet)
    chosen, size = select_layers(heads, (8, 8), None, None, hrv_mode=False)
    assert size == (4, 4) and chosen and all(layer.resolution(8)[0] == 4 for layer in chosen)
    chosen, size = select_layers(heads, (8, 8), None, None, hrv_mode=True)
    assert size == (4, 4) and len(chosen) == len(heads.layers)
    chosen, size = select_layers(heads, (64, 64), 8, "all", hrv_mode=True)
    assert size == (8, 8)
    with pytest.raises(ValueError, match="have: 4, 8"):
        select_layers(heads, (8, 8), 16, "resolution", hrv_mode=False)


def test_parse_tokens():
    assert parse_tokens({"cat": "Animals"}) == [("cat", "Animals")]
    assert parse_tokens(["cat:Animals", "dog"]) == [("cat", "Animals"), ("dog", None)]
    assert parse_tokens([("cat", "Animals")]) == [("cat", "Animals")]
    with pytest.raises(ValueError, match="at least one"):
        parse_tokens([])


# ------------------------------------------------------------------------------------------ generation
def test_refinement_lowers_the_loss(sd_pipe):
    trace = []
    excite(sd_pipe, PROMPT, TOKENS, num_inference_steps=2, max_refinement_steps=6, thresholds={0: 0.9},
           max_iter_to_alter=1, output_type="latent", trace=trace)
    at0 = [r for r in trace if r["step"] == 0]
    assert [r["phase"] for r in at0] == ["check"] + ["refine"] * 6 + ["refined", "update"]
    losses = [r["loss"] for r in at0 if r["phase"] in ("refine", "refined")]
    assert losses[0] == at0[0]["loss"]
    assert all(b < a for a, b in itertools.pairwise(losses)), losses
    assert not [r for r in trace if r["step"] == 1]  # max_iter_to_alter=1: no work at step 1


def test_refinement_stops_at_the_threshold(sd_pipe):
    kw = dict(num_inference_steps=1, max_iter_to_alter=0, output_type="latent")
    trace = []
    excite(sd_pipe, PROMPT, TOKENS, thresholds={0: 0.0}, trace=trace, **kw)
    assert [r["phase"] for r in trace] == ["check"]  # loss <= 1 - 0.0: nothing to refine
    # the losses of a long refinement, then a threshold between the 3rd and 4th: refinement must start and stop
    # after the 4th evaluation (the first with loss <= 1 - threshold), well before max_refinement_steps
    trace = []
    excite(sd_pipe, PROMPT, TOKENS, thresholds={0: 0.99}, max_refinement_steps=6, trace=trace, **kw)
    losses = [r["loss"] for r in trace if r["phase"] == "refine"]
    assert len(losses) == 6 and all(b < a for a, b in itertools.pairwise(losses)), losses
    target = (losses[2] + losses[3]) / 2
    trace = []
    excite(sd_pipe, PROMPT, TOKENS, thresholds={0: 1.0 - target}, max_refinement_steps=20, trace=trace, **kw)
    assert [r["phase"] for r in trace] == ["check"] + ["refine"] * 4 + ["refined"]
    refine = [r["loss"] for r in trace if r["phase"] == "refine"]
    assert refine == pytest.approx(losses[:4], rel=1e-5)  # the same descent, cut at the threshold
    assert all(x > target for x in refine[:3]) and refine[3] <= target
    assert trace[-1]["loss"] == pytest.approx(losses[4], rel=1e-5)  # after the 4th update, as the reference


def test_all_ones_hrv_equals_plain_attend_and_excite(sd_pipe):
    for layers in ("all", "resolution"):
        plain = excite(sd_pipe, PROMPT, TOKENS, resolution=4, layers=layers, **FAST)
        ones = excite(sd_pipe, PROMPT, TOKENS, hrv=hrv_of(sd_pipe), resolution=4, layers=layers, **FAST)
        assert torch.equal(plain, ones), layers
    heads = HeadIndex.from_unet(sd_pipe.unet)
    skewed = hrv_of(sd_pipe, torch.linspace(0.0, 2.0, len(heads)).repeat(2, 1))
    other = excite(sd_pipe, PROMPT, TOKENS, hrv=skewed, resolution=4, layers="all", **FAST)
    assert not torch.equal(plain, other)


def test_excitation_changes_the_result_and_optimize_off_is_the_pipeline(sd_pipe):
    off = excite(sd_pipe, PROMPT, TOKENS, num_inference_steps=2, optimize=False, output_type="latent")
    ref = sd_pipe(PROMPT, num_inference_steps=2, generator=torch.Generator().manual_seed(0),
                  output_type="latent").images
    assert torch.equal(off, ref)
    on = excite(sd_pipe, PROMPT, TOKENS, **FAST)
    assert not torch.equal(on, off)
    image = excite(sd_pipe, PROMPT, TOKENS, num_inference_steps=1, max_refinement_steps=1)
    assert image.size == (16, 16)


def test_bad_inputs_give_one_line_errors(sd_pipe, sdxl_pipe):
    cases = [
        ({"tokens": {"horse": "Animals"}}, ValueError, "horse"),
        ({"tokens": ["cat"], "hrv": hrv_of(sd_pipe)}, ValueError, "concept"),
        ({"tokens": {"cat": "Animalz"}, "hrv": hrv_of(sd_pipe)}, KeyError, "Animalz"),
        ({"tokens": {}}, ValueError, "at least one"),
        ({"resolution": 16, "layers": "resolution"}, ValueError, "resolution 16"),
        ({"layers": "some"}, ValueError, "layers"),
        ({"hrv": hrv_of(sdxl_pipe)}, ValueError, "heads"),
    ]
    for kw, exc, text in cases:
        kw = {"tokens": TOKENS, **kw}
        with pytest.raises(exc, match=text) as info:
            excite(sd_pipe, PROMPT, **kw, **FAST)
        assert "\n" not in str(info.value), kw


def test_processors_restored_also_on_exceptions(sd_pipe, monkeypatch):
    before = dict(sd_pipe.unet.attn_processors)

    def boom(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(sd_pipe.scheduler, "step", boom)
    with pytest.raises(RuntimeError, match="boom"):
        excite(sd_pipe, PROMPT, TOKENS, **FAST)
    monkeypatch.undo()
    after = sd_pipe.unet.attn_processors
    assert all(after[k] is before[k] for k in before)
    assert not sd_pipe.unet._forward_pre_hooks


def test_sdxl(sdxl_pipe):
    off = excite(sdxl_pipe, PROMPT, TOKENS, num_inference_steps=2, optimize=False, output_type="latent")
    ref = sdxl_pipe(PROMPT, num_inference_steps=2, guidance_scale=7.5, generator=torch.Generator().manual_seed(0),
                    output_type="latent").images
    assert torch.allclose(off, ref, atol=1e-5)
    trace = []
    plain = excite(sdxl_pipe, PROMPT, TOKENS, trace=trace, **FAST)
    ones = excite(sdxl_pipe, PROMPT, TOKENS, hrv=hrv_of(sdxl_pipe), resolution=4, layers="resolution", **FAST)
    assert torch.equal(plain, ones) and not torch.equal(plain, off)
    assert trace and trace[0]["phase"] == "check"


def test_package_level_excite_is_the_function(sd_pipe):
    import headlens.attend_excite as module

    assert headlens.excite is module.excite
    out = headlens.excite(sd_pipe, PROMPT, ["cat"], num_inference_steps=1, max_refinement_steps=1,
                          output_type="latent")
    assert out.shape == (1, 4, 8, 8)


def test_multi_concept_benchmark_loads():
    cases = load_multi_concept("animal-animal")
    assert cases and all(c.group == "animal_animal" and len(c.tokens) == 2 for c in cases)
    assert {c.group for c in load_multi_concept()} >= {"animal_animal", "animal_object"}
    with pytest.raises(ValueError, match="have:"):
        load_multi_concept("plant-plant")
