"""`headlens build` from the command line (subprocess, like a user)."""

import os
import subprocess
import sys

import torch
from test_scale_helpers import cli_in_process

from headlens import HRV
from headlens.building import BuildSettings, HRVBuilder
from headlens.concepts import load_prompts
from headlens.testing import tiny_sd_pipeline

ENV = dict(os.environ, OMP_NUM_THREADS="1", TRANSFORMERS_VERBOSITY="error")


def run(*args, check=True, env=None):
    p = subprocess.run([sys.executable, "-m", "headlens", *args], capture_output=True, text=True,
                       env={**ENV, **(env or {})}, timeout=300)
    if check and p.returncode != 0:
        raise AssertionError(p.stderr)
    return p


def test_build_cli_writes_hrv_and_resumes(tmp_path, monkeypatch, capsys):
    out = tmp_path / "hrv"
    args = ["build", "--model", "tiny", "--concepts", "default", "--prompts", "default", "--limit", "6",
            "--steps", "2", "--batch-size", "4", "--seed", "3", "--out", str(out), "--top", "2"]
    p = run(*args)
    assert "Top 2 heads per concept" in p.stdout + p.stderr
    hrv = HRV.load(out)
    assert hrv.votes.sum() == 6 * 2 * len(hrv.heads)
    assert hrv.metadata["seed"] == 3 and hrv.metadata["num_prompts"] == 6 and hrv.metadata["batch_size"] == 4
    again = run(*args, check=False)
    assert again.returncode == 2
    err = again.stderr.strip().splitlines()
    assert err[-1].startswith("error:") and "--resume" in err[-1] and "Traceback" not in again.stderr
    # a partial checkpoint (batch 0 of 2 done) resumed from the command line: only batch 1 is generated,
    # and the counts are those of the uninterrupted build above
    partial = tmp_path / "partial"
    builder = HRVBuilder(tiny_sd_pipeline(), "default", load_prompts("default")[:6], BuildSettings(2, 7.5, 4, 3))
    builder.run(batches=[0])
    builder.save_checkpoint(partial)
    assert not torch.equal(builder.votes, hrv.votes)
    with UNetForwards() as calls:
        rc, err = cli_in_process([a if a != str(out) else str(partial) for a in args] + ["--resume"], monkeypatch,
                                 capsys)
    assert rc == 0, err
    assert calls.n == 2  # one pipeline call (batch 1: prompts 4 and 5) × 2 steps
    resumed = HRV.load(partial)
    assert torch.equal(resumed.votes, hrv.votes) and resumed.metadata["prompts_done"] == 6
    with UNetForwards() as calls:  # resuming a finished build computes nothing and keeps the counts
        rc, err = cli_in_process([*args, "--resume"], monkeypatch, capsys)
    assert rc == 0 and calls.n == 0, err
    assert torch.equal(HRV.load(out).votes, hrv.votes)


class UNetForwards:
    """Counts UNet forwards in this process (any UNet, also one the CLI loads itself), via a global hook."""

    def __enter__(self):
        from diffusers import UNet2DConditionModel

        self.n = 0

        def hit(module, args):
            if isinstance(module, UNet2DConditionModel):
                self.n += 1

        self.hook = torch.nn.modules.module.register_module_forward_pre_hook(hit)
        return self

    def __exit__(self, *exc):
        self.hook.remove()


def test_build_cli_errors_are_one_line(tmp_path):
    for extra, needle in [(["--concepts", str(tmp_path / "none.toml")], "concept file"),
                          (["--prompts", str(tmp_path / "none.txt")], "prompt file"),
                          (["--variant", "bogus"], "unknown --variant"),
                          (["--limit", "0"], "--max-prompts")]:
        p = run("build", "--model", "tiny", "--steps", "1", "--out", str(tmp_path / "o"), *extra, check=False)
        assert p.returncode == 2, p.stderr
        last = p.stderr.strip().splitlines()[-1]
        assert "Traceback" not in p.stderr and last.startswith("error:") and needle in last, p.stderr


def test_build_help_explains_every_flag():
    import inspect

    from headlens.cli import app

    p = run("build", "--help", env={"COLUMNS": "200", "TERM": "dumb"})
    cmd = next(c for c in app.registered_commands if c.name == "build")
    params = inspect.signature(cmd.callback).parameters.values()
    assert len(params) > 20
    for param in params:
        info = param.default
        assert info.help and len(info.help) > 15, param.name
        longs = [d for d in getattr(info, "param_decls", None) or () if d.startswith("--")]
        assert longs, param.name  # every option has a --long name ...
        for decl in longs:
            assert decl in p.stdout, decl  # ... and --help shows it
