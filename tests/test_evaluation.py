"""Evaluation helpers: CLIP similarity (tiny CLIP), image distances, edit and multi-concept scores, scorer plug-ins."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from headlens.evaluation import (
    CLIPScorer,
    ImageDistance,
    attribute_value,
    clip_preprocess,
    edit_scores,
    multi_concept_scores,
    object_prompts,
    ssim,
    summarize,
    to_tensor,
)
from headlens.testing import clip_tokenizer


@pytest.fixture(scope="module")
def clip():
    from transformers import CLIPConfig, CLIPModel

    cfg = CLIPConfig(
        text_config={"vocab_size": 49408, "hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 2,
                     "num_attention_heads": 4, "max_position_embeddings": 77, "bos_token_id": 49406,
                     "eos_token_id": 49407, "pad_token_id": 49407},
        vision_config={"image_size": 32, "patch_size": 8, "hidden_size": 32, "intermediate_size": 37,
                       "num_hidden_layers": 2, "num_attention_heads": 4},
        projection_dim=16,
    )
    torch.manual_seed(0)
    return CLIPModel(cfg).eval()


def image(seed: int, size: int = 32) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))


def test_clip_similarity_matches_the_model(clip):
    scorer = CLIPScorer(clip, clip_tokenizer())
    images, texts = [image(1), image(2)], ["a red bowl", "a cat and a dog on a sunny day"]
    got = scorer.matrix(images, texts)
    tok = clip_tokenizer()(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        out = clip(input_ids=tok.input_ids, attention_mask=tok.attention_mask,
                   pixel_values=clip_preprocess(images, 32))
    assert torch.allclose(got, out.logits_per_image / clip.logit_scale.exp(), atol=1e-5)
    assert torch.allclose(scorer.similarity(images, texts), got.diagonal(), atol=1e-6)
    with pytest.raises(ValueError, match="one to one"):
        scorer.similarity(images, texts[:1])


def test_clip_preprocess():
    x = clip_preprocess([image(3)], 32, mean=(0, 0, 0), std=(1, 1, 1))[0]
    assert torch.allclose(x, to_tensor(image(3)), atol=1e-5)  # already the right size: unchanged
    wide = Image.fromarray(np.zeros((16, 40, 3), dtype=np.uint8))
    assert clip_preprocess([wide], 32).shape == (1, 3, 32, 32)


def test_hugging_face_image_processor_plugs_in(clip):
    from transformers import CLIPImageProcessor

    proc = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    a = CLIPScorer(clip, clip_tokenizer(), processor=proc).image_embeddings([image(4)])
    b = CLIPScorer(clip, clip_tokenizer()).image_embeddings([image(4)])
    assert torch.allclose(a, b, atol=1e-4)


def test_ssim_closed_form_and_distances():
    a, b = torch.full((3, 16, 16), 0.2), torch.full((3, 16, 16), 0.7)
    c1 = 0.01**2
    assert torch.isclose(ssim(a, b), torch.tensor((2 * 0.2 * 0.7 + c1) / (0.2**2 + 0.7**2 + c1)), atol=1e-6)
    x = to_tensor(image(5, 16))
    assert torch.isclose(ssim(x, x), torch.tensor(1.0), atol=1e-5)
    d = ImageDistance("ssim")
    assert d.name == "1-ssim" and d(x, x) == pytest.approx(0.0, abs=1e-5)
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(0))
    near, far = (x + 0.05 * noise).clamp(0, 1), (x + 0.4 * noise).clamp(0, 1)
    assert 0 < d(x, near) < d(x, far)
    mse = ImageDistance("mse")
    assert mse(x, near) == pytest.approx(float(((x - near) ** 2).mean()))
    auto = ImageDistance()
    assert auto.name in ("lpips", "1-ssim")
    with pytest.raises(ValueError, match="unknown distance"):
        ImageDistance("l2")


def test_edit_scores_with_clip(clip):
    scorer = CLIPScorer(clip, clip_tokenizer())
    src, edited = image(6), image(7)
    out = edit_scores(src, edited, "a bowl made of glass", "glass", scorer, distance=ImageDistance("mse"))
    sims = scorer.similarity([edited, edited], ["a bowl made of glass", "glass"])
    assert out["clip_target"] == pytest.approx(float(sims[0]))
    assert out["clip_word"] == pytest.approx(float(sims[1]))
    assert out["distance_metric"] == "mse" and out["distance"] > 0


class FakeWorldScorer:
    """Attribute scorer: reads the colour of the image's mean pixel; objects from a fixed list."""

    def score(self, img):
        r, g, b = to_tensor(img).mean(dim=(1, 2)).tolist()
        return {"Color": "red" if r > max(g, b) else "blue", "Shape": None}

    def score_objects(self, img):
        return [{"Shape": "circle", "Color": "red"}, {"Shape": "square", "Color": "blue"}]


def test_attribute_scorers_plug_in():
    red = Image.fromarray(np.full((16, 16, 3), (200, 10, 10), dtype=np.uint8))
    blue = Image.fromarray(np.full((16, 16, 3), (10, 10, 200), dtype=np.uint8))
    s = FakeWorldScorer()
    assert edit_scores(red, blue, "a blue circle", "blue", s, concept="Color")["attribute"] == 1.0
    assert edit_scores(blue, red, "a blue circle", "blue", s, concept="color")["attribute"] == 0.0
    with pytest.raises(ValueError, match="concept="):
        edit_scores(red, blue, "a blue circle", "blue", s)
    out = multi_concept_scores(red, "a circle and a triangle", [("circle", "Shape"), ("triangle", "Shape")], s)
    assert out["per_object"] == {"circle": 1.0, "triangle": 0.0} and out["min_object"] == 0.0
    assert attribute_value({"Color": {"red": 0.8}}, "Color", "red") == 0.8
    with pytest.raises(ValueError, match="has: Color"):
        attribute_value({"Color": "red"}, "Shape", "circle")
    with pytest.raises(TypeError, match="not a scorer"):
        edit_scores(red, blue, "x", "y", object())


def test_multi_concept_scores_with_clip(clip):
    scorer = CLIPScorer(clip, clip_tokenizer())
    assert object_prompts("a cat and a dog", ["cat", "dog"]) == ["a cat", "a dog"]
    assert object_prompts("a black cat, a white dog", ["dog", "frog"]) == ["a white dog", "a photo of a frog"]
    out = multi_concept_scores(image(8), "a cat and a dog", {"cat": "Animals", "dog": "Animals"}, scorer)
    sims = scorer.similarity([image(8)] * 3, ["a cat and a dog", "a cat", "a dog"])
    assert out["clip_full"] == pytest.approx(float(sims[0]))
    assert out["clip_min_object"] == pytest.approx(float(sims[1:].min()))
    assert set(out["per_object"]) == {"a cat", "a dog"}


def test_summarize():
    rows = [{"a": 1.0, "b": 2, "m": "x"}, {"a": 3.0, "flag": True}]
    assert summarize(rows) == {"n": 2, "a": 2.0, "b": 2.0}


def test_world_scorer_edit_scores():
    from headlens import world
    src, _ = world.render("a red circle", seed=1)
    edited, _ = world.render("a blue circle", seed=1)
    out = edit_scores(src, edited, "a blue circle", "blue", world.Scorer(), concept="Color")
    assert out["attribute"] == 1.0 and out["distance"] > 0
