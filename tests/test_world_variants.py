"""The two shipped world models and the CLIP pre-training stage of the default one's recipe."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from headlens import world
from headlens.cli.common import is_world
from headlens.world.model import make_unet
from shipped_world import WORLD_LAYERS


pytestmark = pytest.mark.usefixtures("one_thread")


def _heads(unet) -> list[int]:
    return [m.heads for n, m in unet.named_modules() if n.endswith("attn2")]


def test_model_names_and_variants() -> None:
    assert world.variant_of("world") == "default" and world.variant_of("world-joint") == "joint"
    assert world.variant_of("tiny") is None and world.variant_of("runs/x") is None
    assert is_world("world") and is_world("world-joint") and not is_world("tiny")
    assert world.model_path("joint").name == "model-joint" and world.model_path().name == "model"
    with pytest.raises(ValueError, match="unknown world variant 'frozen'"):
        world.model_path("frozen")


def test_unet_layouts() -> None:
    """'sd': SD1.x's block layout scaled down, 10 layers x 8 heads at 4 resolutions; 'joint': the first model's."""
    sd, joint = make_unet("sd"), make_unet("joint")
    assert _heads(sd) == [8] * 10 and _heads(joint) == [8] * 7
    from headlens import HeadIndex

    idx = HeadIndex.from_unet(sd)
    assert len(idx) == 80
    assert sorted({layer.resolution(16) for layer in idx.layers}) == [(2, 2), (4, 4), (8, 8), (16, 16)]
    with pytest.raises(ValueError, match="unknown UNet arch"):
        make_unet("dit")
    # sd-wide: the same 80 heads under the same names (HRVs, plots and flags carry over), twice the head width at 16²
    wide = make_unet("sd-wide")
    assert HeadIndex.from_unet(wide).names == idx.names

    def dims(unet):
        return [m.inner_dim // m.heads for n, m in unet.named_modules() if n.endswith("attn2")]
    assert dims(sd)[0] == 4 and dims(wide)[0] == 8 and min(dims(wide)) == 8
    # sd-deep: SD1.x's depth, 16 cross-attention layers x 8 heads = 128 heads (2 per down level, 3 per up level)
    deep = HeadIndex.from_unet(make_unet("sd-deep"))
    assert len(deep) == 128 and len(deep.layers) == 16
    per_res = [layer.resolution(16) for layer in deep.layers]
    assert {r: per_res.count(r) for r in set(per_res)} == {(16, 16): 5, (8, 8): 5, (4, 4): 5, (2, 2): 1}


def test_joint_model_ships_and_loads() -> None:
    """`load_pipeline(variant="joint")` is the jointly trained 56-head model, with its own recipe recorded."""
    pipe = world.load_pipeline(variant="joint")
    assert _heads(pipe.unet) == [8] * 7
    named = world.load_named("world-joint")  # scripts' --model: a CLI name or a folder
    assert _heads(named.unet) == [8] * 7 and _heads(world.load_named(str(world.model_path())).unet) == [8] * WORLD_LAYERS
    info = json.loads((world.model_path("joint") / "training.json").read_text())
    assert info["recipe"] == "scripts/train_world_joint.sh"
    img = pipe("a red circle", num_inference_steps=2, generator=torch.Generator().manual_seed(0)).images[0]
    assert img.size == (32, 32)


def test_clip_pretraining_then_frozen_text_encoder(tmp_path) -> None:
    """The default recipe's chain: CLIP contrastive pre-training, then a UNet trained with the CLIP's text
    tower frozen: the pipeline's text encoder equals the CLIP's text weights bit for bit."""
    from transformers import CLIPModel

    from headlens.world.clip_train import main as clip_main
    from headlens.world.train import main as train_main

    small = ["--n-images", "48", "--threads", "1"]
    clip_dir = clip_main(["--out", str(tmp_path / "clip"), "--steps", "3", "--batch", "8", "--n-held-out", "100",
                          "--minutes", "5", *small])
    info = json.loads((tmp_path / "clip" / "clip_info.json").read_text())
    ret = info["held_out_retrieval"]
    assert info["steps_done"] == 3 and ret["n"] == 100 and ret["chance"] == 0.01
    assert 0.0 <= ret["caption_to_image_top1"] <= 1.0
    clip = CLIPModel.from_pretrained(str(clip_dir))
    before = {k: v.clone() for k, v in clip.text_model.state_dict().items()}
    vae = train_main(["--out", str(tmp_path / "vae"), "--vae-steps", "1", "--unet-steps", "0", "--batch", "4",
                      "--minutes", "3", *small])
    pipe_dir = train_main(["--out", str(tmp_path / "unet"), "--vae-from", str(vae), "--text-encoder-from",
                           str(clip_dir), "--unet-steps", "2", "--batch", "4", "--minutes", "3", *small])
    te = load_file(str(pipe_dir / "text_encoder" / "model.safetensors"))
    assert te.keys() == before.keys() and all(torch.equal(te[k], before[k]) for k in te)
    unet0 = make_unet("sd").state_dict()
    unet1 = load_file(str(pipe_dir / "unet" / "diffusion_pytorch_model.safetensors"))
    assert unet1.keys() == unet0.keys()
    pipe = world.load_pipeline(folder=pipe_dir)
    assert _heads(pipe.unet) == [8] * 10
    assert "frozen" in (tmp_path / "unet" / "train.log").read_text()
    # a later stage may grow the UNet: sd-tx2 from this sd UNet; a layout that is not a growth is refused
    grown_dir = train_main(["--out", str(tmp_path / "tx2"), "--vae-from", str(vae), "--text-encoder-from",
                            str(clip_dir), "--init-from", str(pipe_dir), "--arch", "sd-tx2", "--unet-steps", "1",
                            "--batch", "4", "--minutes", "3", *small])
    assert _heads(world.load_pipeline(folder=grown_dir).unet) == [8] * 20
    assert "10 new transformer blocks" in (tmp_path / "tx2" / "train.log").read_text()
    with pytest.raises(SystemExit, match="cannot grow this UNet"):
        train_main(["--out", str(tmp_path / "wide"), "--vae-from", str(vae), "--text-encoder-from", str(clip_dir),
                    "--init-from", str(pipe_dir), "--arch", "sd-wide", "--unet-steps", "1", "--batch", "4",
                    "--minutes", "3", *small])


def test_grow_unet_starts_as_the_source() -> None:
    """grow_unet: an sd UNet's weights in an sd-tx2 UNet compute exactly what the sd UNet computes; the new blocks
    are the only new weights, their residual outputs start at 0 and still get gradients."""
    from headlens import HeadIndex
    from headlens.world.model import grow_unet

    torch.manual_seed(0)
    src = make_unet("sd")
    for p in src.parameters():  # non-trivial weights everywhere (diffusers zero-inits some outputs itself)
        p.data.normal_(0, 0.05)
    big = make_unet("sd-tx2")
    new = grow_unet(big, src.state_dict())
    assert len(new) == 10 and all(n.endswith(".transformer_blocks.1") for n in new)
    assert len(HeadIndex.from_unet(big)) == 160
    x, t, c = torch.randn(3, 4, 16, 16), torch.tensor([5, 400, 950]), torch.randn(3, 24, 64)
    with torch.no_grad():
        torch.testing.assert_close(big(x, t, c).sample, src(x, t, c).sample, rtol=0, atol=0)
    big(x, t, c).sample.pow(2).mean().backward()
    out = dict(big.named_parameters())[new[0] + ".attn2.to_out.0.weight"]
    assert out.abs().max() == 0 and out.grad.abs().max() > 0
    with pytest.raises(ValueError, match="cannot grow this UNet from those weights"):
        grow_unet(make_unet("sd-tx2"), make_unet("joint").state_dict())


def test_clip_loss_treats_repeated_captions_as_positives() -> None:
    """Two identical captions in a batch are positives of each other: the loss equals a hand computation."""
    from headlens.world.clip_train import clip_loss

    torch.manual_seed(0)

    from types import SimpleNamespace

    class Fake(torch.nn.Module):
        def forward(self, input_ids, pixel_values, return_loss=False):
            return SimpleNamespace(logits_per_text=logits)

    ids = torch.tensor([[1, 2, 3], [1, 2, 3], [4, 5, 6]])
    logits = torch.randn(3, 3)
    loss, _ = clip_loss(Fake(), ids, torch.zeros(3, 3, 32, 32))
    target = torch.tensor([[0.5, 0.5, 0.0], [0.5, 0.5, 0.0], [0.0, 0.0, 1.0]])
    by_hand = (-(target * logits.log_softmax(1)).sum(1).mean() - (target * logits.t().log_softmax(1)).sum(1).mean()) / 2
    assert torch.allclose(loss, by_hand)


def test_world_clip_reads_renders() -> None:
    """The world CLIP as a scorer ('clip:world') prefers the rendered colour and shape over the others."""
    from headlens.scorers import make_scorer
    from headlens.world.vocab import COLORS

    scorer = make_scorer("clip:world")
    right = 0
    cases = [("a red circle", "red"), ("a blue square", "blue"), ("a green triangle", "green"),
             ("a yellow cross", "yellow"), ("a purple diamond", "purple"), ("a white circle", "white")]
    for caption, colour in cases:
        img = world.render(caption, seed=5)[0]
        texts = [f"a {c} {caption.split()[2]}" for c in COLORS]
        sims = scorer.matrix([img], texts)[0]
        right += texts[int(sims.argmax())].split()[1] == colour
    assert right >= 5, right
def test_load_clip_is_the_default_text_encoder() -> None:
    """Contract: the default pipeline's text encoder has exactly the world CLIP's text-tower weights."""
    from transformers import CLIPModel

    clip = world.load_clip()
    assert isinstance(clip, CLIPModel)
    te = world.load_pipeline().text_encoder.state_dict()
    tower = clip.text_model.state_dict()
    assert te.keys() == tower.keys() and all(torch.equal(te[k], tower[k]) for k in te)
    info = json.loads((world.model_path() / "training.json").read_text())
    assert info["text_encoder"]["frozen"] is True and info["recipe"] == "scripts/train_world.sh"
    joint_te = world.load_pipeline(variant="joint").text_encoder.state_dict()
    assert any(not torch.equal(joint_te[k], te[k]) for k in te if k in joint_te and joint_te[k].shape == te[k].shape)




def test_shipped_clip_retrieves_held_out_pairs() -> None:
    """The shipped world CLIP, re-measured here on 200 fresh held-out pairs (seed 778, never trained on):
    caption→image and image→caption top-1 within groups of 100 far above chance (1 %), close to training.json."""
    from transformers import CLIPTokenizer

    from headlens.world.clip_train import retrieval
    from headlens.world.train import make_dataset

    torch.set_num_threads(1)
    clip = world.load_clip()
    tok = CLIPTokenizer.from_pretrained(str(world.clip_path()))
    caps, imgs = make_dataset(200, 778)
    got = retrieval(clip, tok, caps, imgs, group=100)
    assert got["n"] == 200
    recorded = json.loads((world.clip_path() / "training.json").read_text())["held_out_retrieval"]
    for key in ("caption_to_image_top1", "image_to_caption_top1"):
        assert got[key] >= 0.8, got
        assert abs(got[key] - recorded[key]) <= 0.1, (key, got[key], recorded[key])


def test_default_pipeline_tokenizer_is_the_clip_tokenizer() -> None:
    """The default pipeline reads prompts with the world CLIP's own tokenizer: same ids for every word."""
    from transformers import CLIPTokenizer

    from headlens.world.vocab import all_words

    clip_tok = CLIPTokenizer.from_pretrained(str(world.clip_path()))
    pipe_tok = world.load_pipeline().tokenizer
    assert pipe_tok.get_vocab() == clip_tok.get_vocab()
    caption = " ".join(["a"] + all_words()[:12])
    assert pipe_tok(caption)["input_ids"] == clip_tok(caption)["input_ids"]


