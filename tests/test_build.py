"""HRV construction: votes equal an independent slow computation; generation untouched; resume exact."""

import pytest
import torch
from slow_votes import chosen_words, winner, word_draws

import headlens
from headlens.attention import Plugin, Session
from headlens.building import BuildSettings, CheckpointMismatchError, HRVBuilder
from headlens.capture import derived_seed
from headlens.heads import HeadIndex

CONCEPTS = {"Color": ["red", "blue", "green"], "Animals": ["cat", "golden retriever"], "Plants": ["rose", "oak tree", "fern"]}
PROMPTS = ["a photo of a cat", "a red car on a street", "a rose in a vase", "a dog on green grass", "a blue bird"]
STEPS = 3


class QueryRecorder(Plugin):
    """Stores the conditional-half queries of every cross-attention call, filed under the UNet call number.

    The number comes from a forward pre-hook counting UNet calls (not from headlens' step tracking), so the
    slow computation says independently which evaluation each vote belongs to.
    """

    needs_query = True

    def __init__(self, unet):
        self.q = {}
        self.calls = 0
        self.hook = unet.register_forward_pre_hook(self._count)

    def _count(self, *args):
        self.calls += 1

    def on_query(self, call, attn, query):
        self.q[(self.calls - 1, call.layer.index)] = (attn, query[call.cond].detach().clone())


def word_embeddings(pipe, word):
    """The word's own token embeddings, encoded alone (by hand: token ids, no TokenMap)."""
    ids = pipe.tokenizer(word, padding="max_length", max_length=pipe.tokenizer.model_max_length)["input_ids"]
    n = len(pipe.tokenizer(word, add_special_tokens=False)["input_ids"])
    emb = pipe.encode_prompt(prompt=word, device="cpu", num_images_per_prompt=1, do_classifier_free_guidance=False)[0][0]
    assert ids[0] == pipe.tokenizer.bos_token_id
    return emb[0], emb[1 : 1 + n]


@torch.no_grad()
def slow_votes(pipe, prompts, batch_size, seed, guidance, variant="reference", start_token=True, steps=STEPS,
               scheduler=None, **call_kwargs):
    """Plain loops over images, heads and concepts; attention recomputed by hand (float64 after the q·k product).

    ``scheduler``: a diffusers scheduler class used for the run; ``call_kwargs`` go to the pipeline call
    (height, width, negative_prompt). Returns votes ``[UNet evaluations, heads, concepts]``.
    """
    heads = HeadIndex.from_unet(pipe.unet)
    names = list(CONCEPTS)
    words = {c: [word_embeddings(pipe, w) for w in ws] for c, ws in CONCEPTS.items()}
    bos = words[names[0]][0][0]
    word_embs = {c: [e[1] for e in ws] for c, ws in words.items()}
    votes = None
    original = pipe.scheduler
    if scheduler is not None:
        pipe.scheduler = scheduler.from_config(original.config)
    try:
        for start in range(0, len(prompts), batch_size):
            idx = list(range(start, min(start + batch_size, len(prompts))))
            rec = QueryRecorder(pipe.unet)
            kw = dict(call_kwargs)
            if kw.get("negative_prompt") is not None:
                kw["negative_prompt"] = [kw["negative_prompt"]] * len(idx)
            try:
                with Session(pipe, [rec], cfg=guidance > 1):
                    pipe([prompts[i] for i in idx], num_inference_steps=steps, guidance_scale=guidance,
                         output_type="latent",
                         generator=[torch.Generator().manual_seed(derived_seed(seed, i, "latents")) for i in idx], **kw)
            finally:
                rec.hook.remove()
            evals = rec.calls
            if votes is None:
                votes = torch.zeros(evals, len(heads), len(names), dtype=torch.int64)
            assert votes.shape[0] == evals
            draws = word_draws(seed, idx, evals, len(heads.layers), len(names))
            for (step, li), (attn, q) in rec.q.items():
                layer = heads.layers[li]
                for b, i in enumerate(idx):
                    chosen = chosen_words(variant, draws[i][step, li], names, word_embs)
                    toks = ([bos[None]] if start_token else []) + [e for _, e, _ in chosen]
                    owner = ([(-1, 0.0)] if start_token else []) + [(c, w / len(e)) for c, e, w in chosen
                                                                   for _ in range(len(e))]
                    k_all = attn.to_k(torch.cat(toks)[None])[0]  # [M, inner], in the model's dtype
                    for h in range(layer.num_heads):
                        d = layer.head_dim
                        qh = q[b, h]  # [pixels, d]
                        kh = k_all[:, h * d : (h + 1) * d]
                        logits = (qh @ kh.T).double() * attn.scale  # the product in the model's dtype, as the UNet
                        p = torch.softmax(logits, dim=-1).mean(dim=0)
                        votes[step, layer.head_offset + h, winner(p, owner, len(names))] += 1
    finally:
        pipe.scheduler = original
    return votes


