"""Train the bundled world model: VAE, latents, then the UNet (with a frozen pre-trained text encoder).

python -m headlens.world.train --out runs/world/main --text-encoder-from runs/world/clip/clip --minutes 85

With --text-encoder-from (the default model's recipe) the text encoder is the world CLIP's text tower,
frozen: the denoiser's loss never reaches it, as in Stable Diffusion. Without it (--arch joint, the first
model's recipe) a text encoder is trained jointly with the UNet from scratch.
"""
from __future__ import annotations

import argparse
import inspect
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from transformers import CLIPTokenizer

from .model import (
    ARCHS,
    make_pipeline,
    make_text_encoder,
    grow_unet,
    make_unet,
    make_vae,
    save_pipeline,
    text_encoder_from_clip,
    train_scheduler,
)
from .grounding import binding_loss, grounding_loss, install_recorder, object_word_groups
from .render import render_array
from .tokenizer import build_tokenizer, check_tokenizer
from .vocab import BACKGROUNDS, DEFAULT_BACKGROUND, parse_caption, sample_caption


# diffusers' AutoencoderKL default factor: a VAE that no UNet stage has scaled yet still carries it
DEFAULT_SCALING = inspect.signature(AutoencoderKL.__init__).parameters["scaling_factor"].default
HIGH_T = 600  # --t-high draws from [HIGH_T, 1000): the noisiest 40 % of the schedule


class Log:
    """Print and append timestamped lines to a log file."""

    def __init__(self, path: Path) -> None:
        self.path, self.t0 = path, time.time()

    def __call__(self, msg: str) -> None:
        line = f"[{time.time() - self.t0:7.1f}s] {msg}"
        print(line, flush=True)
        with open(self.path, "a") as f:
            f.write(line + "\n")


def make_dataset(n: int, seed: int, masks: list | None = None, **mix: float) -> tuple[list[str], np.ndarray]:
    """n (caption, render) pairs; captions from the grammar (``mix``: sample_caption's caption mix), images
    from the renderer. A ``masks`` list receives each image's object pixel masks, (2, H, W) bool in caption order
    (all False for an absent second object)."""
    rng = np.random.default_rng(seed)
    captions = [sample_caption(rng, **mix) for _ in range(n)]
    images = []
    for i, c in enumerate(captions):
        drawn: list | None = None if masks is None else []
        images.append(render_array(c, seed * 10_000_000 + i, drawn)[0])
        if masks is not None:
            both = np.zeros((2, *images[-1].shape[:2]), dtype=bool)
            both[:len(drawn)] = drawn
            masks.append(both)
    return captions, np.stack(images).transpose(0, 3, 1, 2).copy()


def to_float(x: np.ndarray) -> torch.Tensor:
    """uint8 NCHW -> float in [-1, 1]."""
    return torch.from_numpy(x).float().div(127.5).sub(1.0)


def sample_timesteps(n: int, gen: torch.Generator, high_share: float = 0.0, high_from: int = HIGH_T) -> torch.Tensor:
    """Training timesteps: uniform on [0, 1000), except that a ``high_share`` of the batch is drawn from the noisy end
    [``high_from``, 1000), where layout and colours are decided and the epsilon loss weighs the image least."""
    t = torch.randint(0, 1000, (n,), generator=gen)
    if high_share > 0:
        high = torch.rand(n, generator=gen) < high_share
        t = torch.where(high, torch.randint(high_from, 1000, (n,), generator=gen), t)
    return t


