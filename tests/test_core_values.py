"""Token positions, concept sets, the HRV maths and the HRV file format."""

import json

import numpy as np
import pytest
import torch

from headlens import HRV, ConceptSet, HeadIndex, LayoutMismatchError, load_prompts
from headlens.testing import clip_tokenizer, tiny_unet
from headlens.tokens import TokenMap, WordNotFoundError, word_positions_in_prompt
from headlens.votes import adjust_factors, hrv_from_votes, spearman, votes_from_scores


@pytest.fixture(scope="module")
def tok():
    return clip_tokenizer()


# ---------------------------------------------------------------- tokens
@pytest.mark.parametrize("prompt,word,expected", [
    ("A vase in lavender color", "lavender", [4]),
    ("a rose-colored vase", "rose", [2]),  # punctuation splits words
    ("An APPLE, and an apple's stem", "Apple", [2, 6]),  # case and repeats
    ("a goldfish and a fish", "fish", [5]),  # no match inside another word
    ("an oak tree by a tree", "oak tree", [2, 3]),  # multi-word / multi-token
    ("a photo of a mobile phone.", "phone", [6]),
])
def test_word_positions(tok, prompt, word, expected):
    assert word_positions_in_prompt(tok, prompt, word) == expected
    ids = tok(prompt)["input_ids"]
    got = {tok.convert_ids_to_tokens(ids[p]).replace("</w>", "") for p in expected}
    assert got <= set(word.lower().split())


def test_multi_token_word(tok):
    word = "photosynthesizing"
    ids = tok(word, add_special_tokens=False)["input_ids"]
    assert len(ids) > 1  # really split into pieces
    tm = TokenMap.from_tokenizer(tok, f"a leaf {word} in sun")
    assert tm.find(word, tok) == list(range(3, 3 + len(ids)))


def test_occurrence_and_token_sets(tok):
    tm = TokenMap.from_tokenizer(tok, "a cat and a cat")
    assert tm.find("cat", tok) == [2, 5]
    assert tm.find("cat", tok, occurrence=1) == [5]
    assert tm.word_positions == [1, 2, 3, 4, 5]
    assert tm.end_positions == list(range(6, 77))
    assert tm.positions("words+end") == list(range(1, 77))
    with pytest.raises(WordNotFoundError, match="occurs 2 time"):
        tm.find("cat", tok, occurrence=2)
    with pytest.raises(WordNotFoundError, match="not in the prompt"):
        tm.find("dog", tok)
    with pytest.raises(ValueError, match="unknown token set"):
        tm.positions("bogus")


# ---------------------------------------------------------------- concepts and prompts
def test_concept_set_formats(tmp_path):
    cs = ConceptSet.from_dict({"Color": ["red", "blue"], "Animals": "cat, dog"})
    assert cs.names == ("Color", "Animals") and cs["Animals"] == ("cat", "dog")
    (tmp_path / "c.toml").write_text(cs.to_toml())
    (tmp_path / "c.txt").write_text("# comment\nColor: red, blue\nAnimals: cat, dog\n")
    assert ConceptSet.load(tmp_path / "c.toml") == cs == ConceptSet.load(tmp_path / "c.txt")
    assert cs.fingerprint == ConceptSet.load(tmp_path / "c.toml").fingerprint
    with pytest.raises(KeyError, match="have: Color, Animals"):
        cs.index("Colour")
    with pytest.raises(ValueError, match="no words"):
        ConceptSet.from_dict({"Empty": []})
    (tmp_path / "bad.txt").write_text("Color red blue\n")
    with pytest.raises(ValueError, match="expected 'Concept: word"):
        ConceptSet.load(tmp_path / "bad.txt")
    with pytest.raises(FileNotFoundError, match="not found"):
        ConceptSet.load(tmp_path / "missing.toml")


