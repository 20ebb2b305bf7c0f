"""PixArt-α/Σ (cross-attention DiT, T5 text with a padding mask): votes, mask, steering, maps, P2P, A&E."""


import numpy as np
import pytest
import torch
from slow_votes import chosen_words, winner, word_draws

import headlens
from headlens import HRV
from headlens.attention import Plugin, Session
from headlens.capture import derived_seed
from headlens.edit import p2p
from headlens.families import prompt_map
from headlens.heads import HeadIndex
from headlens.maps import head_maps

CONCEPTS = {"Color": ["red", "blue", "lavender"], "Shape": ["circle", "square"], "Made": ["qzx", "wood"]}
PROMPTS = ["a red circle", "a blue square on wood", "a lavender vase"]
STEPS = 3


class QueryRecorder(Plugin):
    """Stores the conditional-half queries of every cross-attention call."""

    needs_query = True

    def __init__(self):
        self.q = {}

    def on_query(self, call, attn, query):
        self.q[(call.step, call.layer.index)] = (attn, query[call.cond].detach().clone())


class ProbsRecorder(Plugin):
    """Stores every cross-attention call's probabilities (as this plugin sees them)."""

    needs_probs = True

    def __init__(self):
        self.calls = []

    def on_probs(self, call, probs):
        self.calls.append((call.step, call.layer, probs.detach().clone(), call.cond))


def t5_word(pipe, word):
    """The word's own T5 token embeddings (no end token), encoded alone, projected by the caption projection."""
    n = len(pipe.tokenizer(word, add_special_tokens=False)["input_ids"])
    ids = pipe.tokenizer(word)["input_ids"]
    assert ids[n] == pipe.tokenizer.eos_token_id and pipe.tokenizer.bos_token_id is None
    with torch.no_grad():
        emb = pipe.encode_prompt(word, do_classifier_free_guidance=False, device="cpu", clean_caption=False)[0][0]
    return pipe.transformer.caption_projection(emb[:n][None])[0]


@torch.no_grad()
def slow_votes(pipe, batch_size, seed, guidance, variant="reference"):
    """Plain loops over images, heads and concepts; attention recomputed by hand in float64."""
    heads = HeadIndex.from_model(pipe.transformer)
    names = list(CONCEPTS)
    words = {c: [t5_word(pipe, w) for w in ws] for c, ws in CONCEPTS.items()}
    votes = torch.zeros(STEPS, len(heads), len(names), dtype=torch.int64)
    for start in range(0, len(PROMPTS), batch_size):
        idx = list(range(start, min(start + batch_size, len(PROMPTS))))
        rec = QueryRecorder()
        with Session(pipe, [rec], cfg=guidance > 1):
            pipe([PROMPTS[i] for i in idx], num_inference_steps=STEPS, guidance_scale=guidance, output_type="latent",
                 generator=[torch.Generator().manual_seed(derived_seed(seed, i, "latents")) for i in idx])
        draws = word_draws(seed, idx, STEPS, len(heads.layers), len(names))
        for (step, li), (attn, q) in rec.q.items():
            layer = heads.layers[li]
            for b, i in enumerate(idx):
                chosen = chosen_words(variant, draws[i][step, li], names, words)
                owner = [(c, w / len(e)) for c, e, w in chosen for _ in range(len(e))]  # T5: no start token
                k_all = attn.to_k(torch.cat([e for _, e, _ in chosen])[None])[0].double()
                for h in range(layer.num_heads):
                    d = layer.head_dim
                    p = torch.softmax(q[b, h].double() @ k_all[:, h * d:(h + 1) * d].T * attn.scale, -1).mean(0)
                    votes[step, layer.head_offset + h, winner(p, owner, len(names))] += 1
    return votes


@pytest.mark.parametrize("variant,start_token", [("reference", True), ("reference", False), ("all-words", True)])
def test_votes_equal_slow_computation(tiny_pixart, variant, start_token):
    hrv = headlens.build(tiny_pixart, CONCEPTS, PROMPTS, num_inference_steps=STEPS, guidance_scale=4.5, batch_size=2,
                         seed=7, variant=variant, start_token=start_token)
    assert hrv.votes.shape == (STEPS, 8, 3) and len(hrv.heads) == 8
    assert torch.equal(hrv.votes, slow_votes(tiny_pixart, 2, 7, 4.5, variant))
    assert hrv.metadata["family"] == "pixart" and hrv.metadata["latent_size"] == [32, 32]


def test_votes_without_guidance(tiny_pixart):
    hrv = headlens.build(tiny_pixart, CONCEPTS, PROMPTS, num_inference_steps=STEPS, guidance_scale=1.0, batch_size=3,
                         seed=2)
    assert torch.equal(hrv.votes, slow_votes(tiny_pixart, 3, 2, 1.0))


def generate(pipe, prompt, seed=1, **kw):
    kw.setdefault("num_inference_steps", STEPS)
    return pipe(prompt, generator=torch.Generator().manual_seed(seed), output_type="np", **kw).images