def object_masks(captions: list[str], images: np.ndarray, latent_size: int) -> torch.Tensor:
    """Where the objects are, at latent resolution: (N, 1, latent_size, latent_size), 1 in a latent cell with any
    pixel off the caption's background colour (the renderer paints objects on a flat background), else 0."""
    bg = np.array([BACKGROUNDS[parse_caption(c).background or DEFAULT_BACKGROUND] for c in captions], dtype=np.uint8)
    on_object = (images != bg[:, :, None, None]).any(axis=1, keepdims=True)
    return F.max_pool2d(torch.from_numpy(on_object).float(), images.shape[-1] // latent_size)


def weighted_mse(pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Mean squared error with a per-cell weight (broadcast over channels), normalised by the weights' sum, so that
    weight 1 everywhere is plain MSE."""
    w = weight.expand_as(pred)
    return ((pred - target).pow(2) * w).sum() / w.sum()


def lr_at(step: int, total: int, base: float, warmup: int, progress: float | None = None) -> float:
    """Linear warm-up, then cosine decay to 10 % over progress (default: step/total)."""
    if step < warmup:
        return base * (step + 1) / warmup
    t = min(1.0, (step - warmup) / max(1, total - warmup)) if progress is None else min(1.0, progress)
    return base * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t)))


def train_vae(images: np.ndarray, steps: int, batch: int, log: Log, gen: torch.Generator):
    """Train the autoencoder on renders: L1 + MSE + small KL."""
    vae = make_vae()
    opt = torch.optim.AdamW(vae.parameters(), lr=1e-3, weight_decay=0.0)
    vae.train()
    for step in range(steps):
        for g in opt.param_groups:
            g["lr"] = lr_at(step, steps, 1e-3, 50)
        idx = torch.randint(0, len(images), (batch,), generator=gen).numpy()
        x = to_float(images[idx])
        post = vae.encode(x).latent_dist
        z = post.sample(generator=gen)
        rec = vae.decode(z).sample
        kl = post.kl().mean() / z[0].numel()
        loss = F.mse_loss(rec, x) + 0.5 * F.l1_loss(rec, x) + 1e-4 * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 50 == 0 or step == steps - 1:
            log(f"vae step {step}/{steps} loss {loss.item():.4f} mse {F.mse_loss(rec, x).item():.4f} kl {kl.item():.2f}")
    vae.eval()
    return vae


@torch.no_grad()
def encode_all(vae, images: np.ndarray, bs: int = 500) -> torch.Tensor:
    """Posterior means of all images (unscaled)."""
    out = [vae.encode(to_float(images[i:i + bs])).latent_dist.mode() for i in range(0, len(images), bs)]
    return torch.cat(out)


def training_device(name: str, error) -> torch.device:
    """The --device value as a torch.device; an unknown name or an absent CUDA device goes to ``error`` (one line)."""
    try:
        dev = torch.device(name)
    except RuntimeError:
        error(f"--device {name!r} is not a device; use cpu or cuda[:N]")
    if dev.type not in ("cpu", "cuda"):
        error(f"--device {name}: only cpu and cuda are supported")
    if dev.type == "cuda" and not torch.cuda.is_available():
        error(f"--device {name}: torch sees no CUDA device here (a CPU build, or no GPU); use --device cpu")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        error(f"--device {name}: there are only {torch.cuda.device_count()} CUDA devices")
    return dev


def ema_update(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    """In-place exponential moving average of parameters."""
    with torch.no_grad():
        for pe, p in zip(ema.parameters(), model.parameters()):
            pe.lerp_(p, 1.0 - decay)


def main(argv: list[str] | None = None) -> Path:
    """Run the whole recipe; returns the pipeline folder."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--minutes", type=float, default=85.0, help="wall-clock budget for everything")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--n-images", type=int, default=60_000)
    ap.add_argument("--vae-steps", type=int, default=700)
    ap.add_argument("--unet-steps", type=int, default=8000,
                    help="UNet steps; the cosine schedule follows max(step/steps, time used/time left), so a "
                    "slow machine ends on time with a decayed learning rate (the log says which bound ended it)")
    ap.add_argument("--no-time-schedule", action="store_true", help="schedule by steps only (exact repeats)")
    ap.add_argument("--arch", choices=ARCHS, default="sd", help="UNet layout: sd (80 heads), sd-wide (the same 80 heads, 8-dim at 16²), sd-deep (SD1.x's "
                    "16 layers x 8 = 128 heads), sd-tx2 (two transformer blocks per module, 160 heads; --init-from "
                    "an sd UNet grows it) or joint (56 heads)")
    ap.add_argument("--text-encoder-from", default="",
                    help="a world CLIP folder (headlens.world.clip_train): its text tower, frozen, is the text "
                    "encoder; without it the text encoder trains jointly with the UNet")
    ap.add_argument("--init-from", default="", help="continue from a pipeline folder's UNet (and text encoder)")
    ap.add_argument("--vae-from", default="", help="reuse a trained VAE (a pipeline folder or its vae/ folder)")
    ap.add_argument("--p-two", type=float, default=0.4, help="caption mix: share of two-object captions")
    ap.add_argument("--p-pattern", type=float, default=0.4,
                    help="caption mix: chance an object's caption says 'striped' or 'dotted'")
    ap.add_argument("--p-color", type=float, default=0.75,
                    help="caption mix: chance an object's caption says its colour")
    ap.add_argument("--orange-weight", type=float, default=0.4,
                    help="caption mix: weight of the colour sense of 'orange' (other colours weigh 1)")
    ap.add_argument("--fruit-weight", type=float, default=1.0,
                    help="caption mix: weight of the fruit sense of 'orange' among the shapes (other shapes weigh 1)")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=6e-4)
    ap.add_argument("--p-uncond", type=float, default=0.1)
    ap.add_argument("--t-high", type=float, default=0.0,
                    help=f"share of each batch whose timestep is drawn from [{HIGH_T}, 1000) instead of [0, 1000)")
    ap.add_argument("--object-weight", type=float, default=1.0,
                    help="loss weight of latent cells on an object against 1 on the background (1: plain MSE)")
    ap.add_argument("--ground-weight", type=float, default=0.0,
                    help="weight of the token grounding loss (headlens.world.grounding: each object's words attended "
                    "from its own pixels, TokenCompose's token loss with the renderer's masks); 0: off")
    ap.add_argument("--bind-weight", type=float, default=0.0,
                    help="weight of the binding loss (headlens.world.grounding.binding_loss: each object's cells attend "
                    "to its own words more than to the other object's); 0: off")
    ap.add_argument("--ema", type=float, default=0.999)
    ap.add_argument("--checkpoint-minutes", type=float, default=5.0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu",
                    help="where the UNet stage trains: cpu (the recipe's) or cuda[:N]; the random draws stay on the "
                    "CPU generator, so a stage draws the same batches, noise and timesteps on either")
    a = ap.parse_args(argv)
    dev = training_device(a.device, ap.error)
    if not 0 <= a.t_high <= 1:
        ap.error(f"--t-high {a.t_high} must be a share in [0, 1]")
    for flag, value in (("--ground-weight", a.ground_weight), ("--bind-weight", a.bind_weight)):
        if value < 0:
            ap.error(f"{flag} {value} must be >= 0 (0: off)")
    if not 0 <= a.p_color <= 1:
        ap.error(f"--p-color {a.p_color} must be a chance in [0, 1]")
    if a.object_weight <= 0:
        ap.error(f"--object-weight {a.object_weight} must be > 0 (1 weighs objects like the background)")
    t_start = time.time()
    deadline = t_start + a.minutes * 60
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    log = Log(out / "train.log")
    log(f"args {vars(a)}")
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    gen = torch.Generator().manual_seed(a.seed)

    tok = build_tokenizer(out / "tokenizer_build")
    check_tokenizer(tok)
    drawn: list | None = [] if a.ground_weight > 0 or a.bind_weight > 0 else None  # masks only for those losses
    captions, images = make_dataset(a.n_images, a.seed, drawn, p_two=a.p_two, p_pattern=a.p_pattern,
                                     p_color=a.p_color, orange_weight=a.orange_weight, fruit_weight=a.fruit_weight)
    log(f"rendered {len(images)} images; e.g. {captions[:3]}")

    if a.vae_from:
        src = Path(a.vae_from)
        vae = AutoencoderKL.from_pretrained(str(src / "vae" if (src / "vae").is_dir() else src)).eval()
        log(f"reusing the VAE from {src}")
    else:
        vae = train_vae(images, a.vae_steps, a.batch, log, gen)
    if a.unet_steps == 0:  # VAE-only stage: no latents, no UNet; the pipeline folder carries the VAE
        save_pipeline(make_pipeline(vae, make_text_encoder(tok), tok, make_unet(a.arch)), out / "pipeline")
        info = {"args": vars(a), "unet_steps_done": 0, "unet_steps_planned": 0, "unet_minutes": 0.0,
                "minutes": (time.time() - t_start) / 60, "vae_scaling_factor": None, "final_loss": None}
        (out / "train_info.json").write_text(json.dumps(info, indent=1))
        log(f"done (VAE only) {info}")
        return out / "pipeline"
    cache = out / "latents.safetensors"
    key = f"{a.n_images}/{a.seed}/{a.vae_from or a.vae_steps}/{a.p_two}/{a.p_pattern}/{a.orange_weight}"
    key += "" if a.fruit_weight == 1.0 else f"/{a.fruit_weight}"  # old caches stay valid
    key += "" if a.p_color == 0.75 else f"/color{a.p_color}"
    if cache.exists() and safe_open(str(cache), "pt").metadata().get("key") == key:
        lat = load_file(str(cache))["latents"]
        log(f"latents from cache {cache}")
    else:
        lat = encode_all(vae, images)
        save_file({"latents": lat.contiguous()}, str(cache), metadata={"key": key})
    # a reused VAE that a UNet stage already scaled keeps its factor (the shipped pipeline has one factor for every
    # stage); a fresh VAE, or a VAE-only stage's (diffusers' default factor), is scaled by this data's 1/std
    reused = a.vae_from and abs(float(vae.config.scaling_factor) - DEFAULT_SCALING) > 1e-6
    scale = float(vae.config.scaling_factor) if reused else float(1.0 / lat.std())
    vae.register_to_config(scaling_factor=scale)
    lat = lat * scale
    source = "kept from the reused VAE" if reused else "1/std of these latents"
    log(f"latents {tuple(lat.shape)} scaling_factor {scale:.4f} ({source})")
    with torch.no_grad():
        x = to_float(images[:256])
        rec = vae.decode(lat[:256] / scale).sample
        log(f"vae reconstruction mse on 256 renders {F.mse_loss(rec, x).item():.5f}")

    masks = object_masks(captions, images, lat.shape[-1]).to(dev) if a.object_weight != 1 else None
    if masks is not None:
        log(f"object cells: {masks.mean().item():.1%} of the latent; weighted {a.object_weight} against 1")
    ids = tok(captions, padding="max_length", max_length=tok.model_max_length, truncation=True,
              return_tensors="pt")["input_ids"]
    empty = tok([""], padding="max_length", max_length=tok.model_max_length, return_tensors="pt")["input_ids"]
    frozen = bool(a.text_encoder_from)
    if frozen:
        from transformers import CLIPModel

        clip_tok = CLIPTokenizer.from_pretrained(a.text_encoder_from)
        if clip_tok.get_vocab() != tok.get_vocab():
            raise SystemExit(f"the CLIP at {a.text_encoder_from} was trained with another tokenizer")
        te = text_encoder_from_clip(CLIPModel.from_pretrained(a.text_encoder_from, local_files_only=True))
        te.requires_grad_(False)
        log(f"text encoder: the world CLIP's text tower from {a.text_encoder_from}, frozen")
    else:
        te = make_text_encoder(tok)
    unet = make_unet(a.arch)
    unet_ema = make_unet(a.arch)
    te_ema = te if frozen else make_text_encoder(tok)
    if a.init_from:
        src = Path(a.init_from)
        state = load_file(str(src / "unet" / "diffusion_pytorch_model.safetensors"))
        if set(state) == set(unet.state_dict()):
            unet.load_state_dict(state)
        else:
            try:
                grown = grow_unet(unet, state)
            except ValueError as e:
                raise SystemExit(f"--init-from {src} with --arch {a.arch}: {e}") from None
            log(f"grew the UNet from {src}: {len(grown)} new transformer blocks, each starting as the identity")
        if not frozen:
            te.load_state_dict(load_file(str(src / "text_encoder" / "model.safetensors")))
        log(f"initialised UNet{'' if frozen else ' and text encoder'} from {src}")
    unet_ema.load_state_dict(unet.state_dict())
    if not frozen:
        te_ema.load_state_dict(te.state_dict())
    for m in (unet_ema, te_ema):
        m.requires_grad_(False).eval()
    log(f"unet ({a.arch}): {sum(p.numel() for p in unet.parameters()) / 1e6:.2f} M parameters, on {dev}")
    for m in {id(x): x for x in (unet, unet_ema, te, te_ema)}.values():
        m.to(dev)
    lat = lat.to(dev)
    noise_sched = train_scheduler()
    acp = noise_sched.alphas_cumprod.to(dev)
    params = list(unet.parameters()) + ([] if frozen else list(te.parameters()))
    opt = torch.optim.AdamW(params, lr=a.lr, weight_decay=0.01)
    unet.train()
    te.train(not frozen)
    recorder = None
    aux = {name: (w, fn) for name, w, fn in (("grounding", a.ground_weight, grounding_loss),
                                              ("binding", a.bind_weight, binding_loss)) if w > 0}
    aux_losses: dict[str, list[float]] = {name: [] for name in aux}
    if aux:
        obj_masks = torch.from_numpy(np.stack(drawn)).to(dev)
        groups = object_word_groups(captions, ids.shape[1]).to(dev)
        recorder = install_recorder(unet)
        log(f"token grounding loss, weight {a.ground_weight}; binding loss, weight {a.bind_weight}: "
            f"{int(groups.sum())} object words in {len(captions)} captions")
    pipe_dir = out / "pipeline"

    def checkpoint(tag: str) -> None:
        save_pipeline(make_pipeline(vae, te_ema, tok, unet_ema), pipe_dir)
        log(f"checkpoint ({tag}) -> {pipe_dir}")

    total = a.unet_steps
    losses: list[float] = []
    t_unet = time.time()
    unet_budget = max(1.0, deadline - 60 - t_unet)
    last_ckpt = t_unet
    step = 0
    log(f"unet: up to {total} steps in {unet_budget / 60:.1f} min")
    while step < total:
        t_frac = 0.0 if a.no_time_schedule else (time.time() - t_unet) / unet_budget
        progress = max(step / total, t_frac)
        if t_frac >= 1.0 or time.time() > deadline - 30:
            log(f"time budget reached at step {step}/{total}")
            break
        for g in opt.param_groups:
            g["lr"] = lr_at(step, total, a.lr, 200, progress)
        idx = torch.randint(0, len(lat), (a.batch,), generator=gen)
        cap = ids[idx].clone()
        drop = torch.rand(a.batch, generator=gen) < a.p_uncond
        cap[drop] = empty
        noise = torch.randn((a.batch, *lat.shape[1:]), generator=gen).to(dev)
        t = sample_timesteps(a.batch, gen, a.t_high).to(dev)
        idx, cap, drop = idx.to(dev), cap.to(dev), drop.to(dev)
        x0 = lat[idx]
        ab = acp[t].view(-1, 1, 1, 1)
        xt = ab.sqrt() * x0 + (1 - ab).sqrt() * noise
        with torch.set_grad_enabled(not frozen):
            enc = te(cap)[0]
        if recorder is not None:
            recorder.maps.clear()
        pred = unet(xt, t, encoder_hidden_states=enc).sample
        loss = (F.mse_loss(pred, noise) if masks is None
                else weighted_mse(pred, noise, 1 + (a.object_weight - 1) * masks[idx]))
        if recorder is not None:
            g = groups[idx].clone()
            g[drop] = 0.0
            for name, (w, fn) in aux.items():
                part = fn(recorder.maps, obj_masks[idx], g)
                aux_losses[name].append(part.item())
                loss = loss + w * part
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        d = min(a.ema, (1 + step) / (10 + step))
        ema_update(unet_ema, unet, d)
        if not frozen:
            ema_update(te_ema, te, d)
        losses.append(loss.item())
        step += 1
        if step % 100 == 0:
            extra = "".join(f" ({name} {np.mean(v[-100:]):.4f})" for name, v in aux_losses.items())
            log(f"unet step {step}/{total} loss {np.mean(losses[-100:]):.4f}{extra} lr {opt.param_groups[0]['lr']:.2e}")
        if time.time() - last_ckpt > a.checkpoint_minutes * 60:
            checkpoint(f"step {step}")
            last_ckpt = time.time()
    checkpoint(f"final, step {step}")
    info = {"args": vars(a), "unet_steps_done": step, "unet_steps_planned": total,
            "unet_minutes": (time.time() - t_unet) / 60,
            "minutes": (time.time() - t_start) / 60, "vae_scaling_factor": scale,
            "final_loss": float(np.mean(losses[-200:])) if losses else None}
    info.update({f"final_{name}_loss": float(np.mean(v[-200:])) for name, v in aux_losses.items() if v})
    (out / "train_info.json").write_text(json.dumps(info, indent=1))
    log(f"done {info}")
    return pipe_dir


if __name__ == "__main__":
    main()
