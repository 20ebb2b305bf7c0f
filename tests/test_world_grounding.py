"""The token grounding loss of the world UNet's training (`train.py --ground-weight`)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from headlens import world
from headlens.world.grounding import (
    AttentionRecorder,
    binding_loss,
    grounding_loss,
    install_recorder,
    object_word_groups,
)
from headlens.world.model import make_unet
from headlens.world.train import main as train_main
from headlens.world.train import make_dataset
from headlens.world.vocab import BACKGROUNDS, DEFAULT_BACKGROUND, parse_caption


pytestmark = pytest.mark.usefixtures("one_thread")


def test_object_word_groups_mark_each_objects_attribute_words() -> None:
    """Token positions written out by hand (start token at 0), checked against the world tokenizer too: size, colour,
    pattern and shape words of each object; articles, position phrases and the background phrase belong to none."""
    caps = ["a small red circle on the left and a blue striped square on a navy background",
            "an orange and a large orange at the top",
            "a green dotted cross"]
    expect = [({2, 3, 4}, {10, 11, 12}), ({2}, {5, 6}), ({2, 3, 4}, set())]
    tok = world.load_pipeline().tokenizer
    g = object_word_groups(caps, tok.model_max_length)
    assert g.shape == (3, 2, tok.model_max_length) and set(g.unique().tolist()) == {0.0, 1.0}
    for n, (cap, (first, second)) in enumerate(zip(caps, expect)):
        assert set(g[n, 0].nonzero().flatten().tolist()) == first
        assert set(g[n, 1].nonzero().flatten().tolist()) == second
        toks = [t.replace("</w>", "") for t in tok.convert_ids_to_tokens(tok(cap)["input_ids"])]
        spec = parse_caption(cap)
        for obj, positions in zip(spec.objects, (first, second)):
            said = {w for w in (obj.size, obj.color, obj.pattern, obj.shape) if w}
            assert {toks[p] for p in positions} == said
    short = object_word_groups(caps[:1], 4)  # truncated like the tokenizer: only positions < length
    assert set(short[0, 0].nonzero().flatten().tolist()) == {2, 3} and short[0, 1].sum() == 0


def test_grounding_loss_by_hand() -> None:
    """(1 - share inside the object's mask)² averaged over the grouped words, then over layers."""
    masks = torch.zeros(1, 2, 4, 4, dtype=torch.bool)
    masks[0, 0, :2, :2] = True  # object 1: the top-left quarter -> cell 0 of a 2x2 map
    masks[0, 1, 3, 3] = True  # object 2: one pixel of the bottom-right quarter -> cell 3
    groups = torch.zeros(1, 2, 3)
    groups[0, 0, 1] = 1.0  # word 1 belongs to object 1
    groups[0, 1, 2] = 1.0  # word 2 to object 2
    amap = torch.zeros(1, 4, 3)
    amap[0, :, 0] = 0.5  # word 0 (no object) takes half of every row
    amap[0, 0, 1] = 0.5  # word 1 attended only from its object's cell: share 1, loss 0
    amap[0, 0, 2], amap[0, 3, 2] = 0.2, 0.2  # word 2: half inside its object: loss 0.25
    amap[0, 1:3, 1] = 0.5
    amap[0, 0, 1] = 0.3  # word 1 now: 0.3 inside of 1.3 in all
    share1 = 0.3 / 1.3
    one = grounding_loss([amap], masks, groups)
    assert torch.isclose(one, torch.tensor(((1 - share1) ** 2 + 0.25) / 2))
    fine = torch.zeros(1, 16, 3)  # a 4x4 layer where both words sit exactly on their objects' pixels
    fine[0, 0, 1] = fine[0, 15, 2] = 1.0
    assert torch.isclose(grounding_loss([fine], masks, groups), torch.tensor(0.0))
    assert torch.isclose(grounding_loss([amap, fine], masks, groups), one / 2)
    assert grounding_loss([amap], masks, torch.zeros_like(groups)).item() == 0.0
    leaf = amap.clone().requires_grad_(True)
    grounding_loss([leaf], masks, groups).backward()
    assert leaf.grad[0, 1, 1] > 0 and leaf.grad[0, 0, 1] < 0  # more of word 1 outside costs, inside pays


def test_binding_loss_by_hand() -> None:
    """-log(own / (own + other)) over each object's own cells: log 2 when every cell attends to both objects' words
    alike, -log 0.9 when each cell gives 0.9 of the two objects' share to its own; one-object samples do not count."""
    masks = torch.zeros(2, 2, 4, 4, dtype=torch.bool)
    masks[:, 0, :, :2] = True  # object 1 on the left: cells 0 and 2 of a 2x2 map
    masks[0, 1, :, 2:] = True  # object 2 on the right (sample 0 only; sample 1 has one object)
    masks[0, 1, 0, 1] = True  # one pixel of object 2 in cell 0 too: cell 0 is then nobody's own
    groups = torch.zeros(2, 2, 4)
    groups[:, 0, 1] = 1.0
    groups[0, 1, 2] = 1.0
    flat = torch.full((2, 4, 4), 0.25)
    assert torch.isclose(binding_loss([flat], masks, groups), torch.log(torch.tensor(2.0)))
    sharp = torch.zeros(2, 4, 4)
    sharp[:, :, 0] = 0.5  # word 0 (no object) takes half everywhere
    sharp[:, [0, 2], 1], sharp[:, [0, 2], 2] = 0.45, 0.05  # left cells: 0.9 of the objects' share to object 1
    sharp[:, [1, 3], 2], sharp[:, [1, 3], 1] = 0.45, 0.05
    sharp[0, 0, 1], sharp[0, 0, 2] = 0.05, 0.45  # cell 0, shared by both objects, is wrong but does not count
    assert torch.isclose(binding_loss([sharp], masks, groups), -torch.log(torch.tensor(0.9)), atol=1e-5)
    assert torch.isclose(binding_loss([sharp, flat], masks, groups),
                         (-torch.log(torch.tensor(0.9)) + torch.log(torch.tensor(2.0))) / 2, atol=1e-5)
    assert binding_loss([flat], masks, groups * torch.tensor([0.0, 1.0])[:, None, None]).item() == 0.0
    leaf = flat.clone().requires_grad_(True)
    binding_loss([leaf], masks, groups).backward()
    assert leaf.grad[0, 2, 1] < 0 and leaf.grad[0, 2, 2] > 0  # a left cell: object 1's word pays, object 2's costs
    assert leaf.grad[1].abs().sum() == 0 and leaf.grad[0, 0].abs().sum() == 0


def test_recorder_computes_what_the_stock_processor_does() -> None:
    """Same UNet output with the recorder installed; one map per cross-attention layer, rows summing to 1."""
    torch.manual_seed(0)
    unet = make_unet("sd").eval()
    x, t, enc = torch.randn(2, 4, 16, 16), torch.tensor([10, 700]), torch.randn(2, 7, unet.config.cross_attention_dim)
    with torch.no_grad():
        ref = unet(x, t, encoder_hidden_states=enc).sample
        rec = install_recorder(unet)
        got = unet(x, t, encoder_hidden_states=enc).sample
    assert torch.allclose(ref, got, atol=1e-5)
    assert isinstance(rec, AttentionRecorder) and len(rec.maps) == 10
    assert sorted({m.shape[1] for m in rec.maps}) == [4, 16, 64, 256]  # 16², 8², 4² and the mid block at 2²
    for m in rec.maps:
        assert m.shape[0] == 2 and m.shape[2] == 7 and torch.allclose(m.sum(-1), torch.ones(2, m.shape[1]), atol=1e-5)
    procs = unet.attn_processors
    assert all((p is rec) == (".attn2." in n) for n, p in procs.items())


def test_dataset_masks_are_each_objects_pixels() -> None:
    """Asking for masks leaves the renders unchanged; the masks hold every pixel painted off the background, one
    object each, disjoint, the second all False for one-object captions."""
    masks: list = []
    caps, imgs = make_dataset(120, 31, masks, p_two=0.6)
    caps2, imgs2 = make_dataset(120, 31, p_two=0.6)
    assert caps == caps2 and np.array_equal(imgs, imgs2)
    m = np.stack(masks)
    assert m.shape == (120, 2, 32, 32) and m.dtype == bool
    for n, cap in enumerate(caps):
        spec = parse_caption(cap)
        bg = np.array(BACKGROUNDS[spec.background or DEFAULT_BACKGROUND], dtype=np.uint8)
        off = (imgs[n] != bg[:, None, None]).any(0)
        assert not (off & ~(m[n, 0] | m[n, 1])).any()  # nothing painted outside the masks
        assert off[m[n, 0]].mean() > 0.9  # the masks are painted
        assert not (m[n, 0] & m[n, 1]).any()
        assert m[n, 1].any() == (len(spec.objects) == 2)


def test_ground_weight_trains_and_saves_plain_processors(tmp_path) -> None:
    """--ground-weight runs the loss (logged), the saved UNet loads with stock processors; a negative weight is a
    one-line error."""
    small = ["--n-images", "24", "--threads", "1", "--batch", "4", "--minutes", "3"]
    vae = train_main(["--out", str(tmp_path / "vae"), "--vae-steps", "1", "--unet-steps", "0", *small])
    pipe_dir = train_main(["--out", str(tmp_path / "g"), "--vae-from", str(vae), "--unet-steps", "3",
                           "--ground-weight", "1", "--bind-weight", "1", "--p-two", "1", *small])
    assert "token grounding loss, weight 1.0; binding loss, weight 1.0" in (tmp_path / "g" / "train.log").read_text()
    info = json.loads((tmp_path / "g" / "train_info.json").read_text())
    assert info["unet_steps_done"] == 3 and 0.0 < info["final_grounding_loss"] <= 1.0
    assert 0.0 < info["final_binding_loss"] < 5.0
    pipe = world.load_pipeline(folder=pipe_dir)
    assert not any(isinstance(p, AttentionRecorder) for p in pipe.unet.attn_processors.values())
    with pytest.raises(SystemExit):
        train_main(["--out", str(tmp_path / "bad"), "--ground-weight", "-1"])
    with pytest.raises(SystemExit):
        train_main(["--out", str(tmp_path / "bad"), "--bind-weight", "-0.5"])


def test_p_color_reaches_the_training_captions(tmp_path, capsys) -> None:
    """--p-color is sample_caption's p_color in make_dataset; out of [0, 1] it is a one-line error."""
    from headlens.world.vocab import parse_caption

    captions, images = make_dataset(40, 3, p_color=1.0)
    objs = [o for c in captions for o in parse_caption(c).objects if o.shape != "orange"]
    assert len(images) == 40 and objs and all(o.color for o in objs)
    captions0, _ = make_dataset(40, 3, p_color=0.0)
    assert not any(o.color for c in captions0 for o in parse_caption(c).objects)
    with pytest.raises(SystemExit):
        train_main(["--out", str(tmp_path / "bad"), "--p-color", "2"])
    assert "--p-color 2.0 must be a chance in [0, 1]" in capsys.readouterr().err


def test_device_flag_errors_are_one_line(tmp_path, capsys) -> None:
    """--device: a name torch does not know, or CUDA where torch sees none, stops before any work with one line."""
    cases = {"banana": "is not a device; use cpu or cuda[:N]"}
    if not torch.cuda.is_available():
        cases["cuda"] = "torch sees no CUDA device here"
    for name, said in cases.items():
        with pytest.raises(SystemExit):
            train_main(["--out", str(tmp_path / "bad"), "--device", name])
        assert said in capsys.readouterr().err
    assert not (tmp_path / "bad" / "train.log").exists()  # nothing started
