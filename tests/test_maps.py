"""Per-head word maps equal attention computed by hand; generation is untouched; plots and CLI work."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from cli_inprocess import cli_code as cli
from PIL import Image

from headlens import HRV, LayoutMismatchError
from headlens.attention import Plugin, Session
from headlens.heads import HeadIndex
from headlens.maps import HeadMaps, head_maps, plot_head_maps, resolve_map_size, select_heads
from headlens.tokens import WordNotFoundError

PROMPT = "a red apple on a wooden table"
STEPS, SEED, GUIDANCE = 2, 5, 7.5


class QueryRecorder(Plugin):
    """Keeps the conditional-half queries of every cross-attention call (probs path, like the capture)."""

    needs_query = True
    needs_probs = True  # same attention code path as HeadMapCapture, so the run is numerically the same

    def __init__(self):
        self.calls = []

    def on_query(self, call, attn, query):
        self.calls.append((call.step, call.layer, attn, query[call.cond].detach().clone()))


@torch.no_grad()
def maps_by_hand(pipe, prompt, word):
    """Per-head word maps at each layer's own grid, summed over steps, from queries and hand-made keys."""
    ids = pipe.tokenizer(prompt)["input_ids"]
    (wid,) = pipe.tokenizer(word, add_special_tokens=False)["input_ids"]
    pos = [i for i, t in enumerate(ids) if t == wid]
    assert pos, "test word must be one token in the prompt"
    rec = QueryRecorder()
    with Session(pipe, [rec], cfg=True):
        image = pipe(prompt, num_inference_steps=STEPS, guidance_scale=GUIDANCE,
                     generator=torch.Generator().manual_seed(SEED)).images[0]
    cond = pipe.encode_prompt(prompt=prompt, device="cpu", num_images_per_prompt=1,
                              do_classifier_free_guidance=True)[0][0].double()  # [77, D]
    latent = pipe.unet.config.sample_size
    grids: dict[int, np.ndarray] = {}
    steps = set()
    for step, layer, attn, q in rec.calls:
        steps.add(step)
        keys = torch.nn.functional.linear(cond, attn.to_k.weight.double(),
                                          None if attn.to_k.bias is None else attn.to_k.bias.double())
        d = layer.head_dim
        gh, gw = layer.resolution(latent)
        for h in range(layer.num_heads):
            qh = q[0, h].double()  # [pixels, d]
            p = torch.softmax(qh @ keys[:, h * d:(h + 1) * d].T * attn.scale, dim=-1)  # [pixels, 77]
            m = p[:, pos].mean(dim=-1).reshape(gh, gw).numpy()
            i = layer.head_offset + h
            grids[i] = grids.get(i, 0) + m
    return image, grids, pos, len(steps)


