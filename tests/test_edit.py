"""Prompt-to-Prompt and P2P-HRV: tensor maths, windows, exactness, errors, SDXL, clean-up."""

from __future__ import annotations

import pytest
import torch

from headlens.attention import Plugin
from headlens.edit import (
    align_tokens,
    blend_mask,
    cross_alpha,
    edit_cross,
    load_edits,
    p2p,
    plan_edit,
    refine_mapper,
    self_window,
)
from headlens.heads import HeadIndex
from headlens.hrv import HRV, LayoutMismatchError
from headlens.tokens import TokenMap

SRC, TGT = "a bowl made of wood", "a bowl made of glass"
STEPS = 4


class Recorder(Plugin):
    """Records the conditional [source, edited] probabilities of every attention call, after the edit."""

    needs_probs = True
    cross = True
    self_attention = True

    def __init__(self):
        self.calls = []

    def on_probs(self, call, probs):
        rows = list(range(call.batch))[call.cond]
        self.calls.append((call.step, call.is_cross, call.layer.index, probs[rows].detach().clone()))


class Boom(Plugin):
    """Raises in the middle of a generation."""

    needs_probs = True

    def on_probs(self, call, probs):
        raise RuntimeError("boom")


def hrv_of(pipe, values=None, concepts=("Material", "Color")):
    heads = HeadIndex.from_unet(pipe.unet)
    m = torch.ones(len(concepts), len(heads)) if values is None else values
    return HRV.from_matrix(m, heads, list(concepts))


def run(pipe, source=SRC, target=TGT, **kw):
    kw.setdefault("num_inference_steps", STEPS)
    kw.setdefault("output_type", "latent")
    return p2p(pipe, source, target, **kw)


# ------------------------------------------------------------------------------------------ maths
def test_windows_follow_reference_counting():
    a = cross_alpha(0.8, 50, 77)
    assert a.shape == (51, 77)
    assert a[:40].eq(1).all() and a[40:].eq(0).all()  # int(0.8 * 51) = 40
    b = cross_alpha((0.2, 0.6), 50, 77)
    assert b[:10].eq(0).all() and b[10:30].eq(1).all() and b[30:].eq(0).all()
    c = cross_alpha({"default_": 1.0, "wood": (0.0, 0.5)}, 10, 77, {"wood": [5]})
    assert c[:, 4].eq(1).all() and c[:5, 5].eq(1).all() and c[5:, 5].eq(0).all()
    assert self_window(0.4, 50) == (0, 20) and self_window(0.9, 50) == (0, 45)
    assert self_window((0.2, 0.5), 10) == (2, 5)
    with pytest.raises(ValueError, match="self_replace"):
        self_window(1.5, 10)
    with pytest.raises(ValueError, match="not in the target prompt"):
        cross_alpha({"metal": 0.5}, 10, 77, {})


def test_align_tokens_is_a_longest_common_subsequence():
    assert align_tokens([1, 2, 3, 4], [1, 2, 9, 3, 4]) == [0, 1, -1, 2, 3]
    assert align_tokens([1, 2, 3], [1, 2, 3]) == [0, 1, 2]
    assert align_tokens([5, 6], [7]) == [-1]
    assert align_tokens([1, 7, 2], [1, 2]) == [0, 2]


def test_refine_mapper(sd_pipe):
    tok = sd_pipe.tokenizer
    src = TokenMap.from_tokenizer(tok, "a bowl made of wood")
    tgt = TokenMap.from_tokenizer(tok, "a big bowl made of wood")
    mapper, alphas = refine_mapper(src, tgt)
    big = tgt.find("big", tok)[0]
    assert alphas[big] == 0 and alphas.sum() == len(alphas) - 1
    assert mapper[tgt.find("bowl", tok)[0]] == src.find("bowl", tok)[0]
    assert mapper[tgt.find("wood", tok)[0]] == src.find("wood", tok)[0]
    assert mapper[0] == 0
    assert mapper[tgt.end_positions[0]] == src.end_positions[0]  # end token to end token


