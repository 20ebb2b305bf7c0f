"""Distributed and sharded construction give exactly the one-process counts; merge adds runs exactly or refuses."""

import pytest
import torch
from test_scale_helpers import build_args, reference_votes, run_cli

import headlens
from headlens.building import CHECKPOINT_FILE, read_checkpoint
from headlens.distributed import (
    Comm,
    MergeError,
    env_world,
    merge_runs,
    parse_shard,
    read_prompt_votes,
    setup,
    shard_batches,
)
from headlens.hrv import HRV

CONCEPTS = {"Color": ["red", "blue", "green"], "Animals": ["cat", "golden retriever"], "Plants": ["rose", "oak tree"]}
PROMPTS = [f"a {c} {o}" for c in ("red", "blue", "green") for o in ("cat", "rose", "car", "house")]  # 12
SETTINGS = {"num_inference_steps": 2, "batch_size": 2, "seed": 3}


@pytest.fixture(scope="module")
def full(sd_pipe):
    return headlens.build(sd_pipe, CONCEPTS, PROMPTS, per_prompt=True, **SETTINGS)


# ---------------------------------------------------------------------------------------------- torchrun
def test_two_process_torchrun_equals_one_process(tmp_path):
    limit, steps, bs = 14, 3, 2  # 7 batches: rank 0 gets 4, rank 1 gets 3
    out = tmp_path / "dist"
    r = run_cli(build_args(out, limit, steps, bs, "--per-prompt", "--checkpoint-every", 4), torchrun=2, timeout=240)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "2 processes" in r.stderr
    hrv = HRV.load(out)
    ref = reference_votes(limit, steps, bs, per_prompt=True)
    assert torch.equal(hrv.votes, ref)
    assert hrv.metadata["batches_done"] == [[0, 7]] and hrv.metadata["prompts_done"] == limit
    pv, done, _ = read_prompt_votes(out)
    assert bool(done.all()) and int(pv.to(torch.int64).sum()) == int(ref.sum())
    assert torch.equal(pv.to(torch.int64).sum(0), ref.sum(0))
    meta, tensors = read_checkpoint(out)
    assert torch.equal(tensors["votes"], ref) and meta["batches_done"] == list(range(7))
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == [
        "checkpoint.json", "checkpoint.safetensors", "hrv.json", "hrv.safetensors", "prompt_votes.safetensors"]


