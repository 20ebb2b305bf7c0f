"""The world validation report (`headlens world report`): end to end on a tiny model with a stub reader,
and on the bundled world model when it is there."""

import json

import numpy as np
import pytest
import torch

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
from headlens.world import model_path, parse_caption

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


def test_quick_report_end_to_end_on_tiny_model(sd_pipe, tmp_path):
    out = tmp_path / "report"
    scheduler = sd_pipe.scheduler
    r = run_report(sd_pipe, StubReader(), out, config=ReportConfig.quick(), log=None, model_name="tiny model")
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


@pytest.mark.skipif(not (model_path() / "model_index.json").exists(),
                    reason="the bundled world model is not trained yet (no model_index.json in headlens/world/model)")
def test_quick_report_cli_on_bundled_world_model(tmp_path):
    from typer.testing import CliRunner

    from headlens.cli import app

    res = CliRunner().invoke(app, ["world", "report", "--quick", "--out", str(tmp_path / "wr")])
    assert res.exit_code == 0, res.output
    data = json.loads((tmp_path / "wr" / "report.json").read_text())
    assert data["hrv"]["num_heads"] == 56
    assert "## 2. Ordered weakening" in (tmp_path / "wr.md").read_text()


def test_cli_names_a_missing_model(tmp_path):
    from typer.testing import CliRunner

    from headlens.cli import app

    res = CliRunner().invoke(app, ["world", "report", "--quick", "--model", str(tmp_path / "none"),
                                   "--out", str(tmp_path / "o")])
    assert res.exit_code != 0
    assert "model_index.json" in str(res.exception) or "model_index.json" in res.output
