"""The world validation report (`headlens world report`): end to end on a tiny model with a stub reader,
and on the bundled world model when it is there."""

import json

import numpy as np
import pytest
import scipy.stats
import torch
from shipped_world import WORLD_HEADS

from headlens.validation import (
    CONCEPTS,
    ReportConfig,
    SoftWorldScorer,
    attribute_prompts,
    edit_pairs,
    polysemy_prompts,
    random_init_control,
    render_from_json,
    run_report,
    two_object_prompts,
)
from headlens.world import parse_caption

SECTIONS = ["## Headline numbers", "## 1. HRVs", "## 2. Ordered weakening", "## 3. Causal single-head effects",
            "## 4. Concept adjusting", "## 5a. Colour edits", "## 5b. Two-object prompts", "## What the numbers say",
            "## Reproduce"]


class StubReader:
    """Reads 'concepts' from crude pixel statistics: deterministic, any image size, no network."""

    colors = ("red", "green", "blue")
    shapes = ("circle", "square", "triangle", "orange")

    def _one(self, arr: np.ndarray) -> dict:
        mean = arr.reshape(-1, 3).mean(0)
        return {"Color": self.colors[int(mean.argmax())], "Shape": self.shapes[int(arr.std() * 7) % 4],
                "Size": "small" if arr.mean() < 128 else "large", "Position": "left", "Pattern": "plain"}

    def score(self, image) -> dict:
        arr = np.asarray(image.convert("RGB"), dtype=np.float64)
        return {**self._one(arr), "Background": "gray"}

    def score_objects(self, image) -> list[dict]:
        arr = np.asarray(image.convert("RGB"), dtype=np.float64)
        half = arr.shape[1] // 2
        return [dict(self._one(arr[:, :half]), area=10), dict(self._one(arr[:, half:]), area=8)]


class HashReader:
    """Reads attributes pseudo-randomly from a hash of the pixels: deterministic per image, varied across images,
    drawn from the values the report's prompts ask for, so rates and differences between conditions are not 0."""

    def __init__(self, values: dict, objects: list):
        self.values, self.all_objects = values, objects

    def _rng(self, image) -> np.random.Generator:
        import hashlib

        digest = hashlib.sha256(np.asarray(image.convert("RGB")).tobytes()).digest()
        return np.random.default_rng(int.from_bytes(digest[:8], "little"))

    def score(self, image) -> dict:
        rng = self._rng(image)
        return {k: str(rng.choice(v)) for k, v in self.values.items()}

    def score_objects(self, image) -> list[dict]:
        rng = self._rng(image)
        return [{"Color": c, "Shape": s, "area": 10} for c, s in self.all_objects if rng.random() < 0.6]


class RecordingReader:
    """Passes calls on to a reader and keeps every (pixels, result) in call order: the per-item results."""

    def __init__(self, reader):
        self.reader, self.scores, self.objects = reader, [], []

    def score(self, image) -> dict:
        got = self.reader.score(image)
        self.scores.append((np.asarray(image.convert("RGB"), dtype=np.float64), got))
        return got

    def score_objects(self, image) -> list[dict]:
        got = self.reader.score_objects(image)
        self.objects.append(got)
        return got


class GradedStub:
    """A graded stand-in for SoftWorldScorer: the image's mean brightness (0..1), so head effects vary."""

    def __init__(self, concept: str, reader):
        self.concept, self.name = concept, "graded-stub"

    def score(self, images, targets, prompts=None) -> list[float]:
        return [float(np.asarray(im.convert("RGB"), dtype=np.float64).mean() / 255) for im in images]