def test_binding_probe_section_is_what_the_script_prints(capsys) -> None:
    """docs/world.md's world-binding block is exactly what scripts/world_binding_probe.py prints (it is
    deterministic: one thread, seeded), so its numbers cannot drift from their source."""
    import re
    import runpy

    root = Path(__file__).resolve().parents[1]
    runpy.run_path(str(root / "scripts" / "world_binding_probe.py"), run_name="__main__")
    printed = capsys.readouterr().out.strip()
    doc = (root / "docs" / "world.md").read_text(encoding="utf-8")
    block = re.search(r"<!-- world-binding:begin -->\n(.*?)\n<!-- world-binding:end -->", doc, flags=re.S)
    assert block and block.group(1).strip() == printed
    own, other = re.findall(r"object 2: a linear probe reads its own colour ([\d.]+) % and the other object's colour "
                            r"([\d.]+) %", printed)[0]
    assert float(own) > 90 and float(other) > 90  # the second shape token carries both colours, separably


def test_training_json_stages_are_the_recipe_lines() -> None:
    """Every UNet stage recorded in the default model's training.json ran with the flags that scripts/train_world.sh
    gives the line writing the same folder (seed, learning rate, budget, threads, caption mix), and the recipe
    has no UNet stage the record lacks: the shipped weights come from the committed recipe."""
    import re
    import shlex

    root = Path(__file__).resolve().parents[1]
    script = (root / "scripts" / "train_world.sh").read_text().replace("\\\n", " ")
    lines = {}
    for line in script.splitlines():
        m = re.search(r'--out "\$OUT/(unet\d+)"', line)
        if m and "headlens.world.train" in line:
            words = shlex.split(line.split("headlens.world.train", 1)[1].replace("$T", "--threads 1"))
            lines[m.group(1)] = {w[2:].replace("-", "_"): v for w, v in zip(words, words[1:] + [""])
                                 if w.startswith("--")}
    info = json.loads((world.model_path() / "training.json").read_text())
    recorded = {s["args"]["out"].split("/")[-1]: s["args"] for s in info["stages"]
                if "unet" in s.get("args", {}).get("out", "")}
    assert set(recorded) == set(lines) and len(lines) >= 5, (sorted(recorded), sorted(lines))
    defaults = {"p_two": 0.4, "p_pattern": 0.4, "orange_weight": 0.4, "fruit_weight": 1.0, "p_color": 0.75,
                "threads": 2}
    for name, flags in lines.items():
        args = recorded[name]
        for key in ("seed", "lr", "minutes", "unet_steps", "threads", "p_two", "p_pattern", "orange_weight",
                    "fruit_weight", "p_color"):
            said = float(flags[key]) if key in flags else defaults.get(key)
            assert said == pytest.approx(float(args.get(key, defaults.get(key)))), (name, key, said, args.get(key))