def test_capture_leaves_generation_bit_identical(tiny_pixart):
    from headlens.capture import VoteCapture, encode_concept_words
    from headlens.concepts import ConceptSet

    plain = generate(tiny_pixart, PROMPTS[:2])
    cs = ConceptSet.from_dict(CONCEPTS)
    cap = VoteCapture(encode_concept_words(tiny_pixart, cs), HeadIndex.from_model(tiny_pixart), len(cs))
    cap.begin_batch([0, 1], 0, STEPS)
    with Session(tiny_pixart, [cap]):
        out = generate(tiny_pixart, PROMPTS[:2])
    assert np.array_equal(out, plain)
    assert int(cap.votes.sum()) == STEPS * 8 * 2


# ---------------------------------------------------------------------------- the T5 padding mask
def test_token_maps_leave_masked_padding_out(tiny_pixart):
    tm = prompt_map(tiny_pixart, "a red circle")
    assert len(tm.ids) == 120 and tm.length == 4  # ▁a ▁red ▁circle </s>
    assert tm.word_positions == [0, 1, 2] and tm.find("red") == [1]
    assert tm.end_positions == [3]  # the end token only: padding is masked out
    assert tm.positions("words+end") == [0, 1, 2, 3]
    assert tm.valid[:4] == [True] * 4 and not any(tm.valid[4:])


def test_masked_positions_get_no_attention_and_never_matter(tiny_pixart):
    """Probabilities at masked T5 positions are 0; garbage in the masked embeddings changes nothing."""
    prompt = "a red circle"
    with torch.no_grad():
        pe, pm, ne, nm = tiny_pixart.encode_prompt(prompt, device="cpu", clean_caption=False)
    g = torch.Generator().manual_seed(0)
    noisy_pe, noisy_ne = pe.clone(), ne.clone()
    noisy_pe[:, 4:] = torch.randn(noisy_pe[:, 4:].shape, generator=g) * 50
    noisy_ne[:, 1:] = torch.randn(noisy_ne[:, 1:].shape, generator=g) * 50

    def run(p, n):
        rec = ProbsRecorder()
        with headlens.steer(tiny_pixart, prompt=prompt, cfg=True) as s:
            s.weaken(heads="all", words="all", factor=-2.0, tokens="words+end")
            s.session.add(rec)
            img = tiny_pixart(negative_prompt=None, prompt_embeds=p, prompt_attention_mask=pm, negative_prompt_embeds=n,
                              negative_prompt_attention_mask=nm, num_inference_steps=STEPS, output_type="np",
                              generator=torch.Generator().manual_seed(1)).images
        return img, rec

    a, rec = run(pe, ne)
    b, _ = run(noisy_pe, noisy_ne)
    assert np.array_equal(a, b)
    for _, _, probs, cond in rec.calls:
        assert (probs[cond][..., 4:] == 0).all() and (probs[:cond.start][..., 1:] == 0).all()
        assert (probs[cond][..., :4] != 0).all()


# ---------------------------------------------------------------------------- steering
def test_factor_one_is_bit_identical_and_steering_changes_images(tiny_pixart):
    heads = HeadIndex.from_model(tiny_pixart)
    plain = generate(tiny_pixart, "a red circle")
    ones = HRV.from_matrix(torch.ones(2, len(heads)), heads, ["Color", "Shape"])
    with headlens.steer(tiny_pixart, ones) as s:
        s.weaken(heads="all", words="all", factor=1.0)
        s.strengthen("red", "Color")
        assert s.interventions == []
        same = generate(tiny_pixart, "a red circle")
    with headlens.steer(tiny_pixart) as s:
        s.weaken(heads=["block0.h1", "block1.h2"], words="red", factor=-2.0)
        changed = generate(tiny_pixart, "a red circle")
    assert np.array_equal(same, plain) and np.abs(changed - plain).max() > 1e-3


def test_steered_probabilities_equal_hand_computation(tiny_pixart):
    prompt = "a red circle and a blue square"
    heads = HeadIndex.from_model(tiny_pixart)
    tm = prompt_map(tiny_pixart, prompt)
    chosen = [1, 6]
    with headlens.steer(tiny_pixart, prompt=prompt, cfg=True) as s:
        s.weaken(heads=chosen, words="blue", factor=-2.0)
        before, after = ProbsRecorder(), ProbsRecorder()
        s.session.plugins.insert(0, before)
        s.session.add(after)
        generate(tiny_pixart, prompt)
    assert len(before.calls) == STEPS * len(heads.layers)
    blue = tm.find("blue")
    for (_, layer, p0, cond), (_, _, p1, _) in zip(before.calls, after.calls):
        f = torch.ones_like(p0)
        for j in range(layer.num_heads):
            if layer.head_offset + j in chosen:
                f[cond, j][..., blue] = -2.0
        assert torch.equal(p1, p0 * f)
        assert torch.equal(p1[: cond.start], p0[: cond.start])


