"""Scorers: the protocol, CLIP cosine similarity (tiny CLIP built from a config), world adapter."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from headlens.scorers import (
    ClipScorer,
    FunctionScorer,
    OpenClipScorer,
    Scorer,
    WorldScorer,
    make_scorer,
    to_pil,
)
from headlens.testing import clip_tokenizer


def tiny_clip():
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPTextConfig, CLIPVisionConfig

    text = CLIPTextConfig(vocab_size=49408, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                          num_attention_heads=2, max_position_embeddings=77, bos_token_id=49406,
                          eos_token_id=49407, pad_token_id=49407, projection_dim=8)
    vision = CLIPVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                              image_size=32, patch_size=8, projection_dim=8)
    torch.manual_seed(0)
    model = CLIPModel(CLIPConfig(text_config=text.to_dict(), vision_config=vision.to_dict(), projection_dim=8)).eval()
    processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    return model, clip_tokenizer(), processor


def images(n=4, size=16):
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)) for _ in range(n)]


def test_clip_scorer_is_cosine_similarity_from_clip_forward():
    model, tok, proc = tiny_clip()
    scorer = ClipScorer(model, tokenizer=tok, image_processor=proc, batch_size=3)
    assert isinstance(scorer, Scorer)
    ims, targets = images(), ["red", "blue", "red", "oak tree"]
    got = scorer.score(ims, targets)
    texts = sorted(set(targets))
    enc = tok(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        out = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"],
                    pixel_values=proc(images=ims, return_tensors="pt")["pixel_values"])
        cos = out.logits_per_image / model.logit_scale.exp()  # [images, texts]
    expected = [float(cos[i, texts.index(t)]) for i, t in enumerate(targets)]
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    assert len(set(np.round(got, 6))) > 1


def test_clip_scorer_from_folder_matches_objects(tmp_path):
    model, tok, proc = tiny_clip()
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    proc.save_pretrained(tmp_path)
    a = ClipScorer(str(tmp_path)).score(images(2), ["red", "cat"])
    b = ClipScorer(model, tokenizer=tok, image_processor=proc).score(images(2), ["red", "cat"])
    np.testing.assert_allclose(a, b, rtol=1e-6)
    with pytest.raises(ValueError, match="cannot load CLIP model"):
        ClipScorer(str(tmp_path / "missing"))


def test_function_scorer_and_length_check():
    s = FunctionScorer(lambda im, target, prompt: len(target) + im.size[0] + (prompt == "p"), "f")
    assert s.score(images(2, size=5), ["ab", "abc"], ["p", "q"]) == [8.0, 8.0]
    with pytest.raises(ValueError, match="one target word per image"):
        s.score(images(2), ["a"])


def test_to_pil_conversions():
    arr = np.zeros((4, 4, 3), dtype=np.float32)
    arr[0, 0] = [1.0, 0.5, 0.0]
    im = to_pil(arr)
    assert im.size == (4, 4) and im.getpixel((0, 0)) == (255, 128, 0)
    assert to_pil(torch.from_numpy(arr).permute(2, 0, 1)).getpixel((0, 0)) == (255, 128, 0)


class FakeReader:
    def __init__(self, answers):
        self.answers = iter(answers)

    def score(self, image):
        return {"Color": next(self.answers), "Shape": "circle"}


def test_world_scorer_adapter():
    s = WorldScorer("Color", reader=FakeReader(["red", "blue", None]))
    assert s.score(images(3), ["red", "red", "red"]) == [1.0, 0.0, 0.0]
    with pytest.raises(KeyError, match="no concept 'Texture'"):
        WorldScorer("Texture", reader=FakeReader(["red"])).score(images(1), ["rough"])


def test_world_scorer_reads_rendered_images():
    from headlens import world

    scorer = WorldScorer("Color")  # the weights ship with the package: missing ones fail here
    ims = [world.render("a large red square", seed=s)[0] for s in range(3)]
    assert scorer.score(ims, ["red"] * 3) == [1.0, 1.0, 1.0]
    assert scorer.score(ims, ["blue"] * 3) == [0.0, 0.0, 0.0]


def test_optional_and_unknown_scorers():
    try:
        import open_clip  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="open_clip_torch"):
            OpenClipScorer()
    with pytest.raises(ValueError, match="unknown scorer 'bleu'"):
        make_scorer("bleu")
    with pytest.raises(ValueError, match="needs a concept"):
        make_scorer("world")
