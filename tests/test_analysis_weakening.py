"""Ordered weakening and causal head ranking on the tiny pipeline (cheap pixel scorer)."""

from __future__ import annotations

import csv
import json
from collections import defaultdict

import numpy as np
import pytest
import scipy.stats
import torch
from PIL import Image

from headlens import HRV, HeadIndex
from headlens.analysis import (
    GenerationSettings,
    TemplateFamily,
    default_ks,
    estimate_cost,
    head_effects,
    head_order,
    load_templates,
    normalised_area,
    ordered_weakening,
    plan_conditions,
    prompt_targets,
    template_family,
    world_family,
)
from headlens.scorers import FunctionScorer
from headlens.steering import steer
from headlens.testing import tiny_sd_pipeline

SETTINGS = GenerationSettings(num_inference_steps=2, batch_size=4)


@pytest.fixture(scope="module")
def pipe():
    return tiny_sd_pipeline()


@pytest.fixture(scope="module")
def hrv(pipe):
    heads = HeadIndex.from_unet(pipe.unet)
    g = torch.Generator().manual_seed(0)
    m = torch.randperm(2 * len(heads), generator=g).float().view(2, -1) / len(heads)  # distinct values
    return HRV.from_matrix(m, heads, ["Color", "Plants"], words={"Color": ["red", "blue", "green"]})


def redness(image: Image.Image, target, prompt) -> float:
    a = np.asarray(image, dtype=np.float64) / 255
    return float((a[..., 0] - a[..., 1:].mean(-1)).mean())


SCORER = FunctionScorer(redness, "redness")


# ---------------------------------------------------------------------------- plans and prompts
def test_default_k_grid():
    assert default_ks(22) == [0, 1, 11, 21, 22]
    ks = default_ks(128)
    assert ks[:3] == [0, 1, 11] and ks[-2:] == [121, 128] and len(ks) == 15
    assert default_ks(21) == [0, 1, 11, 21]


def test_morhf_lerhf_heads_are_top_and_bottom_k(hrv):
    values = hrv["Color"].numpy()
    conds = plan_conditions(hrv, "Color", [0, 1, 5, 22], random_draws=2)
    for c in conds:
        if c.order == "morhf":
            assert set(c.heads) == set(np.argsort(-values)[: c.k].tolist())
        elif c.order == "lerhf":
            assert set(c.heads) == set(np.argsort(values)[: c.k].tolist())
        assert len(set(c.heads)) == c.k
    r0, r1 = head_order(hrv, "Color", "random", 0), head_order(hrv, "Color", "random", 1)
    assert sorted(r0) == list(range(hrv.num_heads)) and r0 != r1 and r0 == head_order(hrv, "Color", "random", 0)
    assert len({c.key for c in conds if c.k == 0}) == 1


def test_template_families(tmp_path):
    f = tmp_path / "t.toml"
    f.write_text('[Color]\ntemplate = "a {color} {object}"\ntarget = "color"\n'
                 '[Color.slots]\ncolor = ["red", "blue"]\nobject = ["car", "vase", "cup"]\n')
    fam = load_templates(f)["Color"]
    assert fam.prompts()[:4] == [("a red car", "red"), ("a red vase", "red"), ("a red cup", "red"),
                                 ("a blue car", "blue")]
    assert len(fam.prompts()) == 6
    assert template_family("color", f) == fam  # case-insensitive concept
    with pytest.raises(KeyError, match="no prompt template"):
        template_family("Texture", f)
    with pytest.raises(ValueError, match="without a word list"):
        TemplateFamily("C", "a {x} {y}", "x", {"x": ["a"]})
    with pytest.raises(ValueError, match="target slot"):
        TemplateFamily("C", "a {x}", "z", {"x": ["a"]})
    shipped = template_family("Color")
    assert all(t in p for p, t in shipped.prompts())
    pos = world_family("Position").prompts()
    assert ("a red circle on the left", "left") in pos


def test_prompt_targets_from_plain_prompts(hrv):
    assert prompt_targets(["a red car", "two blue cups"], "Color", hrv) == [("a red car", "red"),
                                                                            ("two blue cups", "blue")]
    assert prompt_targets([("x", "y")], "Color", hrv) == [("x", "y")]
    assert prompt_targets(["a car"], "Color", hrv, targets=["red"]) == [("a car", "red")]
    with pytest.raises(ValueError, match="no target word"):
        prompt_targets(["a reddish car"], "Color", hrv)