def bilinear_by_hand(g: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize with half-pixel centres and clamped borders (align_corners=False), one pixel at a time."""
    def taps(n_out, n_in):
        out = []
        for i in range(n_out):
            src = max((i + 0.5) * n_in / n_out - 0.5, 0.0)
            i0 = min(int(src), n_in - 1)
            i1 = min(i0 + 1, n_in - 1)
            out.append((i0, i1, src - i0))
        return out

    ys, xs = taps(size[0], g.shape[0]), taps(size[1], g.shape[1])
    res = np.zeros(size)
    for y, (y0, y1, wy) in enumerate(ys):
        for x, (x0, x1, wx) in enumerate(xs):
            top = g[y0, x0] * (1 - wx) + g[y0, x1] * wx
            bottom = g[y1, x0] * (1 - wx) + g[y1, x1] * wx
            res[y, x] = top * (1 - wy) + bottom * wy
    return res


@pytest.mark.parametrize("which", ["sd_pipe", "sdxl_pipe"])
def test_maps_equal_hand_computation(request, which):
    pipe = request.getfixturevalue(which)
    heads = HeadIndex.from_unet(pipe.unet)
    image, grids, pos, n_steps = maps_by_hand(pipe, PROMPT, "apple")
    got = head_maps(pipe, PROMPT, "apple", seed=SEED, num_inference_steps=STEPS, guidance_scale=GUIDANCE,
                    map_size="latent")
    latent = pipe.unet.config.sample_size
    assert got.positions == pos and got.evaluations == n_steps == STEPS
    assert got.maps.shape == (len(heads), latent, latent)
    assert {heads[i].layer.downsample for i in grids} - {1}  # some layers are upsampled: their whole maps are checked
    for i, g in grids.items():
        m = got.maps[i].numpy()
        want = g if g.shape == (latent, latent) else bilinear_by_hand(g, (latent, latent))
        np.testing.assert_allclose(m, want, rtol=1e-4, atol=1e-6, err_msg=f"head {i}")
        assert m.mean() == pytest.approx(g.mean(), rel=1e-4)  # whole-factor upsampling keeps the mean
    # mean attention per head = mean over pixels and evaluations
    want = torch.tensor([grids[i].mean() / STEPS for i in range(len(heads))], dtype=torch.float32)
    torch.testing.assert_close(got.mean_attention(), want, rtol=1e-4, atol=1e-7)
    # generation is untouched by the capture: the final latents (what the VAE decodes) and the image are the plain
    # pipeline's, bit for bit
    decoded = []
    hook = pipe.vae.decoder.register_forward_pre_hook(lambda m, args: decoded.append(args[0].detach().clone()))
    try:
        with_maps = head_maps(pipe, PROMPT, "apple", seed=SEED, num_inference_steps=STEPS, guidance_scale=GUIDANCE,
                              map_size="latent")
        plain = pipe(PROMPT, num_inference_steps=STEPS, guidance_scale=GUIDANCE,
                     generator=torch.Generator().manual_seed(SEED)).images[0]
    finally:
        hook.remove()
    assert len(decoded) == 2
    # equal up to float rounding: the capture computes the softmax itself where the plain run uses SDPA
    torch.testing.assert_close(decoded[0], decoded[1], rtol=1e-5, atol=1e-4)
    assert np.array_equal(np.asarray(with_maps.image), np.asarray(plain))
    assert np.array_equal(np.asarray(got.image), np.asarray(plain))
    assert np.array_equal(np.asarray(image), np.asarray(plain))  # the hand computation saw the same generation


def test_image_size_maps_keep_the_means(sd_pipe):
    small = head_maps(sd_pipe, PROMPT, "apple", seed=SEED, num_inference_steps=STEPS, map_size="latent")
    big = head_maps(sd_pipe, PROMPT, "apple", seed=SEED, num_inference_steps=STEPS)  # auto = image size here
    assert big.maps.shape == (22, 16, 16) and small.maps.shape == (22, 8, 8)
    torch.testing.assert_close(big.maps.mean(dim=(1, 2)), small.maps.mean(dim=(1, 2)), rtol=1e-5, atol=1e-7)
    assert big.upsampled([0, 5]).shape == (2, 16, 16)
    torch.testing.assert_close(big.upsampled([3])[0], big.maps[3])  # already image-sized
    assert not torch.equal(big.maps[0], big.maps[10])


def test_word_choice_changes_the_maps(sd_pipe):
    a = head_maps(sd_pipe, PROMPT, "apple", seed=SEED, num_inference_steps=1)
    t = head_maps(sd_pipe, PROMPT, "table", seed=SEED, num_inference_steps=1)
    assert a.positions != t.positions
    assert not torch.allclose(a.maps, t.maps)
    two = head_maps(sd_pipe, "an oak tree next to a red oak tree", "oak tree", seed=0, num_inference_steps=1)
    first = head_maps(sd_pipe, "an oak tree next to a red oak tree", "oak tree", seed=0, num_inference_steps=1,
                      occurrence=0)
    assert len(two.positions) == 4 and first.positions == two.positions[:2]


def test_resolve_map_size():
    assert resolve_map_size("auto", 22, (16, 16), (8, 8)) == (16, 16)
    assert resolve_map_size("auto", 1300, (1024, 1024), (128, 128)) == (128, 128)  # 5 GiB at image size
    assert resolve_map_size(32, 10, (64, 64), (8, 8)) == (32, 32)
    assert resolve_map_size((4, 6), 10, (64, 64), (8, 8)) == (4, 6)
    with pytest.raises(ValueError, match="map size"):
        resolve_map_size("huge", 10, (64, 64), (8, 8))


@pytest.fixture(scope="module")
def result(sd_pipe) -> HeadMaps:
    return head_maps(sd_pipe, PROMPT, "apple", seed=SEED, num_inference_steps=STEPS)


@pytest.fixture(scope="module")
def tiny_hrv(sd_pipe) -> HRV:
    heads = HeadIndex.from_unet(sd_pipe.unet)
    g = torch.Generator().manual_seed(0)
    m = torch.rand(2, len(heads), generator=g) * 2
    return HRV.from_matrix(m, heads, ["Fruits", "Color"], metadata={"model": "tiny"})


def test_selection_and_combinations(result, tiny_hrv):
    assert select_heads(result, hrv=tiny_hrv, concept="fruits", k=4) == tiny_hrv.ranking("Fruits")[:4]
    strongest = select_heads(result, k=3)
    att = result.mean_attention()
    assert strongest == result.strongest_heads(3) and att[strongest[0]] == att.max()
    assert select_heads(result, heads=["down0.h1", 3]) == [1, 3]
    torch.testing.assert_close(result.weighted(torch.ones(22)), result.average())
    w = tiny_hrv["Color"]
    torch.testing.assert_close(result.weighted(w), sum(w[h] * result.maps[h] for h in range(22)) / 22)
    with pytest.raises(ValueError, match="needs an HRV"):
        select_heads(result, concept="Fruits")
    other = HRV.from_matrix(torch.ones(1, 4), HeadIndex.from_description(
        [{"name": "down_blocks.0.x.attn2", "place": "down", "place_layer": 0, "heads": 4}]), ["Fruits"])
    with pytest.raises(LayoutMismatchError):
        select_heads(result, hrv=other, concept="Fruits")
    with pytest.raises(KeyError, match="not in this HRV"):
        select_heads(result, hrv=tiny_hrv, concept="Smell")


def test_plot_head_maps(result, tiny_hrv, tmp_path):
    fig = plot_head_maps(result, hrv=tiny_hrv, concept="Fruits", k=4, scale="each")
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert titles[0] == "generated image" and titles[1].startswith("all 22 heads")
    assert titles[2] == "HRV-weighted (Fruits)"
    assert [t.split(" ")[0] for t in titles[3:]] == [tiny_hrv.heads[i].short_name for i in tiny_hrv.ranking("Fruits")[:4]]
    assert "“apple”" in fig.get_suptitle() and "Fruits" in fig.get_suptitle()
    fig.savefig(tmp_path / "m.png", dpi=60)
    px = np.asarray(Image.open(tmp_path / "m.png").convert("RGB"), dtype=np.int16)
    assert px.shape[1] > 400 and px.std() > 10
    plain = plot_head_maps(result, k=2, scale="shared")
    assert len([ax for ax in plain.axes if ax.get_title()]) == 2 + 2
    both = plot_head_maps(result, k=2)  # default: the scaled view, then the shared-scale view
    assert [ax.get_title() for ax in both.axes if ax.get_title()] == 2 * [ax.get_title() for ax in plain.axes
                                                                         if ax.get_title()]


def test_word_not_in_prompt(sd_pipe):
    with pytest.raises(WordNotFoundError, match="banana"):
        head_maps(sd_pipe, PROMPT, "banana", num_inference_steps=1)


# ---------------------------------------------------------------------------------------------- CLI
@pytest.fixture(scope="module")
def hrv_dir(tiny_hrv, tmp_path_factory):
    return tiny_hrv.save(tmp_path_factory.mktemp("maps") / "hrv")


def test_maps_cli(monkeypatch, tmp_path, hrv_dir, sd_pipe, tiny_hrv):
    out = tmp_path / "run"
    rc = cli(monkeypatch, "maps", "--model", "tiny", "--prompt", PROMPT, "--word", "apple", "--concept", "fruits",
             "--hrv", hrv_dir, "--k", "3", "--steps", STEPS, "--seed", SEED, "--out", out, "--save-maps")
    assert rc == 0
    assert {p.name for p in out.iterdir()} == {"image.png", "maps.png", "run.json", "maps.safetensors"}
    run = json.loads((out / "run.json").read_text())
    assert run["word"] == "apple" and run["concept"] == "Fruits" and run["unet_evaluations"] == STEPS
    from safetensors.torch import load_file

    maps = load_file(str(out / "maps.safetensors"))["maps"]
    want = head_maps(sd_pipe, PROMPT, "apple", seed=SEED, num_inference_steps=STEPS)
    torch.testing.assert_close(maps, want.maps)
    px = np.asarray(Image.open(out / "maps.png").convert("RGB"), dtype=np.int16)
    assert px.shape[0] > 300 and px.std() > 10
    assert Image.open(out / "image.png").size == (16, 16)


def test_maps_cli_errors_are_one_line(monkeypatch, tmp_path, hrv_dir, capsys):
    xl = HeadIndex.from_description([{"name": "down_blocks.0.a.attn2", "place": "down", "place_layer": 0, "heads": 3}])
    other = HRV.from_matrix(torch.ones(1, 3), xl, ["Fruits"]).save(tmp_path / "other")
    base = ["maps", "--model", "tiny", "--steps", "1", "--out", tmp_path / "o"]
    cases = [
        (["--prompt", PROMPT, "--word", "banana"], "'banana' is not in the prompt"),
        (["--prompt", PROMPT, "--word", "apple", "--concept", "Fruits"], "--hrv"),
        (["--prompt", PROMPT, "--word", "apple", "--concept", "Smell", "--hrv", hrv_dir], "'Smell' not in this HRV"),
        (["--prompt", PROMPT, "--word", "apple", "--concept", "Fruits", "--hrv", tmp_path / "nope"], "does not exist"),
        (["--prompt", PROMPT, "--word", "apple", "--concept", "Fruits", "--hrv", other], "headlens build"),
        (["--prompt", PROMPT, "--word", "apple", "--heads", "up9.h9"], "unknown head"),
        (["--prompt", PROMPT, "--word", "apple", "--map-size", "big"], "--map-size"),
    ]
    for extra, needle in cases:
        rc = cli(monkeypatch, *base, *extra)
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == 2, extra
        assert err and err[-1].startswith("error:") and needle in err[-1], (extra, err)
        assert not any(line.startswith("Traceback") for line in err)