def record_sections(monkeypatch, cfg: ReportConfig) -> dict:
    """Give the polysemy, P2P and A&E sections a recorded HashReader each; returns {section: recorder}."""
    import headlens.validation.world_report as wr

    pairs = edit_pairs(cfg.p2p_items, cfg.seed)
    rest = {"Size": ["small", "large"], "Position": ["left", "center"], "Pattern": ["plain", "striped"],
            "Background": ["gray", "black"]}
    shapes = sorted({shape for _, shape, _ in polysemy_prompts(cfg.poly_items, cfg.seed)} | {"circle"})
    values = {"polysemy": {"Color": ["orange", "red"], "Shape": ["orange", *shapes], **rest},
              "p2p": {"Color": sorted({p["to"] for p in pairs} | {p["from"] for p in pairs}), "Shape": ["circle"], **rest}}
    objects = sorted({tuple(o) for c in two_object_prompts(cfg.ae_items, cfg.seed) for o in c["objects"]})
    recorders: dict = {}

    def wrap(fn, key):
        def wrapped(pipe, hrv, reader, *args, **kw):
            name = "polysemy_hard" if kw.get("hard") else key
            recorders[name] = RecordingReader(HashReader(values.get(key, {}), objects))
            return fn(pipe, hrv, recorders[name], *args, **kw)
        return wrapped

    for key in ("polysemy", "p2p", "ae"):
        monkeypatch.setattr(wr, f"{key}_section", wrap(getattr(wr, f"{key}_section"), key))
    monkeypatch.setattr(wr, "SoftWorldScorer", GradedStub)  # graded scores: single-head effects are not all 0
    return recorders


def leaf_pixels_by_hand(arr: np.ndarray) -> int:
    """Pixels within 60 of the fruit's leaf green (40, 150, 40), counted with plain numpy."""
    return int((np.sqrt(((arr - np.array([40.0, 150.0, 40.0])) ** 2).sum(-1)) < 60).sum())


def check_polysemy_from_items(res: dict, items, reads) -> None:
    """Every rate and paired difference of a polysemy section equals its value recomputed from the per-item reads."""
    names = list(res["conditions"])
    assert names[0] == "plain" and len(reads) == len(names) * len(items)
    per: dict = {}
    for c, name in enumerate(names):
        rows = reads[c * len(items):(c + 1) * len(items)]
        per[name] = {
            "colour_sense": [float(g["Color"] == "orange" and g["Shape"] == shape) for (_, g), (_, shape, _) in
                             zip(rows, items)],
            "fruit": [float(g["Shape"] == "orange") for _, g in rows],
            "orange_colour": [float(g["Color"] == "orange") for _, g in rows],
            "intended_shape": [float(g["Shape"] == shape) for (_, g), (_, shape, _) in zip(rows, items)],
            "leaf_pixels": [float(leaf_pixels_by_hand(a)) for a, _ in rows],
        }
        for metric, values in per[name].items():
            assert res["conditions"][name][metric]["mean"] == pytest.approx(np.mean(values), abs=1e-12), (name, metric)
    for key, metric in (("differences", "colour_sense"), ("fruit_differences", "fruit"),
                        ("leaf_differences", "leaf_pixels")):
        assert list(res[key]) == names[1:], key
        for name in names[1:]:
            want = np.mean(per[name][metric]) - np.mean(per["plain"][metric])
            got = res[key][name]
            assert got["mean"] == pytest.approx(want, abs=1e-12), (key, name)
            assert got["low"] - 1e-12 <= got["mean"] <= got["high"] + 1e-12, (key, name)


def test_prompt_sets_follow_the_world_grammar():
    for concept in CONCEPTS:
        pairs = attribute_prompts(concept, 30, seed=3)
        assert pairs == attribute_prompts(concept, 30, seed=3)  # seeded
        for prompt, target in pairs:
            parse_caption(prompt)
            assert target in prompt.split()
            assert "orange" not in prompt.split()  # the polysemous word stays out of the weakening sets
    for prompt, shape, _ in polysemy_prompts(20):
        scene = parse_caption(prompt)
        assert scene.objects[0].color == "orange" and scene.objects[0].shape == shape != "orange"
    hard = polysemy_prompts(20, shapes=["circle"])
    assert {shape for _, shape, _ in hard} == {"circle"} and all(p.startswith(("an orange", "a ")) for p, _, _ in hard)
    for p in edit_pairs(20):
        a, b = parse_caption(p["source"]).objects[0], parse_caption(p["target"]).objects[0]
        assert (a.color, b.color) == (p["from"], p["to"]) and a.shape == b.shape and a.position == b.position
        assert len(p["source"].split()) == len(p["target"].split())  # P2P replace needs equal token counts
    for c in two_object_prompts(20):
        assert [(o.color, o.shape) for o in parse_caption(c["prompt"]).objects] == [tuple(o) for o in c["objects"]]


