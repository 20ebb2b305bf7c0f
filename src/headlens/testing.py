"""Tiny, seeded Stable Diffusion pipelines built in code (for tests, smoke runs and docs).

They have random weights: good for checking plumbing, not for judging concepts (use the
bundled world model, :mod:`headlens.world`, for that). All use the real CLIP BPE tokenizer
shipped with headlens, so token positions match real models.
"""

from __future__ import annotations

from importlib import resources

import torch

TINY_IMAGE_SIZE = 16


def clip_tokenizer(model_max_length: int = 77, pad_token: str | None = None):
    """The standard CLIP BPE tokenizer (same ids as Stable Diffusion's), loaded offline."""
    from transformers import CLIPTokenizer

    folder = resources.files("headlens") / "assets" / "clip_tokenizer"
    kwargs = {"model_max_length": model_max_length}
    if pad_token is not None:
        kwargs["pad_token"] = pad_token
    # transformers 5: pass the two paths positionally (keywords build a broken tokenizer).
    return CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), **kwargs)


def _text_encoder(hidden: int, layers: int = 2, projection: bool = False, seed: int = 0):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    cfg = CLIPTextConfig(
        vocab_size=49408, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
        num_attention_heads=4, max_position_embeddings=77, bos_token_id=49406, eos_token_id=49407,
        pad_token_id=49407, projection_dim=hidden, hidden_act="quick_gelu",
    )
    torch.manual_seed(seed)
    model = (CLIPTextModelWithProjection if projection else CLIPTextModel)(cfg)
    return model.eval()


def _vae(seed: int = 0):
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(
        block_out_channels=(8, 16), in_channels=3, out_channels=3, latent_channels=4, norm_num_groups=4,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"), sample_size=TINY_IMAGE_SIZE,
    ).eval()


def tiny_unet(seed: int = 0, cross_attention_dim: int = 32, sd2: bool = False):
    """SD1-shaped tiny UNet: 7 cross-attention layers (2 down, 1 mid, 4 up), 2 or 4 heads each.

    ``sd2=True`` gives the SD2.x flavour: linear projections and upcast attention.
    """
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    extra = dict(use_linear_projection=True, upcast_attention=True) if sd2 else {}
    return UNet2DConditionModel(
        sample_size=TINY_IMAGE_SIZE // 2, in_channels=4, out_channels=4, layers_per_block=1,
        block_out_channels=(16, 32), norm_num_groups=8, cross_attention_dim=cross_attention_dim,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"), attention_head_dim=(2, 4), **extra,
    ).eval()


def tiny_sd_pipeline(seed: int = 0, scheduler: str = "ddim", sd2: bool = False):
    """A tiny SD1-style ``StableDiffusionPipeline`` (16×16 images, 22 cross-attention heads); ``sd2`` for SD2.x style."""
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline(
        vae=_vae(seed), text_encoder=_text_encoder(32, seed=seed), tokenizer=clip_tokenizer(),
        unet=tiny_unet(seed, sd2=sd2), scheduler=_scheduler(scheduler), safety_checker=None,
        feature_extractor=None, requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_sdxl_pipeline(seed: int = 0, scheduler: str = "ddim"):
    """A tiny SDXL-style pipeline: two text encoders (64-wide joint embeddings), text_time conditioning."""
    from diffusers import StableDiffusionXLPipeline, UNet2DConditionModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=TINY_IMAGE_SIZE // 2, in_channels=4, out_channels=4, layers_per_block=1,
        block_out_channels=(16, 32), norm_num_groups=8, cross_attention_dim=64,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), attention_head_dim=(2, 4),
        use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=8,
        transformer_layers_per_block=(1, 2), projection_class_embeddings_input_dim=6 * 8 + 32,
    ).eval()
    pipe = StableDiffusionXLPipeline(
        vae=_vae(seed), text_encoder=_text_encoder(32, seed=seed),
        text_encoder_2=_text_encoder(32, projection=True, seed=seed + 1), tokenizer=clip_tokenizer(),
        tokenizer_2=clip_tokenizer(pad_token="!"), unet=unet, scheduler=_scheduler(scheduler),
        force_zeros_for_empty_prompt=True,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _scheduler(kind: str):
    from diffusers import DDIMScheduler, PNDMScheduler

    common = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000)
    if kind == "ddim":
        return DDIMScheduler(clip_sample=False, set_alpha_to_one=False, steps_offset=1, **common)
    if kind == "pndm":
        return PNDMScheduler(skip_prk_steps=True, steps_offset=1, **common)
    raise ValueError(f"unknown tiny scheduler {kind!r} (use 'ddim' or 'pndm')")
