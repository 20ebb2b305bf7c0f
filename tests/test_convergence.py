"""Per-prompt votes, bootstrap intervals, rank stability and the --until-stable rule."""

import csv
import json

import numpy as np
import pytest
import scipy.stats
import torch
from test_scale_helpers import run_cli

import headlens
from headlens.capture import VoteCapture
from headlens.convergence import (
    StabilityTracker,
    bootstrap_ci,
    convergence_report,
    hrv_batch,
    prompts_until_stable,
    stability_curve,
    top_sets,
)
from headlens.distributed import read_prompt_votes
from headlens.heads import HeadIndex
from headlens.votes import hrv_from_votes, votes_from_scores

CONCEPTS = {"Color": ["red", "blue", "green"], "Animals": ["cat", "golden retriever"], "Plants": ["rose", "oak tree"],
            "Weather": ["rain", "snow"]}
PROMPTS = [f"a {c} {o} in the {w}" for c in ("red", "blue", "green", "yellow") for o in ("cat", "rose", "car", "house")
           for w in ("rain", "sun")]  # 32


@pytest.fixture(scope="module")
def built(sd_pipe):
    return headlens.build(sd_pipe, CONCEPTS, PROMPTS * 3, num_inference_steps=2, batch_size=8, per_prompt=True)


# ---------------------------------------------------------------------------------------------- per-prompt store
def test_per_prompt_votes_add_up(built):
    pv = built.prompt_votes.to(torch.int64)
    t = built.votes.shape[0]
    assert pv.shape == (96, len(built.heads), 4) and bool(built.prompt_done.all())
    assert torch.equal(pv.sum(0), built.votes.sum(0))
    assert bool((pv.sum(-1) == t).all()), "every head votes once per step for every image"


def test_capture_attributes_votes_to_the_right_image():
    """Hand-made scores: image 0 always picks concept 0, image 1 picks 2 — per image and in total."""
    heads = HeadIndex.from_unet(__import__("headlens.testing", fromlist=["tiny_unet"]).tiny_unet())
    cap = VoteCapture(None, heads, 3, variant="all-words", per_image=True)
    cap.begin_batch([5, 9], seed=0, num_steps=2)
    expected = torch.zeros(2, len(heads), 3, dtype=torch.int64)
    for step in range(2):
        for layer in heads.layers:
            scores = torch.zeros(2, layer.num_heads, 3)
            scores[0, :, 0] = 1.0
            scores[1, :, 2] = 1.0
            scores[1, 0, 1] = 2.0  # head 0 of each layer: image 1 picks concept 1
            cap._record(step, layer, scores)
            expected[step] += torch.nn.functional.pad(votes_from_scores(scores), (0, 0, layer.head_offset,
                                                      len(heads) - layer.head_offset - layer.num_heads))
    cap._record(1, heads.layers[0], torch.ones(2, heads.layers[0].num_heads, 3))  # same (step, layer) again: counted at once
    expected[1, : heads.layers[0].num_heads, 0] += 2
    cap.finish_batch()
    assert torch.equal(cap.votes, expected)
    iv = cap.image_votes
    assert int(iv[0, :, 0].sum()) == 2 * len(heads) + heads.layers[0].num_heads
    first_heads = torch.tensor([layer.head_offset for layer in heads.layers])
    assert bool((iv[1, first_heads, 1] == 2).all()) and int(iv[1, :, 2].sum()) == 2 * (len(heads) - len(heads.layers))
    assert torch.equal(iv.sum(0), cap.votes.sum(0))


def test_per_prompt_store_is_saved_compactly(sd_pipe, tmp_path):
    hrv = headlens.build(sd_pipe, CONCEPTS, PROMPTS[:4], num_inference_steps=2, batch_size=2, out=tmp_path,
                         per_prompt=True)
    pv, done, meta = read_prompt_votes(tmp_path)
    from safetensors import safe_open

    with safe_open(str(tmp_path / "prompt_votes.safetensors"), framework="pt") as f:
        assert f.get_tensor("prompt_votes").dtype == torch.uint8  # ≤ 255 evaluations
    assert torch.equal(pv, hrv.prompt_votes) and bool(done.all())
    assert meta["concepts"] == list(CONCEPTS) and meta["fingerprint"]["num_prompts"] == 4


# ---------------------------------------------------------------------------------------------- maths
def test_hrv_batch_matches_hrv_from_votes():
    g = torch.Generator().manual_seed(0)
    v = torch.randint(0, 20, (5, 30, 4), generator=g)
    v[1, :, 2] = 0  # a concept that never wins
    batched = hrv_batch(v)
    for i in range(5):
        assert torch.allclose(batched[i], hrv_from_votes(v[i]), atol=1e-6)