def test_random_init_control_shares_tokenizer_vae_not_weights(sd_pipe):
    control = random_init_control(sd_pipe, seed=5)
    assert control.tokenizer is sd_pipe.tokenizer and control.vae is sd_pipe.vae
    assert control.unet is not sd_pipe.unet and control.text_encoder is not sd_pipe.text_encoder
    assert control.unet.config == sd_pipe.unet.config
    a = dict(sd_pipe.unet.named_parameters())
    b = dict(control.unet.named_parameters())
    assert a.keys() == b.keys()
    assert any(not torch.equal(a[k], b[k]) for k in a)
    again = random_init_control(sd_pipe, seed=5)  # fixed seed: the same control every time
    assert all(torch.equal(p, q) for p, q in zip(control.unet.parameters(), again.unet.parameters()))
    assert all(torch.equal(p, q) for p, q in zip(control.text_encoder.parameters(), again.text_encoder.parameters()))


def test_soft_scorer_falls_back_to_hard_without_a_network():
    from PIL import Image

    img = Image.new("RGB", (16, 16), (200, 10, 10))
    s = SoftWorldScorer("Color", StubReader())
    assert s.score([img, img], ["red", "blue"]) == [1.0, 0.0]


def test_quick_report_end_to_end_on_tiny_model(sd_pipe, tmp_path, monkeypatch):
    out = tmp_path / "report"
    scheduler = sd_pipe.scheduler
    cfg = ReportConfig.quick()
    cfg.ae_items = 3  # A&E rates from more than one prompt
    cfg.p2p_items = 6  # P2P rates from enough pairs that the three methods can differ
    recorders = record_sections(monkeypatch, cfg)
    r = run_report(sd_pipe, StubReader(), out, config=cfg, log=None, model_name="tiny model")
    assert sd_pipe.scheduler is scheduler  # put back
    md = (tmp_path / "report.md").read_text()
    for s in SECTIONS:
        assert s in md
    data = json.loads((out / "report.json").read_text())
    assert set(data) >= {"config", "hrv", "attention_mass", "weakening", "effects", "polysemy", "p2p", "ae", "seconds"}
    assert data["hrv"]["trained"]["concentration"]["n"] == 22
    w = data["weakening"]["concepts"]["Color"]
    assert w["items"] == 4 and set(w["tokens"]) == {"words", "words+end"}
    for t in w["tokens"].values():
        assert set(t["curves"]) == {"morhf", "lerhf", "random"}
        assert len(t["curves"]["random"]["mean"]) == len(data["weakening"]["ks"])
        assert t["area_lerhf_morhf"]["low"] <= t["area_lerhf_morhf"]["mean"] <= t["area_lerhf_morhf"]["high"]
    e = data["effects"]["concepts"]["Color"]
    assert e["heads"] == 4 and -1 <= e["spearman"]["mean"] <= 1
    assert set(data["polysemy"]["conditions"]) == {"plain", "adjust", "strengthen", "adjust (head-shuffled HRV)"}
    hard = data["polysemy_hard"]  # the hard case: 'an orange circle' at its own (low) guidance
    assert hard["shapes"] == ["circle"] and hard["guidance"] == ReportConfig.quick().poly_hard_guidance
    assert set(hard["fruit_differences"]) == {"adjust", "strengthen", "adjust (head-shuffled HRV)"}
    assert data["polysemy"]["guidance"] == ReportConfig.quick().guidance
    assert "4b. The hard case" in md
    # every number of sections 3-5 recomputed from the per-item reads the sections were given
    check_polysemy_from_items(data["polysemy"], polysemy_prompts(cfg.poly_items, cfg.seed),
                              recorders["polysemy"].scores)
    check_polysemy_from_items(hard, polysemy_prompts(cfg.poly_hard_items, cfg.seed, shapes=["circle"]),
                              recorders["polysemy_hard"].scores)
    for k in ("differences", "fruit_differences"):  # the reads differ between conditions: the checks have teeth
        assert any(d["mean"] != 0 for p in (data["polysemy"], hard) for d in p[k].values()), k
    pairs = edit_pairs(cfg.p2p_items, cfg.seed)
    reads = [g for _, g in recorders["p2p"].scores]
    assert len(reads) == 4 * len(pairs)  # per pair: source, independent, P2P, P2P-HRV
    assert list(data["p2p"]["methods"]) == ["independent", "P2P", "P2P-HRV"]
    success: dict = {}
    for m, name in enumerate(data["p2p"]["methods"]):
        rows = [(reads[4 * i], reads[4 * i + 1 + m], p["to"]) for i, p in enumerate(pairs)]
        success[name] = [float(g["Color"] == to) for _, g, to in rows]
        kept = [float(all(g[a] == s[a] for a in ("Shape", "Size", "Position", "Pattern", "Background")))
                for s, g, _ in rows]
        got = data["p2p"]["methods"][name]
        assert got["success"]["mean"] == pytest.approx(np.mean(success[name]), abs=1e-12), name
        assert got["all_kept"]["mean"] == pytest.approx(np.mean(kept), abs=1e-12), name
    assert len({np.mean(v) for v in success.values()}) > 1
    assert data["p2p"]["success_diff_hrv_minus_p2p"]["mean"] == pytest.approx(
        np.mean(success["P2P-HRV"]) - np.mean(success["P2P"]), abs=1e-12)
    cases = two_object_prompts(cfg.ae_items, cfg.seed)
    objects = recorders["ae"].objects
    assert list(data["ae"]["methods"]) == ["SD", "A&E", "A&E-HRV"] and len(objects) == 3 * len(cases)
    missing: dict = {}
    for m, name in enumerate(data["ae"]["methods"]):
        rows = objects[m * len(cases):(m + 1) * len(cases)]
        missing[name] = [float(not all((col, shape) in {(o["Color"], o["Shape"]) for o in objs}
                                       for col, shape in c["objects"])) for objs, c in zip(rows, cases)]
        assert data["ae"]["methods"][name]["object_missing"]["mean"] == pytest.approx(np.mean(missing[name]),
                                                                                   abs=1e-12), name
    assert len({np.mean(v) for v in missing.values()}) == 3  # three different rates: no difference can hide
    assert data["ae"]["diff_ae_minus_sd"]["mean"] == pytest.approx(np.mean(missing["A&E"]) - np.mean(missing["SD"]),
                                                                   abs=1e-12)
    assert data["ae"]["diff_hrv_minus_ae"]["mean"] == pytest.approx(
        np.mean(missing["A&E-HRV"]) - np.mean(missing["A&E"]), abs=1e-12)
    # weakening areas from the curves (trapezoids / k range), Spearman from the effects and HRV values
    ks = np.asarray(data["weakening"]["ks"], dtype=float)
    for t in w["tokens"].values():
        mor, ler, rnd = (np.asarray(t["curves"][o]["mean"]) for o in ("morhf", "lerhf", "random"))
        assert t["area_lerhf_morhf"]["mean"] == pytest.approx(np.trapezoid(ler - mor, ks) / (ks[-1] - ks[0]), abs=1e-12)
        assert t["area_random_morhf"]["mean"] == pytest.approx(np.trapezoid(rnd - mor, ks) / (ks[-1] - ks[0]),
                                                               abs=1e-12)
    assert len(set(e["effects"])) > 1  # graded scores: the Spearman below is not the constant-input 0
    rho = scipy.stats.spearmanr(e["effects"], e["hrv_values"]).statistic
    assert e["spearman"]["mean"] == pytest.approx(rho, abs=1e-12)
    assert set(data["p2p"]["methods"]) == {"independent", "P2P", "P2P-HRV"}
    assert set(data["ae"]["methods"]) == {"SD", "A&E", "A&E-HRV"}
    for name in ("hrv_heatmaps.png", "hrv_concentration.png", "weakening_curves.png", "head_effects.png",
                 "polysemy_examples.png", "polysemy_hard_examples.png", "p2p_examples.png", "ae_examples.png"):
        assert (out / name).stat().st_size > 0
        assert f"report/{name}" in md  # linked relative to the Markdown file
    assert (out / "hrv" / "hrv.json").exists() and (out / "hrv-control" / "hrv.json").exists()
    # every interval in the JSON is ordered
    def walk(x):
        if isinstance(x, dict):
            if {"mean", "low", "high"} <= set(x) and isinstance(x["low"], float) and isinstance(x["high"], float):
                assert x["low"] - 1e-9 <= x["high"]
            for v in x.values():
                walk(v)
        elif isinstance(x, list):
            for v in x:
                walk(v)
    walk(data)
    assert r["hrv"]["num_heads"] == 22
    assert not (out / ".partial").exists()  # kept only until the report is written
    md_again = render_from_json(out, tmp_path / "again.md").read_text()
    assert md_again == md  # same folder: identical


