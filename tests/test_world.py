"""Tests of the bundled world: grammar, renderer, tokenizer, scorer, shipped model, training smoke run."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from shipped_world import WORLD_FILES, WORLD_HEADS, WORLD_HEADS_PER_LAYER, WORLD_LAYERS

from headlens import HeadIndex, world
from headlens.world import POLYSEMOUS, VOCABULARY, render
from headlens.world.scorer import scorer_path
from headlens.world.scorer_train import accuracy, reconstruct, render_set
from headlens.world.tokenizer import MAX_LENGTH, build_tokenizer, check_tokenizer
from headlens.world.vocab import all_words, parse_caption, sample_caption


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def scorer():
    """The shipped scorer."""
    return world.Scorer()


def test_shipped_weight_files_are_present() -> None:
    """The model and scorer ship inside the package: a missing weight file fails here (never a skip)."""
    folders = [world.model_path(v) for v in ("default", "joint")]
    missing = [str(d / f) for d in folders for f in WORLD_FILES if not (d / f).is_file()]
    assert not missing, f"shipped world files missing: {missing}"
    assert scorer_path().is_file(), f"shipped world scorer missing: {scorer_path()}"
    for path in [d / f for d in folders for f in WORLD_FILES if f.endswith(".safetensors")] + [scorer_path()]:
        assert path.stat().st_size > 10_000, path


def test_vocabulary_shape() -> None:
    assert set(VOCABULARY) == {"Color", "Shape", "Size", "Position", "Pattern", "Background"}
    assert len(VOCABULARY["Color"]) == 8 and len(VOCABULARY["Shape"]) == 6  # README: colour (8), shape (6)
    for word, senses in POLYSEMOUS.items():
        assert len(senses) == 2
        for concept in senses:
            assert word in VOCABULARY[concept]
    assert all("orange" not in ws for ws in world.concept_words().values())


def test_render_simple_caption() -> None:
    img, attrs = render("a red circle", seed=3)
    assert img.size == (32, 32) and img.mode == "RGB"
    assert attrs["Color"] == "red" and attrs["Shape"] == "circle"
    assert attrs["Background"] == "gray" and attrs["Pattern"] == "plain"  # defaults
    assert np.array_equal(np.asarray(img), np.asarray(render("a red circle", seed=3)[0]))


def test_render_two_objects_and_polysemy() -> None:
    _, at = render("a small blue striped square on the left and an orange on a black background", seed=1)
    a, b = at["objects"]
    assert (a["Color"], a["Shape"], a["Size"], a["Pattern"], a["Position"]) == ("blue", "square", "small", "striped", "left")
    assert (b["Shape"], b["Color"], b["Position"]) == ("orange", "orange", "right")
    assert at["Background"] == "black"
    assert parse_caption("an orange square").objects[0].color == "orange"
    assert parse_caption("an orange square").objects[0].shape == "square"
    assert parse_caption("a large orange").objects[0].shape == "orange"


@pytest.mark.parametrize("caption,word", [("a red banana", "banana"), ("a mauve circle", "mauve")])
def test_unknown_word_error(caption: str, word: str) -> None:
    with pytest.raises(ValueError) as e:
        render(caption, seed=0)
    msg = str(e.value)
    assert word in msg and "red" in msg and "circle" in msg and "\n" not in msg


def test_grammar_errors() -> None:
    for bad in ("a red", "a circle on the left and a square on the left", "a circle and a square and a cross",
                "a blue orange"):
        with pytest.raises(ValueError):
            parse_caption(bad)


def test_sampled_captions_round_trip() -> None:
    rng = np.random.default_rng(0)
    for _ in range(300):
        cap = sample_caption(rng)
        assert len(cap.split()) + 2 <= MAX_LENGTH
        render(cap, seed=0)


def test_caption_mix() -> None:
    """The caption mix of later training stages: defaults draw exactly the first stages' captions; each knob moves
    its own share (counted by parsing the captions) and nothing else breaks the grammar."""
    r1, r2 = np.random.default_rng(7), np.random.default_rng(7)
    assert [sample_caption(r1) for _ in range(500)] == [
        sample_caption(r2, p_two=0.4, p_pattern=0.4, orange_weight=0.4, fruit_weight=1.0, p_color=0.75)
        for _ in range(500)]

    def shares(**mix):
        rng = np.random.default_rng(11)
        scenes = [parse_caption(sample_caption(rng, **mix)) for _ in range(3000)]
        objs = [o for sc in scenes for o in sc.objects if o.shape != "orange"]
        two = np.mean([len(sc.objects) == 2 for sc in scenes])
        pattern = np.mean([o.pattern in ("striped", "dotted") for o in objs])
        coloured = [o.color for o in objs if o.color]
        fruit = np.mean([o.shape == "orange" for sc in scenes for o in sc.objects])
        return two, pattern, coloured.count("orange") / len(coloured), fruit, len(coloured) / len(objs)

    two, pattern, orange, fruit, said = shares()
    assert abs(said - 0.75) < 0.03
    assert abs(two - 0.4) < 0.04 and abs(pattern - 0.4) < 0.04 and abs(fruit - 1 / 6) < 0.03
    two, pattern, orange2, fruit2, _ = shares(p_two=0.65, p_pattern=0.6, orange_weight=0.2)
    assert abs(two - 0.65) < 0.04 and abs(pattern - 0.6) < 0.04 and orange2 < 0.7 * orange
    assert abs(fruit2 - 1 / 6) < 0.03  # the colour knob leaves the shapes alone
    assert abs(shares(fruit_weight=3.0)[3] - 3 / 8) < 0.03  # the fruit weighs 3 against five shapes of weight 1
    assert shares(p_two=1.0)[0] == 1.0 and shares(p_pattern=0.0)[1] == 0.0
    assert shares(p_color=1.0)[4] == 1.0 and abs(shares(p_color=1.0)[0] - 0.4) < 0.04
    with pytest.raises(ValueError, match="p_pattern"):
        sample_caption(np.random.default_rng(0), p_pattern=0.95)
    with pytest.raises(ValueError, match="p_color"):
        sample_caption(np.random.default_rng(0), p_color=1.5)


def test_training_timesteps() -> None:
    """--t-high: with share 0 the draws are exactly the uniform ones of earlier stages (same generator stream);
    with share p about p of the batch comes from [HIGH_T, 1000) on top of the uniform draws that land there."""
    import torch

    from headlens.world.train import HIGH_T, sample_timesteps

    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    assert torch.equal(sample_timesteps(4096, g1), torch.randint(0, 1000, (4096,), generator=g2))
    for share in (0.0, 0.5, 1.0):
        t = sample_timesteps(20_000, torch.Generator().manual_seed(5), share)
        assert t.min() >= 0 and t.max() < 1000
        high = (t >= HIGH_T).float().mean().item()
        assert abs(high - (share + (1 - share) * (1000 - HIGH_T) / 1000)) < 0.02, (share, high)
    assert sample_timesteps(1000, torch.Generator().manual_seed(5), 1.0).min() >= HIGH_T
    from headlens.world.train import main

    with pytest.raises(SystemExit):  # argparse's one-line error, before anything is written
        main(["--out", "/nonexistent/never-made", "--t-high", "1.5"])


def test_object_masks_and_weighted_loss() -> None:
    """--object-weight: the mask marks exactly the latent cells that hold a pixel painted off the background, and the
    weighted loss is plain MSE at weight 1 and the hand-computed weighted mean otherwise."""
    import torch
    import torch.nn.functional as F

    from headlens.world.render import render_array
    from headlens.world.train import main, object_masks, weighted_mse
    from headlens.world.vocab import BACKGROUNDS

    caps = ["a small red circle on the left on a navy background", "a large green square at the top",
            "a yellow cross at the bottom and a purple diamond at the top on a black background"]
    imgs = np.stack([render_array(c, 7 + i)[0] for i, c in enumerate(caps)]).transpose(0, 3, 1, 2).copy()
    m = object_masks(caps, imgs, imgs.shape[-1] // 2)
    assert m.shape == (3, 1, imgs.shape[-1] // 2, imgs.shape[-1] // 2) and set(m.unique().tolist()) == {0.0, 1.0}
    for i, bg in enumerate(["navy", "gray", "black"]):  # gray: the renderer's default background
        off = np.any(imgs[i] != np.array(BACKGROUNDS[bg], dtype=np.uint8)[:, None, None], axis=0)
        for y in range(m.shape[-1]):
            for x in range(m.shape[-1]):
                assert m[i, 0, y, x].item() == float(off[2 * y:2 * y + 2, 2 * x:2 * x + 2].any())
    half = m.shape[-1] // 2  # the left object sits in the left half, the top/bottom ones in both halves
    assert m[0, 0, :, :half].sum() > 0 and m[0, 0, :, half + 2:].sum() == 0
    assert m[2, 0, :half].sum() > 0 and m[2, 0, half:].sum() > 0

    g = torch.Generator().manual_seed(0)
    pred, target = torch.randn(3, 4, 16, 16, generator=g), torch.randn(3, 4, 16, 16, generator=g)
    assert torch.allclose(weighted_mse(pred, target, torch.ones(3, 1, 16, 16)), F.mse_loss(pred, target))
    w = 1 + 3 * m
    se = (pred - target).pow(2).sum(dim=1, keepdim=True)  # summed over the 4 channels, which share a weight
    expect = (se * w).sum() / (4 * w.sum())
    assert torch.allclose(weighted_mse(pred, target, w), expect)
    on = m.bool().expand_as(pred)
    assert weighted_mse(pred, target, w) != F.mse_loss(pred, target)
    big = pred.clone()
    big[on] += 10  # an error on the objects costs more under weight 4 than under plain MSE
    assert weighted_mse(big, target, w) - weighted_mse(pred, target, w) > F.mse_loss(big, target) - F.mse_loss(pred, target)
    with pytest.raises(SystemExit):
        main(["--out", "/nonexistent/never-made", "--object-weight", "0"])


def test_tokenizer_single_tokens(tmp_path) -> None:
    from transformers import CLIPTokenizer

    build_tokenizer(tmp_path)
    tok = CLIPTokenizer.from_pretrained(str(tmp_path))
    check_tokenizer(tok)
    ids = tok("a red circle")["input_ids"]
    assert ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id and len(ids) == 5
    assert len(all_words()) == len({tok.convert_tokens_to_ids(w + "</w>") for w in all_words()})


def test_scorer_reads_back_renders(scorer) -> None:
    arrs, attrs = render_set(150, seed=12345)
    acc = accuracy(scorer, arrs, attrs)
    assert min(acc.values()) >= 0.97, acc


def test_scorer_empty_image(scorer) -> None:
    blank = np.zeros((32, 32, 3), dtype=np.uint8) + 80
    out = scorer.score(blank)
    assert out["Color"] is None and out["Shape"] is None and out["Background"] == "gray"
    assert scorer.score_objects(blank) == []
    _, at = render("a large yellow dotted triangle at the top on a navy background", seed=5)
    got = scorer.score(render("a large yellow dotted triangle at the top on a navy background", seed=5)[0])
    assert got == {k: at[k] for k in got}


def test_scorer_on_vae_reconstructions(scorer) -> None:
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(str(world.model_path() / "vae")).eval()
    arrs, attrs = render_set(120, seed=777)
    acc = accuracy(scorer, reconstruct(vae, arrs), attrs)
    assert min(acc.values()) >= 0.95, acc


def test_shipped_model_loads_and_generates() -> None:
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(str(world.model_path()), local_files_only=True)
    assert pipe.safety_checker is None
    heads = {n: m.heads for n, m in pipe.unet.named_modules() if n.endswith("attn2")}
    assert len(heads) == WORLD_LAYERS and set(heads.values()) == {WORLD_HEADS_PER_LAYER}
    assert len(HeadIndex.from_unet(pipe.unet)) == WORLD_HEADS
    pipe.set_progress_bar_config(disable=True)
    img = pipe("a red circle", num_inference_steps=20, generator=torch.Generator().manual_seed(0)).images[0]
    assert img.size == (32, 32)
    img2 = world.load_pipeline()("a red circle", num_inference_steps=20,
                                 generator=torch.Generator().manual_seed(0)).images[0]
    assert np.array_equal(np.asarray(img), np.asarray(img2))
    total = sum(f.stat().st_size for f in world.model_path().rglob("*") if f.is_file())
    assert total <= 25 * 2**20


def test_training_smoke(tmp_path) -> None:
    from headlens.world.train import main

    folder = main(["--out", str(tmp_path), "--n-images", "64", "--vae-steps", "2", "--unet-steps", "3",
                   "--batch", "4", "--minutes", "3", "--threads", "1"])
    pipe = world.load_pipeline(folder=folder)
    img = pipe("a red circle", num_inference_steps=2, generator=torch.Generator().manual_seed(0)).images[0]
    assert img.size == (32, 32)
    import json

    info = json.loads((tmp_path / "train_info.json").read_text())
    assert info["unet_steps_done"] == 3 and "vae step" in (tmp_path / "train.log").read_text()


def test_training_stages_chain(tmp_path) -> None:
    """The shipped recipe's three stages (scripts/train_world.sh): VAE only, UNet from scratch, fine-tune."""
    from safetensors.torch import load_file

    from headlens.world.train import main

    small = ["--n-images", "48", "--batch", "4", "--minutes", "3", "--threads", "1"]
    vae = main(["--out", str(tmp_path / "vae"), "--vae-steps", "2", "--unet-steps", "0", *small])
    first = main(["--out", str(tmp_path / "main"), "--vae-from", str(vae), "--unet-steps", "2", *small])
    # lr 0: the fine-tune must start from exactly the first stage's (EMA) weights and keep them
    tuned = main(["--out", str(tmp_path / "ft"), "--vae-from", str(first), "--init-from", str(first),
                  "--unet-steps", "2", "--lr", "0", "--p-two", "0.65", "--p-pattern", "0.6", "--orange-weight", "0.2",
                  *small])
    import json

    assert json.loads((tmp_path / "vae" / "train_info.json").read_text())["unet_steps_done"] == 0
    for w in ("unet/diffusion_pytorch_model.safetensors", "text_encoder/model.safetensors"):
        a, b = load_file(str(first / w)), load_file(str(tuned / w))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), w
    v0, v1 = (load_file(str(d / "vae/diffusion_pytorch_model.safetensors")) for d in (vae, tuned))
    assert v0.keys() == v1.keys() and all(torch.equal(v0[k], v1[k]) for k in v0)  # the VAE is reused as is
    # the scaling factor: diffusers' default on the VAE-only stage, 1/std of the latents on the first UNet stage,
    # kept as is by a stage that reuses an already scaled VAE
    factor = {d: json.loads((d / "vae" / "config.json").read_text())["scaling_factor"] for d in (vae, first, tuned)}
    info = json.loads((tmp_path / "main" / "train_info.json").read_text())
    assert factor[vae] == pytest.approx(0.18215) and factor[first] == pytest.approx(info["vae_scaling_factor"])
    assert factor[first] != pytest.approx(0.18215) and factor[tuned] == factor[first]
    log = (tmp_path / "ft" / "train.log").read_text()
    assert "initialised UNet and text encoder from" in log and "'p_two': 0.65" in log