# ---------------------------------------------------------------------------- ordered weakening
def read_rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_ordered_weakening_end_to_end(pipe, hrv, tmp_path):
    out = tmp_path / "run"
    prompts, seeds, ks = ["a red car", "a blue vase"], [1, 2], [0, 1, 11, 22]
    r = ordered_weakening(pipe, hrv, "Color", prompts, seeds, ks, SCORER, out, settings=SETTINGS, random_draws=2,
                          n_boot=200, progress=False)
    # one generation per distinct head set: k=0 and k=H (all heads) are shared by every order
    conds = plan_conditions(hrv, "Color", ks, random_draws=2)
    distinct = {frozenset(c.heads) for c in conds}
    assert len(distinct) <= len(conds) - 2 * 3
    assert r.generations == len(distinct) * 4
    rows = read_rows(out / "scores.csv")
    assert len(rows) == (2 + 2 * 1) * len(ks) * 4  # every (order, draw, k, item) has a row
    by = defaultdict(list)
    for row in rows:
        by[(row["order"], int(row["draw"]), int(row["k"]))].append(float(row["score"]))
    mor, ler, rnd = r.curve("morhf"), r.curve("lerhf"), r.curve("random")
    for j, k in enumerate(ks):
        assert mor.mean[j] == pytest.approx(np.mean(by[("morhf", 0, k)]))
        assert ler.mean[j] == pytest.approx(np.mean(by[("lerhf", 0, k)]))
        assert rnd.mean[j] == pytest.approx(np.mean(by[("random", 0, k)] + by[("random", 1, k)]))
        assert mor.low[j] <= mor.mean[j] <= mor.high[j]
    assert mor.mean[0] == ler.mean[0] == rnd.mean[0] and mor.mean[-1] == ler.mean[-1]
    assert not np.allclose(mor.mean, mor.mean[0])  # weakening changes the images
    assert r.area == pytest.approx(normalised_area(ks, ler.mean, mor.mean))
    assert r.areas["words"].low <= r.area <= r.areas["words"].high
    curves = read_rows(out / "curves.csv")
    assert [float(c["mean"]) for c in curves if c["order"] == "morhf"] == pytest.approx(mor.mean, rel=1e-5)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["area"]["words"]["value"] == pytest.approx(r.area)
    for name in ("plot", "grid_morhf", "grid_lerhf", "grid_random"):
        img = np.asarray(Image.open(r.files[name]).convert("L"), dtype=float)
        assert img.shape[0] > 100 and img.std() > 10, name
    # an independent generation of one curve point: the top-1 head weakened, same batch and seeds
    top = hrv.ranking("Color")[0]
    with steer(pipe) as s:
        s.weaken(heads=[top], words="all", factor=-2.0)
        ims = pipe([p for p in prompts for _ in seeds], num_inference_steps=2,
                   generator=[torch.Generator().manual_seed(sd) for _ in prompts for sd in seeds]).images
    assert np.mean([redness(im, None, None) for im in ims]) == pytest.approx(mor.mean[1], rel=1e-6)

    # resume: nothing is generated again, same curves; a new run in the same folder is refused
    again = ordered_weakening(pipe, hrv, "Color", prompts, seeds, ks, SCORER, out, settings=SETTINGS,
                              random_draws=2, n_boot=200, resume=True, progress=False)
    assert again.generations == 0
    np.testing.assert_allclose(again.curve("morhf").mean, mor.mean)
    with pytest.raises(FileExistsError, match="resume"):
        ordered_weakening(pipe, hrv, "Color", prompts, seeds, ks, SCORER, out, settings=SETTINGS, progress=False)
    with pytest.raises(ValueError, match="different run"):
        ordered_weakening(pipe, hrv, "Color", prompts, [1], ks, SCORER, out, settings=SETTINGS, resume=True,
                          progress=False)


def test_token_set_control(pipe, hrv, tmp_path):
    r = ordered_weakening(pipe, hrv, "Color", ["a red car"], [3], [0, 4], SCORER, tmp_path,
                          tokens=["words", "words+end"], random_draws=0, settings=SETTINGS, n_boot=50,
                          progress=False)
    assert {(c.order, c.tokens) for c in r.curves} == {(o, t) for o in ("morhf", "lerhf")
                                                       for t in ("words", "words+end")}
    assert set(r.areas) == {"words", "words+end"} and not r.areas_vs_random
    a, b = r.curve("morhf", "words").mean[1], r.curve("morhf", "words+end").mean[1]
    assert a != b  # end/padding tokens weakened too: a different image
    assert (tmp_path / "grid_morhf_words-end.png").exists()


