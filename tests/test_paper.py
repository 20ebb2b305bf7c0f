"""The paper's released HRVs shipped with headlens: `paper:sd-v1-4`, `paper:sdxl-base-1.0`, ConceptSet.paper().

Expected values come from the released .npy files themselves (read here with numpy), mapped through
their head labels onto HeadIndex layouts of real-config UNets built on the meta device.
"""

from __future__ import annotations

import warnings
from importlib import resources
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from cli_inprocess import cli
from diffusers import UNet2DConditionModel

import headlens
from headlens import HRV, ConceptSet, HeadIndex, HeadlensNote, LayoutMismatchError, paper

# Real UNet configs (layout-relevant keys) of CompVis/stable-diffusion-v1-4 and stabilityai/stable-diffusion-xl-base-1.0.
SD14 = dict(
    attention_head_dim=8, block_out_channels=[320, 640, 1280, 1280], cross_attention_dim=768,
    down_block_types=["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    up_block_types=["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    layers_per_block=2, sample_size=64, in_channels=4, out_channels=4,
)
SDXL = dict(
    attention_head_dim=[5, 10, 20], block_out_channels=[320, 640, 1280], cross_attention_dim=2048,
    down_block_types=["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    up_block_types=["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"], layers_per_block=2,
    transformer_layers_per_block=[1, 2, 10], use_linear_projection=True, addition_embed_type="text_time",
    addition_time_embed_dim=256, projection_class_embeddings_input_dim=2816, sample_size=128,
    in_channels=4, out_channels=4,
)
DATA = resources.files("headlens") / "data" / "paper-hrv"


def meta_unet(cfg):
    with torch.device("meta"):
        return UNet2DConditionModel(**cfg)


@pytest.fixture(scope="module")
def sd14_unet():
    return meta_unet(SD14)


@pytest.fixture(scope="module")
def sdxl_unet():
    return meta_unet(SDXL)


def released(name):
    with resources.as_file(DATA / f"{name}.hrv.npy") as m, resources.as_file(DATA / f"{name}.heads.npy") as h:
        return np.load(m, allow_pickle=False), [str(x) for x in np.load(h, allow_pickle=False)]


def quiet_load(spec, model=None):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", HeadlensNote)
        return HRV.load(spec, model=model)


@pytest.mark.parametrize("name,fixture,count", [("sd-v1-4", "sd14_unet", 128), ("sdxl-base-1.0", "sdxl_unet", 1300)])
def test_top_heads_are_the_released_ranking_mapped_through_the_labels(name, fixture, count, request):
    unet = request.getfixturevalue(fixture)
    heads = HeadIndex.from_unet(unet)
    assert len(heads) == count
    hrv = quiet_load(f"paper:{name}", unet)  # the layout check passes on the real-config UNet
    assert hrv.heads == heads and hrv.heads.names == heads.names
    m, labels = released(name)
    assert hrv.concepts == list(ConceptSet.paper().names) and m.shape == (34, count)
    for row, concept in enumerate(hrv.concepts):
        order = np.argsort(-m[row], kind="stable")[:10]  # the release's own ranking, in its label order
        expected = [(labels[j], float(m[row, j])) for j in order]
        assert hrv.top_heads(concept, 10, names="label") == expected, concept
        # the full names point at the same heads of the real UNet
        assert [heads.resolve(n) for n, _ in hrv.top_heads(concept, 10)] == [heads.from_reference_label(lab)
                                                                             for lab, _ in expected]
    np.testing.assert_allclose(hrv.matrix.mean(dim=1).numpy(), 1.0, atol=1e-5)


def test_color_top_heads_on_sd14():
    hrv = HRV.load("paper:sd-v1-4")
    (first, v1), (second, v2) = hrv.top_heads("Color", 2, names="label")
    assert (first, round(v1, 2)) == ("up, layer: 8, head: 0", 8.31)
    assert (second, round(v2, 2)) == ("up, layer: 6, head: 4", 5.13)
    assert hrv.top_heads("Color", 1)[0][0] == "up_blocks.3.attentions.2.transformer_blocks.0.attn2.head0"
    assert hrv.top_heads("Color", 1, names="short")[0][0] == "up8.h0"
    assert hrv.metadata["model"] == "CompVis/stable-diffusion-v1-4" and hrv.metadata["license"] == "Apache-2.0"


def test_shuffled_columns_are_put_back_by_their_labels(tmp_path):
    """The label mapping really moves columns: a release with shuffled columns imports to the same HRV."""
    m, labels = released("sd-v1-4")
    perm = np.random.default_rng(0).permutation(m.shape[1])
    np.save(tmp_path / "m.npy", m[:, perm])
    np.save(tmp_path / "l.npy", np.array([labels[j] for j in perm]))
    hrv = HRV.load("paper:sd-v1-4")
    other = HRV.from_reference(tmp_path / "m.npy", tmp_path / "l.npy", paper.layout("sd-v1-4"), hrv.concepts)
    assert torch.equal(other.matrix, hrv.matrix)


def test_per_timestep_release(tmp_path):
    hrv = HRV.load("paper:sd-v1-4")
    pt = hrv.per_timestep
    assert pt.shape == (51, 34, 128)
    with resources.as_file(DATA / "sd-v1-4.per-timestep.hrv.npy") as p:
        raw = np.load(p, allow_pickle=False)
    # labels are in canonical order in this release, so the per-timestep values stay in place
    np.testing.assert_array_equal(pt.numpy(), raw)
    np.testing.assert_allclose(pt.mean(dim=-1).numpy(), 1.0, atol=1e-5)
    hrv.save(tmp_path / "copy")
    back = HRV.load(tmp_path / "copy")
    assert torch.equal(back.per_timestep, pt) and torch.equal(back.matrix, hrv.matrix)
    assert back.words["Color"][:3] == ["Red", "Blue", "Green"]
    with pytest.raises(ValueError, match="per-timestep"):
        _ = HRV.load("paper:sdxl-base-1.0").per_timestep


def test_layout_mismatch_is_the_usual_error(sd14_unet, sdxl_unet, sd_pipe):
    with pytest.raises(LayoutMismatchError, match="1300 heads.*128 heads"):
        HRV.load("paper:sdxl-base-1.0", model=sd14_unet)
    with pytest.raises(LayoutMismatchError, match="128 heads in 16 layers.*22 heads"):
        HRV.load("paper:sd-v1-4", model=sd_pipe)
    with pytest.raises(ValueError, match="unknown paper HRV 'paper:sd-v2'.*paper:sd-v1-4"):
        HRV.load("paper:sd-v2")


def _named(unet, name):
    """A stand-in pipeline: the real-config UNet and a config naming the checkpoint."""
    return SimpleNamespace(unet=unet, config={"_name_or_path": name})


def test_sd15_is_accepted_with_a_note(sd14_unet, sdxl_unet):
    with pytest.warns(HeadlensNote, match=r"paper:sd-v1-4 was measured on Stable Diffusion v1\.4 .*"
                                          r"'runwayml/stable-diffusion-v1-5' has the same head layout") as rec:
        hrv = HRV.load("paper:sd-v1-4", _named(sd14_unet, "runwayml/stable-diffusion-v1-5"))
    assert len(rec) == 1 and "\n" not in str(rec[0].message)
    assert len(hrv.heads) == 128
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the model it was measured on: no note
        HRV.load("paper:sd-v1-4", _named(sd14_unet, "CompVis/stable-diffusion-v1-4"))
        HRV.load("paper:sdxl-base-1.0", _named(sdxl_unet, "stabilityai/stable-diffusion-xl-base-1.0"))
        HRV.load("paper:sd-v1-4", HeadIndex.from_unet(sd14_unet))  # a bare layout names no model


def test_paper_concepts():
    cs = ConceptSet.paper()
    assert len(cs) == 34 and all(len(w) == 10 for w in cs.words)
    text = (DATA / "concepts-34x10.txt").read_text(encoding="utf-8-sig")
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    names = [ln for ln in lines if not ln.split(".")[0].isdigit()]
    assert list(cs.names) == names and len(lines) == 34 * 11
    assert cs.names[:3] == ("Animals", "Plants", "Fruits and Vegetables") and "Color" in cs.names
    assert cs["Color"] == ("Red", "Blue", "Green", "Yellow", "Black", "White", "Purple", "Gray", "Pink", "Brown")
    assert cs["Geo-locations"][-1] == "Rio de Janeiro" and cs["Brand Logos"][2] == "McDonald's"
    assert ConceptSet.load("paper") == cs == ConceptSet.coerce("paper")


def test_release_files_and_licence_are_shipped():
    names = {p.name for p in DATA.iterdir()}
    assert {"LICENSE", "NOTICE", "README.md", "layouts.json", "ordered-weakening-sd-v1-4-image-style.csv"} <= names
    assert "Apache License" in (DATA / "LICENSE").read_text(encoding="utf-8")
    assert "SNU-DRL/HRV" in (DATA / "NOTICE").read_text(encoding="utf-8")
    curve = paper.released_weakening_curve()
    assert curve["morhf"][0] == (0, 0.2353) and curve["morhf"][-1] == (128, 0.1268)
    assert [k for k, _ in curve["lerhf"]] == [0, 1] + list(range(11, 128, 10)) + [128]


def test_layouts_file_matches_real_configs(sd14_unet, sdxl_unet):
    for name, unet in (("sd-v1-4", sd14_unet), ("sdxl-base-1.0", sdxl_unet)):
        real = HeadIndex.from_unet(unet)
        shipped = paper.layout(name)
        assert shipped.describe() == real.describe() and shipped.fingerprint == real.fingerprint
        assert paper.release_for(real) == name
    assert paper.release_for(HeadIndex.from_unet(headlens.testing.tiny_unet())) is None


def test_top_heads_names_option(sd_pipe):
    hrv = HRV.load("paper:sd-v1-4")
    full, short, label = (hrv.top_heads("Shape", 5, names=n) for n in ("full", "short", "label"))
    assert hrv.top_heads("Shape", 5) == full
    for (f, v1), (s, v2), (lab, v3) in zip(full, short, label):
        i = hrv.heads.resolve(f)
        assert hrv.heads.resolve(s) == i == hrv.heads.from_reference_label(lab) and v1 == v2 == v3
    bottom = hrv.bottom_heads("Shape", 3, names="short")
    assert [n for n, _ in bottom] == [hrv.heads[i].short_name for i in hrv.ranking("Shape")[::-1][:3]]
    with pytest.raises(ValueError, match="unknown names='long'"):
        hrv.top_heads("Shape", names="long")


# ---------------------------------------------------------------------------------------------- CLI
def test_cli_hrv_paper_checks_the_layout(monkeypatch, capsys, tmp_path):
    code, _, err = cli(monkeypatch, capsys, "generate", "a red vase", "--adjust", "red:Color:Plants", "--hrv",
                       "paper:sd-v1-4", "--model", "tiny", "--steps", "1", "--out", tmp_path / "g")
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: this HRV was built for a model with 128 heads")


def test_cli_show_paper(monkeypatch, capsys, tmp_path):
    monkeypatch.chdir(tmp_path)
    code, out, err = cli(monkeypatch, capsys, "show", "paper:sd-v1-4", "--concepts", "Color,Image Style", "--k", "3")
    assert code == 0, err
    pics = tmp_path / "paper-sd-v1-4" / "plots"
    assert (pics / "heatmap.png").is_file() and (pics / "top_heads.csv").is_file()
    assert "up8.h0" in (pics / "top_heads.csv").read_text()
    assert (pics / "timesteps" / "color.png").is_file()  # the released per-timestep HRVs are drawn too


def test_cli_build_paper_concepts_and_resume_note(monkeypatch, capsys, tmp_path):
    out = tmp_path / "hrv"
    code, _, err = cli(monkeypatch, capsys, "build", "--model", "tiny", "--concepts", "paper", "--prompts", "default",
                       "--limit", "2", "--steps", "1", "--batch-size", "2", "--resume", "--top", "0", "--out", out)
    assert code == 0, err
    assert f"no checkpoint in {out}: starting a new build" in err
    hrv = HRV.load(out)
    assert hrv.concepts == list(ConceptSet.paper().names) and hrv.words["Color"][0] == "Red"
    code, _, err = cli(monkeypatch, capsys, "build", "--model", "tiny", "--concepts", "paper", "--prompts", "default",
                       "--limit", "2", "--steps", "1", "--batch-size", "2", "--resume", "--top", "0", "--out", out)
    assert code == 0, err
    assert "no checkpoint" not in err  # the first run left its checkpoint: this one resumes it
    assert torch.equal(HRV.load(out).votes, hrv.votes)


def test_cli_prints_notes_as_one_line(capsys, sd14_unet):
    from headlens.cli.common import _show_note

    with pytest.warns(HeadlensNote) as rec:
        HRV.load("paper:sd-v1-4", _named(sd14_unet, "runwayml/stable-diffusion-v1-5"))
    w = rec[0]
    _show_note(w.message, w.category, w.filename, w.lineno)  # what the CLI's warnings.showwarning does
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("note: paper:sd-v1-4 was measured on Stable Diffusion v1.4")
