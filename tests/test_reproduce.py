"""`headlens reproduce`: plan, benchmark lists on the paper's concepts, comparisons, and a tiny end-to-end run."""

from __future__ import annotations

import csv
import json
import re

import numpy as np
import pytest
import torch
from cli_inprocess import cli
from PIL import Image

from headlens import HRV, ConceptSet, paper
from headlens import reproduce as rp

PAPER_NAMES = set(ConceptSet.paper().names)


# ---------------------------------------------------------------------------------------------- pieces
def test_paper_concept_names():
    assert rp.paper_concept("Image style") == "Image Style" and rp.paper_concept("color") == "Color"
    assert rp.paper_concept("Fruits") == "Fruits and Vegetables" and rp.paper_concept("Food") == "Food and Beverages"
    assert rp.paper_concept("Objects", "backpack") == "Accessories" and rp.paper_concept("Objects", "vase") is None
    assert rp.paper_concept("Sports") is None


def test_inputs_use_only_paper_concepts(tmp_path):
    skipped = rp.write_inputs(tmp_path, rp.Settings(model="tiny"))
    from headlens.analysis.common import load_templates
    from headlens.analysis.polysemous import load_cases
    from headlens.attend_excite import load_multi_concept

    poly = load_cases(tmp_path / "polysemous.toml")
    assert all(c.toward in PAPER_NAMES and c.away in PAPER_NAMES for c in poly)
    lav = next(c for c in poly if c.word == "lavender")
    assert (lav.toward, lav.away) == ("Color", "Plants")
    assert next(c for c in poly if c.word == "peach").away == "Fruits and Vegetables"
    multi = load_multi_concept(None, tmp_path / "multi_concept.toml")
    assert all(c in PAPER_NAMES for case in multi for _, c in case.tokens + case.modifiers)
    cat_pack = next(c for c in multi if c.prompt == "a cat with a backpack")
    assert cat_pack.tokens == (("cat", "Animals"), ("backpack", "Accessories"))
    fams = load_templates(tmp_path / "weakening_templates.toml")
    assert set(rp.WEAKEN_CONCEPTS) <= set(fams) <= PAPER_NAMES
    assert fams["Fruits and Vegetables"].prompts() == load_templates()["Fruits"].prompts()
    # what could not be mapped is listed, and nothing else is missing
    shipped_poly, shipped_multi = load_cases(), load_multi_concept()
    assert len(poly) + len(skipped["polysemy"]) == len(shipped_poly)
    assert len(multi) + len(skipped["excite"]) == len(shipped_multi)
    assert len(fams) + len(skipped["weaken"]) == len(load_templates())
    assert any("a bird and a bowl" in s for s in skipped["excite"])
    limited = rp.write_inputs(tmp_path / "two", rp.Settings(model="tiny", cases=2))
    assert len(load_cases(tmp_path / "two" / "polysemous.toml")) == 2 and limited == skipped


def test_plan_counts_generations(tmp_path):
    """Numbers of generations per unit, computed by hand for a small configuration (22 heads)."""
    s = rp.Settings(model="tiny", limit_prompts=10, batch_size=4, weaken_concepts=("Image Style", "Animals"),
                    weaken_seeds="10,20", max_prompts=5, ks="0,1,11,H", random_draws=1, seeds="1-3", cases=2,
                    edit_attributes=("Color", "Material"), excite_groups=("animal-animal",))
    rp.write_inputs(tmp_path / rp.INPUTS, s)
    plan = rp.make_plan(tmp_path, s, 22, list(rp.STAGES))
    g = {u.name: u.generations for u in plan.units}
    # weakening: 5 prompts × 2 seeds × (k=0 once + MoRHF 3 + LeRHF 3 + random 3, where k=H coincides for all three)
    assert g == {"hrv": 10, "weaken Image Style": 5 * 2 * (1 + 3 + 3 + 3 - 2), "weaken Animals": 5 * 2 * 8,
                 "polysemy": 2 * 2 * 3, "edit Color": 4 * 2 * 3, "edit Material": 4 * 2 * 3,
                 "excite animal-animal": 3 * 2 * 3}
    hrv_unit = plan.units[0]
    assert hrv_unit.args[:5] == ["build", "--model", "tiny", "--concepts", "paper"] and "--resume" in hrv_unit.args
    sharded = rp.make_plan(tmp_path, s, 22, ["hrv"], shard=(1, 2))
    assert sharded.units[0].generations == 4 and sharded.units[0].args[-4:-2] == ["--shard", "1/2"]  # batch 1 of 0..2
    # shards split the other units round-robin; every unit is someone's
    units = plan.units
    parts = [rp.mine(units, (i, 3)) for i in range(3)]
    rest = [u.name for u in units if u.stage != "hrv"]
    assert sorted(n.name for p in parts for n in p if n.stage != "hrv") == sorted(rest)
    assert [u.name for u in parts[1] if u.stage != "hrv"] == rest[1::3]
    with pytest.raises(ValueError, match="unknown stage"):
        rp.parse_stages("hrv,plots")
    assert rp.parse_stages("report,hrv") == ["hrv", "report"]