def test_binding_split_measures_on_ground_truth_renders() -> None:
    """scripts/world_binding_split.py's reading of two-object images, on renders whose truth is known: the asked
    scene, the colour-swapped scene, one colour painting both objects, and one shape drawn twice."""
    import runpy

    root = Path(__file__).resolve().parents[1]
    measures = runpy.run_path(str(root / "scripts" / "world_binding_split.py"))["measures"]
    scorer = world.Scorer()
    from headlens.world.quality import Prompt
    from headlens.world.vocab import parse_caption

    asked = "a red circle on the left and a blue square on the right"
    drawn = {"asked": asked, "swapped": "a blue circle on the left and a red square on the right",
             "one colour": "a red circle on the left and a red square on the right",
             "one shape": "a red circle on the left and a blue circle on the right"}
    prompt = Prompt(asked, 0, parse_caption(asked))
    got = {k: {m: v[0] for m, v in measures(scorer, [prompt], [np.asarray(world.render(c, seed=3)[0])]).items()}
           for k, c in drawn.items()}
    assert got["asked"] == {"an object missing": False, "colours swapped": False, "both colours present": True,
                            "both shapes present": True}
    assert got["swapped"] == {"an object missing": True, "colours swapped": True, "both colours present": True,
                              "both shapes present": True}
    assert got["one colour"] == {"an object missing": True, "colours swapped": False, "both colours present": False,
                                 "both shapes present": True}
    assert got["one shape"] == {"an object missing": True, "colours swapped": False, "both colours present": True,
                                "both shapes present": False}
    # the library's two_metrics, which the table reads, adds the count and the said positions
    from headlens.world.quality import two_metrics

    full = {k: {m: v[0] for m, v in two_metrics(scorer, [prompt], [np.asarray(world.render(c, seed=3)[0])]).items()}
            for k, c in drawn.items()}
    assert all(f["two objects seen"] and not f["one object missing (count)"] for f in full.values())
    assert full["asked"]["both objects right (colour+shape)"] and full["asked"]["positions right (when said)"]
    assert not full["swapped"]["positions right (when said)"]  # the asked pairs are not drawn, so not placed