def test_edit_cross_against_hand_computation():
    g = torch.Generator().manual_seed(0)
    base, own = torch.rand(3, 5, 6, generator=g), torch.rand(3, 5, 6, generator=g)
    assert torch.equal(edit_cross(base, own), base)
    w = torch.tensor([0.5, 2.0, 3.0])
    out = edit_cross(base, own, restore=[2], weights=w)
    expected = base.clone()
    for h in range(3):
        expected[h, :, 2] = own[h, :, 2] * w[h]
    assert torch.equal(out, expected)
    eq = torch.tensor([1.0, 1.0, 1.0, 4.0, 1.0, 1.0])
    assert torch.allclose(edit_cross(base, own, equalizer=eq), base * eq)
    mapper = torch.tensor([0, 1, 3, 2, 4, 5])
    alphas = torch.tensor([1.0, 1.0, 1.0, 1.0, 0.0, 1.0])
    ref = edit_cross(base, own, mapper=mapper, alphas=alphas)
    assert torch.equal(ref[..., 2], base[..., 3]) and torch.equal(ref[..., 4], own[..., 4])
    alpha = torch.tensor([1.0, 0.0, 1.0, 1.0, 1.0, 1.0])
    part = edit_cross(base, own, alpha=alpha)
    assert torch.equal(part[..., 1], own[..., 1]) and torch.equal(part[..., 0], base[..., 0])


def test_blend_mask():
    maps = torch.zeros(2, 8, 8)
    maps[0, 1, 1] = 1.0  # source word at the top left
    maps[1, 6, 6] = 2.0  # edited word at the bottom right
    mask = blend_mask(maps, (8, 8), threshold=0.3, dilation=1)
    assert mask.shape == (1, 1, 8, 8)
    assert mask[0, 0, 0:3, 0:3].eq(1).all() and mask[0, 0, 5:8, 5:8].eq(1).all()
    assert mask.sum() == 18
    assert blend_mask(maps, (8, 8), threshold=1.0).sum() == 0


# ------------------------------------------------------------------------------------------ generation
def test_identical_prompts_reproduce_the_source_exactly(sd_pipe):
    src, edited = run(sd_pipe, SRC, SRC, output_type="pt")
    assert torch.equal(src, edited)
    plain = sd_pipe(SRC, num_inference_steps=STEPS, generator=torch.Generator().manual_seed(0),
                    output_type="pt").images[0]
    assert torch.allclose(src, plain, atol=1e-5)  # the source branch is the ordinary generation


def test_replace_windows_are_honoured(sd_pipe):
    rec = Recorder()
    n = 5
    run(sd_pipe, cross_replace=0.5, self_replace=0.4, num_inference_steps=n, plugins=[rec])
    cross_end, self_end = int(0.5 * (n + 1)), int(0.4 * n)  # 3 and 2
    seen = {"cross": set(), "self": set()}
    for step, is_cross, _, p in rec.calls:
        same = torch.equal(p[0], p[1])
        if is_cross:
            seen["cross"].add(step)
            assert same == (step < cross_end), (step, "cross")
        else:
            seen["self"].add(step)
            assert same == (step < self_end), (step, "self")
    assert seen["cross"] == seen["self"] == set(range(n))


def test_self_replace_only_on_coarse_layers(sd_pipe):
    rec = Recorder()
    run(sd_pipe, cross_replace=0.0, self_replace=1.0, self_replace_max_pixels=16, plugins=[rec])
    coarse = [p for s, c, i, p in rec.calls if not c and p.shape[-1] <= 16]
    fine = [p for s, c, i, p in rec.calls if not c and p.shape[-1] > 16 and s >= 1]
    assert coarse and fine
    assert all(torch.equal(p[0], p[1]) for p in coarse)
    assert not any(torch.equal(p[0], p[1]) for p in fine)


def test_p2p_hrv_with_ones_is_p2p_with_token_restoration(sd_pipe):
    ones = hrv_of(sd_pipe)
    windows = {"cross_replace": 0.8, "self_replace": 0.9}
    src_h, hrv_img = run(sd_pipe, hrv=ones, concept="Material", **windows)
    src_r, restored = run(sd_pipe, restore_word=True, **windows)
    src_p, plain = run(sd_pipe, **windows)
    assert torch.equal(hrv_img, restored)
    assert not torch.equal(hrv_img, plain)  # restoring the edited word's own map matters
    assert torch.equal(src_h, src_p) and torch.equal(src_r, src_p)


