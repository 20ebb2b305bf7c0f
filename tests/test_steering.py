"""Steering: head/token interventions on cross-attention probabilities (spec §5)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import headlens
from headlens import HRV, HeadIndex, LayoutMismatchError
from headlens.attention import Plugin
from headlens.steering import Steering, steer, token_map_from_ids
from headlens.testing import tiny_sd_pipeline
from headlens.tokens import TokenMap, WordNotFoundError

STEPS = 4


@pytest.fixture(scope="module")
def pipe():
    return tiny_sd_pipeline()


@pytest.fixture(scope="module")
def heads(pipe):
    return HeadIndex.from_unet(pipe.unet)


@pytest.fixture(scope="module")
def hrv(heads):
    g = torch.Generator().manual_seed(3)
    m = torch.rand(3, len(heads), generator=g) * 2 + 0.05
    return HRV.from_matrix(m, heads, ["Color", "Plants", "Shape"])


def generate(pipe, prompt, seed=1, **kw):
    kw.setdefault("num_inference_steps", STEPS)
    return pipe(prompt, generator=torch.Generator().manual_seed(seed), output_type="np", **kw).images


class Recorder(Plugin):
    """Records probabilities (and queries) of every cross-attention call."""

    needs_probs = True
    needs_query = True

    def __init__(self, session):
        self.session = session
        self.calls = []  # (step, layer, query, probs)
        self._q = None

    def on_query(self, call, attn, query):
        self._q = query.detach().clone()

    def on_probs(self, call, probs):
        self.calls.append((call.step, call.layer, self._q, probs.detach().clone(), call.cond))


def negative_cells(rec: Recorder, heads: HeadIndex):
    """Per step: set of (row-in-cond-half, flat head, token) where the cond probabilities are negative."""
    out: dict[int, set] = {}
    for step, layer, _, probs, cond in rec.calls:
        cells = out.setdefault(step, set())
        c = probs[cond]
        rows, hs, _, toks = torch.nonzero(c < 0, as_tuple=True)
        cells.update((int(r), layer.head_offset + int(h), int(t)) for r, h, t in zip(rows, hs, toks))
        assert not (probs[: cond.start] < 0).any(), "unconditional half was edited"
    return out


# ---------------------------------------------------------------------------- no-ops
def test_factor_one_and_all_ones_hrv_are_bit_identical(pipe, heads):
    plain = generate(pipe, "a red car")
    ones = HRV.from_matrix(torch.ones(2, len(heads)), heads, ["Color", "Plants"])
    with steer(pipe, ones) as s:
        s.weaken(heads="all", words="all", factor=1.0)
        s.strengthen("red", "Color")
        s.adjust("red", toward="Color", away="Plants")  # 2·1 − 1 = 1
        assert s.interventions == []
        out = generate(pipe, "a red car")
    assert np.array_equal(out, plain)


def test_materialised_probabilities_match_sdpa_within_tolerance(pipe):
    plain = generate(pipe, "a red car")
    with steer(pipe) as s:
        s.weaken(heads="all", words="all", factor=1.0000001)  # not skipped: probabilities are materialised
        out = generate(pipe, "a red car")
    np.testing.assert_allclose(out, plain, atol=1e-4)


def test_steering_changes_images(pipe, hrv):
    plain = generate(pipe, "a vase in lavender color")
    with headlens.steer(pipe, hrv) as s:
        s.adjust("lavender", toward="Color", away="Plants")
        out = generate(pipe, "a vase in lavender color")
    assert np.abs(out - plain).max() > 1e-3


# ---------------------------------------------------------------------------- exact maths
def test_probabilities_equal_hand_computation(pipe, heads, hrv):
    prompt = "a red car and a blue house"
    cond, uncond = pipe.encode_prompt(prompt, "cpu", 1, True, negative_prompt="")
    ehs = torch.cat([uncond, cond])
    latents = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    tm = TokenMap.from_tokenizer(pipe.tokenizer, prompt)
    red, blue = tm.find("red", pipe.tokenizer), tm.find("blue", pipe.tokenizer)
    chosen = [1, 5, 12]
    adjust = (2 * hrv["Color"] - hrv["Shape"]).tolist()

    with steer(pipe, hrv, prompt=prompt, cfg=True) as s:
        s.weaken(heads=chosen, words="all", factor=-2.0)
        s.adjust("blue", toward="Color", away="Shape")
        before, after = Recorder(s.session), Recorder(s.session)
        s.session.plugins.insert(0, before)
        s.session.add(after)
        outputs = {}
        hooks = [pipe.unet.get_submodule(layer.name).register_forward_hook(
            lambda m, a, o, name=layer.name: outputs.__setitem__(name, o)) for layer in heads.layers]
        try:
            with torch.no_grad():
                pipe.unet(latents, 500, encoder_hidden_states=ehs)
        finally:
            for h in hooks:
                h.remove()

    assert len(before.calls) == len(heads.layers) == len(after.calls)
    for (_, layer, q, p0, _), (_, _, _, p1, _) in zip(before.calls, after.calls):
        module = pipe.unet.get_submodule(layer.name)
        with torch.no_grad():
            k = module.to_k(ehs).view(2, -1, module.heads, layer.head_dim).transpose(1, 2)
            v = module.to_v(ehs).view(2, -1, module.heads, layer.head_dim).transpose(1, 2)
        hand = torch.softmax(q @ k.transpose(-1, -2) * module.scale, dim=-1)
        torch.testing.assert_close(p0, hand, rtol=1e-5, atol=1e-6)
        factors = torch.ones(2, layer.num_heads, 1, p0.shape[-1])
        for j in range(layer.num_heads):
            flat = layer.head_offset + j
            for t in tm.word_positions:
                if flat in chosen:
                    factors[1, j, 0, t] *= -2.0
                if t in blue:
                    factors[1, j, 0, t] *= adjust[flat]
        expected = p0 * factors
        assert torch.equal(p1, expected)
        assert torch.equal(p1[0], p0[0])  # unconditional half untouched
        untouched = factors == 1
        assert torch.equal(p1.masked_select(untouched.expand_as(p1)), p0.masked_select(untouched.expand_as(p0)))
        for j in range(layer.num_heads):  # spelled out: a chosen head's 'red' columns are −2× the original
            factor = -2.0 if layer.head_offset + j in chosen else 1.0
            assert torch.equal(p1[1, j][:, red], p0[1, j][:, red] * factor)
        # the layer's output is computed from the edited probabilities
        with torch.no_grad():
            h = (expected @ v).transpose(1, 2).reshape(2, -1, module.heads * layer.head_dim)
            h = module.to_out[1](module.to_out[0](h))
        torch.testing.assert_close(outputs[layer.name], h, rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------------------- steps, rows, tokens
@pytest.mark.parametrize("steps, active", [((0.5, 1.0), {2, 3}), ((0.0, 0.25), {0}), ((0.25, 0.75), {1, 2})])
def test_step_range_respected(pipe, heads, steps, active):
    prompt = "a red car"
    red = TokenMap.from_tokenizer(pipe.tokenizer, prompt).find("red", pipe.tokenizer)
    with steer(pipe) as s:
        s.weaken(heads=[0, 7], words=["red"], factor=-2.0, steps=steps)
        rec = s.session.add(Recorder(s.session))
        generate(pipe, prompt)
    cells = negative_cells(rec, heads)
    assert set(cells) == set(range(STEPS))
    expected = {(0, h, t) for h in (0, 7) for t in red}
    for step in range(STEPS):
        assert cells[step] == (expected if step in active else set()), step


def test_rows_follow_prompts_and_num_images_per_prompt(pipe, heads):
    prompts = ["a red car", "the red house is big and red"]
    maps = [TokenMap.from_tokenizer(pipe.tokenizer, p) for p in prompts]
    with steer(pipe) as s:
        s.weaken(heads=[3], words="red")
        rec = s.session.add(Recorder(s.session))
        pipe(prompts, num_images_per_prompt=2, num_inference_steps=2,
             generator=[torch.Generator().manual_seed(i) for i in range(4)], output_type="np")
    cells = negative_cells(rec, heads)[0]
    expected = {(r, 3, t) for r in range(4) for t in maps[r // 2].find("red", pipe.tokenizer)}
    assert cells == expected
    assert len(maps[1].find("red", pipe.tokenizer)) == 2  # repeats are all weakened


def test_token_sets(pipe, heads):
    prompt = "a red car"
    tm = TokenMap.from_tokenizer(pipe.tokenizer, prompt)
    seen = {}
    for tokens in ("words", "words+end"):
        with steer(pipe) as s:
            s.weaken(heads=[2], words="all", tokens=tokens)
            rec = s.session.add(Recorder(s.session))
            generate(pipe, prompt, num_inference_steps=1)
        seen[tokens] = {t for _, _, t in negative_cells(rec, heads)[0]}
    assert seen["words"] == set(tm.word_positions) == {1, 2, 3}
    assert seen["words+end"] == set(range(1, len(tm.ids)))


def test_prompt_embeds_need_a_prompt_and_then_match_text_prompts(pipe, hrv):
    prompt = "a vase in lavender color"
    with steer(pipe, hrv) as s:
        s.adjust("lavender", toward="Color", away="Plants")
        from_text = generate(pipe, prompt)
    cond, uncond = pipe.encode_prompt(prompt, "cpu", 1, True)
    kw = {"prompt_embeds": cond, "negative_prompt_embeds": uncond, "num_inference_steps": STEPS,
              "generator": torch.Generator().manual_seed(1), "output_type": "np"}
    with steer(pipe, hrv) as s:
        s.adjust("lavender", toward="Color", away="Plants")
        with pytest.raises(ValueError, match="s.prompt"):
            pipe(**kw)
    with steer(pipe, hrv) as s:
        s.prompt = prompt
        s.adjust("lavender", toward="Color", away="Plants")
        kw["generator"] = torch.Generator().manual_seed(1)
        from_embeds = pipe(**kw).images
    assert np.array_equal(from_text, from_embeds)


def test_token_map_from_ids_matches_tokenizer(pipe):
    for prompt in ["a red car", "A rose-colored vase, oak tree", " ".join(["word"] * 90)]:
        ref = TokenMap.from_tokenizer(pipe.tokenizer, prompt)
        tm = token_map_from_ids(pipe.tokenizer, ref.ids)
        assert (tm.ids, tm.tokens, tm.length) == (ref.ids, ref.tokens, ref.length)
        assert tm.word_positions == ref.word_positions and tm.end_positions == ref.end_positions


# ---------------------------------------------------------------------------- cleanup and errors
def test_processors_and_hooks_restored_after_exception(pipe, hrv):
    before = dict(pipe.unet.attn_processors)

    def boom(*a, **k):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"), steer(pipe, hrv) as s:
        s.adjust("red", toward="Color", away="Plants")
        pipe("a red car", num_inference_steps=3, callback_on_step_end=boom, output_type="np")
    after = pipe.unet.attn_processors
    assert after.keys() == before.keys() and all(after[k] is before[k] for k in before)
    assert not pipe.text_encoder._forward_pre_hooks and not pipe.unet._forward_pre_hooks


def test_word_errors(pipe, hrv):
    s = steer(pipe, hrv, prompt="a red car")
    with pytest.raises(WordNotFoundError, match="'blue' is not in the prompt"):
        s.adjust("blue", toward="Color", away="Plants")  # a fixed prompt: the error comes at once
    with pytest.raises(WordNotFoundError, match="'blue' is not in the prompt 'a red car'"), steer(pipe, hrv) as s:
        s.strengthen("blue", "Color")
        generate(pipe, "a red car", num_inference_steps=1)
    assert not pipe.text_encoder._forward_pre_hooks


def test_input_errors(pipe, heads, hrv):
    with pytest.raises(KeyError, match="have: Color, Plants, Shape"), steer(pipe, hrv) as s:
        s.strengthen("red", "Colour")
    with pytest.raises(ValueError, match="needs Head Relevance Vectors"):
        steer(pipe).strengthen("red", "Color")
    for bad in [(-0.1, 1.0), (0.5, 0.5), (0.0, 1.5), (0.7, 0.2), "all"]:
        with pytest.raises(ValueError, match="steps="):
            steer(pipe).weaken(heads=[0], steps=bad)
    with pytest.raises(ValueError, match="token set"):
        steer(pipe).weaken(heads=[0], tokens="padding-only")
    with pytest.raises(ValueError, match="unknown head"):
        steer(pipe).weaken(heads=["nope"])
    with pytest.raises(ValueError, match="out of range"):
        steer(pipe).weaken(heads=[len(heads)])
    with pytest.raises(ValueError, match="clamp"):
        steer(pipe, hrv).adjust("red", toward="Color", away="Plants", clamp=0)
    other = HeadIndex.from_description(heads.describe()[:-1])
    with pytest.raises(LayoutMismatchError, match="headlens build"):
        steer(pipe, HRV.from_matrix(torch.ones(1, len(other)), other, ["Color"]))


def test_heads_by_name_and_clamp(pipe, heads, hrv):
    s = Steering(pipe, hrv)
    a = s.weaken(heads=[heads[4].name, heads[5].short_name, heads[6].reference_label, 7])
    assert torch.nonzero(a.head_factors != 1).flatten().tolist() == [4, 5, 6, 7]
    b = s.adjust("red", toward="Color", away="Plants", clamp=0.5)
    expected = 2 * hrv["Color"].clamp(max=0.5) - hrv["Plants"].clamp(max=0.5)
    assert torch.equal(b.head_factors, expected)
    c = s.strengthen("red", "Shape")
    assert torch.equal(c.head_factors, hrv["Shape"])


@pytest.mark.parametrize("method, steps, active", [
    ("strengthen", None, {0, 1, 2, 3}), ("strengthen", (0.0, 0.5), {0, 1}),  # README: steps=(0.0, 0.5) = first half
    ("adjust", None, {0, 1, 2, 3}), ("adjust", (0.5, 1.0), {2, 3}),
])
def test_strengthen_and_adjust_step_ranges(pipe, heads, method, steps, active):
    """Default: the whole run; a range: only its steps. An HRV of −1 / +1 makes every edited cell negative."""
    prompt = "a red car"
    red = TokenMap.from_tokenizer(pipe.tokenizer, prompt).find("red", pipe.tokenizer)
    H = len(heads)
    signed = HRV.from_matrix(torch.stack([-torch.ones(H), torch.ones(H)]), heads, ["Color", "Plants"])
    kw = {} if steps is None else {"steps": steps}
    with steer(pipe, signed) as s:
        if method == "strengthen":
            s.strengthen("red", "Color", **kw)  # × HRV_Color = −1
        else:
            s.adjust("red", toward="Color", away="Plants", **kw)  # × (2·(−1) − 1) = −3
        rec = s.session.add(Recorder(s.session))
        generate(pipe, prompt)
    cells = negative_cells(rec, heads)
    expected = {(0, h, t) for h in range(H) for t in red}
    assert set(cells) == set(range(STEPS))
    for step in range(STEPS):
        assert cells[step] == (expected if step in active else set()), step