def test_binding_attention_pieces() -> None:
    """scripts/world_binding_attention.py: objects read apart on renders whose truth is known, word positions, the
    attention shares of a mask on maps computed by hand, and the recorder leaving the images as plain attention."""
    import runpy

    root = Path(__file__).resolve().parents[1]
    ns = runpy.run_path(str(root / "scripts" / "world_binding_attention.py"))
    from headlens.world.quality import Prompt
    from headlens.world.vocab import parse_caption

    scorer = world.Scorer()
    asked = "a red circle on the left and a blue square on the right"
    prompt = Prompt(asked, 0, parse_caption(asked))

    def reads(caption):
        return {k: kind for k, _, kind in ns["object_reads"](scorer, prompt, np.asarray(world.render(caption, seed=3)[0]))}
    assert reads(asked) == {1: "own", 2: "own"}
    assert reads("a blue circle on the left and a red square on the right") == {1: "other", 2: "other"}
    assert reads("a red circle on the left and a green square on the right") == {1: "own", 2: "else"}
    assert reads("a red circle on the left and a blue triangle on the right") == {1: "own"}
    # one drawn mask per asked object, on the side where it was drawn
    masks = {k: m for k, m, _ in ns["object_reads"](scorer, prompt, np.asarray(world.render(asked, seed=3)[0]))}
    assert np.nonzero(masks[1])[1].mean() < 16 < np.nonzero(masks[2])[1].mean()

    pipe = world.load_pipeline()
    pos = ns["token_positions"](pipe.tokenizer, prompt)
    words = [w.replace("</w>", "") for w in pipe.tokenizer.convert_ids_to_tokens(pipe.tokenizer(asked)["input_ids"])]
    assert [words[pos[k]] for k in ("c1", "s1", "c2", "s2", "end")] == ["red", "circle", "blue", "square",
                                                                          "<|endoftext|>"]
    # shares: a map (HW=8x8, K=24) whose left half looks at 'red' and right half at 'blue'
    amap = torch.zeros(64, 24)
    col = torch.arange(64) % 8
    amap[col < 4, pos["c1"]] = 1.0
    amap[col >= 4, pos["c2"]] = 1.0
    left = ns["shares"](amap, masks[1], pos, 1)
    assert left["own colour word"] == pytest.approx(1.0) and left["other colour word"] == pytest.approx(0.0)
    right = ns["shares"](amap, masks[2], pos, 2)
    assert right["own colour word"] == pytest.approx(1.0) and right["end + padding"] == 0.0
    uniform = ns["shares"](torch.full((256, 24), 1 / 24), masks[1], pos, 1)
    assert uniform["end + padding"] == pytest.approx((24 - pos["end"]) / 24)

    # the probe recording maps is plain attention: same images as the stock processors; (B, HW, K) maps summing to 1
    gen = torch.Generator().manual_seed(0)
    plain = pipe([asked] * 2, num_inference_steps=3, guidance_scale=5.0, generator=gen, output_type="np").images
    from headlens.world.probe import ColumnProbe, install

    rec = ColumnProbe(map_steps=2)
    install(pipe.unet, rec)
    gen = torch.Generator().manual_seed(0)
    got = pipe([asked] * 2, num_inference_steps=3, guidance_scale=5.0, generator=gen, output_type="np").images
    np.testing.assert_allclose(got, plain, atol=1e-5)
    assert len(rec.maps) == WORLD_LAYERS and all(c == 3 for c in rec.calls.values())
    for s in rec.maps.values():
        assert s.shape[0] == 2 and s.shape[2] == 24
        torch.testing.assert_close(s.sum(-1), torch.full(s.shape[:2], 2.0))  # two steps kept, each row sums to 1