def test_bootstrap_contains_point_and_shrinks_with_more_prompts(built):
    pv = built.prompt_votes
    small = bootstrap_ci(pv[:12], num_boot=300, seed=1)
    large = bootstrap_ci(pv, num_boot=300, seed=1)
    for ci in (small, large):
        assert bool(ci.contains_point().all())
        assert bool((ci.low <= ci.high).all())
    assert torch.allclose(large.point, built.matrix)
    assert float(large.width.mean()) < 0.75 * float(small.width.mean())
    assert float(large.std.mean()) < float(small.std.mean())
    again = bootstrap_ci(pv, num_boot=300, seed=1)
    assert torch.equal(again.low, large.low) and torch.equal(again.high, large.high)  # seeded


def test_bootstrap_width_follows_square_root_law():
    """Synthetic prompts with known vote probabilities: 16× the prompts → intervals ~4× narrower."""
    g = torch.Generator().manual_seed(0)
    probs = torch.softmax(torch.randn(40, 5, generator=g) * 1.5, dim=-1)  # [H, C]

    def prompts(n):
        draws = torch.multinomial(probs.repeat(n, 1), 10, replacement=True, generator=g)  # 10 steps
        return torch.nn.functional.one_hot(draws, 5).sum(1).reshape(n, 40, 5).to(torch.int16)

    w_small = float(bootstrap_ci(prompts(25), 400, seed=2).width.mean())
    w_large = float(bootstrap_ci(prompts(400), 400, seed=2).width.mean())
    assert 2.8 < w_small / w_large < 5.5


def hrv_by_hand(votes: np.ndarray) -> np.ndarray:
    """[C, H] from summed votes [H, C] with numpy (spec §4): per head a distribution, per concept × H / its sum."""
    H = votes.shape[0]
    per_head = votes.sum(1, keepdims=True)
    p = np.divide(votes, per_head, out=np.zeros_like(votes, dtype=float), where=per_head > 0)
    col = p.sum(0)
    return np.stack([H * p[:, c] / col[c] if col[c] > 0 else np.ones(H) for c in range(votes.shape[1])])


def test_rank_stability_reaches_one_at_the_end(built):
    rows = stability_curve(built.prompt_votes, built.concepts, points=6, top=5, step=8)
    ns = sorted({r["prompts"] for r in rows})
    assert ns[-1] == 96 and ns[0] == 8 and all(n % 8 == 0 for n in ns) and len(ns) >= 4
    assert len(rows) == len(ns) * 4
    last = [r for r in rows if r["prompts"] == 96]
    assert len(last) == 4 and all(r["spearman"] == 1.0 and r["top_overlap"] == 1.0 for r in last)
    first = [r for r in rows if r["prompts"] == 8]
    assert any(r["spearman"] < 1.0 for r in first)
    # every point recomputed independently: prefix sums, numpy HRVs, scipy's Spearman, top-5 sets by hand
    pv = built.prompt_votes.to(torch.int64).numpy().astype(float)
    final = hrv_by_hand(pv.sum(0))
    for r in rows:
        c = built.concepts.index(r["concept"])
        m = hrv_by_hand(pv[: r["prompts"]].sum(0))
        rho = 1.0 if np.array_equal(m[c], final[c]) else scipy.stats.spearmanr(m[c], final[c]).statistic
        assert r["spearman"] == pytest.approx(rho, abs=1e-9, nan_ok=True), r
        top_now = set(sorted(range(len(m[c])), key=lambda h: (-m[c][h], h))[:5])
        top_end = set(sorted(range(len(final[c])), key=lambda h: (-final[c][h], h))[:5])
        assert r["top_overlap"] == pytest.approx(len(top_now & top_end) / 5), r


def test_tracker_rule():
    t = StabilityTracker(top=1, window=10)
    a = torch.tensor([[5, 0], [0, 5], [1, 1]])  # head 0 → concept 0, head 1 → concept 1
    assert not t.update(a, 4)
    assert not t.update(a * 2, 8)
    assert t.update(a * 3, 14)  # unchanged since 4
    b = torch.tensor([[0, 9], [0, 5], [9, 0]])  # head 2 now tops concept 0
    assert not t.update(a * 3 + b * 4, 20) and t.since == 20
    restored = StabilityTracker.from_state(json.loads(json.dumps(t.state())), top=1, window=10)
    assert restored.sets == t.sets and restored.since == 20 and not restored.stable
    assert top_sets(hrv_from_votes(a), 1) == [(0,), (1,)]