def test_default_sets():
    cs = ConceptSet.default()
    # README: 44 concepts × 10 words; 2,100 prompts (1,000 "a photo of a {class}." + 1,100 descriptive)
    assert len(cs) == 44 and [len(w) for w in cs.words] == [10] * 44
    prompts = load_prompts("default")
    assert len(prompts) == 2100 and prompts[0].startswith("a photo of a")
    assert sum(p.startswith("a photo of a") for p in prompts[:1000]) == 1000
    assert len(set(prompts)) == len(prompts)


# ---------------------------------------------------------------- maths
def test_votes_from_scores_matches_loop():
    g = torch.Generator().manual_seed(0)
    scores = torch.rand(6, 5, 4, generator=g)
    counts = votes_from_scores(scores)
    expected = torch.zeros(5, 4, dtype=torch.int64)
    for b in range(6):
        for h in range(5):
            expected[h, int(np.argmax(scores[b, h].numpy()))] += 1
    assert torch.equal(counts, expected)


def test_hrv_from_votes_two_step_form():
    v = torch.tensor([[3, 1, 0], [0, 4, 0], [2, 1, 1]])
    m = hrv_from_votes(v)
    p = v.double() / v.sum(1, keepdim=True)
    for c in range(2):
        assert torch.allclose(m[c].double(), 3 * p[:, c] / p[:, c].sum(), atol=1e-6)
    assert torch.allclose(m.mean(1), torch.ones(3))
    # unequal voting (a head with more votes) still gives per-head distributions
    v2 = torch.tensor([[30, 10], [0, 4]])
    p2 = v2.double() / v2.sum(1, keepdim=True)
    assert torch.allclose(hrv_from_votes(v2)[0].double(), 2 * p2[:, 0] / p2[:, 0].sum(), atol=1e-6)
    # a concept that never won gets all ones
    v3 = torch.tensor([[1, 0], [2, 0]])
    assert torch.equal(hrv_from_votes(v3)[1], torch.ones(2))


def test_adjust_factors_and_spearman():
    d, u = torch.tensor([12.0, 1.0, 0.5]), torch.tensor([0.0, 10.0, 2.0])
    assert torch.allclose(adjust_factors(d, u), torch.tensor([24.0, -8.0, -1.0]))
    assert torch.allclose(adjust_factors(d, u, clamp=9), torch.tensor([18.0, -7.0, -1.0]))
    from scipy.stats import spearmanr

    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(30, generator=g), torch.randn(30, generator=g)
    b[3] = b[4]  # a tie
    assert spearman(a, b) == pytest.approx(spearmanr(a.numpy(), b.numpy()).statistic, abs=1e-12)


# ---------------------------------------------------------------- HRV object and files
@pytest.fixture(scope="module")
def heads():
    return HeadIndex.from_unet(tiny_unet())


def make_hrv(heads, seed=0):
    g = torch.Generator().manual_seed(seed)
    votes = torch.randint(0, 5, (4, len(heads), 3), generator=g)
    return HRV(heads, ["Color", "Animals", "Plants"], votes, {"Color": ["red"]}, {"model": "tiny", "seed": seed})


def test_hrv_save_load_round_trip(heads, tmp_path):
    hrv = make_hrv(heads)
    hrv.save(tmp_path / "h")
    meta = json.loads((tmp_path / "h" / "hrv.json").read_text())
    assert meta["format"] == "headlens-hrv/1"  # README: format headlens-hrv/1
    assert meta["heads"]["fingerprint"] == heads.fingerprint and meta["metadata"]["model"] == "tiny"
    from safetensors import safe_open

    with safe_open(str(tmp_path / "h" / "hrv.safetensors"), framework="pt") as f:
        assert f.metadata() == {"format": "headlens-hrv/1"}
        assert f.get_tensor("votes").dtype == torch.int64 and f.get_tensor("matrix").dtype == torch.float32
    back = HRV.load(tmp_path / "h", heads)
    assert torch.equal(back.votes, hrv.votes) and torch.equal(back.matrix, hrv.matrix)
    assert back.concepts == hrv.concepts and back.heads == heads and back.words["Color"] == ["red"]
    assert back.top_heads("Color", 3) == hrv.top_heads("Color", 3)


