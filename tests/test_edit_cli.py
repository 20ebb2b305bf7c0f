"""`headlens edit` end to end on the tiny model (in-process, like the console entry point)."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from cli_inprocess import cli_code as cli
from PIL import Image

from headlens import HRV
from headlens.heads import HeadIndex
from headlens.testing import tiny_sd_pipeline

SRC, TGT = "a bowl made of wood", "a bowl made of glass"


@pytest.fixture(scope="module")
def hrv_dir(tmp_path_factory):
    heads = HeadIndex.from_unet(tiny_sd_pipeline().unet)
    m = torch.linspace(0.5, 1.5, len(heads)).repeat(2, 1)
    return HRV.from_matrix(m, heads, ["Material", "Color"]).save(tmp_path_factory.mktemp("hrv") / "hrv")


def test_edit_writes_labelled_grids_and_matches_python(monkeypatch, tmp_path, hrv_dir, sd_pipe):
    out = tmp_path / "out"
    rc = cli(monkeypatch, "edit", "--source", SRC, "--target", TGT, "--concept", "Material", "--seeds", "1-2",
             "--hrv", hrv_dir, "--model", "tiny", "--out", out, "--steps", "2")
    assert rc == 0
    folder = out / "00-a-bowl-made-of-glass"
    for s in (1, 2):
        for name in ("source", "p2p", "p2p-hrv"):
            assert (folder / f"seed{s}_{name}.png").is_file()
    g = Image.open(folder / "grid.png")
    assert g.size[0] >= 3 * 128 and g.size[1] >= 2 * 128
    assert json.loads((out / "run.json").read_text())["p2p_hrv"] == {"cross_replace": 0.8, "self_replace": 0.9}
    from headlens.edit import p2p

    _, expected = p2p(sd_pipe, SRC, TGT, hrv=HRV.load(hrv_dir), concept="Material", seed=2, num_inference_steps=2)
    assert np.array_equal(np.asarray(Image.open(folder / "seed2_p2p-hrv.png")), np.asarray(expected))
    _, plain = p2p(sd_pipe, SRC, TGT, seed=2, num_inference_steps=2)
    assert np.array_equal(np.asarray(Image.open(folder / "seed2_p2p.png")), np.asarray(plain))


def test_edit_benchmark_and_scores(monkeypatch, tmp_path, clip_dir):
    out = tmp_path / "bench"
    rc = cli(monkeypatch, "edit", "--benchmark", "material", "--limit", "2", "--seeds", "3", "--model", "tiny",
             "--out", out, "--steps", "1", "--scorer", clip_dir)
    assert rc == 0
    folders = sorted(p for p in out.iterdir() if p.is_dir())
    assert len(folders) == 2 and all((f / "grid.png").is_file() and (f / "seed3_p2p.png").is_file() for f in folders)
    assert not list(out.glob("*/*p2p-hrv.png"))  # no --hrv: no P2P-HRV column
    with open(out / "scores.csv", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 and {"clip_target", "clip_word", "distance", "distance_metric"} <= set(rows[0])


def test_edit_errors_are_one_line(monkeypatch, tmp_path, hrv_dir, capsys):
    cases = [
        (["--source", SRC, "--target", TGT, "--concept", "Materiel", "--hrv", hrv_dir], "Materiel"),
        (["--source", SRC, "--target", TGT, "--hrv", hrv_dir], "--concept"),
        (["--source", SRC], "--target"),
        (["--benchmark", "Smell"], "Smell"),
        (["--source", SRC, "--target", "a bowl made of stained glass"], "refine"),
        (["--source", SRC, "--target", TGT, "--seeds", "x"], "seed"),
    ]
    for extra, needle in cases:
        seeds = [] if "--seeds" in extra else ["--seeds", "1"]
        rc = cli(monkeypatch, "edit", *extra, *seeds, "--model", "tiny", "--out", tmp_path / "e", "--steps", "1")
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == 2, extra
        assert err[-1].startswith("error:") and needle in err[-1], (extra, err)
