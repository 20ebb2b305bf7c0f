"""SD3 and FLUX (joint attention): probe tokens, votes, steering on the image→text block, maps, restore."""


import numpy as np
import pytest
import torch
from slow_votes import chosen_words, winner, word_draws

import headlens
from headlens import HRV
from headlens.attention import Plugin, Session
from headlens.capture import derived_seed
from headlens.families import prompt_map
from headlens.families.joint import ProbeSet
from headlens.heads import HeadIndex
from headlens.maps import head_maps

CONCEPTS = {"Color": ["red", "blue", "lavender"], "Shape": ["circle", "square"], "Made": ["qzx", "wood"]}
PROMPTS = ["a red circle", "a blue square on wood", "a lavender vase"]
STEPS = 3
FAMILIES = ["tiny_sd3", "tiny_flux"]


def word_rows(pipe, word):
    """A word's own token embeddings (SD3: its CLIP then its T5 positions; FLUX: T5), by hand from token ids."""
    with torch.no_grad():
        if hasattr(pipe, "text_encoder_3"):
            clip = pipe.tokenizer(word, add_special_tokens=False)["input_ids"]
            t5 = pipe.tokenizer_3(word, add_special_tokens=False)["input_ids"]
            emb = pipe.encode_prompt(prompt=word, prompt_2=None, prompt_3=None, device="cpu",
                                     do_classifier_free_guidance=False)[0][0]
            assert emb.shape[0] == 77 + 256
            pos = list(range(1, 1 + len(clip))) + [77 + i for i in range(len(t5))]
            return emb[pos], emb[0]
        t5 = pipe.tokenizer_2(word, add_special_tokens=False)["input_ids"]
        emb = pipe.encode_prompt(prompt=word, prompt_2=None, device="cpu")[0][0]
        assert emb.shape[0] == 512
        return emb[: len(t5)], None


def probe_table(pipe):
    """(table, groups, word rows per concept, start row index or None) built by hand."""
    rows, groups, words, start = [], [], {}, None
    n = w_index = 0
    for c, ws in CONCEPTS.items():
        words[c] = []
        for w in ws:
            e, bos = word_rows(pipe, w)
            if start is None:
                start = bos
            words[c].append(list(range(n, n + len(e))))
            groups += [w_index] * len(e)
            w_index += 1
            rows.append(e)
            n += len(e)
    last = None
    if start is not None:
        rows.append(start[None])
        groups.append(-1)
        last = n
    return torch.cat(rows), torch.tensor(groups), words, last


class Recorder(Plugin):
    """Image queries and probe keys of every call (conditional rows)."""

    needs_query = True

    def __init__(self, probes=None):
        self.probes = probes
        self.calls = {}

    def on_query(self, call, attn, query):
        keys = None if call.concept_keys is None else call.concept_keys[call.cond].detach().clone()
        self.calls[(call.step, call.layer.index)] = (query[call.cond].detach().clone(), keys, call.scale)


@torch.no_grad()
def slow_votes(pipe, batch_size, seed, guidance, cfg, variant="reference", start_token=True, mode="image"):
    heads = HeadIndex.from_model(pipe)
    table, groups, words, start = probe_table(pipe)
    names = list(CONCEPTS)
    votes = torch.zeros(STEPS, len(heads), len(names), dtype=torch.int64)
    for s0 in range(0, len(PROMPTS), batch_size):
        idx = list(range(s0, min(s0 + batch_size, len(PROMPTS))))
        rec = Recorder(ProbeSet(table, groups, mode))
        with Session(pipe, [rec], cfg=cfg):
            pipe([PROMPTS[i] for i in idx], num_inference_steps=STEPS, guidance_scale=guidance, output_type="latent",
                 generator=[torch.Generator().manual_seed(derived_seed(seed, i, "latents")) for i in idx])
        draws = word_draws(seed, idx, STEPS, len(heads.layers), len(names))
        assert len(rec.calls) == STEPS * len(heads.layers)
        for (step, li), (q, keys, scale) in rec.calls.items():
            layer = heads.layers[li]
            for b, i in enumerate(idx):
                chosen = chosen_words(variant, draws[i][step, li], names, words)
                rows = ([start] if (start is not None and start_token) else []) + [r for _, ws, _ in chosen for r in ws]
                owner = ([(-1, 0.0)] if (start is not None and start_token) else []) + [
                    (c, w / len(ws)) for c, ws, w in chosen for _ in ws]
                for h in range(layer.num_heads):
                    k = keys[b, h, rows].double()
                    p = torch.softmax(q[b, h].double() @ k.T * scale, dim=-1).mean(0)
                    votes[step, layer.head_offset + h, winner(p, owner, len(names))] += 1
    return votes


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("variant,start_token,keys", [("reference", True, "probes"), ("reference", False, "probes"),
                                                      ("all-words", True, "probes"), ("reference", True, "text-only")])