def test_compare_hrvs_against_independent_values():
    from scipy.stats import spearmanr

    released = HRV.load("paper:sd-v1-4")
    noise = torch.from_numpy(np.random.default_rng(0).normal(0, 0.8, released.matrix.shape).astype(np.float32))
    rebuilt = HRV.from_matrix((released.matrix + noise).clamp_min(0), released.heads, released.concepts)
    rows = rp.compare_hrvs(rebuilt, released)
    assert [r["concept"] for r in rows] == released.concepts
    for r, a, b in zip(rows, rebuilt.matrix.numpy(), released.matrix.numpy()):
        assert r["spearman"] == pytest.approx(spearmanr(a, b).statistic, abs=1e-6)
        top = lambda m: set(np.argsort(-m, kind="stable")[:10].tolist())  # noqa: E731
        assert r["top10_overlap"] == len(top(a) & top(b)) / 10
    same = rp.compare_hrvs(released, released)
    assert all(r["spearman"] == pytest.approx(1.0) and r["top10_overlap"] == 1.0 for r in same)
    with pytest.raises(ValueError, match="different head layouts"):
        rp.compare_hrvs(HRV.load("paper:sdxl-base-1.0"), released)


def test_weakening_beside_the_released_curve():
    ref = paper.released_weakening_curve()
    same = {"ks": [0, 1, 51, 128], "num_heads": 128,
            "curves": [{"order": "morhf", "tokens": "words", "mean": [0.3, 0.29, 0.2, 0.1]},
                       {"order": "lerhf", "tokens": "words", "mean": [0.3, 0.3, 0.29, 0.1]}]}
    rows = rp.weakening_vs_released(same, ref)
    assert [(r["k"], r["paper_morhf"], r["paper_lerhf"]) for r in rows] == [
        (0, 0.2353, 0.2353), (1, 0.2337, 0.2347), (51, 0.1326, 0.2336), (128, 0.1268, 0.1268)]
    assert rows[2]["ours_morhf"] == 0.2
    other = dict(same, ks=[0, 11, 22], num_heads=22, curves=[{"order": "morhf", "mean": [1, 2, 3]}])
    rows = rp.weakening_vs_released(other, ref)
    assert [r["paper_k"] for r in rows] == [0, 61, 128]  # 11/22 = 0.5 → nearest released k/128 is 61
    assert rows[1]["paper_morhf"] == 0.1289 and rows[1]["ours_lerhf"] is None


# ---------------------------------------------------------------------------------------------- CLI
TINY = ["--model", "tiny", "--build-prompts", "2", "--steps", "2", "--batch-size", "2", "--weaken-concepts", "Image Style",
        "--weaken-seeds", "10", "--weaken-prompts", "1", "--ks", "0,1,H", "--seeds", "1", "--limit-cases", "1",
        "--edit-attributes", "Color", "--excite-groups", "animal-animal"]


def test_dry_run_prints_the_plan_and_writes_nothing(monkeypatch, capsys, tmp_path, clip_dir):
    out = tmp_path / "run"
    code, stdout, err = cli(monkeypatch, capsys, "reproduce", *TINY, "--clip", clip_dir, "--out", out, "--dry-run",
                            "--calibration-steps", "1")
    assert code == 0, err
    assert not out.exists()
    # 2 prompts; weakening 1 prompt × 1 seed × (k=0, top/bottom 1, all heads once) = 4; polysemy 2; edit 4; A&E 3
    m = re.search(r"dry run: (\d+) units, (\d+) generations of 2 steps, about .* on this machine: "
                  r"≈ ([\d.e+-]+) device-hours on cpu", stdout)
    assert m and (int(m.group(1)), int(m.group(2))) == (5, 2 + 4 + 2 + 4 + 3), stdout
    assert float(m.group(3)) > 0
    for name in ("weaken Image Style", "polysemy", "edit Color", "excite animal-animal", "report.md"):
        assert name in err