def test_env_detection_without_launcher(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert env_world() is None
    comm = setup("cpu")
    assert comm == Comm() and not comm.distributed and comm.is_root
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert env_world() is None
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert env_world() == (3, 4, 1)
    assert setup("cpu", enabled=False) == Comm()
    assert Comm(3, 4, 1).device_for("cuda") == "cuda:1" and Comm(3, 4, 1).device_for("cpu") == "cpu"
    t = torch.arange(6).reshape(2, 3)
    assert torch.equal(Comm().sum(t), t) and Comm().on_root(lambda: 7) == 7


# ---------------------------------------------------------------------------------------------- shards + merge
def test_shard_parsing_and_assignment():
    assert parse_shard("1/3") == (1, 3) and parse_shard((0, 2)) == (0, 2) and parse_shard(None) is None
    for bad in ("3/3", "-1/2", "x", "1/0", "1-3"):
        with pytest.raises(ValueError, match="bad shard"):
            parse_shard(bad)
    assert shard_batches(7, "1/3") == [1, 4] and shard_batches(3) == [0, 1, 2]
    with pytest.raises(ValueError, match="has no batches"):
        shard_batches(2, "3/4")
    parts = [set(shard_batches(11, (i, 4))) for i in range(4)]
    assert set().union(*parts) == set(range(11)) and sum(map(len, parts)) == 11


def test_shards_merge_to_the_full_counts(sd_pipe, full, tmp_path):
    outs = []
    for i in range(3):
        outs.append(tmp_path / f"s{i}")
        part = headlens.build(sd_pipe, CONCEPTS, PROMPTS, shard=f"{i}/3", out=outs[-1], per_prompt=True, **SETTINGS)
        assert part.metadata["batches_done"] == [[b, b + 1] for b in range(i, 6, 3)]
        assert part.metadata["prompts_done"] == 4
    hrv, _merged = merge_runs(outs, tmp_path / "m")
    assert torch.equal(hrv.votes, full.votes)
    assert torch.equal(HRV.load(tmp_path / "m").votes, full.votes)
    assert hrv.metadata["prompts_done"] == len(PROMPTS) and hrv.metadata["batches_done"] == [[0, 6]]
    pv, done, _ = read_prompt_votes(tmp_path / "m")
    assert torch.equal(pv, full.prompt_votes) and bool(done.all())
    assert torch.allclose(hrv.matrix, full.matrix)


def test_merge_of_checkpoints_and_hrvs_then_resume_finishes(sd_pipe, full, tmp_path):
    """A killed shard (checkpoint only) merges too; the merged folder resumes to the full counts."""
    from headlens.building import BuildSettings, HRVBuilder

    headlens.build(sd_pipe, CONCEPTS, PROMPTS, shard="0/3", out=tmp_path / "a", **SETTINGS)
    b = HRVBuilder(sd_pipe, CONCEPTS, PROMPTS, BuildSettings(2, 7.5, 2, 3))
    b.run(batches=[1])  # shard 1/3 killed after its first batch
    b.save_checkpoint(tmp_path / "b")
    assert not (tmp_path / "b" / "hrv.json").exists()
    hrv, merged = merge_runs([tmp_path / "a", tmp_path / "b"], tmp_path / "m")
    assert merged.batches == {0, 3, 1} and hrv.metadata["prompts_done"] == 6
    done = headlens.build(sd_pipe, CONCEPTS, PROMPTS, out=tmp_path / "m", resume=True, **SETTINGS)
    assert torch.equal(done.votes, full.votes)


def test_merge_refuses_overlaps_and_other_runs(sd_pipe, tmp_path):
    a = tmp_path / "a"
    headlens.build(sd_pipe, CONCEPTS, PROMPTS, shard="0/2", out=a, **SETTINGS)
    headlens.build(sd_pipe, CONCEPTS, PROMPTS, shard="1/2", out=tmp_path / "b", **SETTINGS)
    headlens.build(sd_pipe, CONCEPTS, PROMPTS, shard="0/3", out=tmp_path / "overlap", **SETTINGS)
    with pytest.raises(MergeError, match=r"both did batches 0 \(batch size 2\).*twice"):
        merge_runs([a, tmp_path / "overlap"])
    with pytest.raises(MergeError, match="both did"):
        merge_runs([a, a])
    others = {
        "seed": {"CONCEPTS": CONCEPTS, "PROMPTS": PROMPTS, "settings": {**SETTINGS, "seed": 4}},
        "batch_size": {"CONCEPTS": CONCEPTS, "PROMPTS": PROMPTS, "settings": {**SETTINGS, "batch_size": 3}},
        "concepts": {"CONCEPTS": {**CONCEPTS, "Extra": ["spoon"]}, "PROMPTS": PROMPTS, "settings": SETTINGS},
        "prompts": {"CONCEPTS": CONCEPTS, "PROMPTS": PROMPTS[::-1], "settings": SETTINGS},
    }
    for name, o in others.items():
        d = tmp_path / name
        headlens.build(sd_pipe, o["CONCEPTS"], o["PROMPTS"], shard="1/2", out=d, **o["settings"])
        with pytest.raises(MergeError, match=f"differ in .*{name}"):
            merge_runs([a, d])
    from headlens.testing import tiny_sd_pipeline

    headlens.build(tiny_sd_pipeline(seed=1), CONCEPTS, PROMPTS, shard="1/2", out=tmp_path / "model", **SETTINGS)
    with pytest.raises(MergeError, match="differ in .*weights"):
        merge_runs([a, tmp_path / "model"])
    with pytest.raises(MergeError, match="at least two"):
        merge_runs([a])
    hrv, _ = merge_runs([a, tmp_path / "b"])  # the right pair still merges
    assert hrv.metadata["prompts_done"] == len(PROMPTS)


def test_merge_cli(sd_pipe, tmp_path, full):
    for i in range(2):
        headlens.build(sd_pipe, CONCEPTS, PROMPTS, shard=f"{i}/2", out=tmp_path / f"s{i}", **SETTINGS)
    ok = run_cli(["merge", tmp_path / "s0", tmp_path / "s1", "--out", tmp_path / "m"])
    assert ok.returncode == 0, ok.stderr
    assert torch.equal(HRV.load(tmp_path / "m").votes, full.votes)
    assert (tmp_path / "m" / CHECKPOINT_FILE).exists()
    bad = run_cli(["merge", tmp_path / "s0", tmp_path / "m", "--out", tmp_path / "m2"])
    errors = [ln for ln in bad.stderr.splitlines() if ln.startswith("error:")]
    assert bad.returncode == 2 and len(errors) == 1 and "twice" in errors[0], bad.stderr
    assert not (tmp_path / "m2" / "hrv.json").exists()


def test_merge_never_overwrites_a_run(sd_pipe, tmp_path):
    for i in range(2):
        headlens.build(sd_pipe, CONCEPTS, PROMPTS, shard=f"{i}/2", out=tmp_path / f"s{i}", **SETTINGS)
    before = (tmp_path / "s0" / CHECKPOINT_FILE).read_bytes()
    with pytest.raises(MergeError, match="already holds"):
        merge_runs([tmp_path / "s0", tmp_path / "s1"], tmp_path / "s0")
    assert (tmp_path / "s0" / CHECKPOINT_FILE).read_bytes() == before