@pytest.mark.parametrize("pipe_name", ["sd_pipe", "sd2_pipe", "sdxl_pipe"])
@pytest.mark.parametrize("variant,start_token", [("reference", True), ("reference", False), ("all-words", True)])
def test_votes_equal_slow_computation(pipe_name, variant, start_token, request):
    pipe = request.getfixturevalue(pipe_name)
    hrv = headlens.build(pipe, CONCEPTS, PROMPTS, num_inference_steps=STEPS, guidance_scale=5.0, batch_size=2,
                         seed=7, variant=variant, start_token=start_token)
    expected = slow_votes(pipe, PROMPTS, 2, 7, 5.0, variant, start_token)
    assert hrv.votes.shape == (STEPS, len(hrv.heads), 3)
    assert torch.equal(hrv.votes, expected)


def test_votes_without_guidance_use_whole_batch(sd_pipe):
    hrv = headlens.build(sd_pipe, CONCEPTS, PROMPTS[:3], num_inference_steps=STEPS, guidance_scale=1.0, batch_size=3, seed=3)
    assert torch.equal(hrv.votes, slow_votes(sd_pipe, PROMPTS[:3], 3, 3, 1.0))


def test_vote_sums_and_normalisation(sd_pipe):
    hrv = headlens.build(sd_pipe, CONCEPTS, PROMPTS, num_inference_steps=STEPS, batch_size=2, seed=1)
    H = len(hrv.heads)
    # every head casts one vote per image per UNet evaluation
    assert (hrv.votes.sum(dim=2) == len(PROMPTS)).all()
    assert (hrv.votes.sum(dim=(1, 2)) == len(PROMPTS) * H).all()
    m = hrv.matrix
    assert m.shape == (3, H)
    assert torch.allclose(m.mean(dim=1), torch.ones(3))
    # independent formula: H * V[h,c] / sum_h V[h,c] (heads vote equally often)
    v = hrv.votes.sum(0).double()
    expected = (H * v / v.sum(0, keepdim=True)).T
    for c in range(3):
        if v[:, c].sum() > 0:
            assert torch.allclose(m[c].double(), expected[c], atol=1e-5)
    pt = hrv.per_timestep
    assert pt.shape == (STEPS, 3, H)
    for t in range(STEPS):
        vt = hrv.votes[t].double()
        for c in range(3):
            if vt[:, c].sum() > 0:
                assert torch.allclose(pt[t, c].double(), (H * vt[:, c] / vt[:, c].sum()), atol=1e-5)


def test_same_seed_same_hrv_other_seed_differs(sd_pipe):
    a = headlens.build(sd_pipe, CONCEPTS, PROMPTS, num_inference_steps=STEPS, batch_size=2, seed=5)
    b = headlens.build(sd_pipe, CONCEPTS, PROMPTS, num_inference_steps=STEPS, batch_size=2, seed=5)
    c = headlens.build(sd_pipe, CONCEPTS, PROMPTS, num_inference_steps=STEPS, batch_size=2, seed=6)
    assert torch.equal(a.votes, b.votes)
    assert not torch.equal(a.votes, c.votes)


@pytest.mark.parametrize("pipe_name", ["sd_pipe", "sd2_pipe", "sdxl_pipe"])
def test_generation_bit_identical_with_capture(pipe_name, request):
    from headlens.capture import VoteCapture, encode_concept_words

    pipe = request.getfixturevalue(pipe_name)
    heads = HeadIndex.from_unet(pipe.unet)
    tokens = encode_concept_words(pipe, headlens.ConceptSet.from_dict(CONCEPTS))

    def run():
        return pipe(PROMPTS[:2], num_inference_steps=STEPS, output_type="np",
                    generator=[torch.Generator().manual_seed(i) for i in range(2)]).images

    plain = run()
    cap = VoteCapture(tokens, heads, 3)
    cap.begin_batch([0, 1], seed=0, num_steps=STEPS)
    with Session(pipe, [cap]):
        captured = run()
    assert cap.votes.sum() == 2 * len(heads) * STEPS  # it really ran
    assert (plain == captured).all()
    assert (run() == plain).all()  # processors restored