def test_processors_restored_after_exception(tiny_pixart):
    before = {k: type(v) for k, v in tiny_pixart.transformer.attn_processors.items()}

    class Boom(Plugin):
        needs_query = True

        def on_query(self, call, attn, query):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"), Session(tiny_pixart, [Boom()]):
        generate(tiny_pixart, "a red circle")
    assert {k: type(v) for k, v in tiny_pixart.transformer.attn_processors.items()} == before
    assert not tiny_pixart.transformer._forward_pre_hooks and not tiny_pixart.text_encoder._forward_pre_hooks


# ---------------------------------------------------------------------------- maps, P2P, A&E
def test_maps_equal_recorded_probabilities(tiny_pixart):
    rec = ProbsRecorder()
    with Session(tiny_pixart, [rec], cfg=True):
        generate(tiny_pixart, "a red circle", seed=3)
    got = head_maps(tiny_pixart, "a red circle", "red", seed=3, num_inference_steps=STEPS, guidance_scale=4.5,
                    map_size="latent")
    assert got.maps.shape == (8, 32, 32) and got.evaluations == STEPS and got.positions == [1]
    want = torch.zeros(8)
    for _, layer, probs, cond in rec.calls:
        want[layer.head_offset:layer.head_offset + layer.num_heads] += probs[cond][0, :, :, 1].mean(-1)
    torch.testing.assert_close(got.mean_attention(), want / STEPS, rtol=1e-4, atol=1e-6)


def test_p2p_and_p2p_hrv(tiny_pixart):
    heads = HeadIndex.from_model(tiny_pixart)
    src, same = p2p(tiny_pixart, "a red circle", "a red circle", num_inference_steps=STEPS, seed=1)
    assert np.array_equal(np.asarray(src), np.asarray(same))  # identical prompts reproduce the source
    rec = ProbsRecorder()
    src, edited = p2p(tiny_pixart, "a red circle", "a blue circle", num_inference_steps=STEPS, seed=1,
                      cross_replace=1.0, self_replace=0.0, plugins=[rec])
    cross = [(p, c) for _, layer, p, c in rec.calls if layer.index < len(heads.layers) and p.shape[-1] == 120]
    assert cross and all(torch.equal(p[c][1], p[c][0]) for p, c in cross)  # the edit takes the source's maps
    assert np.abs(np.asarray(src, float) - np.asarray(edited, float)).max() > 0
    ones = HRV.from_matrix(torch.ones(1, len(heads)), heads, ["Color"])
    a = p2p(tiny_pixart, "a red circle", "a blue circle", num_inference_steps=STEPS, seed=1, hrv=ones, concept="Color",
            self_replace=0.4)
    b = p2p(tiny_pixart, "a red circle", "a blue circle", num_inference_steps=STEPS, seed=1, restore_word=True)
    assert np.array_equal(np.asarray(a[1]), np.asarray(b[1]))


def test_attend_and_excite(tiny_pixart):
    heads = HeadIndex.from_model(tiny_pixart)
    kw = dict(num_inference_steps=STEPS, seed=2, max_iter_to_alter=2, output_type="np", guidance_scale=4.5)
    plain = generate(tiny_pixart, "a red circle and a blue square", seed=2)[0]
    off = headlens.excite(tiny_pixart, "a red circle and a blue square", tokens=["circle", "square"], optimize=False,
                          **kw)
    np.testing.assert_allclose(off, plain, atol=1e-5)  # no optimisation: the pipeline's own result
    trace = []
    on = headlens.excite(tiny_pixart, "a red circle and a blue square", tokens=["circle", "square"], trace=trace, **kw)
    assert np.abs(on - plain).max() > 1e-4 and trace and trace[0]["phase"] == "check"
    ones = HRV.from_matrix(torch.ones(1, len(heads)), heads, ["Shape"])
    tokens = {"circle": "Shape", "square": "Shape"}
    a = headlens.excite(tiny_pixart, "a red circle and a blue square", tokens=tokens, layers="all", resolution=16, **kw)
    b = headlens.excite(tiny_pixart, "a red circle and a blue square", tokens=tokens, hrv=ones, resolution=16, **kw)
    np.testing.assert_allclose(a, b, atol=1e-6)  # all-ones A&E-HRV is A&E over the same maps


def test_sigma_pipeline_builds_and_steers():
    from headlens.testing import tiny_pixart_pipeline

    pipe = tiny_pixart_pipeline(sigma=True)
    assert type(pipe).__name__ == "PixArtSigmaPipeline" and prompt_map(pipe, "a red circle").ids.__len__() == 300
    hrv = headlens.build(pipe, CONCEPTS, PROMPTS[:2], num_inference_steps=2, batch_size=2)
    assert int(hrv.votes.sum()) == 2 * 8 * 2
    with headlens.steer(pipe, hrv) as s:
        s.adjust("red", toward="Color", away="Shape")
        pipe("a red circle", num_inference_steps=2, output_type="latent")