def test_ordered_weakening_input_errors(pipe, hrv, tmp_path):
    with pytest.raises(ValueError, match="k values must lie in 0..22"):
        ordered_weakening(pipe, hrv, "Color", ["a red car"], [1], [0, 23], SCORER, progress=False)
    with pytest.raises(KeyError, match="not in this HRV"):
        ordered_weakening(pipe, hrv, "Colour", ["a red car"], [1], [0], SCORER, progress=False)
    with pytest.raises(ValueError, match="token set"):
        ordered_weakening(pipe, hrv, "Color", ["a red car"], [1], [0], SCORER, tokens="end", progress=False)
    with pytest.raises(ValueError, match="needs an HRV"):
        ordered_weakening(pipe, None, "Color", ["a red car"], [1], [0], SCORER, progress=False)


def test_template_and_benchmark_files_refuse_missing_and_broken_toml(tmp_path):
    from headlens.analysis.polysemous import load_cases

    bad = tmp_path / "bad.toml"
    bad.write_text("[Color\ntemplate = 1\n")
    for load, kind in ((load_templates, "template"), (load_cases, "benchmark")):
        assert load("default") == load(None) and load(None)  # the shipped file
        with pytest.raises(FileNotFoundError, match=f"^{kind} file '.*nope.toml' not found; give a .toml path or "
                                                    "'default'$"):
            load(tmp_path / "nope.toml")
        with pytest.raises(ValueError, match=f"^{kind} file {bad} is not valid TOML: "):
            load(bad)


# ---------------------------------------------------------------------------- polysemous words
def test_polysemous_benchmark_words_are_found_in_their_prompts(pipe):
    from headlens.analysis.polysemous import load_cases, world_cases
    from headlens.tokens import TokenMap

    cases = load_cases()
    assert len(cases) >= 10
    for c in cases + world_cases():
        assert TokenMap.from_tokenizer(pipe.tokenizer, c.prompt).find(c.word, pipe.tokenizer), c


def test_polysemous_compare(pipe, hrv):
    from headlens.analysis.polysemous import compare

    plain, steered = compare(pipe, hrv, "a red car", [1, 2], strengthen=[("red", "Plants")], settings=SETTINGS)
    assert len(plain) == len(steered) == 2
    assert all(not np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(plain, steered))
    with pytest.raises(ValueError, match="nothing to compare"):
        compare(pipe, hrv, "a red car", [1])
    with pytest.raises(ValueError, match="'blue' is not in the prompt"):
        compare(pipe, hrv, "a red car", [1], adjust=[("blue", "Color", "Plants")])


# ---------------------------------------------------------------------------- causal ranking
def test_head_effects_against_direct_generation(pipe, hrv, tmp_path):
    prompts, seeds, chosen = ["a red car", "a green cup"], [5], [0, 7, 13, 21]
    r = head_effects(pipe, hrv, "Color", prompts, seeds, chosen, SCORER, tmp_path, settings=SETTINGS, n_boot=300,
                     progress=False)
    assert r.generations == estimate_cost(len(chosen), len(prompts), len(seeds)) == 10

    def mean_score(head=None):
        gens = [torch.Generator().manual_seed(5) for _ in prompts]
        if head is None:
            ims = pipe(prompts, num_inference_steps=2, generator=gens).images
        else:
            with steer(pipe) as s:
                s.weaken(heads=[head], words="all")
                ims = pipe(prompts, num_inference_steps=2, generator=gens).images
        return np.array([redness(im, None, None) for im in ims])

    base = mean_score()
    np.testing.assert_allclose(r.baseline, base, rtol=1e-6)
    expected = np.array([(base - mean_score(h)).mean() for h in chosen])
    np.testing.assert_allclose(r.effects, expected, rtol=1e-5, atol=1e-9)
    values = hrv["Color"][chosen].numpy()
    assert r.spearman == pytest.approx(scipy.stats.spearmanr(expected, values).statistic)
    assert r.spearman_low <= r.spearman <= r.spearman_high or np.isclose(r.spearman_low, r.spearman_high)
    assert r.ranking == [chosen[j] for j in np.argsort(-expected, kind="stable")]
    rows = read_rows(tmp_path / "head_effects.csv")
    assert [int(x["head"]) for x in rows] == chosen
    assert sorted(int(x["causal_rank"]) for x in rows) == [1, 2, 3, 4]
    assert (tmp_path / "effects.png").stat().st_size > 1000