def test_votes_equal_slow_computation(family, variant, start_token, keys, request):
    pipe = request.getfixturevalue(family)
    guidance = 4.0
    cfg = family == "tiny_sd3"
    hrv = headlens.build(pipe, CONCEPTS, PROMPTS, num_inference_steps=STEPS, guidance_scale=guidance, batch_size=2,
                         seed=5, variant=variant, start_token=start_token, concept_keys=keys)
    mode = "image" if keys == "probes" else "text-only"
    expected = slow_votes(pipe, 2, 5, guidance, cfg, variant, start_token, mode)
    assert hrv.votes.shape == (STEPS, len(HeadIndex.from_model(pipe)), 3)
    assert torch.equal(hrv.votes, expected)
    assert hrv.metadata["concept_keys"] == keys and (hrv.votes.sum(2) == len(PROMPTS)).all()
    assert hrv.metadata["start_token_used"] == (start_token and family == "tiny_sd3")  # T5-only FLUX has none


# ---------------------------------------------------------------------------- probes: an independent masked forward
class MaskedJoint:
    """Test-only processor: the whole joint attention with one explicit [S, S] mask over [image, prompt, probes]."""

    def __init__(self, kind, text_len, groups, mode, store, name):
        self.kind, self.t, self.groups, self.mode, self.store, self.name = kind, text_len, groups, mode, store, name

    def allowed(self, n_img, n_txt, n_pr, text_first):
        s = n_img + n_txt + n_pr
        img = torch.arange(n_txt + n_pr, s) if text_first else torch.arange(0, n_img)
        txt = torch.arange(0, n_txt) if text_first else torch.arange(n_img, n_img + n_txt)
        pr = torch.arange(n_txt, n_txt + n_pr) if text_first else torch.arange(n_img + n_txt, s)
        a = torch.zeros(s, s, dtype=torch.bool)
        for rows in (img, txt):
            a[rows[:, None], torch.cat([img, txt])[None]] = True
        a[pr[:, None], pr[None]] = self.groups[:, None] == self.groups[None, :]
        if self.mode == "image":
            a[pr[:, None], img[None]] = True
        return a, img, pr

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, image_rotary_emb=None,
                 **kw):
        from diffusers.models.embeddings import apply_rotary_emb

        b = hidden_states.shape[0]
        if self.kind == "sd3":
            def heads(x):
                return x.view(b, -1, attn.heads, x.shape[-1] // attn.heads).transpose(1, 2)

            q, k, v = heads(attn.to_q(hidden_states)), heads(attn.to_k(hidden_states)), heads(attn.to_v(hidden_states))
            eq, ek, ev = (heads(attn.add_q_proj(encoder_hidden_states)), heads(attn.add_k_proj(encoder_hidden_states)),
                          heads(attn.add_v_proj(encoder_hidden_states)))
            n_img = q.shape[2]
            Q, K, V = torch.cat([q, eq], 2), torch.cat([k, ek], 2), torch.cat([v, ev], 2)
            text_first = False
        else:
            d = attn.head_dim

            def heads(x):
                return x.unflatten(-1, (-1, d))

            q, k, v = attn.norm_q(heads(attn.to_q(hidden_states))), attn.norm_k(heads(attn.to_k(hidden_states))), heads(
                attn.to_v(hidden_states))
            if encoder_hidden_states is not None:
                eq = attn.norm_added_q(heads(attn.add_q_proj(encoder_hidden_states)))
                ek = attn.norm_added_k(heads(attn.add_k_proj(encoder_hidden_states)))
                ev = heads(attn.add_v_proj(encoder_hidden_states))
                q, k, v = torch.cat([eq, q], 1), torch.cat([ek, k], 1), torch.cat([ev, v], 1)
                n_text_stream = encoder_hidden_states.shape[1]
            else:
                n_text_stream = self.t + len(self.groups)
            q, k = apply_rotary_emb(q, image_rotary_emb, sequence_dim=1), apply_rotary_emb(k, image_rotary_emb,
                                                                                           sequence_dim=1)
            Q, K, V = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
            n_img = Q.shape[2] - n_text_stream
            text_first = True
        allowed, img, pr = self.allowed(n_img, self.t, len(self.groups), text_first)
        scores = (Q.double() @ K.double().transpose(-1, -2)) * Q.shape[-1] ** -0.5
        out = scores.masked_fill(~allowed, float("-inf")).softmax(-1).to(V.dtype) @ V
        self.store[self.name] = (Q[:, :, img].detach().clone(), K[:, :, pr].detach().clone())
        out = out.transpose(1, 2).reshape(b, -1, Q.shape[1] * Q.shape[-1])
        if self.kind == "sd3":
            hid, enc = out[:, :n_img], out[:, n_img:]
            enc = enc if attn.context_pre_only else attn.to_add_out(enc)
            return attn.to_out[1](attn.to_out[0](hid)), enc
        if encoder_hidden_states is None:
            return out
        enc, hid = out[:, :n_text_stream], out[:, n_text_stream:]
        return attn.to_out[1](attn.to_out[0](hid)), attn.to_add_out(enc)


def first_call_kwargs(pipe, prompt):
    """The keyword arguments of the transformer's first call in a plain generation."""
    got = {}

    def grab(module, args, kwargs):
        if not got:
            got.update(kwargs)

    h = pipe.transformer.register_forward_pre_hook(grab, with_kwargs=True)
    try:
        pipe(prompt, num_inference_steps=2, guidance_scale=4.0, output_type="latent",
             generator=torch.Generator().manual_seed(0))
    finally:
        h.remove()
    return got


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("mode", ["image", "text-only"])
def test_probes_equal_a_masked_joint_forward_and_leave_the_image_unchanged(family, mode, request):
    pipe = request.getfixturevalue(family)
    kind = "sd3" if family == "tiny_sd3" else "flux"
    kw = first_call_kwargs(pipe, ["a red circle and a blue square", "a lavender vase"])
    heads = HeadIndex.from_model(pipe)
    table, groups, _, _ = probe_table(pipe)
    with torch.no_grad():
        plain = pipe.transformer(**kw)[0]
        rec = Recorder(ProbeSet(table, groups, mode))
        with Session(pipe, [rec], cfg=False):
            ours = pipe.transformer(**kw)[0]
        # the same forward by hand: prompt + probes in the text stream, one explicit mask over everything
        t = kw["encoder_hidden_states"].shape[1]
        masked_kw = dict(kw, encoder_hidden_states=torch.cat(
            [kw["encoder_hidden_states"], table[None].expand(kw["encoder_hidden_states"].shape[0], -1, -1)], 1))
        if kind == "flux":
            masked_kw["txt_ids"] = torch.cat([kw["txt_ids"], kw["txt_ids"].new_zeros(len(table), 3)])
        store = {}
        saved = dict(pipe.transformer.attn_processors)
        procs = dict(saved)
        for layer in heads.layers:
            procs[layer.name + ".processor"] = MaskedJoint(kind, t, groups, mode, store, layer.name)
        pipe.transformer.set_attn_processor(procs)
        try:
            hand = pipe.transformer(**masked_kw)[0]
        finally:
            pipe.transformer.set_attn_processor(saved)
    torch.testing.assert_close(ours, plain, rtol=1e-4, atol=1e-5)  # probes do not change the image
    torch.testing.assert_close(hand, plain, rtol=1e-4, atol=1e-5)
    assert len(store) == len(heads.layers)
    for layer in heads.layers:
        q, k, _ = rec.calls[(0, layer.index)]
        hq, hk = store[layer.name]
        torch.testing.assert_close(q, hq.to(q.dtype), rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(k, hk.to(k.dtype), rtol=1e-4, atol=1e-5)
    if mode == "image":  # the probe keys of later layers depend on the image (they are not text-only keys)
        rec2 = Recorder(ProbeSet(table, groups, "text-only"))
        with torch.no_grad(), Session(pipe, [rec2], cfg=False):
            pipe.transformer(**kw)
        last = heads.layers[-1].index
        assert not torch.allclose(rec.calls[(0, last)][1], rec2.calls[(0, last)][1], atol=1e-4)
        torch.testing.assert_close(rec.calls[(0, 0)][1], rec2.calls[(0, 0)][1])  # block 0: same input, same keys


@pytest.mark.parametrize("family", FAMILIES)
def test_build_leaves_generation_unchanged(family, request):
    from headlens.capture import VoteCapture, encode_concept_words
    from headlens.concepts import ConceptSet

    pipe = request.getfixturevalue(family)

    def gen():
        return pipe(PROMPTS[:2], num_inference_steps=STEPS, output_type="np",
                    generator=[torch.Generator().manual_seed(i) for i in range(2)]).images

    plain = gen()
    cs = ConceptSet.from_dict(CONCEPTS)
    cap = VoteCapture(encode_concept_words(pipe, cs), HeadIndex.from_model(pipe), len(cs))
    cap.begin_batch([0, 1], 0, STEPS)
    with Session(pipe, [cap]):
        out = gen()
    np.testing.assert_allclose(out, plain, atol=1e-5)
    assert int(cap.votes.sum()) == STEPS * len(cap.heads) * 2


# ---------------------------------------------------------------------------- text layout
def test_sd3_words_have_clip_and_t5_positions(tiny_sd3):
    tm = prompt_map(tiny_sd3, "a red circle")
    assert len(tm.ids) == 77 + 256
    assert tm.find("red") == [2, 77 + 1]  # CLIP: start token first; T5: none
    assert tm.word_positions == [1, 2, 3, 77, 78, 79]
    assert 4 in tm.end_positions and 77 + 3 in tm.end_positions and 332 in tm.end_positions  # SD3 masks no padding


def test_flux_words_have_t5_positions(tiny_flux):
    tm = prompt_map(tiny_flux, "a red circle")
    assert len(tm.ids) == 512 and tm.find("red") == [1] and tm.word_positions == [0, 1, 2]


# ---------------------------------------------------------------------------- steering on the image→text block
class Block(Plugin):
    """Records the image→text block each call hands to plugins."""

    needs_probs = True

    def __init__(self):
        self.calls = []

    def on_probs(self, call, probs):
        self.calls.append((call.layer, probs.detach().clone(), call.cond))


def attention_inputs(pipe, heads):
    """Forward pre-hooks on the attention modules: their inputs, as the model calls them."""
    seen, hooks = {}, []
    for layer in heads.layers:
        mod = pipe.transformer.get_submodule(layer.name)
        hooks.append(mod.register_forward_pre_hook(
            lambda m, a, k, name=layer.name: seen.__setitem__(name, (a, k)), with_kwargs=True))
        hooks.append(mod.register_forward_hook(lambda m, a, o, name=layer.name: seen.__setitem__(name + ":out", o)))
    return seen, hooks


def hand_block(kind, attn, args, kwargs, text_len):
    """Softmax rows of the image queries over all joint keys (by hand), and (block columns, values, image slice)."""
    from diffusers.models.embeddings import apply_rotary_emb

    hs = kwargs.get("hidden_states", args[0] if args else None)
    enc = kwargs.get("encoder_hidden_states")
    b = hs.shape[0]
    if kind == "sd3":
        def heads(x):
            return x.view(b, -1, attn.heads, x.shape[-1] // attn.heads).transpose(1, 2)

        q, k, v = heads(attn.to_q(hs)), heads(attn.to_k(hs)), heads(attn.to_v(hs))
        K = torch.cat([k, heads(attn.add_k_proj(enc))], 2)
        V = torch.cat([v, heads(attn.add_v_proj(enc))], 2)
        n = q.shape[2]
        return q, K, V, slice(n, n + text_len), slice(0, n)
    d = attn.head_dim
    rope = kwargs["image_rotary_emb"]
    q, k, v = attn.norm_q(attn.to_q(hs).unflatten(-1, (-1, d))), attn.norm_k(attn.to_k(hs).unflatten(-1, (-1, d))), \
        attn.to_v(hs).unflatten(-1, (-1, d))
    if enc is not None:
        q = torch.cat([attn.norm_added_q(attn.add_q_proj(enc).unflatten(-1, (-1, d))), q], 1)
        k = torch.cat([attn.norm_added_k(attn.add_k_proj(enc).unflatten(-1, (-1, d))), k], 1)
        v = torch.cat([attn.add_v_proj(enc).unflatten(-1, (-1, d)), v], 1)
    q, k = apply_rotary_emb(q, rope, sequence_dim=1), apply_rotary_emb(k, rope, sequence_dim=1)
    q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
    return q[:, :, text_len:], k, v, slice(0, text_len), slice(text_len, q.shape[2])


@pytest.mark.parametrize("family", FAMILIES)
def test_steered_block_equals_hand_computation(family, request):
    pipe = request.getfixturevalue(family)
    kind = "sd3" if family == "tiny_sd3" else "flux"
    prompt = "a red circle and a blue square"
    heads = HeadIndex.from_model(pipe)
    tm = prompt_map(pipe, prompt)
    kw = first_call_kwargs(pipe, prompt)
    t = kw["encoder_hidden_states"].shape[1]
    chosen = [1, 6]
    blue = tm.find("blue")
    seen, hooks = attention_inputs(pipe, heads)
    try:
        with torch.no_grad(), headlens.steer(pipe, prompt=prompt) as s:
            s.weaken(heads=chosen, words="blue", factor=-2.0)
            before, after = Block(), Block()
            s.session.plugins.insert(0, before)
            s.session.add(after)
            s.session.set_step(0, 1, cfg=kind == "sd3")
            pipe.transformer(**kw)
    finally:
        for h in hooks:
            h.remove()
    assert len(before.calls) == len(heads.layers)
    for (layer, p0, cond), (_, p1, _) in zip(before.calls, after.calls):
        attn = pipe.transformer.get_submodule(layer.name)
        args, kwargs = seen[layer.name]
        with torch.no_grad():
            q, K, V, text, img = hand_block(kind, attn, args, kwargs, t)
            rows = torch.softmax(q.double() @ K.double().transpose(-1, -2) * q.shape[-1] ** -0.5, dim=-1)
        torch.testing.assert_close(p0.double(), rows[..., text], rtol=1e-4, atol=1e-6)
        f = torch.ones_like(p0)
        for j in range(layer.num_heads):
            if layer.head_offset + j in chosen:
                f[cond, j][..., blue] = -2.0
        assert torch.equal(p1, p0 * f)
        if kind == "sd3":
            assert torch.equal(p1[: cond.start], p0[: cond.start])  # the unconditional half is untouched
        # the image tokens' output is computed from the edited rows; text rows are the model's own
        edited = rows.clone()
        edited[..., text] = p1.double()
        out_img = (edited @ V.double()).transpose(1, 2).reshape(q.shape[0], -1, V.shape[1] * V.shape[-1])
        got = seen[layer.name + ":out"]
        if kind == "flux" and layer.place == "single":
            torch.testing.assert_close(got[:, img].double(), out_img, rtol=1e-4, atol=1e-5)
        else:
            want = attn.to_out[0](out_img.float())
            torch.testing.assert_close(got[0], want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_factor_one_is_bit_identical_and_steering_changes_images(family, request):
    pipe = request.getfixturevalue(family)
    heads = HeadIndex.from_model(pipe)

    def gen():
        return pipe("a red circle", num_inference_steps=STEPS, output_type="np",
                    generator=torch.Generator().manual_seed(1)).images

    plain = gen()
    ones = HRV.from_matrix(torch.ones(2, len(heads)), heads, ["Color", "Shape"])
    with headlens.steer(pipe, ones) as s:
        s.weaken(heads="all", words="all", factor=1.0)
        s.adjust("red", toward="Color", away="Shape")
        assert s.interventions == []
        same = gen()
    with headlens.steer(pipe) as s:
        s.weaken(heads="all", words="all", factor=1.0000001)  # materialised probabilities, nothing changed
        near = gen()
    with headlens.steer(pipe) as s:
        s.weaken(heads="all", words="all", factor=-2.0, tokens="words+end")  # random weights: spread-out attention
        changed = gen()
    assert np.array_equal(same, plain)
    np.testing.assert_allclose(near, plain, atol=1e-4)
    assert np.abs(changed - plain).max() > 1e-3


@pytest.mark.parametrize("family", FAMILIES)
def test_processors_and_hooks_restored_after_exception(family, request):
    pipe = request.getfixturevalue(family)
    before = {k: type(v) for k, v in pipe.transformer.attn_processors.items()}

    class Boom(Plugin):
        needs_probs = True

        def on_probs(self, call, probs):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"), headlens.steer(pipe) as s:
        s.session.add(Boom())
        pipe("a red circle", num_inference_steps=2, output_type="latent")
    assert {k: type(v) for k, v in pipe.transformer.attn_processors.items()} == before
    assert not pipe.transformer._forward_pre_hooks
    for enc in ("text_encoder", "text_encoder_2", "text_encoder_3"):
        if getattr(pipe, enc, None) is not None:
            assert not getattr(pipe, enc)._forward_pre_hooks


@pytest.mark.parametrize("family", FAMILIES)
def test_maps_equal_the_recorded_block(family, request):
    pipe = request.getfixturevalue(family)
    rec = Block()
    with Session(pipe, [rec]):
        pipe("a red circle", num_inference_steps=STEPS, guidance_scale=4.0, generator=torch.Generator().manual_seed(3))
    got = head_maps(pipe, "a red circle", "red", seed=3, num_inference_steps=STEPS, guidance_scale=4.0,
                    map_size="latent")
    heads = HeadIndex.from_model(pipe)
    pos = prompt_map(pipe, "a red circle").find("red")
    assert got.maps.shape == (len(heads), 8, 8) and got.evaluations == STEPS and got.positions == pos
    want = torch.zeros(len(heads))
    for layer, probs, cond in rec.calls:
        want[layer.head_offset:layer.head_offset + layer.num_heads] += probs[cond][0][..., pos].mean(-1).mean(-1)
    torch.testing.assert_close(got.mean_attention(), want / STEPS, rtol=1e-4, atol=1e-6)


def test_flux_true_cfg_negative_pass_is_left_alone(tiny_flux):
    """With true CFG the negative prompt is a second call per step: no votes, no edits, step count intact."""
    kw = dict(num_inference_steps=STEPS, true_cfg_scale=2.0, negative_prompt="a blurry photo", output_type="np",
              generator=torch.Generator().manual_seed(4))
    hrv = headlens.build(tiny_flux, CONCEPTS, PROMPTS[:2], num_inference_steps=STEPS, batch_size=2)
    assert int(hrv.votes.sum()) == STEPS * 16 * 2
    rec = Block()
    with Session(tiny_flux, [rec]) as s:
        tiny_flux("a red circle", **kw)
        assert s.step == STEPS - 1
    assert len(rec.calls) == STEPS * 4  # one call per layer per step: the negative pass is skipped


def test_text_only_and_probe_hrvs_both_build(tiny_sd3):
    a = headlens.build(tiny_sd3, CONCEPTS, PROMPTS, num_inference_steps=2, batch_size=3, concept_keys="probes")
    b = headlens.build(tiny_sd3, CONCEPTS, PROMPTS, num_inference_steps=2, batch_size=3, concept_keys="text-only")
    assert a.votes.sum() == b.votes.sum()
    with pytest.raises(ValueError, match="concept_keys"):
        headlens.build(tiny_sd3, CONCEPTS, PROMPTS, num_inference_steps=2, concept_keys="nope")


@pytest.mark.parametrize("family", FAMILIES)
def test_attend_and_excite(family, request):
    """A&E on the image→text block: off = the pipeline bit for bit; on changes it; all-ones HRV = plain A&E."""
    pipe = request.getfixturevalue(family)
    prompt = "a red circle and a blue square"
    g = 4.0 if family == "tiny_sd3" else 3.5
    plain = pipe(prompt, num_inference_steps=STEPS, guidance_scale=g, output_type="np",
                 generator=torch.Generator().manual_seed(2)).images[0]
    kw = dict(num_inference_steps=STEPS, seed=2, max_iter_to_alter=2, output_type="np", guidance_scale=g)
    off = headlens.excite(pipe, prompt, tokens=["circle", "square"], optimize=False, **kw)
    assert np.array_equal(off, plain)
    trace = []
    on = headlens.excite(pipe, prompt, tokens=["circle", "square"], trace=trace, **kw)
    subjects = len(prompt_map(pipe, prompt).find("circle")) + len(prompt_map(pipe, prompt).find("square"))
    assert np.abs(on - plain).max() > 1e-4 and len(trace[0]["maxima"]) == subjects  # SD3: CLIP and T5 tokens
    ones = HRV.from_matrix(torch.ones(1, len(HeadIndex.from_model(pipe))), HeadIndex.from_model(pipe), ["Shape"])
    tokens = {"circle": "Shape", "square": "Shape"}
    a = headlens.excite(pipe, prompt, tokens=tokens, layers="all", resolution=8, **kw)
    b = headlens.excite(pipe, prompt, tokens=tokens, hrv=ones, resolution=8, **kw)
    np.testing.assert_allclose(a, b, atol=1e-6)
