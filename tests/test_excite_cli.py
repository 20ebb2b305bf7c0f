"""`headlens excite` end to end on the tiny model (one real subprocess, the rest in-process)."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from cli_inprocess import cli_code as cli
from PIL import Image

import headlens
from headlens import HRV
from headlens.heads import HeadIndex
from headlens.testing import tiny_sd_pipeline

ENV = dict(os.environ, OMP_NUM_THREADS="1", TRANSFORMERS_VERBOSITY="error")


@pytest.fixture(scope="module")
def hrv_dir(tmp_path_factory):
    heads = HeadIndex.from_unet(tiny_sd_pipeline().unet)
    m = torch.linspace(1.5, 0.5, len(heads)).repeat(2, 1)
    return HRV.from_matrix(m, heads, ["Animals", "Objects"]).save(tmp_path_factory.mktemp("hrv") / "hrv")


def test_excite_subprocess_writes_sd_ae_and_ae_hrv(tmp_path, hrv_dir):
    out = tmp_path / "out"
    p = subprocess.run([sys.executable, "-m", "headlens", "excite", "a cat and a dog", "--token", "cat:Animals",
                        "--token", "dog:Animals", "--seeds", "1-2", "--hrv", str(hrv_dir), "--model", "tiny",
                        "--out", str(out), "--steps", "2"], check=False, capture_output=True, text=True, env=ENV, timeout=300)
    assert p.returncode == 0, p.stderr
    folder = out / "00-a-cat-and-a-dog"
    for s in (1, 2):
        for name in ("sd", "ae", "ae-hrv"):
            assert (folder / f"seed{s}_{name}.png").is_file()
    assert Image.open(folder / "grid.png").size[0] >= 3 * 128
    pipe = tiny_sd_pipeline()
    tokens = {"cat": "Animals", "dog": "Animals"}
    hrv = HRV.load(hrv_dir, pipe)
    for s in (1, 2):
        ref = pipe("a cat and a dog", num_inference_steps=2, generator=torch.Generator().manual_seed(s)).images[0]
        got = {name: np.asarray(Image.open(folder / f"seed{s}_{name}.png")) for name in ("sd", "ae", "ae-hrv")}
        assert np.array_equal(got["sd"], np.asarray(ref))  # the SD column is the plain pipeline
        # the A&E and A&E-HRV columns are the Python API's for the same arguments
        ae = headlens.excite(pipe, "a cat and a dog", tokens, seed=s, num_inference_steps=2)
        ae_hrv = headlens.excite(pipe, "a cat and a dog", tokens, hrv=hrv, seed=s, num_inference_steps=2)
        assert np.array_equal(got["ae"], np.asarray(ae)), s
        assert np.array_equal(got["ae-hrv"], np.asarray(ae_hrv)), s
        assert not np.array_equal(got["ae"], got["sd"]) and not np.array_equal(got["ae-hrv"], got["ae"]), s


def test_excite_benchmark(monkeypatch, tmp_path):
    out = tmp_path / "bench"
    rc = cli(monkeypatch, "excite", "--benchmark", "animal-animal", "--limit", "1", "--seeds", "4",
             "--model", "tiny", "--out", out, "--steps", "1")
    assert rc == 0
    folders = [p for p in out.iterdir() if p.is_dir()]
    assert len(folders) == 1 and (folders[0] / "seed4_ae.png").is_file()
    assert not list(folders[0].glob("*ae-hrv*"))


def test_excite_errors_are_one_line(monkeypatch, tmp_path, hrv_dir, capsys):
    cases = [
        (["a cat and a dog", "--token", "cat:Animalz", "--hrv", hrv_dir], "Animalz"),
        (["a cat and a dog", "--token", "cat", "--hrv", hrv_dir], "concept"),
        (["a cat and a dog", "--token", "horse:Animals"], "horse"),
        (["a cat and a dog"], "--token"),
        (["--benchmark", "plant-plant"], "plant-plant"),
        (["a cat and a dog", "--token", "cat:Animals", "--resolution", "16"], "resolution 16"),
    ]
    for extra, needle in cases:
        rc = cli(monkeypatch, "excite", *extra, "--model", "tiny", "--out", tmp_path / "e", "--steps", "1",
                 "--seeds", "1")
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == 2, extra
        assert err[-1].startswith("error:") and needle in err[-1], (extra, err)