def test_ranking_top_bottom(heads):
    hrv = make_hrv(heads, 3)
    vals = hrv["Animals"]
    order = hrv.ranking("Animals")
    assert sorted(order) == list(range(len(heads)))
    assert all(vals[order[i]] >= vals[order[i + 1]] for i in range(len(order) - 1))
    assert [n for n, _ in hrv.top_heads("Animals", 4)] == [heads[i].name for i in order[:4]]
    assert [n for n, _ in hrv.bottom_heads("Animals", 4)] == [heads[i].name for i in order[::-1][:4]]
    df = hrv.to_pandas()
    assert list(df["head"]) == heads.names and np.allclose(df["Animals"], vals.numpy())
    with pytest.raises(KeyError, match="not in this HRV"):
        hrv["Colour"]


def test_layout_mismatch_is_clear(heads, tmp_path):
    from headlens.testing import tiny_sdxl_pipeline

    hrv = make_hrv(heads)
    hrv.save(tmp_path)
    with pytest.raises(LayoutMismatchError, match="build an HRV for this model"):
        HRV.load(tmp_path, tiny_sdxl_pipeline())


@pytest.mark.parametrize("version", ["headlens-hrv/2", None])
def test_unknown_format_version_is_refused(heads, tmp_path, version):
    make_hrv(heads).save(tmp_path)
    meta = json.loads((tmp_path / "hrv.json").read_text())
    if version is None:
        del meta["format"]
    else:
        meta["format"] = version
    (tmp_path / "hrv.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=f"unknown format {version!r} \\(expected headlens-hrv/1\\)") as e:
        HRV.load(tmp_path)
    assert "\n" not in str(e.value) and "hrv.json" in str(e.value)


def test_check_layout_on_a_mismatched_model(heads):
    from headlens.testing import tiny_sd_pipeline, tiny_sdxl_pipeline

    hrv = make_hrv(heads)
    pipe = tiny_sd_pipeline()
    for same in (pipe, pipe.unet, heads):  # a pipeline, a UNet or a HeadIndex with this layout: accepted
        hrv.check_layout(same)
    xl = tiny_sdxl_pipeline()
    with pytest.raises(LayoutMismatchError) as e:
        hrv.check_layout(xl)
    assert str(e.value) == (f"this HRV was built for a model with 22 heads in 7 layers (tiny), but the model has "
                            f"{len(HeadIndex.from_unet(xl.unet))} heads in {len(HeadIndex.from_unet(xl.unet).layers)} "
                            "layers; build an HRV for this model with `headlens build`")
    # the same number of heads in another arrangement is another layout too
    desc = heads.describe()
    i, j = next((a, b) for a in range(len(desc)) for b in range(len(desc)) if desc[a]["heads"] != desc[b]["heads"])
    desc[i]["heads"], desc[j]["heads"] = desc[j]["heads"], desc[i]["heads"]
    moved = HeadIndex.from_description(desc)
    assert len(moved) == len(heads)
    with pytest.raises(LayoutMismatchError, match="22 heads in 7 layers"):
        hrv.check_layout(moved)


def test_not_an_hrv_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="not an HRV folder"):
        HRV.load(tmp_path)


def test_reference_npy_import(heads, tmp_path):
    g = np.random.default_rng(0)
    matrix = g.random((3, len(heads))).astype(np.float32)
    labels = np.array(heads.to_reference_labels())
    perm = g.permutation(len(heads))
    np.save(tmp_path / "m.npy", matrix[:, perm])
    np.save(tmp_path / "l.npy", labels[perm])
    hrv = HRV.from_reference(tmp_path / "m.npy", tmp_path / "l.npy", heads, ["A", "B", "C"])
    assert np.allclose(hrv.matrix.numpy(), matrix)
    # object arrays would need pickle: refused
    np.save(tmp_path / "obj.npy", np.array([{"x": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match="without pickle"):
        HRV.from_reference(tmp_path / "obj.npy", None, heads)
