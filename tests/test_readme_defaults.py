"""Defaults the README states, checked by what they do: clamp, P2P windows, A&E thresholds, step sizes, map size."""

from __future__ import annotations

import math

import torch
from diffusers import UNet2DConditionModel
from test_heads import SD15, SD21, SDXL

from headlens import HRV, HeadIndex, excite
from headlens.attend_excite import select_layers
from headlens.edit import p2p

PROMPT = "a cat and a dog"
TOKENS = {"cat": "Animals", "dog": "Animals"}


def meta_heads(cfg) -> HeadIndex:
    with torch.device("meta"):
        return HeadIndex.from_unet(UNet2DConditionModel(**cfg))


# ---------------------------------------------------------------------------------------------- clamp
def test_clamp_auto_is_9_above_300_heads():
    """README: the reference clamps HRV values at 9 for SDXL; `--clamp auto` does so above 300 heads."""
    from headlens.cli.steer_cmd import _clamp

    assert _clamp("auto", 301) == 9.0 and _clamp("auto", 300) is None
    assert [_clamp("auto", len(meta_heads(cfg))) for cfg in (SD15, SD21, SDXL)] == [None, None, 9.0]  # 128, 195, 1300
    assert _clamp("none", 1300) is None and _clamp("4.5", 10) == 4.5


# ---------------------------------------------------------------------------------------------- P2P windows
def test_p2p_default_windows(sd_pipe):
    """Plain P2P: cross 0.8 / self 0.4; with an HRV: cross 0.8 / self 0.9. 10 steps tell 0.7 from 0.8, 0.4 from 0.5."""
    src, tgt, n = "a bowl made of wood", "a bowl made of glass", 10
    heads = HeadIndex.from_unet(sd_pipe.unet)
    hrv = HRV.from_matrix(torch.linspace(0.5, 1.5, len(heads)).repeat(2, 1), heads, ["Material", "Color"])

    def edited(**kw):
        return p2p(sd_pipe, src, tgt, seed=3, num_inference_steps=n, output_type="latent", **kw)[1]

    plain = edited()
    assert torch.equal(plain, edited(cross_replace=0.8, self_replace=0.4))
    assert not torch.equal(plain, edited(cross_replace=0.7, self_replace=0.4))
    assert not torch.equal(plain, edited(cross_replace=0.8, self_replace=0.5))
    kw = {"hrv": hrv, "concept": "Material"}
    with_hrv = edited(**kw)
    assert torch.equal(with_hrv, edited(cross_replace=0.8, self_replace=0.9, **kw))
    assert not torch.equal(with_hrv, edited(cross_replace=0.8, self_replace=0.8, **kw))
    assert not torch.equal(with_hrv, edited(cross_replace=0.7, self_replace=0.9, **kw))


# ---------------------------------------------------------------------------------------------- A&E
def test_attend_and_excite_default_thresholds_and_update_steps(sd_pipe, monkeypatch):
    """Refinement only at steps 0, 10, 20, until the loss is at most 0.95, 0.5, 0.2 (thresholds 0.05, 0.5, 0.8);
    one latent update at each of the first 25 steps and none after.

    A scripted loss (0.99, then 0.1 lower at every evaluation within a step) makes the stopping points visible:
    the tiny model's own loss barely moves, so every refinement would run to its 20-update limit."""
    import headlens.attend_excite as ae
    from headlens.attention import Session

    state = {"step": None, "k": 0}
    real_set_step = Session.set_step

    def set_step(self, step, num_steps, cfg=None):
        if step != state["step"]:
            state["step"], state["k"] = step, 0
        return real_set_step(self, step, num_steps, cfg)

    def scripted_loss(maxima):
        value = max(0.0, 0.99 - 0.1 * state["k"])
        state["k"] += 1
        return maxima.sum() * 0 + value  # differentiable (zero gradient): the latent stays put

    monkeypatch.setattr(Session, "set_step", set_step)
    monkeypatch.setattr(ae, "excite_loss", scripted_loss)
    trace: list = []
    excite(sd_pipe, PROMPT, TOKENS, num_inference_steps=27, output_type="latent", trace=trace)
    assert {r["step"] for r in trace} == set(range(25))  # max_iter_to_alter = 25: steps 25 and 26 do no work
    refines = {0: 1, 10: 5, 20: 8}  # 0.89 ≤ 0.95; 0.49 ≤ 0.5 after 5; 0.19 ≤ 0.2 after 8
    for step in range(25):
        phases = [r["phase"] for r in trace if r["step"] == step]
        n = refines.get(step, 0)
        assert phases == ["check"] + (["refine"] * n + ["refined"] if n else []) + ["update"], step
    real: list = []
    monkeypatch.undo()
    excite(sd_pipe, PROMPT, TOKENS, num_inference_steps=1, output_type="latent", trace=real)
    assert [r["phase"] for r in real].count("refine") == 20  # with the model's own loss: the 20-update limit


def test_attend_and_excite_step_size_schedule(sd_pipe, monkeypatch):
    """latent −= 20·sqrt(scale_i)·∇loss with scale going linearly 1 → 0.5 over the run (the reference's schedule)."""
    n = 5
    grads: list = []
    real_grad = torch.autograd.grad

    def spy(outputs, inputs, *a, **k):
        g = real_grad(outputs, inputs, *a, **k)
        grads.append((inputs[0].detach().clone(), g[0].detach().clone()))
        return g

    guided: list = []
    hook = sd_pipe.unet.register_forward_pre_hook(
        lambda m, args: guided.append(args[0].detach().clone()) if args[0].shape[0] == 2 else None)
    monkeypatch.setattr(torch.autograd, "grad", spy)
    try:
        excite(sd_pipe, PROMPT, TOKENS, num_inference_steps=n, thresholds={}, output_type="latent")
    finally:
        hook.remove()
    assert len(grads) == n and len(guided) == n  # one update per step, then the guided pass on the updated latent
    for i, ((x, g), batch) in enumerate(zip(grads, guided)):
        size = 20 * math.sqrt(1.0 - 0.5 * i / (n - 1))
        torch.testing.assert_close(batch[:1], x - size * g, rtol=1e-5, atol=1e-5)
        assert torch.equal(batch[0], batch[1])  # [uncond, cond] halves of the same latent


def test_attend_and_excite_map_resolutions_for_sd_at_512_px():
    """README: A&E averages the 16×16 maps; A&E-HRV resizes every layer's maps to 8×8 (SD at 512 px: 64×64 latents)."""
    heads = meta_heads(SD15)
    layers, size = select_layers(heads, (64, 64), None, None, hrv_mode=True)
    assert size == (8, 8) and layers == list(heads.layers)
    layers, size = select_layers(heads, (64, 64), None, None, hrv_mode=False)
    assert size == (16, 16) and layers and all(layer.resolution(64) == (16, 16) for layer in layers)
    assert len(layers) == sum(layer.resolution(64) == (16, 16) for layer in heads.layers) == 5