class UNetCalls:
    """Counts UNet forwards (one per pipeline step, CFG halves batched): the compute a build spends."""

    def __init__(self, pipe):
        self.n = 0
        self.hook = pipe.unet.register_forward_pre_hook(self._hit)

    def _hit(self, *args):
        self.n += 1

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.hook.remove()


def test_resume_equals_uninterrupted(sd_pipe, tmp_path):
    settings = dict(num_inference_steps=STEPS, batch_size=2, seed=11)  # 5 prompts: batches 0, 1, 2
    full = headlens.build(sd_pipe, CONCEPTS, PROMPTS, **settings)
    first = HRVBuilder(sd_pipe, CONCEPTS, PROMPTS, BuildSettings(STEPS, 7.5, 2, 11))
    with UNetCalls(sd_pipe) as calls:
        first.run(batches=[0])
    assert calls.n == STEPS
    first.save_checkpoint(tmp_path)
    second = HRVBuilder(sd_pipe, CONCEPTS, PROMPTS, BuildSettings(STEPS, 7.5, 2, 11))
    assert second.load_checkpoint(tmp_path)
    assert second.batches_done == {0}
    with UNetCalls(sd_pipe) as calls:
        second.run()
    assert calls.n == 2 * STEPS  # batches 1 and 2 only: batch 0 is not recomputed
    assert torch.equal(second.result().votes, full.votes)
    # through the public API: a partial checkpoint resumes to the uninterrupted counts computing only what is missing
    with UNetCalls(sd_pipe) as calls:
        resumed = headlens.build(sd_pipe, CONCEPTS, PROMPTS, out=tmp_path, resume=True, **settings)
    assert calls.n == 2 * STEPS and torch.equal(resumed.votes, full.votes)
    assert resumed.metadata["prompts_done"] == len(PROMPTS)
    # a finished run resumes to the same counts without recomputation
    again = headlens.build(sd_pipe, CONCEPTS, PROMPTS, out=tmp_path / "o", checkpoint_every=2, **settings)
    with UNetCalls(sd_pipe) as calls:
        finished = headlens.build(sd_pipe, CONCEPTS, PROMPTS, out=tmp_path / "o", resume=True, **settings)
    assert calls.n == 0
    assert torch.equal(again.votes, full.votes) and torch.equal(finished.votes, full.votes)


def test_checkpoint_of_other_run_is_refused(sd_pipe, tmp_path):
    b = HRVBuilder(sd_pipe, CONCEPTS, PROMPTS, BuildSettings(STEPS, 7.5, 2, 11))
    b.run(batches=[0])
    b.save_checkpoint(tmp_path)
    other = HRVBuilder(sd_pipe, CONCEPTS, PROMPTS, BuildSettings(STEPS, 7.5, 2, 12))
    with pytest.raises(CheckpointMismatchError, match="differs in: settings"):
        other.load_checkpoint(tmp_path)
    other = HRVBuilder(sd_pipe, CONCEPTS, PROMPTS[:-1], BuildSettings(STEPS, 7.5, 2, 11))
    with pytest.raises(CheckpointMismatchError, match="num_prompts, prompts"):
        other.load_checkpoint(tmp_path)
    (tmp_path / "checkpoint.safetensors").write_bytes(b"garbage")
    with pytest.raises(CheckpointMismatchError, match="unreadable"):
        HRVBuilder(sd_pipe, CONCEPTS, PROMPTS, BuildSettings(STEPS, 7.5, 2, 11)).load_checkpoint(tmp_path)


def test_existing_checkpoint_needs_resume_flag(sd_pipe, tmp_path):
    headlens.build(sd_pipe, CONCEPTS, PROMPTS[:2], num_inference_steps=2, out=tmp_path)
    with pytest.raises(FileExistsError, match="--resume"):
        headlens.build(sd_pipe, CONCEPTS, PROMPTS[:2], num_inference_steps=2, out=tmp_path)


def test_bad_settings_are_clear(sd_pipe):
    with pytest.raises(ValueError, match="unknown variant"):
        headlens.build(sd_pipe, CONCEPTS, PROMPTS, variant="nope")
    with pytest.raises(ValueError, match="batch size"):
        headlens.build(sd_pipe, CONCEPTS, PROMPTS, batch_size=0)
    with pytest.raises(ValueError, match="unknown scheduler"):
        headlens.build(sd_pipe, CONCEPTS, PROMPTS, scheduler="warp")
    with pytest.raises(ValueError, match="prompt set is empty"):
        headlens.build(sd_pipe, CONCEPTS, [])