def test_reproduce_end_to_end_on_tiny(monkeypatch, capsys, tmp_path, clip_dir):
    out = tmp_path / "run"
    code, stdout, err = cli(monkeypatch, capsys, "reproduce", *TINY, "--clip", clip_dir, "--out", out)
    assert code == 0, err
    assert stdout.strip().splitlines()[-1] == str(out / "report.html")
    hrv = HRV.load(out / "hrv")
    assert hrv.concepts == list(ConceptSet.paper().names) and hrv.metadata["prompts_done"] == 2
    for unit in ("hrv", "weaken/image-style", "polysemy", "edit/color", "excite/animal-animal"):
        assert (out / unit / rp.DONE_FILE).is_file(), unit
    md = (out / "report.md").read_text(encoding="utf-8")
    for title in ("## HRVs: rebuilt vs released", "## Ordered weakening", "## Polysemous words: concept adjusting",
                  "## P2P vs P2P-HRV editing", "## SD vs A&E vs A&E-HRV (multi-concept)", "## Skipped benchmark cases"):
        assert title in md, title
    assert "Not run yet" not in md
    assert "No released HRV has this model's head layout (22 heads" in md
    for claim in rp.CLAIMS.values():
        assert claim in md
    # weakening: our curve (from the unit's own curves.csv) beside the paper's at the nearest k/H
    curves = {(r["order"], int(r["k"])): float(r["mean"]) for r in csv.DictReader(open(out / "weaken/image-style/curves.csv"))
              if r["tokens"] == "words"}
    assert f"| 0 | {curves[('morhf', 0)]:.3f} | 0.235 | {curves[('lerhf', 0)]:.3f} | 0.235 | 0 |" in md
    assert f"| 22 | {curves[('morhf', 22)]:.3f} | 0.127 | {curves[('lerhf', 22)]:.3f} | 0.127 | 128 |" in md
    # polysemy: the sense scores are CLIP similarities of the saved images, recomputed here
    from headlens.scorers import ClipScorer

    rows = list(csv.DictReader(open(out / "polysemy" / "sense_scores.csv")))
    assert {r["kind"] for r in rows} == {"plain", "steered"}
    r0 = rows[0]
    case_dir = next(p for p in (out / "polysemy").iterdir() if p.is_dir() and json.loads(
        (p / "run.json").read_text())["prompt"] == r0["prompt"])
    image = Image.open(case_dir / r0["kind"] / f"seed{r0['seed']}.png").convert("RGB")
    want = ClipScorer(str(clip_dir)).similarity([image, image], list(rp.polysemy_texts(r0["word"], r0["toward"],
                                                                                        r0["away"])))
    assert float(r0["sim_toward"]) == pytest.approx(float(want[0]), abs=1e-5)
    assert float(r0["sim_away"]) == pytest.approx(float(want[1]), abs=1e-5)
    # edit and A&E: the report's means are those of the units' scores.csv
    for unit, method, field in (("edit/color", "p2p-hrv", "clip_target"), ("excite/animal-animal", "ae-hrv",
                                                                           "clip_min_object")):
        vals = [float(r[field]) for r in csv.DictReader(open(out / unit / "scores.csv")) if r["method"] == method]
        assert vals and f"| {unit.split('/')[1]} | {method} | {len(vals)} | " in md
        assert f"{np.mean(vals):.3f}" in md.split(f"| {method} |")[1].split("\n")[0]
    html = (out / "report.html").read_text(encoding="utf-8")
    assert html.count("data:image/png;base64,") >= 2 and 'src="http' not in html
    # resume: every unit is kept, nothing is generated again
    stamp = (out / "hrv" / "hrv.safetensors").stat().st_mtime_ns
    code, _, err = cli(monkeypatch, capsys, "reproduce", *TINY, "--clip", clip_dir, "--out", out)
    assert code == 0, err
    assert err.count("done") >= 5 and "$ headlens" not in err
    assert (out / "hrv" / "hrv.safetensors").stat().st_mtime_ns == stamp
    # other settings in the same folder: one line, nothing touched
    code, _, err = cli(monkeypatch, capsys, "reproduce", *[a if a != "2" else "3" for a in TINY[:6]], *TINY[6:],
                       "--clip", clip_dir, "--out", out)
    assert code == 2 and err.strip().splitlines() == [
        f"error: {out} holds a reproduce run with other settings (differs in: limit_prompts, steps); use another "
        "--out or the same options"]