# ---------------------------------------------------------------------------------------------- --until-stable
def test_until_stable_stops_early_exactly_where_the_offline_rule_says(sd_pipe, built):
    """One caption over and over: the top-3 sets settle, and the build stops as soon as they held for 16 prompts."""
    top, window, bs = 3, 16, 4
    same = ["a red cat in the rain"] * 96
    full = headlens.build(sd_pipe, CONCEPTS, same, num_inference_steps=2, batch_size=bs, per_prompt=True,
                          variant="all-words")
    expected = prompts_until_stable(full.prompt_votes, top, window, step=bs)
    assert expected is not None and expected < 96, "the case is built to converge well before 96 prompts"
    early = headlens.build(sd_pipe, CONCEPTS, same, num_inference_steps=2, batch_size=bs, variant="all-words",
                           until_stable=window, stable_top=top)
    info = early.metadata["until_stable"]
    assert info["stopped_early"] and info["prompts_used"] == expected == early.metadata["prompts_done"]
    # the early HRV is exactly the HRV of the prompts it used
    assert torch.equal(early.votes.sum(0), full.prompt_votes[:expected].to(torch.int64).sum(0))
    # a window longer than the run never stops early
    never = headlens.build(sd_pipe, CONCEPTS, same[:24], num_inference_steps=2, batch_size=bs, variant="all-words",
                           until_stable=100, stable_top=top)
    assert not never.metadata["until_stable"]["stopped_early"] and never.metadata["prompts_done"] == 24


def test_until_stable_state_survives_resume(sd_pipe, tmp_path):
    same = ["a blue rose"] * 40
    kwargs = {"num_inference_steps": 2, "batch_size": 4, "variant": "all-words", "until_stable": 12, "stable_top": 3}
    whole = headlens.build(sd_pipe, CONCEPTS, same, **kwargs)
    stop = whole.metadata["until_stable"]["prompts_used"]
    from headlens.building import BuildSettings, HRVBuilder

    part = HRVBuilder(sd_pipe, CONCEPTS, same, BuildSettings(2, 7.5, 4, 22, "all-words"))
    t = StabilityTracker(3, 12)
    for b in range(10):  # "killed" once the top sets have held for a batch but not yet for 12 prompts
        part.run(batches=[b])
        t.update(part.votes.sum(0), part.prompts_done())
        if t.since < t.prompts:
            break
    assert t.since < t.prompts < stop
    restarted = t.prompts + 4 + 12  # a tracker that forgot its state could stop no earlier than this
    assert stop < restarted
    part.checkpoint_extra["stability"] = t.state()
    part.save_checkpoint(tmp_path)
    resumed = headlens.build(sd_pipe, CONCEPTS, same, out=tmp_path, resume=True, **kwargs)
    assert resumed.metadata["until_stable"]["prompts_used"] == stop
    assert torch.equal(resumed.votes, whole.votes)


# ---------------------------------------------------------------------------------------------- report + CLI
def test_convergence_report_and_cli(sd_pipe, tmp_path):
    headlens.build(sd_pipe, CONCEPTS, PROMPTS, num_inference_steps=2, batch_size=4, out=tmp_path / "hrv",
                   per_prompt=True)
    s = convergence_report(tmp_path / "hrv", tmp_path / "conv", num_boot=50, top=4, window=8, points=5)
    assert s["prompts"] == 32 and s["interval_contains_point"] == 1.0 and s["final_spearman_min"] == 1.0
    with open(tmp_path / "conv" / "stability.csv") as f:
        rows = list(csv.DictReader(f))
    assert {r["concept"] for r in rows} == set(CONCEPTS) and rows[-1]["prompts"] == "32"
    with open(tmp_path / "conv" / "intervals.csv") as f:
        assert sum(1 for _ in f) == 1 + 4 * 22
    assert (tmp_path / "conv" / "stability.png").read_bytes()[:4] == b"\x89PNG"
    r = run_cli(["convergence", tmp_path / "hrv", "--out", tmp_path / "cli", "--boot", "40", "--top", "4"])
    assert r.returncode == 0, r.stderr
    assert "prompts" in r.stderr and (tmp_path / "cli" / "summary.json").exists()
    no_store = tmp_path / "plain"
    headlens.build(sd_pipe, CONCEPTS, PROMPTS[:2], num_inference_steps=2, out=no_store)
    bad = run_cli(["convergence", no_store, "--out", tmp_path / "x"])
    assert bad.returncode == 2 and "--per-prompt" in bad.stderr.splitlines()[-1]
