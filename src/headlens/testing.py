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


# ---------------------------------------------------------------------------------------------- transformers (DiT)
def t5_tokenizer(extra_words: tuple[str, ...] = ()):
    """A small T5 (sentencepiece-style Unigram) tokenizer built offline from headlens' own word lists.

    Every word of the shipped concepts and prompts is one piece (``▁word``); any other word falls
    back to single characters, so unknown words become several tokens, as in the real T5.
    """
    import re

    from transformers import T5Tokenizer

    data = resources.files("headlens") / "data"
    text = (data / "concepts.toml").read_text(encoding="utf-8") + "\n" + (data / "prompts.txt").read_text(encoding="utf-8")
    words = sorted({w for w in re.findall(r"[a-z]+", text.lower()) if len(w) > 1} | set(extra_words))
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    vocab += [(f"▁{w}", -5.0 - 0.01 * len(w)) for w in words]
    chars = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,;:!?'\"-()/&"
    vocab += [(f"▁{c}", -12.0) for c in chars] + [(c, -12.0) for c in chars]
    return T5Tokenizer(vocab=vocab, extra_ids=0)


def _t5_encoder(tokenizer, d_model: int, seed: int = 0):
    from transformers import T5Config, T5EncoderModel

    cfg = T5Config(vocab_size=len(tokenizer), d_model=d_model, d_ff=2 * d_model, d_kv=d_model // 4, num_layers=2,
                   num_heads=4, relative_attention_num_buckets=8, relative_attention_max_distance=32,
                   dropout_rate=0.0, feed_forward_proj="gated-gelu", is_encoder_decoder=False, use_cache=False,
                   pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(seed)
    return T5EncoderModel(cfg).eval()


def _vae_dit(seed: int = 0, levels: int = 2, shift: bool = False):
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    extra = {"shift_factor": 0.1, "scaling_factor": 1.5} if shift else {}
    return AutoencoderKL(
        block_out_channels=(8,) * (levels - 2) + (8, 16) if levels > 2 else (8, 16), in_channels=3, out_channels=3,
        latent_channels=4, norm_num_groups=4, layers_per_block=1,
        down_block_types=("DownEncoderBlock2D",) * levels, up_block_types=("UpDecoderBlock2D",) * levels, **extra,
    ).eval()


def tiny_pixart_pipeline(seed: int = 0, sigma: bool = False):
    """A tiny ``PixArtAlphaPipeline`` (``sigma=True``: ``PixArtSigmaPipeline``): 2 blocks × 4 heads, T5 text, 256 px.

    Its transformer has the real sample size 32 (PixArt's 256 px bin), so the pipeline's own
    resolution binning works unchanged; patch 2 gives a 16×16 query grid.
    """
    from diffusers import DPMSolverMultistepScheduler, PixArtAlphaPipeline, PixArtSigmaPipeline, PixArtTransformer2DModel

    tokenizer = t5_tokenizer()
    torch.manual_seed(seed)
    transformer = PixArtTransformer2DModel(
        sample_size=32, num_layers=2, attention_head_dim=8, num_attention_heads=4, in_channels=4, out_channels=8,
        patch_size=2, cross_attention_dim=32, caption_channels=32, norm_type="ada_norm_single",
        norm_elementwise_affine=False, norm_eps=1e-6, attention_bias=True, num_embeds_ada_norm=1000,
        activation_fn="gelu-approximate", use_additional_conditions=False,
    ).eval()
    cls = PixArtSigmaPipeline if sigma else PixArtAlphaPipeline
    pipe = cls(tokenizer=tokenizer, text_encoder=_t5_encoder(tokenizer, 32, seed), vae=_vae_dit(seed, levels=4),
               transformer=transformer, scheduler=DPMSolverMultistepScheduler())
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_sd3_pipeline(seed: int = 0):
    """A tiny ``StableDiffusion3Pipeline``: 2 joint blocks × 4 heads (the last one ``context_pre_only``), 16 px."""
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline

    torch.manual_seed(seed)
    transformer = SD3Transformer2DModel(
        sample_size=8, patch_size=2, in_channels=4, num_layers=2, attention_head_dim=8, num_attention_heads=4,
        joint_attention_dim=64, caption_projection_dim=32, pooled_projection_dim=64, out_channels=4,
        pos_embed_max_size=16,
    ).eval()
    t5 = t5_tokenizer()
    pipe = StableDiffusion3Pipeline(
        transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        vae=_vae_dit(seed, shift=True), text_encoder=_text_encoder(32, projection=True, seed=seed),
        tokenizer=clip_tokenizer(), text_encoder_2=_text_encoder(32, projection=True, seed=seed + 1),
        tokenizer_2=clip_tokenizer(), text_encoder_3=_t5_encoder(t5, 64, seed), tokenizer_3=t5,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_flux_pipeline(seed: int = 0, guidance_embeds: bool = True):
    """A tiny ``FluxPipeline``: 2 double-stream + 2 single-stream blocks × 4 heads, RoPE, 16 px by default."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel

    torch.manual_seed(seed)
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=16, num_layers=2, num_single_layers=2, attention_head_dim=8, num_attention_heads=4,
        joint_attention_dim=32, pooled_projection_dim=32, guidance_embeds=guidance_embeds, axes_dims_rope=(2, 2, 4),
    ).eval()
    t5 = t5_tokenizer()
    pipe = FluxPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(), vae=_vae_dit(seed, shift=True),
        text_encoder=_text_encoder(32, seed=seed), tokenizer=clip_tokenizer(),
        text_encoder_2=_t5_encoder(t5, 32, seed), tokenizer_2=t5, transformer=transformer,
    )
    pipe.default_sample_size = TINY_IMAGE_SIZE // pipe.vae_scale_factor  # the pipeline's own default-size attribute
    pipe.set_progress_bar_config(disable=True)
    return pipe