def test_interrupted_report_resumes_finished_sections(sd_pipe, tmp_path, monkeypatch):
    import headlens.validation.world_report as wr

    def boom(*a, **k):
        raise RuntimeError("interrupted")

    cfg = ReportConfig.quick()
    cfg.weaken, cfg.effects = {"Color": 2}, {"Color": 1}
    with monkeypatch.context() as m:
        m.setattr(wr, "ae_section", boom)
        with pytest.raises(RuntimeError, match="interrupted"):
            run_report(sd_pipe, StubReader(), tmp_path / "r", config=cfg, log=None)
    assert (tmp_path / "r" / ".partial" / "p2p.json").exists()
    r = run_report(sd_pipe, StubReader(), tmp_path / "r", config=cfg, log=None, resume=True)
    assert r["resumed_sections"] == sorted(["hrv", "attention_mass", "weakening", "effects", "polysemy", "polysemy_hard",
                                            "p2p"])
    assert "ae" in r and (tmp_path / "r.md").exists()


def test_report_sections_fill_one_report_side_by_side(sd_pipe, tmp_path):
    """`sections=`: runs that each compute some sections into OUT/.partial (as parallel processes would), then a
    `resume=True` run that computes nothing and writes the same report as one uninterrupted run."""
    import headlens.validation.world_report as wr

    cfg = ReportConfig.quick()
    cfg.weaken, cfg.effects = {"Color": 2}, {"Color": 1, "Shape": 1}
    whole = run_report(sd_pipe, StubReader(), tmp_path / "whole", config=cfg, log=None)
    out = tmp_path / "r"
    got = run_report(sd_pipe, StubReader(), out, config=cfg, log=None,
                     sections=["p2p", "effects:Shape", "weakening:Color"])
    assert got["done"] == ["hrv", "p2p", "weakening:Color", "effects:Shape"]
    assert {"ae", "weakening", "effects"} <= set(got["missing"])
    assert not (out / "report.json").exists() and (out / ".partial" / "effects.Shape.json").exists()
    assert (out / ".partial" / "weakening.Color.json").exists() and not (out / ".partial" / "weakening.json").exists()
    assert not (out / ".partial" / "effects.Color.json").exists()
    # the whole sections then compute only the concepts still missing (Shape's effects and Color's weakening are
    # not generated again)
    calls = []
    real_e, real_w = wr._concept_effects, wr._concept_weakening

    def counted(real, name):
        def run(*a, **k):
            calls.append((name, a[7]))
            return real(*a, **k)
        return run

    wr._concept_effects, wr._concept_weakening = counted(real_e, "effects"), counted(real_w, "weakening")
    try:
        got = run_report(sd_pipe, StubReader(), out, config=cfg, log=None, sections=["effects", "weakening"])
    finally:
        wr._concept_effects, wr._concept_weakening = real_e, real_w
    assert {"effects", "weakening"} <= set(got["done"])
    assert calls == [("effects", "Color")]
    rest = [n for n in wr.REPORT_SECTIONS if n not in ("hrv", "p2p", "effects", "weakening")]
    # a second "process" with sections= never clears the first one's work, even without resume=True
    assert run_report(sd_pipe, StubReader(), out, config=cfg, log=None, sections=rest)["missing"] == []
    r = run_report(sd_pipe, StubReader(), out, config=cfg, log=None, resume=True)
    assert r["resumed_sections"] == sorted(wr.REPORT_SECTIONS)
    # the effects section's time counts the concepts that earlier runs computed, and the total counts every section
    secs = r["seconds"]
    assert secs["effects"] >= sum(c["seconds"] for c in r["effects"]["concepts"].values()) - 0.15
    assert secs["total"] >= sum(v for k, v in secs.items() if k != "total") - 0.5

    def same(x):  # the results, without the run's timings and its output paths
        if isinstance(x, dict):
            return {k: same(v) for k, v in x.items() if k not in ("seconds", "files")}
        return [same(v) for v in x] if isinstance(x, list) else x

    for name in wr.REPORT_SECTIONS:
        assert same(r[name]) == same(whole[name]), name
    with pytest.raises(ValueError, match="unknown report section"):
        run_report(sd_pipe, StubReader(), out, config=cfg, log=None, sections=["weaken"])
    with pytest.raises(ValueError, match="weakening:Taste"):  # a concept the world does not have
        run_report(sd_pipe, StubReader(), out, config=cfg, log=None, sections=["weakening:Taste"])


