"""`headlens build` from the command line (subprocess, like a user)."""

import os
import subprocess
import sys

import torch

from headlens import HRV

ENV = dict(os.environ, OMP_NUM_THREADS="1", TRANSFORMERS_VERBOSITY="error")


def run(*args, check=True):
    p = subprocess.run([sys.executable, "-m", "headlens", *args], capture_output=True, text=True, env=ENV, timeout=300)
    if check and p.returncode != 0:
        raise AssertionError(p.stderr)
    return p


def test_build_cli_writes_hrv_and_resumes(tmp_path):
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
    run(*args, "--resume")
    assert torch.equal(HRV.load(out).votes, hrv.votes)


def test_build_cli_errors_are_one_line(tmp_path):
    for extra, needle in [(["--concepts", str(tmp_path / "none.toml")], "concept file"),
                          (["--prompts", str(tmp_path / "none.txt")], "prompt file"),
                          (["--variant", "bogus"], "unknown variant"),
                          (["--limit", "0"], "--limit")]:
        p = run("build", "--model", "tiny", "--steps", "1", "--out", str(tmp_path / "o"), *extra, check=False)
        assert p.returncode == 2, p.stderr
        assert "Traceback" not in p.stderr and needle in p.stderr


def test_build_help_explains_every_flag():
    p = run("build", "--help")
    for flag in ["--model", "--concepts", "--prompts", "--steps", "--guidance", "--batch-size", "--seed", "--out", "--resume"]:
        assert flag in p.stdout