def test_p2p_hrv_scales_the_edited_word_per_head(sd_pipe):
    heads = HeadIndex.from_unet(sd_pipe.unet)
    values = torch.linspace(0.2, 1.8, len(heads)).repeat(2, 1)
    a, b = Recorder(), Recorder()
    run(sd_pipe, hrv=hrv_of(sd_pipe, values), concept="Material", plugins=[a])
    run(sd_pipe, restore_word=True, self_replace=0.9, plugins=[b])
    pos = TokenMap.from_tokenizer(sd_pipe.tokenizer, TGT).find("glass", sd_pipe.tokenizer)
    first = heads.layers[0]
    (_, _, _, pa), (_, _, _, pb) = [next(c for c in r.calls if c[1] and c[0] == 0 and c[2] == first.index)
                                    for r in (a, b)]
    w = values[0, first.heads.start:first.heads.stop]
    assert torch.allclose(pa[1][..., pos], pb[1][..., pos] * w.view(-1, 1, 1), atol=1e-7)
    others = [i for i in range(pa.shape[-1]) if i not in pos]
    assert torch.equal(pa[1][..., others], pa[0][..., others])  # other tokens keep the source maps


def test_p2p_hrv_defaults_to_reference_windows(sd_pipe):
    a = run(sd_pipe, hrv=hrv_of(sd_pipe), concept="Material")[1]
    b = run(sd_pipe, hrv=hrv_of(sd_pipe), concept="Material", cross_replace=0.8, self_replace=0.9)[1]
    c = run(sd_pipe, hrv=hrv_of(sd_pipe), concept="Material", cross_replace=0.8, self_replace=0.4)[1]
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_refine_and_reweight(sd_pipe):
    src, same = run(sd_pipe, SRC, SRC, edit="refine", output_type="pt")
    assert torch.equal(src, same)
    s2, refined = run(sd_pipe, SRC, "a big bowl made of wood", edit="refine")
    assert refined.shape == s2.shape and not torch.equal(s2, refined)
    s3, unit = run(sd_pipe, SRC, SRC, edit="reweight", reweight={"wood": 1.0})
    assert torch.equal(s3, unit)
    rec = Recorder()
    run(sd_pipe, SRC, SRC, edit="reweight", reweight={"wood": 3.0}, plugins=[rec])
    pos = TokenMap.from_tokenizer(sd_pipe.tokenizer, SRC).find("wood", sd_pipe.tokenizer)
    _, _, _, p = next(c for c in rec.calls if c[1] and c[0] == 0)
    assert torch.allclose(p[1][..., pos], 3 * p[0][..., pos])


def test_local_blend_keeps_the_source_outside_the_mask(sd_pipe, monkeypatch):
    from headlens.edit import LocalBlend

    src, edited = run(sd_pipe, local_blend=["wood", "glass"], blend_threshold=1.0)
    assert torch.equal(src, edited)  # empty mask: nothing may change
    seen = []
    real = LocalBlend.__call__

    def spy(self, pipe, step, timestep, kwargs):
        before = kwargs["latents"].clone()
        mask = blend_mask(self.maps, before.shape[-2:], self.threshold, self.dilation)
        out = real(self, pipe, step, timestep, kwargs)
        seen.append((before, mask, out["latents"].clone()))
        return out

    monkeypatch.setattr(LocalBlend, "__call__", spy)
    src, edited = run(sd_pipe, local_blend=["wood", "glass"], blend_threshold=0.95)  # a partial mask on this model
    assert len(seen) == STEPS
    partial = 0
    for before, mask, after in seen:
        m = mask[0, 0].bool()
        partial += bool(m.any() and not m.all())
        assert torch.equal(after[0], before[0])  # the source branch is never touched
        # outside the mask the edited latent is the source's, inside it keeps its own value
        assert torch.equal(after[1][:, ~m], before[0][:, ~m])
        torch.testing.assert_close(after[1][:, m], before[1][:, m])  # x_src + 1·(x_edit − x_src): rounding only
    assert partial == STEPS  # a real region every step: both rules above were exercised
    final = seen[-1][1][0, 0].bool()
    assert torch.equal(edited[:, ~final], src[:, ~final]) and not torch.equal(src, edited)
    with pytest.raises(ValueError, match="neither prompt"):
        run(sd_pipe, local_blend=["metal"])


