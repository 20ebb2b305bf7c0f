"""`headlens generate / weaken / validate` end to end on `--model tiny` (in process, through run_app)."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from cli_inprocess import cli
from PIL import Image
from typer.testing import CliRunner

from headlens import HRV, HeadIndex
from headlens.cli import app
from headlens.testing import tiny_sd_pipeline, tiny_unet


@pytest.fixture(scope="module")
def hrv_dir(tmp_path_factory):
    heads = HeadIndex.from_unet(tiny_unet())
    m = torch.rand(3, len(heads), generator=torch.Generator().manual_seed(0)) * 2
    d = tmp_path_factory.mktemp("hrv")
    HRV.from_matrix(m, heads, ["Color", "Plants", "Shape"],
                    words={"Color": ["red", "blue"], "Plants": ["lavender"], "Shape": ["square"]}).save(d)
    return d


def test_generate_side_by_side(monkeypatch, capsys, hrv_dir, tmp_path):
    code, out, err = cli(monkeypatch, capsys, "generate", "A vase in lavender color", "--adjust", "lavender:Color:Plants",
                         "--strengthen", "vase:Shape", "--seeds", "1-2", "--hrv", hrv_dir, "--model", "tiny",
                         "--steps", "2", "--out", tmp_path)
    assert code == 0, err
    assert out.strip() == str(tmp_path / "grid.png")
    run = json.loads((tmp_path / "run.json").read_text())
    assert run["adjust"] == [["lavender", "Color", "Plants"]] and run["strengthen"] == [["vase", "Shape"]]
    assert run["clamp"] is None  # auto: no clamp for a model with few heads
    # the CLI's images are the Python API's for the same arguments (README: headlens.steer around a pipeline call)
    import headlens

    pipe = tiny_sd_pipeline()
    prompt, seeds = "A vase in lavender color", [1, 2]

    def call():
        return pipe([prompt] * 2, num_inference_steps=2, guidance_scale=7.5,
                    generator=[torch.Generator().manual_seed(s) for s in seeds]).images

    direct = call()
    with headlens.steer(pipe, HRV.load(hrv_dir, pipe)) as s:
        s.adjust("lavender", toward="Color", away="Plants")
        s.strengthen("vase", "Shape")
        steered_api = call()
    for seed, want_plain, want_steered in zip(seeds, direct, steered_api):
        plain = np.asarray(Image.open(tmp_path / "plain" / f"seed{seed}.png"))
        steered = np.asarray(Image.open(tmp_path / "steered" / f"seed{seed}.png"))
        assert np.array_equal(plain, np.asarray(want_plain)), seed
        assert np.array_equal(steered, np.asarray(want_steered)), seed
        assert not np.array_equal(plain, steered), seed  # the steering did something
    grid = Image.open(tmp_path / "grid.png")
    assert grid.width > 2 * 160 and grid.height > 2 * 160


def test_generate_benchmark_skips_cases_the_hrv_cannot_steer(monkeypatch, capsys, hrv_dir, tmp_path):
    cases = tmp_path / "cases.toml"
    cases.write_text('[[prompt]]\nprompt = "A rose-colored vase"\nword = "rose"\ntoward = "Color"\naway = "Plants"\n\n'
                     '[[prompt]]\nprompt = "A bat on the grass"\nword = "bat"\ntoward = "Sports"\naway = "Animals"\n')
    out_dir = tmp_path / "bench"
    code, _out, err = cli(monkeypatch, capsys, "generate", "--benchmark", "--cases", cases, "--seeds", "1",
                         "--hrv", hrv_dir, "--model", "tiny", "--steps", "1", "--out", out_dir)
    assert code == 0, err
    index = json.loads((out_dir / "index.json").read_text())
    assert [c["prompt"] for c in index] == ["A rose-colored vase"]
    assert "skip" in err and "Sports" in err
    assert (out_dir / "00-a-rose-colored-vase" / "grid.png").exists()


def test_weaken_cli(monkeypatch, capsys, hrv_dir, clip_dir, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("# two prompts\na red car\na blue cup | blue\n")
    args = ["weaken", "Color", "--model", "tiny", "--hrv", hrv_dir, "--prompts", prompts, "--seeds", "1,2",
            "--ks", "0,1,H", "--steps", "1", "--random-draws", "1", "--scorer", f"clip:{clip_dir}",
            "--bootstrap", "100", "--out", tmp_path / "w"]
    code, out, err = cli(monkeypatch, capsys, *args)
    assert code == 0, err
    assert "Color words: LeRHF − MoRHF " in out and "random − MoRHF " in out
    assert out.strip().splitlines()[-1].startswith("verdict (4 items): ")
    with open(tmp_path / "w" / "scores.csv") as f:
        rows = list(csv.DictReader(f))
    assert {r["target"] for r in rows} == {"red", "blue"}
    assert {int(r["k"]) for r in rows} == {0, 1, 22}
    assert len(rows) == 3 * 3 * 4  # orders × ks × (prompts × seeds)
    for name in ("curves.csv", "curves.png", "grid_morhf.png", "grid_lerhf.png", "grid_random.png", "summary.json"):
        assert (tmp_path / "w" / name).stat().st_size > 100, name
    code, out, err = cli(monkeypatch, capsys, *args)  # same folder again without --resume
    assert code == 2 and err.strip().startswith("error:") and "--resume" in err and len(err.strip().splitlines()) == 1
    code, out, err = cli(monkeypatch, capsys, *args, "--resume")
    assert code == 0, err


def test_validate_cli(monkeypatch, capsys, hrv_dir, clip_dir, tmp_path):
    base = ["validate", "Color", "--model", "tiny", "--hrv", hrv_dir, "--prompts", "default", "--max-prompts", "2",
            "--seeds", "1", "--steps", "1", "--scorer", f"clip:{clip_dir}", "--bootstrap", "50"]
    code, out, err = cli(monkeypatch, capsys, *base, "--heads", "all", "--dry-run", "--out", tmp_path / "dry")
    assert code == 0, err
    assert "(22 heads + 1) × 2 prompts × 1 seeds = 46 generations" in out
    assert not (tmp_path / "dry").exists()
    code, out, err = cli(monkeypatch, capsys, *base, "--heads", "top:2,0-1", "--out", tmp_path / "v")
    assert code == 0, err
    assert "Spearman(causal effect, HRV) " in out and "permutation p " in out and "cost: (4 heads + 1)" in out
    with open(tmp_path / "v" / "head_effects.csv") as f:
        rows = list(csv.DictReader(f))
    hrv = HRV.load(hrv_dir)
    top2 = hrv.ranking("Color")[:2]
    assert [int(r["head"]) for r in rows] == top2 + [h for h in (0, 1) if h not in top2]


@pytest.mark.parametrize("args, needle", [
    (["generate", "a red car", "--adjust", "red:Color", "--hrv", "{hrv}"], "WORD:TOWARD:AWAY"),
    (["generate", "a red car", "--adjust", "blue:Color:Plants", "--hrv", "{hrv}"], "'blue' is not in the prompt"),
    (["generate", "a red car", "--strengthen", "red:Colour", "--hrv", "{hrv}"], "not in this HRV"),
    (["generate", "a red car", "--strengthen", "red:Color"], "missing option '--hrv'"),
    (["generate", "a red car", "--hrv", "{hrv}"], "nothing to steer"),
    (["generate", "a red car", "--strengthen", "red:Color", "--hrv", "{hrv}", "--step-range", "0:2"], "--step-range"),
    (["generate", "a red car", "--adjust", "red:Color:Plants", "--hrv", "{hrv}", "--clamp", "-1"], "--clamp"),
    (["generate", "a red car", "--strengthen", "red:Color", "--hrv", "{hrv}", "--seeds", "x"], "seed list"),
    (["weaken", "Color", "--hrv", "{hrv}", "--ks", "0,a"], "--ks"),
    (["weaken", "Color", "--hrv", "{hrv}", "--ks", "0,99"], "k values must lie in 0..22"),
    (["weaken", "Color", "--hrv", "{hrv}", "--tokens", "pad"], "--tokens"),
    (["weaken", "Color", "--hrv", "{hrv}", "--prompts", "missing.txt"], "prompt file"),
    (["weaken", "Color", "--hrv", "{other}"], "headlens build"),
    (["validate", "Color", "--hrv", "{hrv}", "--heads", "down9.h9"], "unknown head"),
    (["validate", "Texture", "--hrv", "{hrv}"], "not in this HRV"),
])
def test_cli_errors_are_one_line(monkeypatch, capsys, hrv_dir, tmp_path, args, needle):
    other = tmp_path / "other"
    heads = HeadIndex.from_description(HeadIndex.from_unet(tiny_unet()).describe()[:-1])
    HRV.from_matrix(torch.ones(1, len(heads)), heads, ["Color"]).save(other)
    args = [a.format(hrv=hrv_dir, other=other) for a in args]
    code, _out, err = cli(monkeypatch, capsys, *args, "--model", "tiny", "--steps", "1", "--out", tmp_path / "o")
    assert code == 2, err
    lines = err.strip().splitlines()
    assert lines[-1].startswith("error:") and "Traceback" not in err, err
    assert needle in lines[-1], err


def test_help_explains_every_option():
    runner = CliRunner()
    for command in ("generate", "weaken", "validate"):
        res = runner.invoke(app, [command, "--help"], env={"COLUMNS": "200", "TERM": "dumb"})
        assert res.exit_code == 0
        cmd = next(c for c in app.registered_commands if c.name == command)
        import inspect

        for p in inspect.signature(cmd.callback).parameters.values():
            info = p.default
            assert info.help and len(info.help) > 15, (command, p.name)
            for decl in getattr(info, "param_decls", None) or ():
                if decl.startswith("--"):
                    assert decl in res.output, (command, decl)