def test_scheduler_option_counts_unet_evaluations(sd_pipe):
    hrv = headlens.build(sd_pipe, CONCEPTS, PROMPTS[:1], num_inference_steps=4, scheduler="pndm")
    sd_pipe.scheduler.set_timesteps(4)
    assert type(sd_pipe.scheduler).__name__ == "DDIMScheduler"  # restored
    from diffusers import PNDMScheduler

    pndm = PNDMScheduler.from_config(sd_pipe.scheduler.config)
    pndm.set_timesteps(4)
    assert hrv.votes.shape[0] == len(pndm.timesteps)
    assert hrv.metadata["scheduler"] == "PNDMScheduler"
    assert hrv.metadata["latent_size"] == [8, 8] and hrv.metadata["vae_scale_factor"] == 2  # 16 px images


@pytest.mark.parametrize("name,cls,per_step", [("heun", "HeunDiscreteScheduler", 2), ("euler", "EulerDiscreteScheduler", 1),
                                               ("dpm", "DPMSolverMultistepScheduler", 1),
                                               ("lms", "LMSDiscreteScheduler", 1),
                                               ("unipc", "UniPCMultistepScheduler", 1)])
def test_votes_per_unet_evaluation_for_each_scheduler(sd_pipe, name, cls, per_step):
    """Every UNet evaluation gets its own timestep row (Heun: two per step but the last), filed in call order."""
    import diffusers

    steps = 3
    hrv = headlens.build(sd_pipe, CONCEPTS, PROMPTS[:3], num_inference_steps=steps, guidance_scale=5.0, batch_size=2,
                         seed=4, scheduler=name)
    evaluations = per_step * steps - (per_step - 1)  # Heun: 2 × 3 − 1 = 5 (its last step is first order)
    assert hrv.metadata["scheduler"] == cls and type(sd_pipe.scheduler).__name__ == "DDIMScheduler"
    assert hrv.votes.shape == (evaluations, len(hrv.heads), 3)
    assert (hrv.votes.sum(dim=2) == 3).all()  # each evaluation row holds one vote per head per image: none doubled
    expected = slow_votes(sd_pipe, PROMPTS[:3], 2, 4, 5.0, steps=steps, scheduler=getattr(diffusers, cls))
    assert torch.equal(hrv.votes, expected)  # the k-th UNet call's votes are in row k


@pytest.mark.parametrize("option", ["non-square", "negative_prompt", "no start token"])
def test_build_options_equal_slow_computation(sd_pipe, option):
    kw = {"non-square": {"height": 16, "width": 24}, "negative_prompt": {"negative_prompt": "a blurry photo"},
          "no start token": {}}[option]
    start_token = option != "no start token"
    hrv = headlens.build(sd_pipe, CONCEPTS, PROMPTS[:3], num_inference_steps=STEPS, guidance_scale=5.0, batch_size=2,
                         seed=9, start_token=start_token, **kw)
    expected = slow_votes(sd_pipe, PROMPTS[:3], 2, 9, 5.0, start_token=start_token, **kw)
    assert torch.equal(hrv.votes, expected)
    plain = headlens.build(sd_pipe, CONCEPTS, PROMPTS[:3], num_inference_steps=STEPS, guidance_scale=5.0, batch_size=2,
                           seed=9)
    assert not torch.equal(hrv.votes, plain.votes)  # the option reached the generation
    if option == "non-square":
        assert hrv.metadata["latent_size"] == [8, 12]


def test_bfloat16_build_equals_slow_computation():
    from headlens.testing import tiny_sd_pipeline

    pipe = tiny_sd_pipeline()
    hrv = headlens.build(pipe, CONCEPTS, PROMPTS[:3], num_inference_steps=STEPS, guidance_scale=5.0, batch_size=2,
                         seed=2, dtype=torch.bfloat16)
    assert pipe.unet.dtype == torch.bfloat16 and pipe.text_encoder.dtype == torch.bfloat16
    expected = slow_votes(pipe, PROMPTS[:3], 2, 2, 5.0)
    assert torch.equal(hrv.votes, expected)
    assert hrv.votes.sum() == 3 * STEPS * len(hrv.heads)