def test_bad_inputs_give_one_line_errors(sd_pipe, sdxl_pipe):
    cases = [
        ({"target": "a bowl made of stained glass"}, ValueError, "refine"),
        ({"restore_word": True, "word": "metal"}, ValueError, "metal"),
        ({"target": SRC, "restore_word": True}, ValueError, "word="),
        ({"hrv": hrv_of(sd_pipe)}, ValueError, "concept"),
        ({"concept": "Material"}, ValueError, "hrv"),
        ({"hrv": hrv_of(sd_pipe), "concept": "Materiel"}, KeyError, "Materiel"),
        ({"hrv": hrv_of(sdxl_pipe), "concept": "Material"}, LayoutMismatchError, "heads"),
        ({"edit": "swap"}, ValueError, "replace"),
        ({"edit": "reweight"}, ValueError, "reweight="),
        ({"cross_replace": (0.5, 0.2)}, ValueError, "cross_replace"),
    ]
    for kw, exc, text in cases:
        with pytest.raises(exc, match=text) as info:
            run(sd_pipe, **kw)
        assert "\n" not in str(info.value), kw


def test_processors_restored_also_on_exceptions(sd_pipe):
    before = dict(sd_pipe.unet.attn_processors)
    with pytest.raises(RuntimeError, match="boom"):
        run(sd_pipe, plugins=[Boom()])
    after = sd_pipe.unet.attn_processors
    assert all(after[k] is before[k] for k in before)
    assert not sd_pipe.unet._forward_pre_hooks
    run(sd_pipe)
    assert all(sd_pipe.unet.attn_processors[k] is before[k] for k in before)


def test_sdxl(sdxl_pipe):
    src, same = run(sdxl_pipe, SRC, SRC, num_inference_steps=3)
    assert torch.equal(src, same)
    rec = Recorder()
    src, edited = run(sdxl_pipe, hrv=hrv_of(sdxl_pipe), concept="Material", num_inference_steps=3,
                      cross_replace=0.5, self_replace=0.5, plugins=[rec])
    assert not torch.equal(src, edited)
    self_calls = [(s, torch.equal(p[0], p[1])) for s, c, _, p in rec.calls if not c]
    assert self_calls and all(same == (s < 1) for s, same in self_calls)  # int(0.5 * 3) = 1


def test_plan_uses_edited_word_automatically(sd_pipe):
    plan = plan_edit(sd_pipe, SRC, TGT, restore_word=True, num_inference_steps=10)
    assert plan.restore == TokenMap.from_tokenizer(sd_pipe.tokenizer, TGT).find("glass", sd_pipe.tokenizer)
    assert plan.self_steps == (0, 4) and plan.cross_alpha.shape == (11, 77)


def test_benchmark_edits_load():
    material = load_edits("material")
    assert material and all(c.concept == "Material" for c in material)
    assert {c.concept for c in load_edits()} >= {"Color", "Material", "Geometric patterns", "Image style",
                                                   "Weather conditions"}
    assert load_edits("geometric-patterns")
    with pytest.raises(ValueError, match="have:"):
        load_edits("Smell")


def test_without_guidance_and_with_pndm():
    from headlens.testing import tiny_sd_pipeline

    pipe = tiny_sd_pipeline(scheduler="pndm")
    src, same = run(pipe, SRC, SRC, guidance_scale=1.0)
    assert torch.equal(src, same)  # no CFG: the batch is [source, edited] itself
    rec = Recorder()
    run(pipe, cross_replace=1.0, self_replace=0.5, plugins=[rec])  # PNDM: N + 1 UNet evaluations
    cross = {}
    for s, c, _, p in rec.calls:
        if c:
            cross[s] = cross.get(s, True) and torch.equal(p[0], p[1])
    selfs = [(s, torch.equal(p[0], p[1])) for s, c, _, p in rec.calls if not c]
    assert sorted(cross) == list(range(STEPS + 1)) and all(cross.values())
    assert all(same == (s < STEPS // 2) for s, same in selfs)