def test_sharded_hrv_stage_merges_to_the_unsharded_counts(monkeypatch, capsys, tmp_path, clip_dir):
    args = ["--model", "tiny", "--build-prompts", "5", "--steps", "1", "--batch-size", "2", "--clip", clip_dir]
    out = tmp_path / "sharded"
    for i in range(2):
        code, _, err = cli(monkeypatch, capsys, "reproduce", *args, "--shard", f"{i}/2", "--only", "hrv,report",
                           "--out", out)
        assert code == 0, err
        assert (out / "hrv-shards" / f"part-{i}-of-2" / rp.DONE_FILE).is_file()
    assert "report: skipped on a shard" in err
    code, _, err = cli(monkeypatch, capsys, "reproduce", *args, "--only", "weaken", "--out", tmp_path / "early")
    assert code == 2 and "needs the finished HRV" in err
    code, _, err = cli(monkeypatch, capsys, "reproduce", *args, "--only", "hrv", "--out", out)
    assert code == 0, err
    merged = HRV.load(out / "hrv")
    code, _, err = cli(monkeypatch, capsys, "build", "--model", "tiny", "--concepts", "paper", "--limit", "5",
                       "--steps", "1", "--batch-size", "2", "--top", "0", "--out", tmp_path / "direct")
    assert code == 0, err
    assert torch.equal(merged.votes, HRV.load(tmp_path / "direct").votes)


def test_report_puts_a_rebuilt_sd14_hrv_beside_the_release(tmp_path):
    """The report's HRV section for a model with SD1.4's layout: Spearman and top-10 overlap per concept."""
    released = HRV.load("paper:sd-v1-4")
    noise = torch.from_numpy(np.random.default_rng(1).normal(0, 0.5, released.matrix.shape).astype(np.float32))
    rebuilt = HRV.from_matrix((released.matrix + noise).clamp_min(0), released.heads, released.concepts,
                              metadata={"model": "someone/sd-v1-5-copy"})
    out = tmp_path / "run"
    rebuilt.save(out / "hrv")
    (out / "hrv" / rp.DONE_FILE).write_text("{}")
    md_path, html_path = rp.write_report(out, rp.Settings(model="someone/sd-v1-5-copy"), lambda: None)
    md = md_path.read_text(encoding="utf-8")
    rows = rp.compare_hrvs(HRV.load(out / "hrv"), released)
    median = np.median([r["spearman"] for r in rows])
    assert f"Against `paper:sd-v1-4` over 34 concepts: Spearman median {median:.3f}" in md
    for r in rows:
        assert f"| {r['concept']} | {r['spearman']:.3f} | {r['top10_overlap']:.3f} |" in md
    assert (out / "report" / "hrv-released.png").is_file() and (out / "report" / "hrv-rebuilt.png").is_file()
    for stage in ("weaken", "polysemy", "edit", "excite"):
        assert "Not run yet" in md and f"stage `{stage}`" in md
    assert html_path.read_text(encoding="utf-8").count("data:image/png;base64,") == 2


@pytest.mark.parametrize("flag,value,message", [
    ("--weaken-concepts", "Image Style,Colour", "--weaken-concepts: 'Colour' has no template family"),
    ("--edit-attributes", "Colour", "no edit benchmark for concept 'Colour'"),
    ("--excite-groups", "cat-cat", "no multi-concept benchmark 'cat-cat'"),
    ("--seeds", "x", "bad seed list 'x'"),
    ("--only", "hrv,plots", "unknown stage(s) plots in --only"),
])
def test_bad_options_fail_in_one_line_before_loading(monkeypatch, capsys, tmp_path, flag, value, message):
    import headlens.cli.common as common

    def no_model(*a, **k):
        raise AssertionError("the model must not load for bad options")

    monkeypatch.setattr(common, "_load_model", no_model)
    code, _, err = cli(monkeypatch, capsys, "reproduce", "--model", "tiny", flag, value, "--out", tmp_path / "o")
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], err
    assert not (tmp_path / "o").exists()


def test_bad_device_and_out_fail_before_loading(monkeypatch, capsys, tmp_path):
    import headlens.cli.common as common

    monkeypatch.setattr(common, "_load_model", lambda *a, **k: (_ for _ in ()).throw(AssertionError("loaded")))
    (tmp_path / "file").write_text("x")
    code, _, err = cli(monkeypatch, capsys, "reproduce", "--model", "tiny", "--out", tmp_path / "file")
    assert code == 2 and "--out" in err and "is a file" in err and len(err.strip().splitlines()) == 1
    code, _, err = cli(monkeypatch, capsys, "reproduce", "--model", "tiny", "--device", "nonsense", "--out",
                       tmp_path / "o")
    assert code == 2 and "--device" in err and not (tmp_path / "o").exists()
