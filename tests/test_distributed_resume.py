"""Sharded builds lose nothing either: SIGKILL a 2-process torchrun mid-run, resume, get the exact counts."""

import torch
from test_scale_helpers import (
    build_args,
    cli_in_process,
    kill_tree,
    reference_votes,
    run_cli,
    start_cli,
    wait_for_checkpoint,
)

from headlens.building import read_checkpoint
from headlens.hrv import HRV


def test_sigkill_torchrun_mid_run_then_resume_equals_uninterrupted(tmp_path):
    limit, steps, bs = 64, 3, 2  # 32 batches, 16 rounds of 2
    out = tmp_path / "run"
    args = build_args(out, limit, steps, bs, "--checkpoint-every", 4, "--per-prompt")
    proc = start_cli(args, tmp_path / "log.txt", torchrun=2)
    try:
        wait_for_checkpoint(out, proc, min_batches=4, timeout=200)
    finally:
        kill_tree(proc)  # torchrun and both workers, as a dying machine would
    meta, tensors = read_checkpoint(out)
    done = meta["batches_done"]
    assert 4 <= len(done) < limit // bs, "the kill must land mid-run"
    assert set(done) == set(range(len(done))), "checkpoints hold whole rounds: batch b → rank b % 2"
    assert int(tensors["prompt_votes"].sum()) == int(tensors["votes"].sum())
    assert not (out / "hrv.json").exists()

    r = run_cli(args + ["--resume"], torchrun=2, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    hrv = HRV.load(out)
    ref = reference_votes(limit, steps, bs, per_prompt=True)
    assert torch.equal(hrv.votes, ref)
    assert hrv.metadata["batches_done"] == [[0, limit // bs]]


def test_torchrun_refuses_a_mismatched_checkpoint_on_every_rank(tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    rc, err = cli_in_process(build_args(out, 4, 2, 2), monkeypatch, capsys)
    assert rc == 0, err
    r = run_cli(build_args(out, 4, 3, 2, "--resume"), torchrun=2, timeout=240)  # other --steps
    assert r.returncode != 0
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 2 and all("differs in: settings" in e for e in errors), r.stderr  # one per rank, no hang
