"""Helpers of the scale tests (no tests here): run the real CLI in a subprocess, kill its processes, read counts."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

PY = sys.executable
TORCHRUN = str(Path(sys.executable).with_name("torchrun"))
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TRANSFORMERS_VERBOSITY": "error",
       "DIFFUSERS_VERBOSITY": "error", "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}


def build_args(out, limit=12, steps=3, batch_size=2, *extra) -> list[str]:
    """`headlens build` arguments on the tiny model."""
    return ["build", "--model", "tiny", "--limit", str(limit), "--steps", str(steps), "--batch-size", str(batch_size),
            "--top", "0", "--out", str(out), *[str(e) for e in extra]]


def run_cli(args, timeout=180, torchrun: int = 0) -> subprocess.CompletedProcess:
    """Run `python -m headlens ARGS` (or under torchrun with N processes) and wait."""
    cmd = ([TORCHRUN, "--standalone", "--nproc_per_node", str(torchrun), "-m", "headlens"] if torchrun
           else [PY, "-m", "headlens"]) + list(args)
    return subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=timeout, check=False)


def start_cli(args, log: Path, torchrun: int = 0) -> subprocess.Popen:
    """Start `python -m headlens ARGS` (or torchrun) in the background, output to ``log``."""
    cmd = ([TORCHRUN, "--standalone", "--nproc_per_node", str(torchrun), "-m", "headlens"] if torchrun
           else [PY, "-m", "headlens"]) + list(args)
    f = open(log, "w")  # noqa: SIM115 - closed when the process ends
    return subprocess.Popen(cmd, env=ENV, stdout=f, stderr=subprocess.STDOUT)


def descendants(pid: int) -> list[int]:
    """Process ids started by ``pid``, recursively (Linux /proc)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        for task in Path(f"/proc/{p}/task").glob("*"):
            try:
                kids = [int(x) for x in (task / "children").read_text().split()]
            except OSError:
                continue
            out += kids
            todo += kids
    return out


def kill_tree(proc: subprocess.Popen) -> None:
    """SIGKILL a process we started and every process it started (torchrun workers have their own sessions)."""
    pids = descendants(proc.pid)
    proc.send_signal(signal.SIGKILL)
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait(timeout=30)
    deadline = time.time() + 30
    while time.time() < deadline and any(Path(f"/proc/{p}").exists() and _alive(p) for p in pids):
        time.sleep(0.05)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except OSError:
        return False
    return state != "Z"


def wait_for_checkpoint(out: Path, proc: subprocess.Popen, min_batches: int = 1, timeout: float = 150) -> list[int]:
    """Poll until ``out`` holds a checkpoint with at least ``min_batches`` batches; returns them."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        p = out / "checkpoint.json"
        if p.exists():
            try:
                done = json.loads(p.read_text())["batches_done"]
            except (ValueError, KeyError, OSError):  # being replaced right now
                done = []
            if len(done) >= min_batches:
                return done
        if proc.poll() is not None:
            raise AssertionError(f"the build ended (rc {proc.returncode}) before writing a checkpoint")
        time.sleep(0.01)
    raise AssertionError("no checkpoint appeared in time")


def reference_votes(limit: int, steps: int, batch_size: int, **kwargs) -> torch.Tensor:
    """Counts of an uninterrupted in-process build with the CLI's tiny model, prompts and concepts."""
    import headlens
    from headlens.testing import tiny_sd_pipeline

    prompts = headlens.load_prompts("default")[:limit]
    return headlens.build(tiny_sd_pipeline(), "default", prompts, num_inference_steps=steps, batch_size=batch_size,
                          **kwargs).votes


def cli_in_process(args, monkeypatch, capsys) -> tuple[int, str]:
    """Run the `headlens` CLI in this process (as its console entry point does); (exit code, stderr)."""
    from headlens.cli import app
    from headlens.cli.common import run_app

    monkeypatch.setattr(sys, "argv", ["headlens", *[str(a) for a in args]])
    capsys.readouterr()
    rc = run_app(app)
    return rc, capsys.readouterr().err
