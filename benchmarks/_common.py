"""Shared helpers of the benchmark scripts: models, machine description, timing, RESULTS.md."""

from __future__ import annotations

import os
import platform
import re
import statistics
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "RESULTS.md"

# Stable Diffusion 1.5's UNet config (runwayml/stable-diffusion-v1-5, unet/config.json), random weights.
SD15_UNET = {
    "sample_size": 64, "in_channels": 4, "out_channels": 4, "center_input_sample": False, "flip_sin_to_cos": True, "freq_shift": 0,
    "down_block_types": ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    "mid_block_type": "UNetMidBlock2DCrossAttn",
    "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    "only_cross_attention": False, "block_out_channels": (320, 640, 1280, 1280), "layers_per_block": 2,
    "downsample_padding": 1, "mid_block_scale_factor": 1, "act_fn": "silu", "norm_num_groups": 32, "norm_eps": 1e-5,
    "cross_attention_dim": 768, "attention_head_dim": 8, "use_linear_projection": False,
}
# Its text encoder (CLIP ViT-L/14 text tower).
SD15_TEXT = {"vocab_size": 49408, "hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
                 "num_attention_heads": 12, "max_position_embeddings": 77, "hidden_act": "quick_gelu",
                 "bos_token_id": 49406, "eos_token_id": 49407, "pad_token_id": 1, "projection_dim": 768}


def setup_threads() -> int:
    """Use the threads given by OMP_NUM_THREADS (default 1: the machine is shared)."""
    n = int(os.environ.get("OMP_NUM_THREADS", "1"))
    torch.set_num_threads(n)
    return n


def sd15_pipeline(seed: int = 0):
    """An SD1.5-shaped StableDiffusionPipeline: real UNet and text-encoder configs, random weights."""
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from headlens.testing import clip_tokenizer

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**SD15_UNET).eval()
    text = CLIPTextModel(CLIPTextConfig(**SD15_TEXT)).eval()
    # A featherweight VAE with SD's 8× down-sampling: never run (the benchmarks stop at latents).
    vae = AutoencoderKL(block_out_channels=(8, 8, 8, 8), down_block_types=("DownEncoderBlock2D",) * 4,
                        up_block_types=("UpDecoderBlock2D",) * 4, latent_channels=4, norm_num_groups=4).eval()
    sched = PNDMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
                          skip_prk_steps=True, steps_offset=1, set_alpha_to_one=False)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text, tokenizer=clip_tokenizer(), unet=unet, scheduler=sched,
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def bundled_or_tiny():
    """(pipeline, name, note): the bundled world model if it is installed, else the tiny test model."""
    from headlens import world

    try:
        return world.load_pipeline(), "bundled world model", ""
    except FileNotFoundError:
        from headlens.testing import tiny_sd_pipeline

        return tiny_sd_pipeline(), "tiny test model", "bundled world model not installed yet: tiny test model used"


def machine() -> str:
    """CPU model, cores, torch version, load (the machine is shared)."""
    cpu = platform.processor() or "unknown CPU"
    try:
        text = Path("/proc/cpuinfo").read_text()
        m = re.search(r"model name\s*:\s*(.+)", text)
        cpu = m.group(1).strip() if m else cpu
    except OSError:
        pass
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (f"{cpu}, {os.cpu_count()} cores, {gpu}, torch {torch.__version__}, {torch.get_num_threads()} torch "
            f"thread(s), load average {load:.1f} at start (shared machine)")


def interleaved(fns: dict, repeats: int) -> dict[str, dict[str, float]]:
    """Run each function once per round, alternating, ``repeats`` rounds; median wall and CPU seconds per call.

    CPU time (this process) is the robust number on a shared machine; wall time is what a user waits.
    """
    wall = {k: [] for k in fns}
    cpu = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            w, c = time.perf_counter(), time.process_time()
            fn()
            cpu[k].append(time.process_time() - c)
            wall[k].append(time.perf_counter() - w)
    return {"wall": {k: median(v) for k, v in wall.items()}, "cpu": {k: median(v) for k, v in cpu.items()}}


def median(xs) -> float:
    """Median of a list of numbers."""
    return statistics.median(xs)


def write_section(title: str, body: str) -> None:
    """Replace (or append) the ``## title`` section of RESULTS.md."""
    text = RESULTS.read_text(encoding="utf-8") if RESULTS.exists() else "# headlens benchmark results\n"
    section = f"## {title}\n\n{body.strip()}\n"
    pattern = re.compile(rf"^## {re.escape(title)}\n.*?(?=^## |\Z)", re.DOTALL | re.MULTILINE)
    text = pattern.sub(lambda _: section + "\n", text) if pattern.search(text) else text.rstrip() + "\n\n" + section
    RESULTS.write_text(text.rstrip() + "\n", encoding="utf-8")


def world_shaped_pipeline(seed: int = 0):
    """The bundled world model's architecture with random weights (same speed; no meaningful votes)."""
    import tempfile

    from headlens.world import model as wm
    from headlens.world.tokenizer import build_tokenizer

    torch.manual_seed(seed)
    with tempfile.TemporaryDirectory() as d:
        tok = build_tokenizer(d)
    pipe = wm.make_pipeline(wm.make_vae(), wm.make_text_encoder(tok), tok, wm.make_unet())
    pipe.set_progress_bar_config(disable=True)
    return pipe


def small_model():
    """(pipeline, label, note, concepts, prompts) of the bundled model, or its stand-ins.

    Order: the trained bundled world model; its architecture with random weights; the tiny test model.
    """
    from headlens import world
    from headlens.concepts import load_prompts

    try:
        pipe = world.load_pipeline()
        return pipe, "bundled world model", "", world.concept_words(), world.default_prompts()
    except FileNotFoundError:
        pass
    try:
        pipe = world_shaped_pipeline()
        return (pipe, "world-shaped UNet (random weights)",
                ("the trained bundled model was not installed yet: its architecture with random weights was timed "
                "(same cost per image)"), world.concept_words(), world.default_prompts())
    except Exception as e:  # noqa: BLE001 - the world package is being written concurrently
        from headlens.testing import tiny_sd_pipeline

        return (tiny_sd_pipeline(), "tiny test model", (f"bundled world model unavailable ({type(e).__name__}): "
                "tiny test model used"), "default", load_prompts("default"))
