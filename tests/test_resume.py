"""Never lose work: SIGKILL + --resume == uninterrupted; bad checkpoints refused; unwritable/full disks fail first."""

import json
import os
import shutil
import sys
from pathlib import Path

import pytest
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

import headlens
from headlens.building import (
    CHECKPOINT_FILE,
    CHECKPOINT_META,
    BuildSettings,
    CheckpointMismatchError,
    HRVBuilder,
    read_checkpoint,
)
from headlens.hrv import HRV

CONCEPTS = {"Color": ["red", "blue", "green"], "Animals": ["cat", "golden retriever"], "Plants": ["rose", "oak tree"]}
PROMPTS = ["a photo of a cat", "a red car", "a rose in a vase", "a dog on green grass", "a blue bird", "an oak tree"]


# ---------------------------------------------------------------------------------------------- SIGKILL
def test_sigkill_mid_run_then_resume_equals_uninterrupted(tmp_path):
    limit, steps, bs = 48, 4, 2
    out = tmp_path / "run"
    proc = start_cli(build_args(out, limit, steps, bs, "--checkpoint-every", 4), tmp_path / "log.txt")
    try:
        wait_for_checkpoint(out, proc, min_batches=2)
    finally:
        kill_tree(proc)
    assert proc.returncode == -9, (tmp_path / "log.txt").read_text()
    meta, _ = read_checkpoint(out)
    assert 2 <= len(meta["batches_done"]) < limit // bs, "the kill must land mid-run"
    assert not (out / "hrv.json").exists()

    resumed = run_cli(build_args(out, limit, steps, bs, "--checkpoint-every", 4, "--resume"))
    assert resumed.returncode == 0, resumed.stderr
    hrv = HRV.load(out)
    assert torch.equal(hrv.votes, reference_votes(limit, steps, bs))
    assert hrv.metadata["prompts_done"] == limit and hrv.metadata["batches_done"] == [[0, limit // bs]]


def test_kill_between_checkpoint_files_keeps_the_newer_counts(sd_pipe, tmp_path):
    """The safetensors file carries its own record, so a stale checkpoint.json (kill between writes) is harmless."""
    s = BuildSettings(2, 7.5, 2, 5)
    b = HRVBuilder(sd_pipe, CONCEPTS, PROMPTS, s)
    b.run(batches=[0])
    b.save_checkpoint(tmp_path)
    stale = (tmp_path / CHECKPOINT_META).read_text()
    b.run(batches=[1])
    b.save_checkpoint(tmp_path)
    (tmp_path / CHECKPOINT_META).write_text(stale)  # as if killed right after the tensors were replaced
    c = HRVBuilder(sd_pipe, CONCEPTS, PROMPTS, s)
    assert c.load_checkpoint(tmp_path)
    assert c.batches_done == {0, 1} and torch.equal(c.votes, b.votes)
    c.run()
    full = headlens.build(sd_pipe, CONCEPTS, PROMPTS, num_inference_steps=2, batch_size=2, seed=5)
    assert torch.equal(c.result().votes, full.votes)


# ---------------------------------------------------------------------------------------------- bad checkpoints
@pytest.fixture(scope="module")
def saved_checkpoint(sd_pipe, tmp_path_factory):
    d = tmp_path_factory.mktemp("ckpt")
    b = HRVBuilder(sd_pipe, CONCEPTS, PROMPTS, BuildSettings(2, 7.5, 2, 5), per_prompt=True)
    b.run(batches=[0, 1])
    b.save_checkpoint(d)
    return d


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


@pytest.mark.parametrize("damage", ["truncated", "garbage", "missing-tensors", "tampered-counts", "batch-out-of-range"])
def test_damaged_checkpoint_is_refused_in_one_line(sd_pipe, saved_checkpoint, tmp_path, damage):
    d = _copy(saved_checkpoint, tmp_path / "c")
    tf = d / CHECKPOINT_FILE
    if damage == "truncated":
        tf.write_bytes(tf.read_bytes()[: tf.stat().st_size // 2])
    elif damage == "garbage":
        tf.write_bytes(os.urandom(2048))
    elif damage == "missing-tensors":
        tf.unlink()
    else:
        from safetensors.torch import save_file

        meta, tensors = read_checkpoint(d)
        if damage == "tampered-counts":
            tensors["votes"][0, 0, 0] += 1
        else:
            meta["batches_done"].append(99)
        save_file(tensors, str(tf), metadata={"headlens_checkpoint": json.dumps(meta)})
    before = {p.name: p.read_bytes() for p in d.iterdir()}
    with pytest.raises(CheckpointMismatchError) as e:
        headlens.build(sd_pipe, CONCEPTS, PROMPTS, num_inference_steps=2, batch_size=2, seed=5, out=d, resume=True,
                       per_prompt=True)
    msg = str(e.value)
    assert "\n" not in msg and str(d) in msg and ("delete" in msg or "start over" in msg)
    assert {p.name: p.read_bytes() for p in d.iterdir()} == before, "a refused checkpoint must be left as it was"


@pytest.mark.parametrize("change,field", [
    ({"concepts": {**CONCEPTS, "Extra": ["spoon"]}}, "concepts"),
    ({"prompts": PROMPTS[:-1]}, "prompts"),
    ({"prompts": list(reversed(PROMPTS))}, "prompts"),
    ({"num_inference_steps": 3}, "settings"),
    ({"seed": 6}, "settings"),
    ({"variant": "all-words"}, "settings"),
    ({"model_seed": 1}, "weights"),
])
def test_checkpoint_of_another_run_is_refused(saved_checkpoint, tmp_path, change, field):
    from headlens.testing import tiny_sd_pipeline

    d = _copy(saved_checkpoint, tmp_path / "c")
    kwargs = {"concepts": CONCEPTS, "prompts": PROMPTS, "num_inference_steps": 2, "batch_size": 2, "seed": 5}
    kwargs.update(change)
    pipe = tiny_sd_pipeline(seed=kwargs.pop("model_seed", 0))
    with pytest.raises(CheckpointMismatchError, match=f"differs in: .*{field}") as e:
        headlens.build(pipe, kwargs.pop("concepts"), kwargs.pop("prompts"), out=d, resume=True, **kwargs)
    assert "\n" not in str(e.value)


def test_per_prompt_resume_needs_a_per_prompt_checkpoint(sd_pipe, tmp_path):
    b = HRVBuilder(sd_pipe, CONCEPTS, PROMPTS, BuildSettings(2, 7.5, 2, 5))
    b.run(batches=[0])
    b.save_checkpoint(tmp_path)
    with pytest.raises(CheckpointMismatchError, match="no per-prompt votes"):
        headlens.build(sd_pipe, CONCEPTS, PROMPTS, num_inference_steps=2, batch_size=2, seed=5, out=tmp_path,
                       resume=True, per_prompt=True)


def test_cli_refuses_damaged_or_foreign_checkpoint_with_one_line(tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    rc, err = cli_in_process(build_args(out, 4, 2, 2), monkeypatch, capsys)
    assert rc == 0, err
    rc, err = cli_in_process(build_args(out, 4, 2, 2), monkeypatch, capsys)
    assert "--resume" in _one_error_line(rc, err)  # never overwrites a run's work without being asked
    tf = out / CHECKPOINT_FILE
    intact = tf.read_bytes()
    tf.write_bytes(intact[:100])
    rc, err = cli_in_process(build_args(out, 4, 2, 2, "--resume"), monkeypatch, capsys)
    line = _one_error_line(rc, err)
    assert line.startswith("error: checkpoint in") and "unreadable" in line
    tf.write_bytes(intact)
    rc, err = cli_in_process(build_args(out, 4, 3, 2, "--resume"), monkeypatch, capsys)  # other --steps
    assert "differs in: settings" in _one_error_line(rc, err)
    rc, err = cli_in_process(build_args(out, 5, 2, 2, "--resume"), monkeypatch, capsys)  # other --limit
    assert "differs in: num_prompts, prompts" in _one_error_line(rc, err)
    assert tf.read_bytes() == intact


def _one_error_line(rc: int, err: str) -> str:
    """The one `error:` line a failed CLI run ends with (exit code 2, no traceback)."""
    lines = [ln for ln in err.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("error:")]
    assert rc == 2 and len(errors) == 1 and lines[-1] == errors[0], err
    assert "Traceback" not in err
    return errors[0]


def _error_line(r) -> str:
    """The one `error:` line a failed CLI run ends with (exit code 2, no traceback)."""
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("error:")]
    assert r.returncode == 2 and len(errors) == 1 and lines[-1] == errors[0], r.stderr
    assert "Traceback" not in r.stderr
    return errors[0]


# ---------------------------------------------------------------------------------------------- output folder
class ForwardCounter:
    """Counts UNet and text-encoder forwards: 'compute spent'."""

    def __init__(self, pipe):
        self.calls = 0
        self.hooks = [m.register_forward_pre_hook(self._hit) for m in (pipe.unet, pipe.text_encoder)]

    def _hit(self, *args):
        self.calls += 1

    def remove(self):
        for h in self.hooks:
            h.remove()


@pytest.mark.skipif(sys.platform != "linux", reason="uses a file standing in the way of the folder")
def test_unwritable_output_fails_before_compute(sd_pipe, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    counter = ForwardCounter(sd_pipe)
    try:
        with pytest.raises(PermissionError, match="cannot write to output folder"):
            headlens.build(sd_pipe, CONCEPTS, PROMPTS, num_inference_steps=2, out=blocker / "hrv")
    finally:
        counter.remove()
    assert counter.calls == 0


@pytest.mark.parametrize("where", ["proc", "chmod"])
def test_read_only_output_folder_fails_before_compute(sd_pipe, tmp_path, monkeypatch, where):
    """An existing folder nobody can write: /proc (not even root can create files there), and a chmod 0500 folder
    (as root, whom the mode does not stop, the write probe gets the EACCES a normal user gets)."""
    if where == "proc":
        ro = Path("/proc")
        if not ro.is_dir():
            pytest.fail("this test needs Linux' /proc")
    else:
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        if os.geteuid() == 0:
            real = Path.write_bytes

            def write_bytes(self, data):
                if self.parent == ro:
                    raise PermissionError(13, "Permission denied", str(self))
                return real(self, data)

            monkeypatch.setattr(Path, "write_bytes", write_bytes)
    counter = ForwardCounter(sd_pipe)
    try:
        with pytest.raises(PermissionError, match=f"cannot write to output folder '{ro}'") as e:
            headlens.build(sd_pipe, CONCEPTS, PROMPTS, num_inference_steps=2, out=ro)
    finally:
        counter.remove()
        if where == "chmod":
            ro.chmod(0o700)
    assert counter.calls == 0
    assert "\n" not in str(e.value) and "--out" in str(e.value)
    if where == "chmod":
        assert list(ro.iterdir()) == []  # the probe left nothing behind


def test_full_disk_fails_before_compute(sd_pipe, tmp_path, monkeypatch):
    from headlens import building

    real = shutil.disk_usage
    monkeypatch.setattr(building.shutil, "disk_usage", lambda p: real(p)._replace(free=3 * 2**20))
    counter = ForwardCounter(sd_pipe)
    try:
        with pytest.raises(OSError, match="only 3 MB free"):
            headlens.build(sd_pipe, CONCEPTS, PROMPTS, num_inference_steps=2, out=tmp_path / "o")
    finally:
        counter.remove()
    assert counter.calls == 0
    assert not (tmp_path / "o" / CHECKPOINT_FILE).exists()


def test_output_estimate_counts_the_per_prompt_store(sd_pipe, tmp_path, monkeypatch):
    """Room for the counts but not for a large per-prompt store: only the per-prompt build is refused."""
    from headlens import building

    prompts = [f"prompt {i}" for i in range(4000)]
    b = HRVBuilder(sd_pipe, CONCEPTS, prompts, BuildSettings(2, 7.5, 2))
    t = b.num_evaluations()
    assert t == 2  # DDIM: one UNet evaluation per step
    small = building.output_bytes(t, 22, 3, 4000, per_prompt=False)
    large = building.output_bytes(t, 22, 3, 4000, per_prompt=True)
    assert large - small >= 4 * 4000 * 22 * 3  # store + its temp copy, in a checkpoint and beside the HRV
    real = shutil.disk_usage
    monkeypatch.setattr(building.shutil, "disk_usage", lambda p: real(p)._replace(free=small + 2**20))
    building.check_output_dir(tmp_path / "a", min_free_mb=0, need_bytes=small)  # fits
    counter = ForwardCounter(sd_pipe)
    try:
        with pytest.raises(OSError, match="MB free"):
            headlens.build(sd_pipe, CONCEPTS, prompts, num_inference_steps=2, batch_size=2, out=tmp_path / "b",
                           per_prompt=True, min_free_mb=0)
    finally:
        counter.remove()
    assert counter.calls == 0


def test_cli_disk_full_threshold_fails_before_loading(tmp_path):
    r = run_cli(build_args(tmp_path / "o", 4, 2, 2, "--min-free-mb", 10**12))  # a real process: nothing loaded
    assert "MB free" in _error_line(r)
    assert "model tiny" not in r.stderr  # nothing was loaded