def test_shipped_model_follows_prompts(scorer) -> None:
    from diffusers import DDIMScheduler

    pipe = world.load_pipeline()
    assert DDIMScheduler.from_config(pipe.scheduler.config).config.clip_sample is False  # latents are not images
    prompts = ["a red circle", "a blue square", "a yellow circle", "a green square"] * 2
    gens = [torch.Generator().manual_seed(i) for i in range(len(prompts))]
    imgs = pipe(prompts, num_inference_steps=20, generator=gens, output_type="np").images
    got = [scorer.score((im * 255).round().astype(np.uint8)) for im in imgs]
    colour = np.mean([g["Color"] == p.split()[1] for g, p in zip(got, prompts)])
    shape = np.mean([g["Shape"] == p.split()[2] for g, p in zip(got, prompts)])
    assert colour >= 0.75 and shape >= 0.75, (colour, shape)


def test_default_model_follows_position(scorer) -> None:
    """The default model (frozen CLIP text encoder, SD layout) learned Position; the joint model sat at chance (~20 %)."""
    pipe = world.load_pipeline()
    pipe.set_progress_bar_config(disable=True)
    prompts = [f"a {c} {s} {p}" for c, s, p in [("red", "circle", "on the left"), ("blue", "square", "on the right"),
                                                 ("green", "circle", "at the top"), ("yellow", "square", "at the bottom"),
                                                 ("white", "triangle", "on the left"), ("purple", "circle", "on the right"),
                                                 ("red", "square", "at the top"), ("blue", "circle", "at the bottom")]]
    gens = [torch.Generator().manual_seed(100 + i) for i in range(len(prompts))]
    imgs = pipe(prompts, num_inference_steps=20, guidance_scale=5.0, generator=gens, output_type="np").images
    asked = [parse_caption(p).objects[0].position for p in prompts]
    got = [scorer.score((im * 255).round().astype(np.uint8))["Position"] for im in imgs]
    assert np.mean([g == a for g, a in zip(got, asked)]) >= 0.75, list(zip(asked, got))