def test_head_effects_script_quick(tmp_path, monkeypatch) -> None:
    """scripts/world_head_effects.py --quick: the report's HRV build and single-head section on the shipped UNet,
    its ρ equal to a Spearman correlation recomputed from the effects and HRV values it wrote."""
    import runpy
    import sys

    from scipy.stats import spearmanr

    root = Path(__file__).resolve().parents[1]
    monkeypatch.setattr(sys, "argv", ["world_head_effects.py", "--quick", "--out", str(tmp_path)])
    runpy.run_path(str(root / "scripts" / "world_head_effects.py"), run_name="__main__")
    res = json.loads((tmp_path / "effects.json").read_text())
    c = res["concepts"]["Color"]
    assert res["model"] == "world" and c["heads"] == len(c["effects"]) == len(c["hrv_values"]) == 4
    assert c["spearman"]["mean"] == pytest.approx(spearmanr(c["effects"], c["hrv_values"]).statistic, abs=1e-6)
    assert 0.0 <= c["spearman_p_perm"] <= 1.0 and (tmp_path / "hrv").is_dir()


def test_remeasure_script_steps(tmp_path) -> None:
    """scripts/remeasure_world.sh names only scripts that exist, resumes from a step, and stops at a failing one."""
    import os
    import re
    import subprocess

    root = Path(__file__).resolve().parents[1]
    script = root / "scripts" / "remeasure_world.sh"
    named = re.findall(r"(scripts/\w+\.py|docs/images/\w+\.sh)", script.read_text())
    assert len(named) == 10 and all((root / p).is_file() for p in named), named
    env = dict(os.environ, HL="echo", PY="echo")
    out = subprocess.run(["bash", str(script), "11"], env=env, capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0 and out.stdout.splitlines() == [
        "== step 11: echo scripts/world_binding_attention.py", "scripts/world_binding_attention.py",
        "== step 12: echo scripts/world_binding_places.py", "scripts/world_binding_places.py",
        "== step 13: echo scripts/world_binding_blind.py", "scripts/world_binding_blind.py"], out
    env["HL"] = "false"
    out = subprocess.run(["bash", str(script), "10"], env=env, capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode != 0


def test_binding_blind_states_hide_only_the_first_object() -> None:
    """scripts/world_binding_blind.py's text states: as trained they are the text encoder's own output to the last
    bit; blind, the second object's word states no longer depend on the first object's words, while the start token,
    the first object's words and the end token are as before (the end token still sees both)."""
    import runpy

    root = Path(__file__).resolve().parents[1]
    script = runpy.run_path(str(root / "scripts" / "world_binding_blind.py"))
    encode, blind_mask = script["encode"], script["blind_mask"]
    pipe = world.load_pipeline()
    te, tok = pipe.text_encoder, pipe.tokenizer
    texts = ["a red circle and a blue square", "a green cross and a blue square", "a large red circle"]
    ids = tok(texts, padding="max_length", max_length=tok.model_max_length, return_tensors="pt").input_ids
    with torch.no_grad():
        ref = te(ids)[0]
    causal, blind = encode(te, tok, texts, False), encode(te, tok, texts, True)
    assert torch.equal(causal, ref)
    second = slice(5, 8)  # 'a blue square': words 4-6, tokens 5-7
    assert not torch.allclose(causal[0, second], causal[1, second], atol=1e-4)  # causal: they see 'red circle'
    torch.testing.assert_close(blind[0, second], blind[1, second], rtol=0, atol=1e-5)
    torch.testing.assert_close(blind[:, :5], causal[:, :5], rtol=0, atol=1e-5)  # start, object 1, 'and'
    assert not torch.allclose(blind[0, 8], blind[1, 8], atol=1e-4)  # the end token sees both objects
    torch.testing.assert_close(blind[2], causal[2], rtol=0, atol=1e-5)  # one object: nothing to hide
    m = blind_mask(texts[:1], 10)[0, 0]
    assert torch.isinf(m[5:8, 1:5]).all() and not torch.isinf(m[5:8, 5:8].tril()).any() and not torch.isinf(m[8, :9]).any()


def test_binding_places_reads_each_object_at_its_said_place() -> None:
    """scripts/world_binding_places.py on renders whose truth is known: the asked scene is read at its own places,
    the scene with the two objects' places exchanged at the other object's, one colour on both only half right."""
    import runpy

    from headlens.world.quality import Prompt
    from headlens.world.vocab import parse_caption

    root = Path(__file__).resolve().parents[1]
    place_hits = runpy.run_path(str(root / "scripts" / "world_binding_places.py"))["place_hits"]
    scorer = world.Scorer()
    asked = "a red circle on the left and a blue square on the right"
    prompt = Prompt(asked, 0, parse_caption(asked))
    drawn = {"asked": asked, "places exchanged": "a blue square on the left and a red circle on the right",
             "one colour": "a red circle on the left and a red square on the right"}
    got = {k: place_hits(scorer, [prompt], [np.asarray(world.render(c, seed=3)[0])]) for k, c in drawn.items()}
    for r in ("shape", "colour", "shape and colour"):
        assert got["asked"][f"{r} at own place"] == [True, True]
        assert got["asked"][f"{r} at other's place"] == [False, False]
        assert got["places exchanged"][f"{r} at own place"] == [False, False]
        assert got["places exchanged"][f"{r} at other's place"] == [True, True]
    assert got["one colour"]["shape at own place"] == [True, True]
    assert got["one colour"]["colour at own place"] == [True, False]  # the square is red, not blue
    assert got["one colour"]["colour at other's place"] == [True, False]  # red is also at the square's place


def test_measuring_scheduler_is_ddim_on_the_pipelines_own_betas() -> None:
    from diffusers import DDIMScheduler, PNDMScheduler

    from headlens.world.quality import load_measured, measuring_scheduler

    shipped = world.load_pipeline()
    shipped.scheduler = PNDMScheduler.from_config(shipped.scheduler.config)  # as a user might have swapped it
    betas = shipped.scheduler.betas.clone()
    pipe = measuring_scheduler(shipped)
    assert pipe is shipped and isinstance(pipe.scheduler, DDIMScheduler)
    assert pipe.scheduler.config.clip_sample is False
    assert torch.equal(pipe.scheduler.betas, betas)  # SD's scaled_linear betas, not DDIM's defaults
    joint = load_measured("world-joint")
    assert isinstance(joint.scheduler, DDIMScheduler) and joint.scheduler.config.clip_sample is False
    assert joint.unet.config.block_out_channels == world.load_pipeline(variant="joint").unet.config.block_out_channels


@pytest.mark.parametrize("name, steps, start", [("world-tx2b", 5519, "runs/world/tx2/pipeline"),
                                                 ("world-tx2c", 5527, "trials/world-tx2b/pipeline")])
def test_trial_pipeline_shares_the_shipped_parts(name: str, steps: int, start: str) -> None:
    """trials/world-tx2b and -tx2c (docs/world.md): the shipped VAE and frozen text encoder, bit for bit, and an
    sd-tx2 UNet trained from the recorded start with the binding loss."""
    root = Path(__file__).resolve().parents[1]
    trial, shipped = root / "trials" / name / "pipeline", world.model_path()
    for part in ("vae/diffusion_pytorch_model.safetensors", "text_encoder/model.safetensors"):
        a, b = load_file(str(trial / part)), load_file(str(shipped / part))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    pipe = world.load_pipeline(folder=trial)
    assert _heads(pipe.unet) == [8] * 20  # 20 cross-attention layers x 8 heads
    assert make_unet("sd-tx2").state_dict().keys() == pipe.unet.state_dict().keys()
    info = json.loads((trial.parent / "train_info.json").read_text())
    assert info["args"]["arch"] == "sd-tx2" and info["args"]["bind_weight"] == 0.05
    assert info["unet_steps_done"] == steps and info["args"]["init_from"] == start


def test_shipped_unet_is_the_last_recorded_stage() -> None:
    """The default UNet is trials/world-tx2c's bit for bit, and training.json's last stage is that run (stage 11 of
    scripts/train_world.sh, recorded with the same flags and step count as the trial's own train_info.json)."""
    root = Path(__file__).resolve().parents[1]
    trial = root / "trials" / "world-tx2c"
    part = "unet/diffusion_pytorch_model.safetensors"
    a, b = load_file(str(trial / "pipeline" / part)), load_file(str(world.model_path() / part))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    last = json.loads((world.model_path() / "training.json").read_text())["stages"][-1]
    ran = json.loads((trial / "train_info.json").read_text())
    assert last["args"]["out"] == "runs/world/unet9" and last["unet_steps_done"] == ran["unet_steps_done"]
    same = ("seed", "lr", "minutes", "unet_steps", "arch", "p_two", "p_color", "bind_weight", "threads")
    assert {k: last["args"][k] for k in same} == {k: ran["args"][k] for k in same}


def test_stage8_pipeline_is_the_previous_default() -> None:
    """trials/world-stage8 (the default until stages 9-11 shipped): the shipped VAE and text encoder bit for bit,
    the 80-head sd UNet, and stages 1-8 recorded, the last of them writing unet6 (the recipe's stage 8)."""
    root = Path(__file__).resolve().parents[1]
    old, shipped = root / "trials" / "world-stage8" / "pipeline", world.model_path()
    for part in ("vae/diffusion_pytorch_model.safetensors", "text_encoder/model.safetensors"):
        a, b = load_file(str(old / part)), load_file(str(shipped / part))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    unet = world.load_pipeline(folder=old).unet
    assert _heads(unet) == [8] * 10 and make_unet("sd").state_dict().keys() == unet.state_dict().keys()
    stages = json.loads((old / "training.json").read_text())["stages"]
    assert stages[-1]["args"]["out"] == "runs/world/unet6" and stages[-1]["unet_steps_done"] == 1722
    new = json.loads((shipped / "training.json").read_text())["stages"]
    assert new[:len(stages)][-1]["args"] == stages[-1]["args"]  # the default's record continues this one