def test_report_cli_refuses_an_unknown_section(tmp_path, monkeypatch, capsys):
    from headlens.cli import main

    monkeypatch.setattr("sys.argv", ["headlens", "world", "report", "--quick", "--sections", "effects:Color,weaken",
                                     "--out", str(tmp_path / "o")])
    with pytest.raises(SystemExit) as e:
        main()
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code != 0 and len(err) == 1 and "--sections" in err[0] and "weaken" in err[0]
    assert "polysemy_hard" in err[0] and not (tmp_path / "o").exists()


def test_quick_report_cli_on_bundled_world_model(tmp_path):
    from typer.testing import CliRunner

    from headlens.cli import app

    res = CliRunner().invoke(app, ["world", "report", "--quick", "--out", str(tmp_path / "wr"),
                                   "--poly-hard-guidance", "1.5"])
    assert res.exit_code == 0, res.output
    data = json.loads((tmp_path / "wr" / "report.json").read_text())
    assert data["config"]["poly_hard_guidance"] == 1.5 and data["polysemy_hard"]["guidance"] == 1.5
    assert "'an orange circle' at guidance 1.5" in (tmp_path / "wr.md").read_text()
    assert data["hrv"]["num_heads"] == WORLD_HEADS
    assert "## 2. Ordered weakening" in (tmp_path / "wr.md").read_text()


def test_cli_names_a_missing_model(tmp_path):
    from typer.testing import CliRunner

    from headlens.cli import app

    res = CliRunner().invoke(app, ["world", "report", "--quick", "--model", str(tmp_path / "none"),
                                   "--out", str(tmp_path / "o")])
    assert res.exit_code != 0
    assert "model_index.json" in str(res.exception) or "model_index.json" in res.output
